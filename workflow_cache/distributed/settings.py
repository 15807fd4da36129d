"""The fleet's settings are the library's one model (``workflow_cache.settings``).

``WorkerSettings`` is kept as a name for code that imported it from here. Its old
keyword ``broker_url`` is now ``broker``: ``WorkerSettings(broker_url=...)`` is a
``TypeError`` that says so, as is any keyword that names no setting.
"""

from __future__ import annotations

from workflow_cache.settings import Settings

WorkerSettings = Settings

__all__ = ["WorkerSettings"]
