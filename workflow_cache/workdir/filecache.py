"""Restoring and saving the cached files of working directories: one archive per entry.

Where an entry lives is :mod:`.entrykey`; listing and deleting entries is
:mod:`.catalog`, which :class:`FileCache` extends with the two operations a run
needs.

How entries stay immutable while still expiring: every save writes a new archive
under a name nobody else uses, then publishes ``entry.json`` (JSON, never pickle)
with "create only if absent" semantics. ``entry.json`` names the archive and
records ``created_at``. Nothing is ever rewritten in place: an entry found
expired (by the ttl of the *current* spec, passed to every restore) or corrupt
is deleted, pointer first, and the next save publishes a fresh pair. Two savers
racing for one key both upload an archive, but only one ``entry.json`` can be
created; the loser deletes its archive and reports "already saved".

A worker keeps what it saved or restored unpacked in its local store
(:mod:`.localstore`), so the next restore of the same archive links files
instead of unpacking it; the archive stays the truth and is read when the store
cannot serve.

Everything read back from storage is untrusted (see docs/trust.md): a restore
reads no more than the recorded archive size and writes no more than the
recorded file bytes (plus a small margin) and the configured cap, and a bad
entry is a miss with one warning and is removed.
"""

from __future__ import annotations

import contextlib
import logging
import stat
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO, cast

from workflow_cache import paths, settings, signing
from workflow_cache.workdir import entrydoc
from workflow_cache.workdir.archive import ArchiveError, ArchiveStats
from workflow_cache.workdir.archive_extract import Limits, unpack
from workflow_cache.workdir.archive_write import pack
from workflow_cache.workdir.catalog import EntryCatalog, EntryInfo
from workflow_cache.workdir.entrykey import POINTER, EntryKey, new_archive_name
from workflow_cache.workdir.hashing import HashingReader, HashingWriter
from workflow_cache.workdir.localstore import LocalStore
from workflow_cache.workdir.patterns import match_files, validate_patterns
from workflow_cache.workdir.safefs import UnsafePathError
from workflow_cache.workdir.storage import Storage
from workflow_cache.workdir.usage import record_restore

# EntryKey and EntryInfo live in .entrykey and .catalog; they stay importable from
# here, where code and docs have always imported them.
__all__ = [
    "CacheRestoreWarning",
    "EntryInfo",
    "EntryKey",
    "FileCache",
    "RestoreResult",
    "SaveResult",
]

log = logging.getLogger(__name__)

_FORMAT = entrydoc.FORMAT
_CLOCK_SKEW = timedelta(days=1)

Clock = Callable[[], datetime]
ProgressFactory = Callable[[str, int | None], Callable[[int], None]]


class CacheRestoreWarning(UserWarning):
    """A cache entry could not be restored; the run goes on as a cache miss."""


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


class FileCache(EntryCatalog):
    """Restore and save the cached files of working directories in a :class:`Storage`."""

    def __init__(
        self,
        url: str | None = None,
        *,
        clock: Clock | None = None,
        progress_factory: ProgressFactory | None = None,
        max_restore_bytes: int | None = None,
        local_store: LocalStore | bool | None = True,
        **storage_options: Any,
    ) -> None:
        """``url`` None means the local folder :func:`workflow_cache.paths.files_dir`.

        ``progress_factory(label, total_bytes)`` returns a callable fed byte deltas.
        ``max_restore_bytes`` caps the file bytes one restore writes (default
        ``$WORKFLOW_CACHE_MAX_RESTORE_BYTES`` or 10 GiB). ``local_store`` True
        means the worker's store the settings configure (:mod:`.localstore`);
        False or None, none.
        """
        super().__init__(
            Storage(url if url is not None else str(paths.files_dir()), **storage_options)
        )
        self._clock = clock or (lambda: datetime.now(UTC))
        self._progress_factory = progress_factory
        self.max_restore_bytes = max_restore_bytes or settings.current().max_restore_bytes
        if local_store is True:
            local_store = LocalStore.configured()
        self.local_store: LocalStore | None = local_store or None
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
            entry = self.read_entry(key.name)
        except FileNotFoundError:
            return RestoreResult(hit=False, reason="missing", seconds=time.perf_counter() - start)
        except (ValueError, UnsafePathError) as exc:
            self._warn(f"cache entry {key.name!r} has unusable metadata ({exc}); removing it")
            self.delete_quietly(key.name)
            return RestoreResult(hit=False, reason="corrupt", seconds=time.perf_counter() - start)
        except OSError as exc:
            self._warn(f"cannot read cache entry {key.name!r}: {exc}")
            return RestoreResult(hit=False, reason="corrupt", seconds=time.perf_counter() - start)

        now = self.now()
        if entry.created_at > now + _CLOCK_SKEW:
            self._warn(f"cache entry {key.name!r} was created in the future; removing it")
            self.delete_quietly(key.name)
            return self._corrupt(start, entry)
        if ttl is not None and now - entry.created_at >= ttl:
            self.remove_entry(entry)
            return RestoreResult(
                hit=False,
                reason="expired",
                seconds=time.perf_counter() - start,
                created_at=entry.created_at,
            )
        progress = self._progress(f"restore {entry.name}", entry.bytes)
        try:
            stats = self._from_local_store(entry, Path(root), progress)
            if stats is None:
                stats = self._unpack(entry, Path(root), progress, verify=signing.enabled())
        except (ArchiveError, FileNotFoundError, UnsafePathError) as exc:
            self._warn(f"cache entry {entry.name!r} is corrupt ({exc}); removing it")
            self.remove_entry(entry)
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

    def save(
        self, key: EntryKey, root: Path, patterns: list[str], ttl: timedelta | None = None
    ) -> SaveResult:
        """Archive the files of ``root`` matching ``patterns`` as the entry of ``key``.

        An entry that already exists is kept ("already saved"): restore removes
        expired ones first, so a save after an expired restore does write.
        ``ttl``, the flow's at save time, is recorded for ``cache prune``.
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
        archive = new_archive_name(created_at)
        progress = None
        if self._progress_factory is not None:
            progress = self._progress_factory(f"save {key.name}", _total_size(Path(root), found))

        def write(dest: BinaryIO) -> tuple[ArchiveStats, int, str]:
            counted = HashingWriter(dest)
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
            "ttl": None if ttl is None else ttl.total_seconds(),
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
        self._keep_locally(key, f"sha256:{digest}")
        return SaveResult(
            saved=True,
            reason="saved",
            files=stats.files,
            bytes=stats.bytes,
            seconds=time.perf_counter() - start,
        )

    def _unpack(
        self, entry: EntryInfo, root: Path, progress: Callable[[int], None] | None, *, verify: bool
    ) -> ArchiveStats:
        """Extract the entry's archive into ``root``, within the bounds its entry.json records."""
        cap = self.max_restore_bytes
        limits = Limits(
            file_bytes=min(cap, entry.bytes + _margin(entry.bytes)),
            stream_bytes=cap + _margin(cap),
        )
        with self.storage.open_read(f"{entry.name}/{entry.archive}") as raw:
            src = HashingReader(raw, entry.size + _margin(entry.size), verify)
            check = (lambda: src.check(entry.digest)) if verify else None
            try:
                return unpack(
                    cast(BinaryIO, src), root, progress=progress, limits=limits, check=check
                )
            finally:
                src.close()

    def _from_local_store(
        self, entry: EntryInfo, root: Path, progress: Callable[[int], None] | None
    ) -> ArchiveStats | None:
        """Fill ``root`` from the worker's local store, unpacking the archive there first.

        None when the store cannot serve the entry: the caller unpacks the
        archive into ``root`` as if there were no store. What goes into the
        store is always checked against the archive's digest, signed or not.
        """
        store, digest = self.local_store, entry.digest
        if store is None or digest is None:
            return None
        started = time.perf_counter()
        filled = store.fill(
            digest,
            root,
            unpack=lambda tree: self._unpack(entry, tree, progress, verify=True),
            file_bytes=entry.bytes,
        )
        if filled is None:
            return None
        return ArchiveStats(filled.files, filled.bytes, time.perf_counter() - started)

    def _keep_locally(self, key: EntryKey, digest: str) -> None:
        """After a save, unpack the new archive into the local store for the next run here."""
        if self.local_store is None:
            return
        try:
            entry = self.read_entry(key.name)
            if entry.digest == digest:
                self.local_store.populate(
                    digest, entry.bytes, lambda tree: self._unpack(entry, tree, None, verify=True)
                )
        except Exception as exc:  # the entry is saved; only the next restore here is slower
            log.warning("cannot keep a local copy of %s: %s", key.name, exc)

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
