"""A persistent step cache for one machine, kept in SQLite files by ``diskcache``.

Several processes on the same machine may share it. Values are stored as JSON
text (diskcache keeps ``str`` values as text, without pickle) and expire through
diskcache's own expiry.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import diskcache

from workflow_cache import paths
from workflow_cache.cache.base import NativeCache
from workflow_cache.cache.filelocks import KeyLock, KeyLocks
from workflow_cache.duration import TTL, to_seconds
from workflow_cache.envelope import Envelope
from workflow_cache.options import check_key


class LocalCache(NativeCache):
    """Stores under ``$WORKFLOW_CACHE_HOME/steps`` (by default ``~/.cache/workflow-cache``)."""

    def __init__(
        self, directory: str | Path | None = None, *, default_ttl: TTL | None = None
    ) -> None:
        self.directory = Path(directory) if directory is not None else paths.steps_dir()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.default_ttl = to_seconds(default_ttl, name="default_ttl")
        self._db = diskcache.Cache(str(self.directory))
        self._locks = KeyLocks(self.directory)

    def load(self, key: str) -> Envelope | None:
        text = self._db.get(check_key(key))
        return None if text is None else Envelope.loads(key, text)

    def load_many(self, keys: Sequence[str]) -> list[Envelope | None]:
        return [self.load(key) for key in keys]

    def save(self, key: str, envelope: Envelope) -> None:
        self._db.set(check_key(key), envelope.dumps(key), expire=envelope.ttl)

    def acquire(self, key: str) -> Envelope | KeyLock:
        """Single flight across the processes of this machine (see ``filelocks.py``)."""
        return self._locks.acquire(check_key(key), self.load, self.save)  # type: ignore[arg-type]

    def has(self, key: str) -> bool:
        return check_key(key) in self._db

    def delete(self, key: str) -> bool:
        return bool(self._db.delete(check_key(key)))

    def clear(self) -> int:
        return self._db.clear()

    def close(self) -> None:
        self._db.close()

    def __repr__(self) -> str:
        return f"LocalCache({str(self.directory)!r})"
