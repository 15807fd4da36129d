"""A forward-only reader of the tar streams :func:`~.archive_write.pack` writes.

It only reads; what a member may do is judged by :mod:`.archive_extract`.
"""

from __future__ import annotations

import struct
import tarfile
from typing import BinaryIO, Self

from workflow_cache.workdir.archive import CHUNK, ENCODING, TAR_BLOCK, ArchiveError

__all__ = ["TarHeader", "TarStream"]

_USTAR = struct.Struct("100s8s8s8s12s12s8sc100s8x32s32s8s8s155s12x")
_UNUSUAL_TYPES = (tarfile.GNUTYPE_SPARSE,)


class _Unusual(Exception):
    """A header the fast parser leaves to ``tarfile`` (base-256 numbers, sparse files,
    fields that are not numbers: tarfile raises its own error for those)."""


def _octal(field: bytes) -> int:
    if field[:1] in (b"\x80", b"\xff"):
        raise _Unusual
    digits = field.split(b"\0", 1)[0].strip()
    try:
        return int(digits, 8) if digits else 0
    except ValueError:
        raise _Unusual from None


class TarHeader(tarfile.TarInfo):
    """Parses ordinary headers with one ``struct.unpack`` and C-level sums
    instead of ``TarInfo.frombuf``'s field-by-field work, which dominated unpack
    time on trees of many small files. It checks what ``frombuf`` checks and
    hands everything else (base-256 numbers, sparse files, a checksum only valid
    as signed bytes) to ``frombuf`` itself.
    """

    @classmethod
    def frombuf(cls, buf: bytes | bytearray, encoding: str, errors: str) -> Self:
        if len(buf) != TAR_BLOCK or not buf.count(0) < TAR_BLOCK:
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


class TarStream:
    """Reads the members of a tar stream written by :func:`~.archive_write.pack`, forward only.

    ``TarFile`` in stream mode re-slices a small buffer for every header and
    every file and runs a chain of methods per member; on a venv's thousands of
    small files that was most of the time spent restoring. This reader keeps
    one large buffer, parses headers with :class:`TarHeader` and hands file data
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
            chunk = self._raw.read(CHUNK)
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
            if not self._fill(TAR_BLOCK):
                raise ArchiveError("truncated archive: no end-of-archive marker")
            block = self._take(TAR_BLOCK)
            if not any(block):
                return None
            info = TarHeader.frombuf(block, ENCODING, "surrogateescape")
            if info.type in (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK):
                if not 0 < info.size <= self._MAX_LONG_NAME:
                    raise ArchiveError(f"corrupt archive: a long name of {info.size} bytes")
                text = _text(
                    self._take(_padded(info.size))[: info.size], ENCODING, "surrogateescape"
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
        data = self._take(min(size, CHUNK))
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
        while chunk := self._raw.read(CHUNK):
            count += len(chunk)
            if count > limit:
                break
        return count


def _padded(size: int) -> int:
    return -(-size // TAR_BLOCK) * TAR_BLOCK


def _text(field: bytes, encoding: str, errors: str) -> str:
    return field.split(b"\0", 1)[0].decode(encoding, errors)
