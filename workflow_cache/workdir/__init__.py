"""Cached working directories: files restored before a run and saved after it.

The file side lives here: glob patterns (:mod:`.patterns`), streaming tar + zstd
archives (:mod:`.archive`), fsspec storage (:mod:`.storage`) and cache entries
with a time-to-live (:mod:`.filecache`).
"""

from workflow_cache.workdir.archive import ArchiveError, ArchiveStats
from workflow_cache.workdir.archive_extract import unpack
from workflow_cache.workdir.archive_write import pack
from workflow_cache.workdir.filecache import (
    CacheRestoreWarning,
    EntryInfo,
    EntryKey,
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
