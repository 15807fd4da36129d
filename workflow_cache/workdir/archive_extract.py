"""Extracting an archive into a folder, treating it as hostile.

Members go first into a fresh staging folder inside ``root``. Every member
passes Python's ``data`` filter (which also sets the safe mode and drops
ownership) and checks of our own: no absolute names, no ``..``, nothing written
through a symlink (a member whose parent path is a symlink is refused), no
existing path reused, no devices or fifos, hard links only to regular files
extracted before them. Files are created with ``O_EXCL | O_NOFOLLOW`` and
written with a single ``open``/``write`` each. Only when the whole stream has
been read and verified (tar end marker, zstd checksum, and the caller's own
check such as a signed digest) is the staging folder moved into ``root``; any
failure leaves ``root`` as it was. :class:`Limits` bound what one archive may
expand to, so a small archive of zeros cannot fill the disk.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import zstandard

from workflow_cache.workdir.archive import CHUNK, ArchiveError, ArchiveStats, Progress
from workflow_cache.workdir.archive_read import TarStream

__all__ = ["Limits", "merge_into", "unpack"]

_MAX_TRAILER = 1 << 20  # bytes allowed after the tar end marker (record padding)
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
# Failures of the machine, not of the archive: these propagate as they are.
_ENVIRONMENT_ERRORS = {
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EACCES,
    errno.EPERM,
    errno.EROFS,
    errno.EIO,
    errno.EFBIG,
}


@dataclass(frozen=True)
class Limits:
    """The most one extraction may produce; beyond either bound it stops with ArchiveError.

    ``file_bytes`` bounds the bytes of the files written, ``stream_bytes`` the
    uncompressed tar stream (headers of empty files and folders included).
    """

    file_bytes: int
    stream_bytes: int


def unpack(
    src: BinaryIO,
    root: Path,
    *,
    progress: Progress | None = None,
    limits: Limits | None = None,
    check: Callable[[], None] | None = None,
) -> ArchiveStats:
    """Extract an archive written by :func:`~.archive_write.pack` into ``root`` (created if needed).

    Entries already in ``root`` are replaced by the archive's; directories merge.
    Raises :class:`ArchiveError` for corrupt, truncated or hostile input, or
    input beyond ``limits``, in which case nothing was added to ``root``.
    ``check`` runs once the whole of ``src`` has been read and before anything
    reaches ``root``; it raises to refuse the archive.
    """
    start = time.perf_counter()
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".wfc-unpack-", dir=root)
    try:
        try:
            extractor = _Extractor(staging, progress, limits)
            extractor.run(src)
            if check is not None:
                check()
        except (tarfile.TarError, zstandard.ZstdError, EOFError) as exc:
            raise ArchiveError(f"corrupt or truncated archive: {exc}") from exc
        except OSError as exc:
            if exc.errno in _ENVIRONMENT_ERRORS:
                raise
            raise ArchiveError(f"cannot extract archive: {exc}") from exc
        merge_into(staging, os.fspath(root))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ArchiveStats(extractor.files, extractor.bytes, time.perf_counter() - start)


class _Extractor:
    """Extracts one archive into a fresh staging folder, refusing anything unsafe."""

    def __init__(self, staging: str, progress: Progress | None, limits: Limits | None) -> None:
        self.staging = staging
        self.progress = progress
        self.limits = limits
        self.files = 0
        self.bytes = 0
        self.symlinks: set[str] = set()  # archive symlinks: nothing may go through them
        self.folders: set[str] = {""}  # folders known to exist in staging
        self.directories: list[tuple[str, int]] = []  # (path, mtime), set at the end
        self.modes: dict[tuple[bytes, int], int] = {}  # data filter's mode per kind

    def run(self, src: BinaryIO) -> None:
        reader = zstandard.ZstdDecompressor().stream_reader(src, read_size=CHUNK, closefd=False)
        with reader:
            stream = TarStream(reader, None if self.limits is None else self.limits.stream_bytes)
            while (member := stream.next()) is not None:
                self.extract(stream, member)
            if stream.trailer(_MAX_TRAILER) > _MAX_TRAILER:
                raise ArchiveError("corrupt archive: unexpected data after the end marker")
        for path, mtime in reversed(self.directories):
            os.utime(path, (mtime, mtime), follow_symlinks=False)

    def extract(self, tar: TarStream, member: tarfile.TarInfo) -> None:
        name = _checked_name(member, member.name)
        if not (member.isreg() or member.isdir() or member.issym() or member.islnk()):
            raise ArchiveError(f"refusing {name!r}: special files (devices, fifos) are not allowed")
        parent, _, _ = name.rpartition("/")
        self._not_through_symlink(name, parent)
        member = self._data_filter(member)
        target = f"{self.staging}/{name}"
        self._make_folder(parent)
        if member.isreg():
            self._write_file(tar, member, target)
        elif member.isdir():
            if name not in self.folders:
                os.mkdir(target, 0o755)
                self.folders.add(name)
            self.directories.append((target, int(member.mtime)))
        elif member.issym():
            os.symlink(member.linkname, target)
            self.symlinks.add(name)
            self.files += 1
        else:
            self._hard_link(member, name, target)

    def _data_filter(self, member: tarfile.TarInfo) -> tarfile.TarInfo:
        """Apply tarfile's ``data`` filter, except that a symlink may point anywhere.

        A venv's ``bin/python -> /usr/bin/python3`` must survive; such a link is
        harmless by itself because nothing is ever written through a symlink.

        Links get the whole filter. Files and directories get its mode policy,
        asked once per (type, mode) on a stand-in member: the filter's other
        check, containment, costs two ``realpath`` walks per member (60% of the
        time to restore a venv) and is already guaranteed here by construction:
        normalised names without ``..``, no symlink on the way, a fresh folder.
        """
        try:
            if member.issym():
                harmless = member.replace(linkname=".", deep=False)
                checked = tarfile.data_filter(harmless, self.staging)
                return checked.replace(linkname=member.linkname, deep=False)
            if member.islnk():
                return tarfile.data_filter(member, self.staging)
            key = (member.type, member.mode)
            if key not in self.modes:
                stand_in = tarfile.TarInfo("stand-in")
                stand_in.type, stand_in.mode = key
                self.modes[key] = tarfile.data_filter(stand_in, self.staging).mode
        except tarfile.FilterError as exc:
            raise ArchiveError(f"refusing {member.name!r}: {exc}") from exc
        member.mode = self.modes[key]  # ownership is not kept: nothing here changes owners
        return member

    def _write_file(self, tar: TarStream, member: tarfile.TarInfo, target: str) -> None:
        if self.limits is not None and self.bytes + member.size > self.limits.file_bytes:
            raise ArchiveError(
                f"archive expands beyond the limit of {self.limits.file_bytes:,} file bytes "
                f"at {member.name!r}; not restored"
            )
        try:
            fd = os.open(target, _NEW_FILE, 0o600)
        except FileExistsError:
            raise ArchiveError(
                f"refusing {member.name!r}: it appears twice in the archive"
            ) from None
        try:
            left = member.size
            while left:
                chunk = tar.read(left)
                if not chunk:
                    raise tarfile.ReadError(f"unexpected end of data in {member.name!r}")
                left -= len(chunk)
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view) :]
            os.fchmod(fd, member.mode)
            os.utime(fd, (member.mtime, member.mtime))
        finally:
            os.close(fd)
        self.files += 1
        self.bytes += member.size
        if self.progress is not None:
            self.progress(member.size)

    def _hard_link(self, member: tarfile.TarInfo, name: str, target: str) -> None:
        link = _checked_name(member, member.linkname)
        self._not_through_symlink(name, link.rpartition("/")[0])
        try:
            is_file = stat.S_ISREG(os.lstat(f"{self.staging}/{link}").st_mode)
        except FileNotFoundError:
            is_file = False
        if link in self.symlinks or not is_file:
            raise ArchiveError(
                f"refusing hard link {name!r} -> {link!r}: the target is not a file "
                "extracted before it"
            )
        os.link(f"{self.staging}/{link}", target, follow_symlinks=False)
        self.files += 1

    def _make_folder(self, folder: str) -> None:
        if folder in self.folders:
            return
        os.makedirs(f"{self.staging}/{folder}", 0o755, exist_ok=True)
        while folder and folder not in self.folders:
            self.folders.add(folder)
            folder = folder.rpartition("/")[0]

    def _not_through_symlink(self, member: str, folder: str) -> None:
        if not self.symlinks or not folder:
            return
        parts = folder.split("/")
        for depth in range(1, len(parts) + 1):
            parent = "/".join(parts[:depth])
            if parent in self.symlinks:
                raise ArchiveError(
                    f"refusing {member!r}: it would be written through the symlink {parent!r}"
                )


def _checked_name(member: tarfile.TarInfo, name: str) -> str:
    """A member (or hard link target) name in normal form, or ArchiveError."""
    if not name or name.startswith("/") or "\\" in name or "\0" in name:
        raise ArchiveError(f"refusing {member.name!r}: absolute or malformed name {name!r}")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ArchiveError(f"refusing {member.name!r}: {name!r} leaves the folder with '..'")
    if not parts:
        raise ArchiveError(f"refusing {member.name!r}: it names the folder itself")
    return "/".join(parts)


def merge_into(source: str, dest: str) -> None:
    """Move everything from ``source`` into ``dest``: renames, so no data is copied.

    A folder filled from the local store lands in ``root`` the way an archive does.

    An existing directory merges only if it is a real directory; a symlink in
    ``dest`` is replaced, never followed.
    """
    with os.scandir(source) as entries:
        for entry in entries:
            target = f"{dest}/{entry.name}"
            try:
                existing = os.lstat(target)
            except FileNotFoundError:
                existing = None
            if existing is not None:
                if stat.S_ISDIR(existing.st_mode) and entry.is_dir(follow_symlinks=False):
                    merge_into(entry.path, target)
                    continue
                if stat.S_ISDIR(existing.st_mode):
                    shutil.rmtree(target)
                else:
                    os.unlink(target)
            os.rename(entry.path, target)
