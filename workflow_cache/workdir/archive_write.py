"""Writing a working directory's files as one tar stream in one zstd frame.

Speed: a venv is tens of thousands of small files, so the per-file cost in
Python decides. Writing batches headers and small files into 1 MiB writes to
the compressor instead of going through ``TarFile.addfile``, and encodes
ordinary headers with one ``struct.pack`` (byte for byte what
``TarInfo.tobuf`` gives, which handles everything else).
"""

from __future__ import annotations

import logging
import os
import stat
import struct
import tarfile
import time
from pathlib import Path
from typing import BinaryIO

import zstandard

from workflow_cache.workdir.archive import (
    CHUNK,
    ENCODING,
    TAR_BLOCK,
    TAR_RECORD,
    ArchiveError,
    ArchiveStats,
    Progress,
)

__all__ = ["gnu_header", "pack"]

log = logging.getLogger(__name__)


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
            self.buffer += gnu_header(name, tarfile.REGTYPE, mode, mtime, st.st_size)
            self._data(full, name, st.st_size)
            self.files += 1
            self.bytes += st.st_size
            if progress is not None:
                progress(st.st_size)
        elif stat.S_ISDIR(st.st_mode):
            self.buffer += gnu_header(name, tarfile.DIRTYPE, mode, mtime)
        elif stat.S_ISLNK(st.st_mode):
            link = os.readlink(full)
            self.buffer += gnu_header(name, tarfile.SYMTYPE, mode, mtime, linkname=link)
            self.files += 1
        else:
            log.warning("not caching %s: sockets, fifos and devices cannot be archived", name)
        if len(self.buffer) >= CHUNK:
            self._flush()

    def _data(self, full: str, name: str, size: int) -> None:
        with open(full, "rb", buffering=0) as handle:
            left = size
            while left:
                chunk = handle.read(min(left, CHUNK))
                if not chunk:
                    raise ArchiveError(f"cannot archive {name!r}: it shrank while being archived")
                left -= len(chunk)
                if len(chunk) >= CHUNK:  # large files skip the batch buffer
                    self._flush()
                    self.out.write(chunk)
                    self.written += len(chunk)
                else:
                    self.buffer += chunk
        if size % TAR_BLOCK:
            self.buffer += bytes(TAR_BLOCK - size % TAR_BLOCK)

    def _flush(self) -> None:
        if self.buffer:
            self.out.write(self.buffer)
            self.written += len(self.buffer)
            self.buffer.clear()

    def close(self) -> None:
        """Two zero blocks end the archive; pad to a whole record like tar does."""
        self.buffer += bytes(2 * TAR_BLOCK)
        total = self.written + len(self.buffer)
        if total % TAR_RECORD:
            self.buffer += bytes(TAR_RECORD - total % TAR_RECORD)
        self._flush()


# name, mode, uid, gid, size, mtime, checksum, type, linkname, magic, uname, gname,
# devmajor, devminor, prefix, padding: one 512-byte GNU tar header.
_GNU_HEADER = struct.Struct("100s8s8s8s12s12s8sc100s8s32s32s8s8s155s12x")
_MAX_OCTAL = 8**11  # what fits in a 12-byte octal field


def gnu_header(
    name: str, kind: bytes, mode: int, mtime: int, size: int = 0, linkname: str = ""
) -> bytes:
    """The GNU tar header of one member, exactly as ``TarInfo.tobuf(GNU_FORMAT)`` makes it.

    Encoding headers is the largest Python cost of packing a venv, so ordinary
    members (names and links up to 100 bytes) take one ``struct.pack``; anything
    else goes through tarfile itself.
    """
    if kind == tarfile.DIRTYPE and not name.endswith("/"):
        name += "/"
    raw_name = name.encode(ENCODING, "surrogateescape")
    raw_link = linkname.encode(ENCODING, "surrogateescape")
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
        return info.tobuf(tarfile.GNU_FORMAT, ENCODING, "surrogateescape")
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
