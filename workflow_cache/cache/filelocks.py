"""Single flight on one machine: one ``flock`` lock file per step key, there while it is used.

Of all the processes (and threads) of one machine that reach a missing key at once,
the one that takes the key's lock runs the step; the others block in ``flock`` (the
kernel wakes them, nobody polls) and, once they get the lock, find the outcome in the
cache. The operating system drops a lock when its holder exits, however it exits, so
a holder killed with ``kill -9`` is taken over at once.

An outcome that is not kept (an error the policy does not cache) still reaches the
callers that were waiting for it: the holder writes it into the lock file before
unlocking, and a waiter takes it when it was made after the waiter began to wait.
A caller that did not wait never reads it.

Lock files live in ``<cache folder>/locks/``, named by the SHA-256 of the key, and
exist only while a key is being run: the holder removes its file before it unlocks,
and :meth:`KeyLocks.discard` and :meth:`KeyLocks.sweep` remove files nobody holds
(the one a killed holder left, say). Removing a file others are blocked on is safe
because nobody trusts a lock by its path alone: only the holder of the lock removes
the file, and whoever gets a lock checks that the path still names the file it
locked (same inode and device), and starts again on the path's new file if not.
So at most one process at a time holds the lock of the file the path names, and
only that process runs the key.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import re
import stat
import time
from collections.abc import Callable
from pathlib import Path

from workflow_cache.envelope import Envelope, EnvelopeError

__all__ = ["KeyLock", "KeyLocks"]

log = logging.getLogger(__name__)

_MAX_NOTICE = 1 << 20
"""Largest not-kept outcome read back from a lock file (anything larger is ignored)."""

_OPEN = os.O_RDWR | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC
"""``O_NONBLOCK``: a planted FIFO must not hang the open; ``O_NOFOLLOW``: nor a symlink lead
elsewhere."""

_LOCK_NAME = re.compile(r"[0-9a-f]{64}\.lock")


class KeyLock:
    """This process runs the key: ``commit`` (store or hand over the outcome) or ``release``."""

    def __init__(
        self, key: str, path: str, fd: int, save: Callable[[str, Envelope], object]
    ) -> None:
        self.key = key
        self._path = path
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
            _remove_and_unlock(self._path, fd)
        return True

    def release(self) -> None:
        """Unlock without an outcome: the next waiter runs the step."""
        if self._fd is not None:
            _remove_and_unlock(self._path, self._take())

    def _take(self) -> int:
        fd = self._fd
        if fd is None:
            raise RuntimeError(f"the claim on {self.key!r} was already committed or released")
        self._fd = None
        return fd

    def __del__(self) -> None:  # a claim dropped without commit/release must not stay locked
        if self._fd is not None:
            with contextlib.suppress(OSError):
                _remove_and_unlock(self._path, self._fd)


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
        path = os.fspath(self.path(key))
        waited_since = None
        while True:
            fd = os.open(path, _OPEN | os.O_CREAT, 0o600)
            opened = os.fstat(fd)
            if not stat.S_ISREG(opened.st_mode):  # a planted FIFO or device: never use it
                os.close(fd)
                raise EnvelopeError(f"the lock file of step {key!r} is not a regular file")
            holder = False
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    waited_since = waited_since or time.time()
                    fcntl.flock(fd, fcntl.LOCK_EX)  # the kernel wakes us when the holder is done
                holder = _names(path, opened)
                stored = load(key)
                if stored is None and waited_since is not None:
                    stored = _read_notice(fd, key, waited_since)
            except BaseException:
                _let_go(path, fd, holder)
                raise
            if stored is not None:
                _let_go(path, fd, holder)
                return stored
            if holder:
                return KeyLock(key, path, fd, save)
            _unlock(fd)  # its holder removed the file we locked: lock the path's file now

    def discard(self, key: str) -> bool:
        """Remove the lock file of ``key`` unless a process holds it; True if removed."""
        return _remove_if_free(os.fspath(self.path(key)))

    def sweep(self) -> int:
        """Remove every lock file no process holds; return how many."""
        removed = 0
        with os.scandir(self.directory) as entries:
            for entry in entries:
                if _LOCK_NAME.fullmatch(entry.name):
                    removed += _remove_if_free(entry.path)
        return removed


def _names(path: str, opened: os.stat_result) -> bool:
    """Whether ``path`` still names the file ``opened`` (its ``fstat``): not removed or
    replaced since it was opened."""
    try:
        linked = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return (linked.st_ino, linked.st_dev) == (opened.st_ino, opened.st_dev)


def _remove_if_free(path: str) -> bool:
    """Lock ``path``'s file without waiting and remove it; False if it is held or gone.

    A file that is not a regular file is removed too: no process ever locks one.
    """
    try:
        fd = os.open(path, _OPEN)
    except OSError as exc:
        if exc.errno != errno.ELOOP:  # gone, or not ours to open
            return False
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # a symlink (O_NOFOLLOW refused it): never a lock
        return True
    try:
        opened = os.fstat(fd)
        if stat.S_ISREG(opened.st_mode):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False  # its holder removes it when it is done
            if not _names(path, opened):
                return False
        os.unlink(path)
        return True
    finally:
        os.close(fd)  # which unlocks


def _let_go(path: str, fd: int, holder: bool) -> None:
    if holder:
        _remove_and_unlock(path, fd)
    else:
        _unlock(fd)


def _remove_and_unlock(path: str, fd: int) -> None:
    """Remove the lock file, then unlock: we hold the lock of the file the path names, so
    no other process can, and whoever wakes on it sees it removed and starts again."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    finally:
        _unlock(fd)


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
