"""Streaming tar + zstd archives of a working directory's cached files.

tar keeps what a restored ``venv`` or ``node_modules/.bin`` needs (modes, exec
bits, symlinks, mtimes); zstd compresses it on all cores. Both ends stream: the
archive is never held in memory, whatever its size.

Extraction treats the archive as hostile. Members go first into a fresh staging
folder inside ``root`` through Python's ``data`` filter plus checks of our own:
no absolute names, no ``..``, nothing written through a symlink, no devices or
fifos, hard links only to files already extracted. Only when the whole stream
has been read and verified (tar end marker, zstd checksum) is the staging folder
moved into ``root``; any failure leaves ``root`` as it was.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import stat
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

import zstandard

log = logging.getLogger(__name__)

Progress = Callable[[int], None]

_COPY_BUFSIZE = 1 << 20  # file data moves in 1 MiB chunks
_STREAM_BUFSIZE = 64 * 1024  # tarfile's own stream buffer (small writes are concatenated)
_ZSTD_READ_SIZE = 1 << 20
_MAX_TRAILER = 1 << 20  # bytes allowed after the tar end marker (record padding)
# Failures of the machine, not of the archive: these propagate as they are.
_ENVIRONMENT_ERRORS = {
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EACCES,
    errno.EPERM,
    errno.EROFS,
    errno.EIO,
}


@dataclass(frozen=True)
class ArchiveStats:
    """What went through an archive: entries that are not directories, their bytes, time."""

    files: int
    bytes: int
    seconds: float


class ArchiveError(Exception):
    """An archive that cannot be written or is corrupt, truncated or hostile."""


def pack(
    root: Path,
    paths: list[Path],
    dest: BinaryIO,
    *,
    progress: Progress | None = None,
    level: int = 3,
    threads: int = -1,
) -> ArchiveStats:
    """Write ``paths`` (relative to ``root``) to ``dest`` as one tar stream in one zstd frame.

    ``progress`` gets the number of file bytes just archived (a delta). Sockets,
    fifos and devices are skipped with a warning: they cannot be restored anyway.
    ``threads=-1`` uses every core; ``dest`` is left open.
    """
    start = time.perf_counter()
    root_text = os.fspath(root)
    files = total = 0
    compressor = zstandard.ZstdCompressor(level=level, threads=threads, write_checksum=True)
    with (
        compressor.stream_writer(dest, closefd=False) as compressed,
        tarfile.open(
            fileobj=compressed,
            mode="w|",
            format=tarfile.GNU_FORMAT,
            bufsize=_STREAM_BUFSIZE,
            copybufsize=_COPY_BUFSIZE,
        ) as tar,
    ):
        for path in paths:
            name = _member_name(path)
            full = os.path.join(root_text, name)
            try:
                st = os.lstat(full)
            except FileNotFoundError:
                raise ArchiveError(f"cannot archive {name!r}: it disappeared from {root}") from None
            info = tarfile.TarInfo(name)
            info.mode = stat.S_IMODE(st.st_mode)
            info.mtime = int(st.st_mtime)
            if stat.S_ISREG(st.st_mode):
                info.size = st.st_size
                with open(full, "rb") as handle:
                    tar.addfile(info, handle)
                files += 1
                total += st.st_size
                if progress is not None:
                    progress(st.st_size)
            elif stat.S_ISDIR(st.st_mode):
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif stat.S_ISLNK(st.st_mode):
                info.type = tarfile.SYMTYPE
                info.linkname = os.readlink(full)
                tar.addfile(info)
                files += 1
            else:
                log.warning("not caching %s: sockets, fifos and devices cannot be archived", name)
    return ArchiveStats(files=files, bytes=total, seconds=time.perf_counter() - start)


def _member_name(path: Path | str) -> str:
    name = PurePosixPath(path).as_posix()
    parts = PurePosixPath(name).parts
    if not parts or name.startswith("/") or ".." in parts or name == ".":
        raise ArchiveError(f"cannot archive {str(path)!r}: paths must be relative and inside root")
    return name


def unpack(src: BinaryIO, root: Path, *, progress: Progress | None = None) -> ArchiveStats:
    """Extract an archive written by :func:`pack` into ``root`` (created if needed).

    Entries already in ``root`` are replaced by the archive's; directories merge.
    Raises :class:`ArchiveError` for corrupt, truncated or hostile input, in which
    case nothing was added to ``root``.
    """
    start = time.perf_counter()
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".wfc-unpack-", dir=root))
    try:
        try:
            files, total = _extract(src, staging, progress)
        except (tarfile.TarError, zstandard.ZstdError, EOFError) as exc:
            raise ArchiveError(f"corrupt or truncated archive: {exc}") from exc
        except OSError as exc:
            if exc.errno in _ENVIRONMENT_ERRORS:
                raise
            raise ArchiveError(f"cannot extract archive: {exc}") from exc
        _merge(staging, root)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ArchiveStats(files=files, bytes=total, seconds=time.perf_counter() - start)


class _Header(tarfile.TarInfo):
    """Remembers why a tar stream ended: only a zero block is a real end marker."""

    @classmethod
    def fromtarfile(cls, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:
        try:
            return super().fromtarfile(tarfile_)
        except tarfile.HeaderError as exc:
            tarfile_.wfc_end = exc  # type: ignore[attr-defined]
            raise


def _extract(src: BinaryIO, staging: Path, progress: Progress | None) -> tuple[int, int]:
    reader = zstandard.ZstdDecompressor().stream_reader(
        src, read_size=_ZSTD_READ_SIZE, closefd=False
    )
    guard = _Guard(staging)
    files = total = 0
    directories: list[tarfile.TarInfo] = []
    with (
        reader,
        tarfile.open(
            fileobj=reader,
            mode="r|",
            bufsize=_STREAM_BUFSIZE,
            copybufsize=_COPY_BUFSIZE,
            tarinfo=_Header,
            errorlevel=2,
        ) as tar,
    ):
        while (member := tar.next()) is not None:
            # Stream mode keeps every header it has read; we need none of them back.
            tar.members.clear()
            member = guard.check(member)
            if member.isdir():
                tar.extract(member, staging, set_attrs=False, filter=guard.filter)
                directories.append(member)
            elif member.islnk():
                (staging / member.name).parent.mkdir(parents=True, exist_ok=True)
                os.link(staging / member.linkname, staging / member.name, follow_symlinks=False)
                files += 1
            else:
                tar.extract(member, staging, filter=guard.filter)
                files += 1
                if member.isreg():
                    total += member.size
                    if progress is not None:
                        progress(member.size)
        end = getattr(tar, "wfc_end", None)
        if not isinstance(end, tarfile.EOFHeaderError):
            raise ArchiveError(f"truncated archive: no end-of-archive marker ({end})")
        # Read to the end of the zstd frame so that its checksum is verified.
        trailer = 0
        while chunk := tar.fileobj.read(_COPY_BUFSIZE):
            trailer += len(chunk)
            if trailer > _MAX_TRAILER:
                raise ArchiveError("corrupt archive: unexpected data after the end marker")
    for member in reversed(directories):
        os.utime(staging / member.name, (member.mtime, member.mtime), follow_symlinks=False)
    return files, total


class _Guard:
    """Our checks on top of tarfile's ``data`` filter, with the state they need."""

    def __init__(self, staging: Path) -> None:
        self.staging = staging
        self.symlinks: set[str] = set()

    def check(self, member: tarfile.TarInfo) -> tarfile.TarInfo:
        name = self._name(member, member.name)
        if not (member.isreg() or member.isdir() or member.issym() or member.islnk()):
            raise ArchiveError(f"refusing {name!r}: special files (devices, fifos) are not allowed")
        self._not_through_symlink(name, name)
        target = self.staging / name
        if os.path.lexists(target) and not (member.isdir() and target.is_dir()):
            raise ArchiveError(f"refusing {name!r}: it appears twice in the archive")
        if member.islnk():
            link = self._name(member, member.linkname)
            self._not_through_symlink(name, link)
            try:
                st = os.lstat(self.staging / link)
            except FileNotFoundError:
                st = None
            if st is None or not stat.S_ISREG(st.st_mode):
                raise ArchiveError(
                    f"refusing hard link {name!r} -> {link!r}: the target is not a file "
                    "extracted before it"
                )
            member = self.filter(member, os.fspath(self.staging))
        if member.issym():
            self.symlinks.add(name)
        return member.replace(name=name, deep=False) if name != member.name else member

    def filter(self, member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo:
        """tarfile's ``data`` filter, except that a symlink may point anywhere.

        A venv's ``bin/python -> /usr/bin/python3`` must survive; such a link is
        harmless by itself because nothing is ever written through a symlink.
        """
        if member.issym():
            checked = tarfile.data_filter(member.replace(linkname=".", deep=False), dest)
            return checked.replace(linkname=member.linkname, deep=False)
        return tarfile.data_filter(member, dest)

    @staticmethod
    def _name(member: tarfile.TarInfo, name: str) -> str:
        pure = PurePosixPath(name)
        if not name or pure.is_absolute() or "\\" in name or "\0" in name:
            raise ArchiveError(f"refusing {member.name!r}: absolute or malformed name {name!r}")
        if ".." in pure.parts:
            raise ArchiveError(f"refusing {member.name!r}: {name!r} leaves the folder with '..'")
        normal = pure.as_posix()
        if normal == ".":
            raise ArchiveError(f"refusing {member.name!r}: it names the folder itself")
        return normal

    def _not_through_symlink(self, member: str, name: str) -> None:
        if not self.symlinks:
            return
        parts = name.split("/")
        for depth in range(1, len(parts)):
            parent = "/".join(parts[:depth])
            if parent in self.symlinks:
                raise ArchiveError(
                    f"refusing {member!r}: it would be written through the symlink {parent!r}"
                )


def _merge(source: Path, dest: Path) -> None:
    """Move everything from ``source`` into ``dest``: renames, so no data is copied.

    An existing directory merges only if it is a real directory; a symlink in
    ``dest`` is replaced, never followed.
    """
    with os.scandir(source) as entries:
        for entry in entries:
            target = dest / entry.name
            try:
                existing = os.lstat(target)
            except FileNotFoundError:
                existing = None
            if existing is not None:
                if stat.S_ISDIR(existing.st_mode) and entry.is_dir(follow_symlinks=False):
                    _merge(Path(entry.path), target)
                    continue
                if stat.S_ISDIR(existing.st_mode):
                    shutil.rmtree(target)
                else:
                    os.unlink(target)
            os.rename(entry.path, target)
