"""Streaming tar + zstd archives of a working directory's cached files.

tar keeps what a restored ``venv`` or ``node_modules/.bin`` needs (modes, exec
bits, symlinks, mtimes); zstd compresses it on all cores. Both ends stream: the
archive is never held in memory, whatever its size, and the result is a plain
``.tar.zst`` that ``tar -I zstd`` reads too.

Speed: a venv is tens of thousands of small files, so the per-file cost in
Python decides. Writing batches headers and small files into 1 MiB writes to
the compressor instead of going through ``TarFile.addfile``, and encodes
ordinary headers with one ``struct.pack`` (byte for byte what
``TarInfo.tobuf`` gives, which handles everything else). Reading uses a small
forward-only reader (``_TarStream``) with one large buffer instead of
``TarFile``'s stream mode, and writes each file with a single ``open``/``write``.

Extraction treats the archive as hostile. Members go first into a fresh staging
folder inside ``root``. Every member passes Python's ``data`` filter (which also
sets the safe mode and drops ownership) and checks of our own: no absolute
names, no ``..``, nothing written through a symlink (a member whose parent path
is a symlink is refused), no existing path reused, no devices or fifos, hard
links only to regular files extracted before them. Files are created with
``O_EXCL | O_NOFOLLOW``. Only when the whole stream has been read and verified
(tar end marker, zstd checksum, and the caller's own check such as a signed
digest) is the staging folder moved into ``root``; any failure leaves ``root``
as it was. :class:`Limits` bound what one archive may expand to, so a small
archive of zeros cannot fill the disk.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import stat
import struct
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import zstandard

log = logging.getLogger(__name__)

Progress = Callable[[int], None]

_CHUNK = 1 << 20  # writes to the compressor and file copies move 1 MiB at a time
_ZSTD_READ_SIZE = 1 << 20
_MAX_TRAILER = 1 << 20  # bytes allowed after the tar end marker (record padding)
_BLOCK = tarfile.BLOCKSIZE
_RECORD = tarfile.RECORDSIZE
_ENCODING = "utf-8"
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
class ArchiveStats:
    """What went through an archive: entries that are not directories, their bytes, time."""

    files: int
    bytes: int
    seconds: float


class ArchiveError(Exception):
    """An archive that cannot be written or is corrupt, truncated or hostile."""


@dataclass(frozen=True)
class Limits:
    """The most one extraction may produce; beyond either bound it stops with ArchiveError.

    ``file_bytes`` bounds the bytes of the files written, ``stream_bytes`` the
    uncompressed tar stream (headers of empty files and folders included).
    """

    file_bytes: int
    stream_bytes: int


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
    compressor = zstandard.ZstdCompressor(level=level, threads=threads, write_checksum=True)
    with compressor.stream_writer(dest, closefd=False) as compressed:
        writer = _TarWriter(compressed)
        base = os.fspath(root)
        for path in paths:
            writer.add(base, _member_name(path), progress)
        writer.close()
    return ArchiveStats(writer.files, writer.bytes, time.perf_counter() - start)


def _member_name(path: Path | str) -> str:
    name = os.fspath(path)
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if name.startswith("/") or ".." in parts or "\\" in name or not parts:
        raise ArchiveError(f"cannot archive {name!r}: paths must be relative and inside root")
    return "/".join(parts)


class _TarWriter:
    """Tar members in GNU format, batched into large writes to the compressor."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.buffer = bytearray()
        self.written = 0
        self.files = 0
        self.bytes = 0

    def add(self, base: str, name: str, progress: Progress | None) -> None:
        full = f"{base}/{name}"
        try:
            st = os.lstat(full)
        except FileNotFoundError:
            raise ArchiveError(f"cannot archive {name!r}: it disappeared from {base}") from None
        mode, mtime = stat.S_IMODE(st.st_mode), int(st.st_mtime)
        if stat.S_ISREG(st.st_mode):
            self.buffer += _gnu_header(name, tarfile.REGTYPE, mode, mtime, st.st_size)
            self._data(full, name, st.st_size)
            self.files += 1
            self.bytes += st.st_size
            if progress is not None:
                progress(st.st_size)
        elif stat.S_ISDIR(st.st_mode):
            self.buffer += _gnu_header(name, tarfile.DIRTYPE, mode, mtime)
        elif stat.S_ISLNK(st.st_mode):
            link = os.readlink(full)
            self.buffer += _gnu_header(name, tarfile.SYMTYPE, mode, mtime, linkname=link)
            self.files += 1
        else:
            log.warning("not caching %s: sockets, fifos and devices cannot be archived", name)
        if len(self.buffer) >= _CHUNK:
            self._flush()

    def _data(self, full: str, name: str, size: int) -> None:
        with open(full, "rb", buffering=0) as handle:
            left = size
            while left:
                chunk = handle.read(min(left, _CHUNK))
                if not chunk:
                    raise ArchiveError(f"cannot archive {name!r}: it shrank while being archived")
                left -= len(chunk)
                if len(chunk) >= _CHUNK:  # large files skip the batch buffer
                    self._flush()
                    self.out.write(chunk)
                    self.written += len(chunk)
                else:
                    self.buffer += chunk
        if size % _BLOCK:
            self.buffer += bytes(_BLOCK - size % _BLOCK)

    def _flush(self) -> None:
        if self.buffer:
            self.out.write(self.buffer)
            self.written += len(self.buffer)
            self.buffer.clear()

    def close(self) -> None:
        """Two zero blocks end the archive; pad to a whole record like tar does."""
        self.buffer += bytes(2 * _BLOCK)
        total = self.written + len(self.buffer)
        if total % _RECORD:
            self.buffer += bytes(_RECORD - total % _RECORD)
        self._flush()


# name, mode, uid, gid, size, mtime, checksum, type, linkname, magic, uname, gname,
# devmajor, devminor, prefix, padding: one 512-byte GNU tar header.
_GNU_HEADER = struct.Struct("100s8s8s8s12s12s8sc100s8s32s32s8s8s155s12x")
_MAX_OCTAL = 8**11  # what fits in a 12-byte octal field


def _gnu_header(
    name: str, kind: bytes, mode: int, mtime: int, size: int = 0, linkname: str = ""
) -> bytes:
    """The GNU tar header of one member, exactly as ``TarInfo.tobuf(GNU_FORMAT)`` makes it.

    Encoding headers is the largest Python cost of packing a venv, so ordinary
    members (names and links up to 100 bytes) take one ``struct.pack``; anything
    else goes through tarfile itself.
    """
    if kind == tarfile.DIRTYPE and not name.endswith("/"):
        name += "/"
    raw_name = name.encode(_ENCODING, "surrogateescape")
    raw_link = linkname.encode(_ENCODING, "surrogateescape")
    if (
        len(raw_name) > 100
        or len(raw_link) > 100
        or not 0 <= mtime < _MAX_OCTAL
        or size >= _MAX_OCTAL
    ):
        info = tarfile.TarInfo(name)
        info.type, info.mode, info.mtime, info.size, info.linkname = (
            kind,
            mode,
            mtime,
            size,
            linkname,
        )
        return info.tobuf(tarfile.GNU_FORMAT, _ENCODING, "surrogateescape")
    block = _GNU_HEADER.pack(
        raw_name,
        b"%07o\0" % (mode & 0o7777),
        b"0000000\0",
        b"0000000\0",
        b"%011o\0" % size,
        b"%011o\0" % mtime,
        b"        ",  # the checksum counts its own field as spaces
        kind,
        raw_link,
        tarfile.GNU_MAGIC,
        b"",
        b"",
        b"",
        b"",
        b"",
    )
    return block[:148] + b"%06o\0 " % sum(block) + block[156:]


def unpack(
    src: BinaryIO,
    root: Path,
    *,
    progress: Progress | None = None,
    limits: Limits | None = None,
    check: Callable[[], None] | None = None,
) -> ArchiveStats:
    """Extract an archive written by :func:`pack` into ``root`` (created if needed).

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
        _merge(staging, os.fspath(root))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ArchiveStats(extractor.files, extractor.bytes, time.perf_counter() - start)


_USTAR = struct.Struct("100s8s8s8s12s12s8sc100s8x32s32s8s8s155s12x")
_UNUSUAL_TYPES = (tarfile.GNUTYPE_SPARSE,)


class _Unusual(Exception):
    """A header the fast parser leaves to ``tarfile`` (base-256 numbers, sparse files)."""


def _octal(field: bytes) -> int:
    if field[:1] in (b"\x80", b"\xff"):
        raise _Unusual
    digits = field.split(b"\0", 1)[0].strip()
    try:
        return int(digits, 8) if digits else 0
    except ValueError:
        raise tarfile.InvalidHeaderError("invalid header") from None


class _Header(tarfile.TarInfo):
    """Parses ordinary headers with one ``struct.unpack`` and C-level sums
    instead of ``TarInfo.frombuf``'s field-by-field work, which dominated unpack
    time on trees of many small files. It checks what ``frombuf`` checks and
    hands everything else (base-256 numbers, sparse files, a checksum only valid
    as signed bytes) to ``frombuf`` itself.
    """

    @classmethod
    def frombuf(cls, buf: bytes, encoding: str, errors: str) -> tarfile.TarInfo:
        if len(buf) != _BLOCK or not buf.count(0) < _BLOCK:
            return super().frombuf(buf, encoding, errors)  # empty, truncated or end marker
        try:
            (
                name,
                mode,
                uid,
                gid,
                size,
                mtime,
                chksum,
                kind,
                linkname,
                uname,
                gname,
                devmajor,
                devminor,
                prefix,
            ) = _USTAR.unpack(buf)
            checksum = _octal(chksum)
            if kind in _UNUSUAL_TYPES or checksum != 256 + sum(buf) - sum(chksum):
                raise _Unusual
            numbers = [_octal(field) for field in (mode, uid, gid, size, mtime, devmajor, devminor)]
        except _Unusual:
            return super().frombuf(buf, encoding, errors)
        obj = cls()
        obj.name = _text(name, encoding, errors)
        obj.mode, obj.uid, obj.gid, obj.size, obj.mtime, obj.devmajor, obj.devminor = numbers
        obj.chksum = checksum
        obj.type = kind
        obj.linkname = _text(linkname, encoding, errors)
        obj.uname = _text(uname, encoding, errors)
        obj.gname = _text(gname, encoding, errors)
        if kind == tarfile.AREGTYPE and obj.name.endswith("/"):
            obj.type = tarfile.DIRTYPE
        if obj.isdir():
            obj.name = obj.name.rstrip("/")
        prefix_text = _text(prefix, encoding, errors)
        if prefix_text and obj.type not in tarfile.GNU_TYPES:
            obj.name = prefix_text + "/" + obj.name
        return obj


class _TarStream:
    """Reads the members of a tar stream written by :func:`pack`, forward only.

    ``TarFile`` in stream mode re-slices a small buffer for every header and
    every file and runs a chain of methods per member; on a venv's thousands of
    small files that was most of the time spent restoring. This reader keeps
    one large buffer, parses headers with :class:`_Header` and hands file data
    out in slices. It understands what ``pack`` writes (ustar/GNU headers, GNU
    long names and long link names) and refuses pax and sparse extensions with
    an :class:`ArchiveError`; everything else about a member is judged by the
    extractor, exactly as for any other archive.
    """

    _MAX_LONG_NAME = 1 << 16

    def __init__(self, raw: BinaryIO, limit: int | None = None) -> None:
        self._raw = raw
        self._limit = limit
        self._total = 0
        self._buffer = bytearray()
        self._pos = 0
        self._left = 0  # unread data bytes of the current member
        self._padding = 0  # zero bytes after them, up to the next block

    def _fill(self, need: int) -> bool:
        """Make ``need`` bytes available; False if the stream ends first."""
        while len(self._buffer) - self._pos < need:
            chunk = self._raw.read(_CHUNK)
            if not chunk:
                return False
            self._total += len(chunk)
            if self._limit is not None and self._total > self._limit:
                raise ArchiveError(
                    f"archive expands beyond the limit of {self._limit:,} bytes; not restored"
                )
            if self._pos:
                del self._buffer[: self._pos]
                self._pos = 0
            self._buffer += chunk
        return True

    def _take(self, size: int) -> bytes:
        if not self._fill(size):
            raise tarfile.ReadError("unexpected end of data")
        start = self._pos
        self._pos += size
        return bytes(self._buffer[start : self._pos])

    def next(self) -> tarfile.TarInfo | None:
        """The next member, or None at the end-of-archive marker."""
        self._skip_rest()
        long_name = long_link = None
        while True:
            if not self._fill(_BLOCK):
                raise ArchiveError("truncated archive: no end-of-archive marker")
            block = self._take(_BLOCK)
            if not any(block):
                return None
            info = _Header.frombuf(block, _ENCODING, "surrogateescape")
            if info.type in (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK):
                if not 0 < info.size <= self._MAX_LONG_NAME:
                    raise ArchiveError(f"corrupt archive: a long name of {info.size} bytes")
                text = _text(
                    self._take(_padded(info.size))[: info.size], _ENCODING, "surrogateescape"
                )
                if info.type == tarfile.GNUTYPE_LONGNAME:
                    long_name = text
                else:
                    long_link = text
                continue
            if info.type in (
                tarfile.XHDTYPE,
                tarfile.XGLTYPE,
                tarfile.SOLARIS_XHDTYPE,
                tarfile.GNUTYPE_SPARSE,
            ):
                raise ArchiveError(
                    f"unsupported archive: {info.name!r} uses a pax or sparse tar extension, "
                    "which archives written by workflow-cache never contain"
                )
            if long_name is not None:
                info.name = long_name.removesuffix("/") if info.isdir() else long_name
            if long_link is not None:
                info.linkname = long_link
            has_data = info.isreg() or info.type not in tarfile.SUPPORTED_TYPES  # as tarfile
            self._left = info.size if has_data else 0
            self._padding = _padded(self._left) - self._left
            return info

    def read(self, size: int) -> bytes:
        """Up to ``size`` bytes of the current member's data."""
        size = min(size, self._left)
        if not size:
            return b""
        data = self._take(min(size, _CHUNK))
        self._left -= len(data)
        return data

    def _skip_rest(self) -> None:
        while self._left:
            self.read(self._left)
        if self._padding:
            self._take(self._padding)
            self._padding = 0

    def trailer(self, limit: int) -> int:
        """Bytes after the end marker (read to the end so zstd verifies its checksum)."""
        count = len(self._buffer) - self._pos
        self._buffer.clear()
        self._pos = 0
        while chunk := self._raw.read(_CHUNK):
            count += len(chunk)
            if count > limit:
                break
        return count


def _padded(size: int) -> int:
    return -(-size // _BLOCK) * _BLOCK


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
        self.modes: dict[tuple[bytes, int], int | None] = {}  # data filter's mode per kind

    def run(self, src: BinaryIO) -> None:
        reader = zstandard.ZstdDecompressor().stream_reader(
            src, read_size=_ZSTD_READ_SIZE, closefd=False
        )
        with reader:
            stream = _TarStream(reader, None if self.limits is None else self.limits.stream_bytes)
            while (member := stream.next()) is not None:
                self.extract(stream, member)
            if stream.trailer(_MAX_TRAILER) > _MAX_TRAILER:
                raise ArchiveError("corrupt archive: unexpected data after the end marker")
        for path, mtime in reversed(self.directories):
            os.utime(path, (mtime, mtime), follow_symlinks=False)

    def extract(self, tar: _TarStream, member: tarfile.TarInfo) -> None:
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
        member.mode = self.modes[key]
        member.uid = member.gid = member.uname = member.gname = None  # ownership is not kept
        return member

    def _write_file(self, tar: _TarStream, member: tarfile.TarInfo, target: str) -> None:
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


def _text(field: bytes, encoding: str, errors: str) -> str:
    return field.split(b"\0", 1)[0].decode(encoding, errors)


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


def _merge(source: str, dest: str) -> None:
    """Move everything from ``source`` into ``dest``: renames, so no data is copied.

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
                    _merge(entry.path, target)
                    continue
                if stat.S_ISDIR(existing.st_mode):
                    shutil.rmtree(target)
                else:
                    os.unlink(target)
            os.rename(entry.path, target)
