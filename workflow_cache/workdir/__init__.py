"""Cached working directories: files restored before a run and saved after it.

The file side lives here: glob patterns (:mod:`.patterns`), streaming tar + zstd
archives (:mod:`.archive`, written by :mod:`.archive_write`, extracted by
:mod:`.archive_extract`), fsspec storage (:mod:`.storage`) and cache entries
with a time-to-live (:mod:`.filecache`; their layout :mod:`.entrykey`, listing
and deleting :mod:`.catalog`).
"""

from workflow_cache.workdir.archive import ArchiveError, ArchiveStats
from workflow_cache.workdir.archive_extract import unpack
from workflow_cache.workdir.archive_write import pack
from workflow_cache.workdir.catalog import EntryInfo
from workflow_cache.workdir.entrykey import EntryKey
from workflow_cache.workdir.filecache import (
    CacheRestoreWarning,
    FileCache,
    RestoreResult,
    SaveResult,
)
from workflow_cache.workdir.patterns import PatternError, match_files, validate_patterns
from workflow_cache.workdir.storage import Published, Storage

__all__ = [
    "ArchiveError",
    "ArchiveStats",
    "CacheRestoreWarning",
    "EntryInfo",
    "EntryKey",
    "FileCache",
    "PatternError",
    "Published",
    "RestoreResult",
    "SaveResult",
    "Storage",
    "match_files",
    "pack",
    "unpack",
    "validate_patterns",
]
