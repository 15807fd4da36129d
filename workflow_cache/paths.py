"""Where the embedded defaults keep their data on one machine."""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    """``$WORKFLOW_CACHE_HOME``, else ``$XDG_CACHE_HOME/workflow-cache``, else ``~/.cache/...``.

    Read straight from the environment (the ``home`` field of ``Settings``): this is
    called by every default cache, and the full settings model is not needed for it.
    """
    explicit = os.environ.get("WORKFLOW_CACHE_HOME")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "workflow-cache"


def steps_dir() -> Path:
    """The local step-outcome cache (``LocalCache``)."""
    return home() / "steps"


def files_dir() -> Path:
    """The local file-archive storage of working-directory caches."""
    return home() / "files"
