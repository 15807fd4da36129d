"""Single flight on one machine: one ``flock`` lock file per step key.

Of all the processes (and threads) of one machine that reach a missing key at once,
the one that takes the key's lock runs the step; the others block in ``flock`` (the
kernel wakes them, nobody polls) and, once they get the lock, find the outcome in the
cache. The operating system drops a lock when its holder exits, however it exits, so
a holder killed with ``kill -9`` is taken over at once.

An outcome that is not kept (an error the policy does not cache) still reaches the
callers that were waiting for it: the holder writes it into the lock file before
unlocking, and a waiter takes it when it was made after the waiter began to wait.
A caller that did not wait never reads it.

Lock files live in ``<cache folder>/locks/``, named by the SHA-256 of the key; they
are tiny and are never deleted while the cache is in use (deleting a lock file that
others are blocked on would let two processes hold "the" lock at once).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path

from workflow_cache.envelope import Envelope, EnvelopeError

__all__ = ["KeyLock", "KeyLocks"]

log = logging.getLogger(__name__)

_MAX_NOTICE = 1 << 20
"""Largest not-kept outcome read back from a lock file (anything larger is ignored)."""


class KeyLock:
    """This process runs the key: ``commit`` (store or hand over the outcome) or ``release``."""

    def __init__(self, key: str, fd: int, save: Callable[[str, Envelope], object]) -> None:
        self.key = key
        self._fd: int | None = fd
        self._save = save

    def commit(self, envelope: Envelope, *, keep: bool) -> bool:
        """Store the outcome (if ``keep``) or leave it for the waiters, then unlock."""
        fd = self._take()
        try:
            if keep:
                self._save(self.key, envelope)
                os.ftruncate(fd, 0)
            else:
                _write_notice(fd, envelope.sealed(self.key))
        finally:
            _unlock(fd)
        return True

    def release(self) -> None:
        """Unlock without an outcome: the next waiter runs the step."""
        if self._fd is not None:
            _unlock(self._take())

    def _take(self) -> int:
        fd = self._fd
        if fd is None:
            raise RuntimeError(f"the claim on {self.key!r} was already committed or released")
        self._fd = None
        return fd

    def __del__(self) -> None:  # a claim dropped without commit/release must not stay locked
        if self._fd is not None:
            with contextlib.suppress(OSError):
                _unlock(self._fd)


class KeyLocks:
    """The lock files of one cache folder."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory) / "locks"
        self.directory.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        return self.directory / (hashlib.sha256(key.encode()).hexdigest() + ".lock")

    def acquire(
        self,
        key: str,
        load: Callable[[str], Envelope | None],
        save: Callable[[str, Envelope], object],
    ) -> Envelope | KeyLock:
        """The key's outcome once known (blocking while another process runs it), or
        its lock, which the caller must commit or release."""
        flags = os.O_RDWR | os.O_CREAT | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(self.path(key), flags, 0o600)
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # a planted FIFO or device: never use it
            os.close(fd)
            raise EnvelopeError(f"the lock file of step {key!r} is not a regular file")
        try:
            waited_since = None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                waited_since = time.time()
                fcntl.flock(fd, fcntl.LOCK_EX)  # the kernel wakes us when the holder is done
            stored = load(key)
            if stored is None and waited_since is not None:
                stored = _read_notice(fd, key, waited_since)
            if stored is not None:
                _unlock(fd)
                return stored
        except BaseException:
            _unlock(fd)
            raise
        return KeyLock(key, fd, save)


def _unlock(fd: int) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _write_notice(fd: int, text: str) -> None:
    data = text.encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)


def _read_notice(fd: int, key: str, since: float) -> Envelope | None:
    """The not-kept outcome a holder left, if it was made while we waited."""
    data = os.pread(fd, _MAX_NOTICE + 1, 0)
    if not data or len(data) > _MAX_NOTICE:
        return None
    try:
        envelope = Envelope.loads(key, data)
    except (EnvelopeError, ValueError, TypeError) as exc:
        log.warning("ignoring the lock file of step %r: %s", key, exc)
        return None
    return envelope if envelope.created_at >= since else None
