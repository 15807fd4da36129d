"""Where the embedded defaults keep their data on one machine: folders under the settings' home."""

from __future__ import annotations

from pathlib import Path


def home() -> Path:
    """The ``home`` of the process's settings (``WORKFLOW_CACHE_HOME``, else the XDG cache)."""
    from workflow_cache.settings import current  # loads when a default is first made

    return current().home


def steps_dir() -> Path:
    """The local step-outcome cache (``LocalCache``)."""
    return home() / "steps"


def files_dir() -> Path:
    """The local file-archive storage of working-directory caches."""
    return home() / "files"
