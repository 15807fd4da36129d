"""Where a working directory's cache entry lives in storage: its key and its files' names.

Layout in storage, per entry (names are percent-encoded segments)::

    <namespace>/<flow>/<task>[/@<content>]/entry.json
    <namespace>/<flow>/<task>[/@<content>]/archive-<created>-<random>.tar.zst

plus the last-restore markers of :mod:`~workflow_cache.workdir.usage`.
"""

from __future__ import annotations

import hashlib
import os
import re
import uuid
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Final, Literal
from urllib.parse import quote, unquote

from workflow_cache.workdir.usage import marker_time

__all__ = ["POINTER", "EntryKey", "entry_file", "new_archive_name", "storage_prefix"]

POINTER: Final = "entry.json"
_ARCHIVE_NAME = re.compile(r"archive-[A-Za-z0-9._-]{1,200}\.tar\.zst")

EntryFile = Literal["entry.json", "archive", "marker"]


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


def new_archive_name(created_at: datetime) -> str:
    """A name no other save uses: the archive is written once and never overwritten."""
    return f"archive-{created_at:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:16]}.tar.zst"


def entry_file(name: str) -> EntryFile | None:
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


def storage_prefix(prefix: str) -> str:
    """A user prefix (``dev/my_flow``) as a storage prefix ending in ``/``, or ``""``."""
    parts = [p for p in prefix.strip("/").split("/") if p]
    encoded = [
        "@" + _segment(unquote(p[1:])) if i == 3 and p.startswith("@") else _segment(p)
        for i, p in enumerate(parts)
    ]
    # "Starts with": dev/offline matches dev/offline_node/...; dev/ only the dev namespace.
    joined = "/".join(encoded)
    return joined + "/" if joined and prefix.endswith("/") else joined
