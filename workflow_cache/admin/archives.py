"""``cache prune``: expired entries, orphaned archives, and a size cap on archive storage.

Run as often as you like (a cron job, a CI step): it only removes

* entries whose ``ttl`` (the flow's, recorded when they were saved) has passed, and
  entries older than ``max_age`` (their flows would find them expired anyway),
* archives that no ``entry.json`` names and that are older than ``grace`` (what a
  crashed or losing saver left behind; younger ones may belong to a save in flight),
* restore markers that are stale or whose entry is gone, and
* while the entries' archives add up to more than ``max_bytes``, the least recently
  restored entry (or created, if never restored), as hosted CI caches do.

Entries are removed pointer first, so a reader never sees an entry without its archive.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from workflow_cache.workdir.catalog import EntryInfo
from workflow_cache.workdir.entrykey import POINTER
from workflow_cache.workdir.filecache import FileCache
from workflow_cache.workdir.usage import marker_time

__all__ = ["PruneReport", "prune"]

_ARCHIVE = "archive-"


@dataclass
class PruneReport:
    expired: list[str] = field(default_factory=list)
    evicted: list[str] = field(default_factory=list)
    corrupt: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)
    """Object names of removed archives and markers that no entry owns."""
    freed_bytes: int = 0
    kept_entries: int = 0
    kept_bytes: int = 0
    dry_run: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Folder:
    pointer: bool = False
    archives: list[str] = field(default_factory=list)
    markers: list[str] = field(default_factory=list)


def prune(
    cache: FileCache,
    *,
    max_age: timedelta | None = None,
    max_bytes: int | None = None,
    grace: timedelta = timedelta(hours=1),
    dry_run: bool = False,
    now: datetime | None = None,
) -> PruneReport:
    """Remove what the options say (nothing with ``dry_run``, which only reports)."""
    now = now or cache.now()
    storage = cache.storage
    report = PruneReport(dry_run=dry_run)
    folders: dict[str, _Folder] = defaultdict(_Folder)
    for name in storage.list(""):
        folder, _, base = name.rpartition("/")
        if base == POINTER:
            folders[folder].pointer = True
        elif base.startswith(_ARCHIVE):
            folders[folder].archives.append(name)
        elif marker_time(base) is not None:
            folders[folder].markers.append(name)

    def remove(names: list[str]) -> None:
        if not dry_run:
            for name in names:  # callers put the pointer first
                storage.delete(name)

    def size_of(name: str) -> int:
        try:
            return int(storage.info(name).get("size") or 0)
        except (OSError, ValueError):
            return 0

    live: list[tuple[datetime, EntryInfo, list[str]]] = []
    for folder, found in sorted(folders.items()):
        entry: EntryInfo | None = None
        if found.pointer:
            try:
                entry = cache.show(folder)
            except (OSError, ValueError, KeyError, TypeError):
                entry = None
            if entry is None or f"{folder}/{entry.archive}" not in found.archives:
                # unreadable, or naming an archive that is not there: never restorable
                report.corrupt.append(folder)
                report.freed_bytes += sum(size_of(a) for a in found.archives)
                remove([f"{folder}/{POINTER}", *found.archives, *found.markers])
                continue
        owned = f"{folder}/{entry.archive}" if entry else None
        stale = [a for a in found.archives if a != owned and _age(a, now) >= grace]
        report.freed_bytes += sum(size_of(a) for a in stale)
        times = {m: marker_time(m.rpartition("/")[2]) for m in found.markers}
        newest = max((t for t in times.values() if t is not None), default=None)
        old_markers = [
            m
            for m, t in times.items()
            if entry is None or t != newest or (t is not None and t < _hour(entry.created_at))
        ]
        report.orphans.extend(stale + old_markers)
        remove(stale + old_markers)
        if entry is None:
            continue
        outlived = entry.expires_at is not None and now >= entry.expires_at
        if outlived or (max_age is not None and now - entry.created_at >= max_age):
            report.expired.append(folder)
            report.freed_bytes += entry.size
            remove([f"{folder}/{POINTER}", f"{folder}/{entry.archive}", *times])
            continue
        used = max(entry.created_at, newest) if newest else entry.created_at
        kept_markers = [m for m in times if m not in old_markers]
        names = [f"{folder}/{POINTER}", f"{folder}/{entry.archive}", *kept_markers]
        live.append((used, entry, names))

    total = sum(entry.size for _, entry, _ in live)
    live.sort(key=lambda item: (item[0], item[1].name))
    for _used, entry, names in live:
        if max_bytes is None or total <= max_bytes:
            break
        report.evicted.append(entry.name)
        report.freed_bytes += entry.size
        total -= entry.size
        remove(names)
    report.kept_entries = len(live) - len(report.evicted)
    report.kept_bytes = total
    return report


def _hour(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def _age(archive: str, now: datetime) -> timedelta:
    """Age from the archive's name (``archive-<YYYYmmddTHHMMSS>-<random>...``)."""
    stamp = archive.rpartition("/")[2][len(_ARCHIVE) :].partition("-")[0]
    try:
        created = datetime.strptime(stamp, "%Y%m%dT%H%M%S").replace(tzinfo=UTC)
    except ValueError:
        return timedelta.max  # not a name the cache writes: nobody is saving it
    return now - created
