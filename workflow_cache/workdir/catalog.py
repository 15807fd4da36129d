"""The working-directory cache entries in one storage: read, listed and deleted, never unpacked.

``entry.json`` is parsed by :mod:`~workflow_cache.workdir.entrydoc` (bounds,
and a signature when keys are configured); one unreadable entry never hides the
others. Deleting removes pointers first, so no reader ever sees an entry
without its archive.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from workflow_cache.workdir import entrydoc
from workflow_cache.workdir.entrykey import POINTER, EntryKey, entry_file, storage_prefix
from workflow_cache.workdir.storage import Storage

__all__ = ["EntryCatalog", "EntryInfo"]

log = logging.getLogger(__name__)


@dataclass
class EntryInfo:
    key: EntryKey
    created_at: datetime
    size: int  # compressed archive bytes in storage
    files: int
    name: str
    bytes: int = 0  # file bytes before compression
    archive: str = ""
    patterns: list[str] = field(default_factory=list)
    digest: str | None = None  # "sha256:<hex>" of the archive's bytes
    ttl: timedelta | None = None  # the flow's ttl when the entry was saved

    @property
    def expires_at(self) -> datetime | None:
        """When the ttl recorded at save time runs out (``None``: saved without a ttl).

        A flow decides with its own current ``ttl`` when it restores; this is what
        ``cache prune`` and ``cache list`` go by.
        """
        return None if self.ttl is None else self.created_at + self.ttl


class EntryCatalog:
    """The entries stored in :attr:`storage`, for listing and cleaning them up."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    def entries(self, prefix: str = "") -> list[EntryInfo]:
        """Entries under ``prefix`` (whole segments: ``dev`` or ``dev/my_flow``), by name."""
        found = []
        for name in self.storage.list(storage_prefix(prefix)):
            if name.rsplit("/", 1)[-1] != POINTER:
                continue
            try:
                found.append(self.read_entry(name[: -len(POINTER) - 1]))
            except FileNotFoundError:
                continue  # deleted while we listed
            except (ValueError, OSError) as exc:  # one bad entry never hides the others
                log.warning("skipping cache entry %s: %s", name, exc)
        return found

    def show(self, key_or_name: EntryKey | str) -> EntryInfo | None:
        """One entry by key or by name (as in :attr:`EntryInfo.name`); None if absent."""
        if isinstance(key_or_name, EntryKey):
            name = key_or_name.name
        else:
            name = key_or_name.strip("/").removesuffix(f"/{POINTER}")
        try:
            return self.read_entry(name)
        except FileNotFoundError:
            return None

    def delete(self, key: EntryKey) -> bool:
        """Remove the entry of ``key`` (not entries with other content); True if it existed."""
        return self.delete_name(key.name)

    def delete_name(self, name: str) -> bool:
        """Remove the entry stored at ``name`` (as in :attr:`EntryInfo.name`); True if it existed.

        Only that folder's ``entry.json`` and archives are removed, whatever the
        pointer says inside.
        """
        folder = name.strip("/").removesuffix(f"/{POINTER}")
        parts = folder.split("/")
        if not 3 <= len(parts) <= 4 or "" in parts or (len(parts) == 4 and parts[3][:1] != "@"):
            raise ValueError(
                f"cache entry name {name!r} is not namespace/flow/task or "
                "namespace/flow/task/@content "
                "(see 'workflow-cache cache list')"
            )
        names = [n for n in self.storage.list(f"{folder}/") if "/" not in n[len(folder) + 1 :]]
        pointer = f"{folder}/{POINTER}"
        if pointer not in names and self.storage.exists(pointer):
            names.append(pointer)  # not a regular file (a FIFO, a symlink): remove it too
        return self._delete_names(names) > 0

    def delete_prefix(self, prefix: str) -> int:
        """Remove every entry under ``prefix`` (whole segments); return how many.

        A prefix with no segment (``""``, ``/``, ``//``) is refused: use :meth:`clear`.
        """
        encoded = storage_prefix(prefix.strip())
        parts = [p for p in prefix.strip().strip("/").split("/") if p]
        if not encoded or any(p in (".", "..") or not p.strip() for p in parts):
            raise ValueError(
                f"cache prefix {prefix!r} names no namespace; give one like 'dev' or "
                "'dev/my_flow' (deleting everything is clear())"
            )
        return self._delete_names(self.storage.list(encoded))

    def clear(self) -> int:
        """Remove every entry in this storage; return how many."""
        return self._delete_names(self.storage.list(""))

    def _delete_names(self, names: list[str]) -> int:
        """Delete entry files among ``names``: pointers, then archives, then restore markers."""
        pointers = [n for n in names if entry_file(n) == POINTER]
        archives = [n for n in names if entry_file(n) == "archive"]
        for name in pointers:  # an entry without its archive must never be visible
            self._delete_quietly_file(name)
        for name in archives:
            self._delete_quietly_file(name)
        for name in names:  # last-restore markers mean nothing without their entry
            if entry_file(name) == "marker":
                self._delete_quietly_file(name)
        return len(pointers)

    def _delete_quietly_file(self, name: str) -> None:
        try:
            self.storage.delete(name)
        except OSError as exc:
            log.warning("cannot remove %s from cache storage: %s", name, exc)

    def delete_quietly(self, folder: str) -> None:
        """:meth:`delete_name`, logging instead of raising: for entries found unusable."""
        try:
            self.delete_name(folder)
        except (OSError, ValueError) as exc:
            log.warning("cannot remove cache entry %s: %s", folder, exc)

    def read_entry(self, name: str) -> EntryInfo:
        """The entry stored at ``name`` from its ``entry.json``, checked (bounds, signature,
        and that it describes this very entry); FileNotFoundError if it has none."""
        with self.storage.open_read(f"{name}/{POINTER}") as handle:
            raw = handle.read(entrydoc.MAX_DOCUMENT_BYTES + 1)
        document = entrydoc.parse(name, raw)
        key = EntryKey(**document.key.model_dump())
        if key.name != name:
            raise entrydoc.EntryError(
                f"entry.json describes {key.name!r}, not the entry it is stored as"
            )
        return EntryInfo(
            key=key,
            created_at=document.created_at,
            size=document.size,
            files=document.files,
            name=name,
            bytes=document.bytes,
            archive=document.archive,
            patterns=list(document.patterns),
            digest=document.digest,
            ttl=None if document.ttl is None else timedelta(seconds=document.ttl),
        )

    def remove_entry(self, entry: EntryInfo) -> None:
        """Remove an entry found expired or corrupt: its pointer, then the archive it names."""
        self._delete_quietly_file(f"{entry.name}/{POINTER}")
        self._delete_quietly_file(f"{entry.name}/{entry.archive}")
