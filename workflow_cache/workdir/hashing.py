"""The byte streams between storage and an archive: counted, bounded and hashed.

A save learns the archive's size and SHA-256 while writing it (they go into
``entry.json``); a restore refuses more bytes than were recorded and, with
signing keys configured, refuses an archive whose bytes are not the ones the
signed ``entry.json`` names.
"""

from __future__ import annotations

import hashlib
import hmac
import queue
import threading
from typing import BinaryIO

from workflow_cache.workdir.archive import ArchiveError

__all__ = ["HashingReader", "HashingWriter"]


class HashingWriter:
    """Counts and hashes the bytes written through it: the archive's size and digest."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.count = 0
        self.digest = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.count += len(data)
        self.digest.update(data)
        return self.raw.write(data)


class HashingReader:
    """Reads an archive from storage, refusing more than ``limit`` bytes.

    When ``hashing`` it hashes what it reads, so :meth:`check` can refuse an
    archive whose bytes are not the ones its signed ``entry.json`` names. The
    hashing runs on a helper thread, overlapping decompression and file writes:
    ``hashlib`` releases the GIL while it hashes, and the bytes go to it in
    batches of a few MiB, so the thread rarely has to wait for the GIL. At most
    :data:`_QUEUED` batches wait, which bounds the memory it holds.
    """

    _BATCH = 4 << 20
    _QUEUED = 4

    def __init__(self, raw: BinaryIO, limit: int, hashing: bool) -> None:
        self.raw = raw
        self.limit = limit
        self.count = 0
        self._hasher = hashlib.sha256()
        self._pending = bytearray()
        self._queue: queue.Queue[bytearray | None] | None = None
        self._thread: threading.Thread | None = None
        if hashing:
            self._queue = queue.Queue(maxsize=self._QUEUED)
            self._thread = threading.Thread(target=self._hash, name="wfc-archive-digest")
            self._thread.daemon = True
            self._thread.start()

    def _hash(self) -> None:
        assert self._queue is not None
        while (batch := self._queue.get()) is not None:
            self._hasher.update(batch)

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.count += len(data)
        if self.count > self.limit:
            raise ArchiveError(f"the archive is larger than the {self.limit:,} bytes recorded")
        if self._queue is not None:
            self._pending += data
            if len(self._pending) >= self._BATCH:
                self._queue.put(self._pending)
                self._pending = bytearray()
        return data

    def close(self) -> None:
        """Hash what is left and stop the helper thread (idempotent)."""
        if self._thread is not None and self._queue is not None:
            if self._pending:
                self._queue.put(self._pending)
                self._pending = bytearray()
            self._queue.put(None)
            self._thread.join()
            self._thread = None

    def check(self, expected: str | None) -> None:
        self.close()
        found = f"sha256:{self._hasher.hexdigest()}"
        if expected is None or not hmac.compare_digest(found, expected):
            raise ArchiveError("the archive's bytes do not match the digest its entry.json signs")
