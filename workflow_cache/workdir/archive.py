"""What the working-directory archives are: a plain ``.tar.zst``, and what one went through.

tar keeps what a restored ``venv`` or ``node_modules/.bin`` needs (modes, exec
bits, symlinks, mtimes); zstd compresses it on all cores. Both ends stream: the
archive is never held in memory, whatever its size, and the result is a plain
``.tar.zst`` that ``tar -I zstd`` reads too.

The writer is :mod:`.archive_write`, the forward-only tar reader
:mod:`.archive_read`, and the extractor that treats an archive as hostile
:mod:`.archive_extract`. This module holds what they share.
"""

from __future__ import annotations

import tarfile
from collections.abc import Callable
from dataclasses import dataclass

__all__ = [
    "CHUNK",
    "ENCODING",
    "TAR_BLOCK",
    "TAR_RECORD",
    "ArchiveError",
    "ArchiveStats",
    "Progress",
]

Progress = Callable[[int], None]
"""Fed the number of file bytes just archived or restored (a delta)."""

CHUNK = 1 << 20
"""Writes to the compressor, reads from the decompressor and file copies move 1 MiB at a time."""
TAR_BLOCK = tarfile.BLOCKSIZE
TAR_RECORD = tarfile.RECORDSIZE
ENCODING = "utf-8"
"""Member names are UTF-8; undecodable bytes round-trip as surrogate escapes."""


@dataclass(frozen=True)
class ArchiveStats:
    """What went through an archive: entries that are not directories, their bytes, time."""

    files: int
    bytes: int
    seconds: float


class ArchiveError(Exception):
    """An archive that cannot be written or is corrupt, truncated or hostile."""
