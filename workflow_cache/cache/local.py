"""A persistent step cache for one machine: JSON text in one SQLite table.

Several processes on the same machine may share it (SQLite's write-ahead log
and a busy timeout). The file is read back as untrusted input, so it holds
JSON text and nothing else: there is no pickle to unpickle and no file name to
follow. A row whose value is not text is an :class:`EnvelopeError` naming the
key; text goes through :meth:`Envelope.loads` like every other store, so with
signing keys configured an unsigned or forged row is a miss with one warning.
"""

from __future__ import annotations

import logging
import math
import os
import sqlite3
import stat
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from workflow_cache import paths, signing
from workflow_cache.cache.base import NativeCache
from workflow_cache.cache.filelocks import KeyLock, KeyLocks
from workflow_cache.duration import TTL, to_seconds
from workflow_cache.envelope import Envelope, EnvelopeError, UnsignedEnvelopeError
from workflow_cache.options import check_key

log = logging.getLogger(__name__)

DB_NAME = "outcomes.sqlite3"
_SCHEMA = "CREATE TABLE IF NOT EXISTS outcomes (key TEXT PRIMARY KEY, value TEXT, expires REAL)"
_CULL_EVERY = 256  # saves between sweeps of expired rows


class LocalCache(NativeCache):
    """Stores under ``$WORKFLOW_CACHE_HOME/steps`` (by default ``~/.cache/workflow-cache``)."""

    def __init__(
        self, directory: str | Path | None = None, *, default_ttl: TTL | None = None
    ) -> None:
        self.directory = Path(directory) if directory is not None else paths.steps_dir()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.default_ttl = to_seconds(default_ttl, name="default_ttl")
        signing.signing_keys()  # a bad key setting fails here, not at the first read
        self.path = self.directory / DB_NAME
        _check_files(self.path)
        self._lock = threading.Lock()
        self._saves = 0
        self._db = sqlite3.connect(
            self.path, timeout=30.0, isolation_level=None, check_same_thread=False
        )
        self._prepare()
        self._locks = KeyLocks(self.directory)

    def _prepare(self) -> None:
        """WAL mode and the table. Processes starting together can find the file busy here
        even with a busy timeout (SQLite refuses some lock upgrades at once), so retry."""
        deadline = time.monotonic() + 30.0
        while True:
            try:
                with self._lock:
                    self._db.execute("PRAGMA journal_mode=WAL")
                    self._db.execute(_SCHEMA)
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    def _query(self, key: str, sql: str, args: tuple[Any, ...]) -> sqlite3.Cursor:
        try:
            with self._lock:
                return self._db.execute(sql, args)
        except sqlite3.DatabaseError as exc:
            raise EnvelopeError(
                f"cache entry for key {key!r}: cannot read {self.path}: {exc}"
            ) from None

    def load(self, key: str) -> Envelope | None:
        check_key(key)
        row = self._query(
            key, "SELECT value, expires FROM outcomes WHERE key = ?", (key,)
        ).fetchone()
        if row is None:
            return None
        value, expires = row
        if not isinstance(value, str):
            raise EnvelopeError(
                f"cache entry for key {key!r} in {self.path} is not JSON text "
                f"(a {type(value).__name__} row); LocalCache reads JSON text only"
            )
        if expires is not None:
            if type(expires) not in (int, float) or math.isnan(expires):
                raise EnvelopeError(f"cache entry for key {key!r} has a bad expiry {expires!r}")
            if time.time() >= expires:
                self.delete(key)
                return None
        try:
            return Envelope.loads(key, value)
        except UnsignedEnvelopeError as exc:
            log.warning("%s; treating it as a miss and removing it", exc)
            self._query(key, "DELETE FROM outcomes WHERE key = ? AND value = ?", (key, value))
            return None

    def load_many(self, keys: Sequence[str]) -> list[Envelope | None]:
        return [self.load(key) for key in keys]

    def save(self, key: str, envelope: Envelope) -> None:
        check_key(key)
        text = envelope.sealed(key)
        expires = None if envelope.ttl is None else time.time() + envelope.ttl
        self._query(
            key,
            "INSERT OR REPLACE INTO outcomes (key, value, expires) VALUES (?, ?, ?)",
            (key, text, expires),
        )
        self._saves += 1
        if self._saves % _CULL_EVERY == 0:
            self._query(key, "DELETE FROM outcomes WHERE expires < ?", (time.time(),))

    def acquire(self, key: str) -> Envelope | KeyLock:
        """Single flight across the processes of this machine (see ``filelocks.py``)."""
        check_key(key)
        return self._locks.acquire(key, self.load, self.save)

    def has(self, key: str) -> bool:
        check_key(key)
        sql = "SELECT 1 FROM outcomes WHERE key = ? AND (expires IS NULL OR expires > ?)"
        return self._query(key, sql, (key, time.time())).fetchone() is not None

    def delete(self, key: str) -> bool:
        """Remove the outcome of ``key``, and its lock file unless a process runs the key."""
        check_key(key)
        deleted = self._query(key, "DELETE FROM outcomes WHERE key = ?", (key,)).rowcount > 0
        self._locks.discard(key)
        return deleted

    def clear(self) -> int:
        """Remove every outcome, and every lock file no process holds; return how many outcomes."""
        count = self._query("*", "DELETE FROM outcomes", ()).rowcount
        self._locks.sweep()
        return count

    # -- for operators (workflow-cache steps ...): rows as stored, not decoded

    def keys(self, prefix: str = "") -> list[str]:
        """Stored keys that start with ``prefix`` (case-sensitive), sorted."""
        sql = "SELECT key FROM outcomes WHERE substr(key, 1, ?) = ? ORDER BY key"
        rows = self._query(prefix or "*", sql, (len(prefix), prefix)).fetchall()
        return [key for (key,) in rows if isinstance(key, str)]

    def row(self, key: str) -> tuple[Any, Any] | None:
        """The stored value and expiry time of ``key`` as they are, or None."""
        sql = "SELECT value, expires FROM outcomes WHERE key = ?"
        found = self._query(key, sql, (key,)).fetchone()
        return None if found is None else (found[0], found[1])

    def disk_bytes(self) -> int:
        """Bytes of the database and its write-ahead log on disk."""
        names = (self.path, Path(f"{self.path}-wal"), Path(f"{self.path}-shm"))
        return sum(name.stat().st_size for name in names if name.is_file())

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __repr__(self) -> str:
        return f"LocalCache({str(self.directory)!r})"


def _check_files(path: Path) -> None:
    """The database and its journals must be regular files: a FIFO would hang every reader."""
    for name in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        try:
            mode = os.lstat(name).st_mode
        except FileNotFoundError:
            continue
        if not stat.S_ISREG(mode):
            raise EnvelopeError(f"{name} is not a regular file; remove it to use LocalCache")
