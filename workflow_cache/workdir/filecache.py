"""Cache entries of working directories: one archive per (namespace, flow, task[, content]).

Layout in storage, per entry (names are percent-encoded segments)::

    <namespace>/<flow>/<task>[/@<content>]/entry.json
    <namespace>/<flow>/<task>[/@<content>]/archive-<created>-<random>.tar.zst

How entries stay immutable while still expiring: every save writes a new archive
under a name nobody else uses, then publishes ``entry.json`` (JSON, never pickle)
with "create only if absent" semantics. ``entry.json`` names the archive and
records ``created_at``. Nothing is ever rewritten in place: an entry found
expired (by the ttl of the *current* spec, passed to every restore) or corrupt
is deleted, pointer first, and the next save publishes a fresh pair. Two savers
racing for one key both upload an archive, but only one ``entry.json`` can be
created; the loser deletes its archive and reports "already saved".

Everything read back from storage is untrusted (see docs/trust.md):
``entry.json`` is parsed by :mod:`~workflow_cache.workdir.entrydoc` (bounds,
and a signature when keys are configured), a restore reads no more than the
recorded archive size and writes no more than the recorded file bytes (plus a
small margin) and the configured cap, and a bad entry is a miss with one
warning and is removed.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import os
import queue
import re
import stat
import threading
import time
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, cast
from urllib.parse import quote, unquote

from workflow_cache import paths, signing
from workflow_cache.trust_config import max_restore_bytes as default_max_restore_bytes
from workflow_cache.workdir import entrydoc
from workflow_cache.workdir.archive import ArchiveError, ArchiveStats
from workflow_cache.workdir.archive_extract import Limits, unpack
from workflow_cache.workdir.archive_write import pack
from workflow_cache.workdir.patterns import match_files, validate_patterns
from workflow_cache.workdir.safefs import UnsafePathError
from workflow_cache.workdir.storage import Storage
from workflow_cache.workdir.usage import marker_time, record_restore

log = logging.getLogger(__name__)

POINTER = "entry.json"
_FORMAT = entrydoc.FORMAT
_ARCHIVE_NAME = re.compile(r"archive-[A-Za-z0-9._-]{1,200}\.tar\.zst")

_CLOCK_SKEW = timedelta(days=1)

Clock = Callable[[], datetime]
ProgressFactory = Callable[[str, int | None], Callable[[int], None]]


class CacheRestoreWarning(UserWarning):
    """A cache entry could not be restored; the run goes on as a cache miss."""


@dataclass(frozen=True)
class EntryKey:
    """Which entry a working directory uses; ``content`` optionally hashes lock files."""

    namespace: str
    flow: str
    task: str
    content: str | None = None

    def __post_init__(self) -> None:
        for name in ("namespace", "flow", "task"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ValueError(f"cache key {name} must be a non-empty string, got {value!r}")
        if self.content is not None and (not isinstance(self.content, str) or not self.content):
            raise ValueError(f"cache key content must be a non-empty string, got {self.content!r}")

    def with_files(self, root: Path, files: list[str]) -> EntryKey:
        """This key with ``content`` = sha256 over the names and bytes of ``files`` in ``root``.

        A change to ``package-lock.json`` then selects a different entry.
        """
        digest = hashlib.sha256()
        for name in sorted(files):
            pure = PurePosixPath(name)
            if not name or pure.is_absolute() or ".." in pure.parts:
                raise ValueError(f"cache key file {name!r} must be a path inside the folder")
            try:
                with open(Path(root) / pure, "rb") as handle:
                    size = os.fstat(handle.fileno()).st_size
                    # Name and length first, so no two file lists hash alike.
                    digest.update(pure.as_posix().encode() + b"\0" + size.to_bytes(8, "big"))
                    while chunk := handle.read(1 << 20):
                        digest.update(chunk)
            except FileNotFoundError:
                raise FileNotFoundError(f"cache key file {name!r} not found in {root}") from None
        return replace(self, content=digest.hexdigest())

    @property
    def name(self) -> str:
        """The entry's folder in storage, e.g. ``dev/my_flow/working_dir``."""
        parts = [_segment(self.namespace), _segment(self.flow), _segment(self.task)]
        if self.content is not None:
            parts.append("@" + _segment(self.content))
        return "/".join(parts)


@dataclass
class RestoreResult:
    hit: bool
    reason: str  # "restored" | "missing" | "expired" | "corrupt"
    files: int = 0
    bytes: int = 0
    seconds: float = 0.0
    created_at: datetime | None = None


@dataclass
class SaveResult:
    saved: bool
    reason: str  # "saved" | "nothing matched" | "already saved"
    files: int = 0
    bytes: int = 0
    seconds: float = 0.0


@dataclass
class EntryInfo:
    key: EntryKey
    created_at: datetime
    size: int  # compressed archive bytes in storage
    files: int
    name: str
    bytes: int = 0  # file bytes before compression
    archive: str = ""
    patterns: list[str] = field(default_factory=list)
    digest: str | None = None  # "sha256:<hex>" of the archive's bytes


class FileCache:
    """Restore and save the cached files of working directories in a :class:`Storage`."""

    def __init__(
        self,
        url: str | None = None,
        *,
        clock: Clock | None = None,
        progress_factory: ProgressFactory | None = None,
        max_restore_bytes: int | None = None,
        **storage_options: Any,
    ) -> None:
        """``url`` None means the local folder :func:`workflow_cache.paths.files_dir`.

        ``progress_factory(label, total_bytes)`` returns a callable fed byte deltas.
        ``max_restore_bytes`` caps the file bytes one restore writes (default
        ``$WORKFLOW_CACHE_MAX_RESTORE_BYTES`` or 10 GiB).
        """
        self.storage = Storage(
            url if url is not None else str(paths.files_dir()), **storage_options
        )
        self._clock = clock or (lambda: datetime.now(UTC))
        self._progress_factory = progress_factory
        self.max_restore_bytes = max_restore_bytes or default_max_restore_bytes()
        signing.signing_keys()  # a bad key setting is an error now, not a corrupt entry later

    def now(self) -> datetime:
        moment = self._clock()
        return moment if moment.tzinfo else moment.replace(tzinfo=UTC)

    def restore(self, key: EntryKey, root: Path, ttl: timedelta | None) -> RestoreResult:
        """Unpack the entry of ``key`` into ``root`` unless it is missing, expired or corrupt.

        Every failure is a miss with a warning, and leaves ``root`` untouched.
        """
        start = time.perf_counter()
        try:
            entry = self._read_pointer(key.name)
        except FileNotFoundError:
            return RestoreResult(hit=False, reason="missing", seconds=time.perf_counter() - start)
        except (ValueError, UnsafePathError) as exc:
            self._warn(f"cache entry {key.name!r} has unusable metadata ({exc}); removing it")
            self._delete_quietly(key.name)
            return RestoreResult(hit=False, reason="corrupt", seconds=time.perf_counter() - start)
        except OSError as exc:
            self._warn(f"cannot read cache entry {key.name!r}: {exc}")
            return RestoreResult(hit=False, reason="corrupt", seconds=time.perf_counter() - start)

        now = self.now()
        if entry.created_at > now + _CLOCK_SKEW:
            self._warn(f"cache entry {key.name!r} was created in the future; removing it")
            self._delete_quietly(key.name)
            return self._corrupt(start, entry)
        if ttl is not None and now - entry.created_at >= ttl:
            self._remove(entry)
            return RestoreResult(
                hit=False,
                reason="expired",
                seconds=time.perf_counter() - start,
                created_at=entry.created_at,
            )
        progress = self._progress(f"restore {entry.name}", entry.bytes)
        cap = self.max_restore_bytes
        limits = Limits(
            file_bytes=min(cap, entry.bytes + _margin(entry.bytes)),
            stream_bytes=cap + _margin(cap),
        )
        try:
            with self.storage.open_read(f"{entry.name}/{entry.archive}") as raw:
                verify = signing.enabled()
                src = _Reading(raw, entry.size + _margin(entry.size), verify)
                check = (lambda: src.check(entry.digest)) if verify else None
                try:
                    stats = unpack(src, Path(root), progress=progress, limits=limits, check=check)
                finally:
                    src.close()
        except (ArchiveError, FileNotFoundError, UnsafePathError) as exc:
            self._warn(f"cache entry {entry.name!r} is corrupt ({exc}); removing it")
            self._remove(entry)
            return self._corrupt(start, entry)
        except OSError as exc:
            self._warn(f"cannot restore cache entry {entry.name!r}: {exc}")
            return self._corrupt(start, entry)
        record_restore(self.storage, entry.name, self.now())  # for least-recently-restored
        return RestoreResult(
            hit=True,
            reason="restored",
            files=stats.files,
            bytes=stats.bytes,
            seconds=time.perf_counter() - start,
            created_at=entry.created_at,
        )

    def save(self, key: EntryKey, root: Path, patterns: list[str]) -> SaveResult:
        """Archive the files of ``root`` matching ``patterns`` as the entry of ``key``.

        An entry that already exists is kept ("already saved"): restore removes
        expired ones first, so a save after an expired restore does write.
        """
        start = time.perf_counter()
        patterns = validate_patterns(patterns)
        pointer = f"{key.name}/{POINTER}"
        if self.storage.exists(pointer):
            return SaveResult(
                saved=False, reason="already saved", seconds=time.perf_counter() - start
            )
        found = match_files(Path(root), patterns)
        if not found:
            return SaveResult(
                saved=False, reason="nothing matched", seconds=time.perf_counter() - start
            )

        created_at = self.now()
        archive = f"archive-{created_at:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:16]}.tar.zst"
        progress = None
        if self._progress_factory is not None:
            progress = self._progress_factory(f"save {key.name}", _total_size(Path(root), found))

        def write(dest: BinaryIO) -> tuple[ArchiveStats, int, str]:
            counted = _Counting(dest)
            stats = pack(Path(root), found, cast(BinaryIO, counted), progress=progress)
            return stats, counted.count, counted.digest.hexdigest()

        stats, size, digest = self.storage.publish(f"{key.name}/{archive}", write)
        document = {
            "v": _FORMAT,
            "key": {
                "namespace": key.namespace,
                "flow": key.flow,
                "task": key.task,
                "content": key.content,
            },
            "created_at": created_at.isoformat(),
            "archive": archive,
            "size": size,
            "files": stats.files,
            "bytes": stats.bytes,
            "patterns": patterns,
            "digest": f"sha256:{digest}",
        }
        try:
            payload = entrydoc.build(key.name, document)
            published = self.storage.create(pointer, lambda dest: dest.write(payload))
        except BaseException:  # an archive without its pointer would never be seen again
            with contextlib.suppress(Exception):
                self.storage.delete(f"{key.name}/{archive}")
            raise
        if not published.created:
            self.storage.delete(f"{key.name}/{archive}")
            return SaveResult(
                saved=False, reason="already saved", seconds=time.perf_counter() - start
            )
        return SaveResult(
            saved=True,
            reason="saved",
            files=stats.files,
            bytes=stats.bytes,
            seconds=time.perf_counter() - start,
        )

    def entries(self, prefix: str = "") -> list[EntryInfo]:
        """Entries under ``prefix`` (whole segments: ``dev`` or ``dev/my_flow``), by name."""
        found = []
        for name in self.storage.list(_prefix(prefix)):
            if name.rsplit("/", 1)[-1] != POINTER:
                continue
            try:
                found.append(self._read_pointer(name[: -len(POINTER) - 1]))
            except FileNotFoundError:
                continue  # deleted while we listed
            except (ValueError, OSError) as exc:  # one bad entry never hides the others
                log.warning("skipping cache entry %s: %s", name, exc)
        return found

    def show(self, key_or_name: EntryKey | str) -> EntryInfo | None:
        """One entry by key or by name (as in :attr:`EntryInfo.name`); None if absent."""
        if isinstance(key_or_name, EntryKey):
            name = key_or_name.name
        else:
            name = key_or_name.strip("/").removesuffix(f"/{POINTER}")
        try:
            return self._read_pointer(name)
        except FileNotFoundError:
            return None

    def delete(self, key: EntryKey) -> bool:
        """Remove the entry of ``key`` (not entries with other content); True if it existed."""
        return self.delete_name(key.name)

    def delete_name(self, name: str) -> bool:
        """Remove the entry stored at ``name`` (as in :attr:`EntryInfo.name`); True if it existed.

        Only that folder's ``entry.json`` and archives are removed, whatever the
        pointer says inside.
        """
        folder = name.strip("/").removesuffix(f"/{POINTER}")
        parts = folder.split("/")
        if not 3 <= len(parts) <= 4 or "" in parts or (len(parts) == 4 and parts[3][:1] != "@"):
            raise ValueError(
                f"cache entry name {name!r} is not namespace/flow/task or "
                "namespace/flow/task/@content "
                "(see 'workflow-cache cache list')"
            )
        names = [n for n in self.storage.list(f"{folder}/") if "/" not in n[len(folder) + 1 :]]
        pointer = f"{folder}/{POINTER}"
        if pointer not in names and self.storage.exists(pointer):
            names.append(pointer)  # not a regular file (a FIFO, a symlink): remove it too
        return self._delete_names(names) > 0

    def delete_prefix(self, prefix: str) -> int:
        """Remove every entry under ``prefix`` (whole segments); return how many.

        A prefix with no segment (``""``, ``/``, ``//``) is refused: use :meth:`clear`.
        """
        storage_prefix = _prefix(prefix.strip())
        parts = [p for p in prefix.strip().strip("/").split("/") if p]
        if not storage_prefix or any(p in (".", "..") or not p.strip() for p in parts):
            raise ValueError(
                f"cache prefix {prefix!r} names no namespace; give one like 'dev' or "
                "'dev/my_flow' (deleting everything is clear())"
            )
        return self._delete_names(self.storage.list(storage_prefix))

    def clear(self) -> int:
        """Remove every entry in this storage; return how many."""
        return self._delete_names(self.storage.list(""))

    def _delete_names(self, names: list[str]) -> int:
        """Delete entry files among ``names``: pointers, then archives, then restore markers."""
        pointers = [n for n in names if _entry_file(n) == POINTER]
        archives = [n for n in names if _entry_file(n) == "archive"]
        for name in pointers:  # an entry without its archive must never be visible
            self._delete_quietly_file(name)
        for name in archives:
            self._delete_quietly_file(name)
        for name in names:  # last-restore markers mean nothing without their entry
            if _entry_file(name) == "marker":
                self._delete_quietly_file(name)
        return len(pointers)

    def _delete_quietly_file(self, name: str) -> None:
        try:
            self.storage.delete(name)
        except OSError as exc:
            log.warning("cannot remove %s from cache storage: %s", name, exc)

    def _delete_quietly(self, folder: str) -> None:
        try:
            self.delete_name(folder)
        except (OSError, ValueError) as exc:
            log.warning("cannot remove cache entry %s: %s", folder, exc)

    def _read_pointer(self, name: str) -> EntryInfo:
        with self.storage.open_read(f"{name}/{POINTER}") as handle:
            raw = handle.read(entrydoc.MAX_DOCUMENT_BYTES + 1)
        document = entrydoc.parse(name, raw)
        key = EntryKey(**document.key.model_dump())
        if key.name != name:
            raise entrydoc.EntryError(
                f"entry.json describes {key.name!r}, not the entry it is stored as"
            )
        return EntryInfo(
            key=key,
            created_at=document.created_at,
            size=document.size,
            files=document.files,
            name=name,
            bytes=document.bytes,
            archive=document.archive,
            patterns=list(document.patterns),
            digest=document.digest,
        )

    def _remove(self, entry: EntryInfo) -> None:
        self._delete_quietly_file(f"{entry.name}/{POINTER}")
        self._delete_quietly_file(f"{entry.name}/{entry.archive}")

    def _corrupt(self, start: float, entry: EntryInfo) -> RestoreResult:
        return RestoreResult(
            hit=False,
            reason="corrupt",
            seconds=time.perf_counter() - start,
            created_at=entry.created_at,
        )

    def _progress(self, label: str, total: int | None) -> Callable[[int], None] | None:
        return None if self._progress_factory is None else self._progress_factory(label, total)

    @staticmethod
    def _warn(message: str) -> None:
        log.warning("%s", message)
        warnings.warn(message, CacheRestoreWarning, stacklevel=3)


class _Counting:
    """Counts and hashes the bytes written through it: the archive's size and digest."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.count = 0
        self.digest = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.count += len(data)
        self.digest.update(data)
        return self.raw.write(data)


class _Reading:
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


def _total_size(root: Path, found: list[Path]) -> int:
    total = 0
    for rel in found:
        st = (root / rel).lstat()
        if stat.S_ISREG(st.st_mode):
            total += st.st_size
    return total


def _margin(size: int) -> int:
    """Slack allowed over a recorded size: 1/64 of it plus 1 MiB."""
    return size // 64 + (1 << 20)


def _entry_file(name: str) -> str | None:
    """``entry.json``, ``archive`` or ``marker`` (last restore) for an entry's files, else None."""
    parts = name.split("/")
    if len(parts) < 4 or len(parts) > 5 or (len(parts) == 5 and not parts[3].startswith("@")):
        return None
    if parts[-1] == POINTER:
        return POINTER
    if _ARCHIVE_NAME.fullmatch(parts[-1]):
        return "archive"
    return "marker" if marker_time(parts[-1]) is not None else None


def _segment(text: str) -> str:
    """One storage path segment: percent-encoded, never ``.``/``..``, never hidden."""
    encoded = quote(text, safe="")
    return "%2E" + encoded[1:] if encoded.startswith(".") else encoded


def _prefix(prefix: str) -> str:
    """A user prefix (``dev/my_flow``) as a storage prefix ending in ``/``, or ``""``."""
    parts = [p for p in prefix.strip("/").split("/") if p]
    encoded = [
        "@" + _segment(unquote(p[1:])) if i == 3 and p.startswith("@") else _segment(p)
        for i, p in enumerate(parts)
    ]
    # "Starts with": dev/offline matches dev/offline_node/...; dev/ only the dev namespace.
    joined = "/".join(encoded)
    return joined + "/" if joined and prefix.endswith("/") else joined
