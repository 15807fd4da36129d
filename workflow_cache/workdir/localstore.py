"""The worker's local store: entries it restored or saved, kept unpacked, keyed by archive digest.

A worker runs the same flows again and again. The archive in shared storage
stays the truth (its ``entry.json`` is read and checked on every restore); the
local store only spares unpacking it again: a restore whose archive digest is
here fills the folder by reflink or hard link (:mod:`.localtree`).

Layout under ``<home>/local``::

    <hex>/manifest.json, <hex>/tree/   a complete entry, moved into place by one rename
    <hex>/spares/*                     the tree's folders, empty, made ahead for the next fill
    <hex>.lock                         flock: one process at a time builds or fills from it
    <hex>.private                      files runs wrote in place; copied from then on
    .lock                              flock of eviction
    .tmp-*                             entries being built, and dropped ones being removed

Several worker processes share it: the one holding ``<hex>.lock`` builds the
entry while the others wait up to :attr:`LocalStore.wait` seconds and then use
the archive. The store holds at most ``max_bytes`` file bytes; the least
recently used entries go first. Any failure here (a full disk included) only
means the restore uses the archive; a tree that differs from its manifest is
dropped with one warning line.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import re
import secrets
import shutil
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from workflow_cache import paths, settings
from workflow_cache.workdir.archive import ArchiveStats
from workflow_cache.workdir.archive_extract import merge_into
from workflow_cache.workdir.localtree import (
    MANIFEST_LIMIT,
    Filled,
    Manifest,
    TreeChanged,
    fill,
    make_spare,
    parse_manifest,
    scan,
)

__all__ = ["Filled", "LocalStore"]

log = logging.getLogger(__name__)

_DIGEST = re.compile(r"^sha256:([0-9a-f]{64})$")
_ENTRY = re.compile(r"^[0-9a-f]{64}$")
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_LOCK = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
_PRIVATE_LIMIT = 1 << 20
_STALE_SECONDS = 3600.0  # a .tmp-* folder this old belongs to a process that died
_POLL = 0.02
_SPARES = "spares"
_SPARE_COUNT = 2
_making: set[str] = set()  # entries this process is making spare folders for
_making_lock = threading.Lock()

Unpack = Callable[[Path], ArchiveStats]


class LocalStore:
    """Unpacked entries in ``root``, at most ``max_bytes`` file bytes in all."""

    def __init__(self, root: Path, max_bytes: int, *, wait: float = 2.0) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.wait = wait

    @classmethod
    def configured(cls) -> LocalStore | None:
        """The store the settings ask for: ``<home>/local``; None when its size is 0."""
        size = settings.current().local_store_bytes
        return cls(paths.home() / "local", size) if size > 0 else None

    def fill(
        self, digest: str, dest: Path, *, unpack: Unpack | None = None, file_bytes: int = 0
    ) -> Filled | None:
        """Fill ``dest`` from the entry of ``digest``; None when it cannot be served.

        Entries already in ``dest`` are replaced and folders merge, as an archive
        restore does. None leaves ``dest`` as it was. With ``unpack``, an entry
        that is not here (or was just dropped) is built first, as
        :meth:`populate` does, under the same hold of its lock.
        """
        name = _entry_name(digest)
        if name is None:
            return None
        can_build = unpack is not None and file_bytes <= self.max_bytes
        if not can_build and not (self.root / name).is_dir():
            return None
        built = False
        with self._locked(name) as held:
            if not held:
                return None
            filled = self._serve(name, digest, Path(dest))
            if filled is None and unpack is not None and can_build:
                if not (self.root / name).is_dir():
                    built = self._build(name, digest, unpack)
                if built:
                    filled = self._serve(name, digest, Path(dest))
        if built:
            self.evict(keep=name)
        return filled

    def _serve(self, name: str, digest: str, dest: Path) -> Filled | None:
        try:
            filled = self._fill(name, digest, dest)
        except (TreeChanged, ValueError) as exc:
            if isinstance(exc, TreeChanged) and exc.path is not None:
                self._learn(name, exc.path)
            log.warning("local copy of %s is not served and is dropped: %s", digest, exc)
            self._drop(name)
            return None
        except OSError as exc:
            log.warning("cannot restore %s from the local store: %s", digest, exc)
            return None
        if filled is not None:
            with contextlib.suppress(OSError):
                os.utime(self.root / name)  # most recently used
        return filled

    def _fill(self, name: str, digest: str, dest: Path) -> Filled | None:
        try:
            entry = os.open(self.root / name, _DIR)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise TreeChanged("the entry is not a folder") from None
            raise
        try:
            manifest = _read_manifest(entry, digest)
            try:
                tree = os.open("tree", _DIR, dir_fd=entry)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.ENOENT):
                    raise TreeChanged("the entry's tree is not a folder") from None
                raise
            try:
                dest.mkdir(parents=True, exist_ok=True)
                staging = _take_spare(entry, dest)
                spare = staging is not None
                if staging is None:
                    staging = tempfile.mkdtemp(prefix=".wfc-local-", dir=dest)
                try:
                    filled = fill(tree, staging, manifest, spare=spare)
                    merge_into(staging, os.fspath(dest))
                finally:
                    shutil.rmtree(staging, ignore_errors=True)
            finally:
                os.close(tree)
        finally:
            os.close(entry)
        self._spare_later(name, manifest)
        return filled

    def _spare_later(self, name: str, manifest: Manifest) -> None:
        """Make the folders of the next fill now, on a thread, while the run goes on."""
        with _making_lock:
            if name in _making:
                return
            _making.add(name)

        def make() -> None:
            try:
                self._make_spare(name, manifest)
            finally:
                with _making_lock:
                    _making.discard(name)

        threading.Thread(target=make, name="wfc-local-spare").start()

    def _make_spare(self, name: str, manifest: Manifest) -> None:
        """Add a spare set of folders to the entry unless it has enough (nothing followed)."""
        try:
            entry = os.open(self.root / name, _DIR)
        except OSError:
            return
        try:
            with contextlib.suppress(FileExistsError):
                os.mkdir(_SPARES, 0o700, dir_fd=entry)
            spares = os.open(_SPARES, _DIR, dir_fd=entry)
        except OSError:
            os.close(entry)
            return
        try:
            if len(os.listdir(spares)) >= _SPARE_COUNT:
                return
            staging = tempfile.mkdtemp(prefix=".tmp-spare-", dir=self.root)
            try:
                make_spare(manifest, staging)
                os.rename(staging, secrets.token_hex(8), dst_dir_fd=spares)
            except OSError as exc:  # the entry went away, or the disk is full: no spare
                log.debug("no spare folders for %s: %s", name, exc)
                shutil.rmtree(staging, ignore_errors=True)
        except OSError:
            return
        finally:
            os.close(spares)
            os.close(entry)

    def populate(self, digest: str, file_bytes: int, unpack: Unpack) -> bool:
        """Build the entry of ``digest`` with ``unpack(tree)`` unless it is here; True if it is.

        False when the entry would not fit, another process holds it longer than
        :attr:`wait`, or the disk refused it (each leaves nothing behind).
        ``unpack``'s own errors other than ``OSError`` propagate: a corrupt archive
        is the caller's business.
        """
        name = _entry_name(digest)
        if name is None or file_bytes > self.max_bytes:
            return False
        with self._locked(name) as held:
            if not held:
                return False
            if (self.root / name).is_dir():
                return True
            built = self._build(name, digest, unpack)
        if built:
            self.evict(keep=name)
        return built

    def _build(self, name: str, digest: str, unpack: Unpack) -> bool:
        """Unpack into a private folder, record its manifest, move it into place (lock held)."""
        try:
            staging = tempfile.mkdtemp(prefix=".tmp-", dir=self.root)
        except OSError as exc:
            log.warning("cannot keep a local copy of %s: %s", digest, exc)
            return False
        try:
            tree = Path(staging) / "tree"
            stats = unpack(tree)
            private = self._learned(name)
            manifest = scan(os.fspath(tree), digest, stats.files, stats.bytes, private)
            _write_new(Path(staging) / "manifest.json", manifest.to_json())
            os.makedirs(Path(staging) / _SPARES / "first", 0o700)
            make_spare(manifest, os.fspath(Path(staging) / _SPARES / "first"))
            os.rename(staging, self.root / name)
        except (OSError, TreeChanged) as exc:
            shutil.rmtree(staging, ignore_errors=True)
            log.warning("cannot keep a local copy of %s: %s", digest, exc)
            return False
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return True

    def entries(self) -> dict[str, int]:
        """``{digest: file bytes}`` of the complete entries, by the size their manifest records."""
        found = {}
        for name in self._names():
            size = self._bytes(name)
            if size is not None:
                found[f"sha256:{name}"] = size
        return found

    def evict(self, keep: str | None = None) -> None:
        """Drop the least recently used entries until the rest fit in :attr:`max_bytes`."""
        try:
            lock = os.open(self.root / ".lock", _LOCK, 0o600)
        except OSError:
            return
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self._remove_stale()
            used: list[tuple[int, str, int]] = []
            for name in self._names():
                size = self._bytes(name)
                if size is None:
                    self._drop_if_free(name)
                    continue
                with contextlib.suppress(FileNotFoundError):
                    used.append((os.stat(self.root / name).st_mtime_ns, name, size))
            total = sum(size for _, _, size in used)
            for _, name, size in sorted(used):
                if total <= self.max_bytes:
                    break
                if name != keep and self._drop_if_free(name):
                    total -= size
        finally:
            os.close(lock)

    def _names(self) -> list[str]:
        try:
            return [n for n in os.listdir(self.root) if _ENTRY.match(n)]
        except FileNotFoundError:
            return []

    def _bytes(self, name: str) -> int | None:
        try:
            entry = os.open(self.root / name, _DIR)
        except OSError:
            return None
        try:
            return _read_manifest(entry, f"sha256:{name}").file_bytes
        except (OSError, ValueError):
            return None
        finally:
            os.close(entry)

    def _drop_if_free(self, name: str) -> bool:
        """Drop an entry no process is filling from or building; True if it went."""
        with self._locked(name, wait=0.0) as held:
            if held:
                self._drop(name)
            return held

    def _drop(self, name: str) -> None:
        """Move the entry aside in one rename, then delete it (its holder has its lock)."""
        try:
            trash = tempfile.mkdtemp(prefix=".tmp-drop-", dir=self.root)
            os.rename(self.root / name, Path(trash) / name)
        except OSError as exc:
            log.warning("cannot drop local entry %s: %s", name, exc)
            return
        shutil.rmtree(trash, ignore_errors=True)

    def _remove_stale(self) -> None:
        horizon = time.time() - _STALE_SECONDS
        with os.scandir(self.root) as entries:
            for entry in entries:
                if not entry.name.startswith(".tmp-"):
                    continue
                with contextlib.suppress(OSError):
                    if entry.stat(follow_symlinks=False).st_mtime < horizon:
                        shutil.rmtree(entry.path, ignore_errors=True)

    def _learned(self, name: str) -> frozenset[str]:
        """Files runs were seen writing in place in an earlier copy of this entry."""
        try:
            fd = os.open(self.root / f"{name}.private", _READ)
        except OSError:
            return frozenset()
        try:
            raw = os.read(fd, _PRIVATE_LIMIT + 1)
        finally:
            os.close(fd)
        try:
            paths_ = json.loads(raw) if len(raw) <= _PRIVATE_LIMIT else None
        except (UnicodeDecodeError, json.JSONDecodeError):
            paths_ = None
        if not isinstance(paths_, list) or not all(isinstance(p, str) for p in paths_):
            log.warning("ignoring the unreadable list of privately copied files of %s", name)
            return frozenset()
        return frozenset(paths_)

    def _learn(self, name: str, path: str) -> None:
        """Remember that runs write ``path`` in place: later copies of the entry copy it."""
        known = sorted(self._learned(name) | {path})
        payload = json.dumps(known).encode()
        if len(payload) > _PRIVATE_LIMIT:
            return
        temporary = self.root / f".tmp-{name}.private.{os.getpid()}"
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
            _write_new(temporary, payload)
            os.replace(temporary, self.root / f"{name}.private")
        except OSError as exc:
            log.warning("cannot record privately copied files of %s: %s", name, exc)

    @contextlib.contextmanager
    def _locked(self, name: str, wait: float | None = None) -> Iterator[bool]:
        """Hold ``<name>.lock``; yields False when another process kept it past ``wait`` s."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.root / f"{name}.lock", _LOCK, 0o600)
        except OSError as exc:
            log.warning("cannot use the local store %s: %s", self.root, exc)
            yield False
            return
        try:
            deadline = time.monotonic() + (self.wait if wait is None else wait)
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        yield False
                        return
                    time.sleep(_POLL)
            yield True
        finally:
            os.close(fd)  # closing releases the lock


def _take_spare(entry: int, dest: Path) -> str | None:
    """Move one spare set of folders of the entry into ``dest``; None when there is none."""
    try:
        spares = os.open(_SPARES, _DIR, dir_fd=entry)
    except OSError:
        return None
    try:
        for spare in os.listdir(spares):
            staging = f"{dest}/.wfc-local-{secrets.token_hex(8)}"
            try:
                os.rename(spare, staging, src_dir_fd=spares)
            except OSError:  # taken by another process, or on another file system
                continue
            if os.path.isdir(staging) and not os.path.islink(staging):
                return staging
            with contextlib.suppress(OSError):
                os.unlink(staging)
        return None
    finally:
        os.close(spares)


def _entry_name(digest: str) -> str | None:
    found = _DIGEST.match(digest)
    return found.group(1) if found else None


def _read_manifest(entry: int, digest: str) -> Manifest:
    try:
        fd = os.open("manifest.json", _READ, dir_fd=entry)
    except OSError as exc:
        raise ValueError(f"the manifest cannot be opened: {exc.strerror}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError("the manifest is not a regular file")
        chunks = []
        left = MANIFEST_LIMIT + 1
        while left > 0 and (chunk := os.read(fd, min(left, 1 << 20))):
            chunks.append(chunk)
            left -= len(chunk)
    finally:
        os.close(fd)
    raw = b"".join(chunks)
    if len(raw) > MANIFEST_LIMIT:
        raise ValueError("the manifest is too large")
    return parse_manifest(raw, digest)


def _write_new(path: Path, data: bytes) -> None:
    fd = os.open(path, _NEW, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)
