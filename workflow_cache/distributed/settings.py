"""The fleet's settings are the library's one model (``workflow_cache.settings``).

``WorkerSettings`` is kept as a name for code that imported it from here.
"""

from __future__ import annotations

from workflow_cache.settings import Settings

WorkerSettings = Settings

__all__ = ["WorkerSettings"]
