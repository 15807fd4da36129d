"""When cache entries were last restored: small marker objects beside each entry.

Entries are immutable, so a restore cannot update a field in ``entry.json``. It
creates ``restored-<YYYYmmddTHH>`` in the entry's folder instead (create-if-absent,
so at most one new object per entry and hour); ``cache prune`` reads the newest one
to evict the least recently restored entries first, and removes the older ones.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import BinaryIO

from workflow_cache.workdir.storage import Storage

log = logging.getLogger(__name__)

MARKER = "restored-"
_FORMAT = "%Y%m%dT%H"


def marker_name(moment: datetime) -> str:
    return f"{MARKER}{moment.astimezone(UTC):{_FORMAT}}"


def record_restore(storage: Storage, entry_name: str, moment: datetime) -> None:
    """Note that ``entry_name`` was restored at ``moment``; a failure only logs."""

    def write(handle: BinaryIO) -> None:
        handle.write(b"")

    try:
        storage.publish(f"{entry_name}/{marker_name(moment)}", write)
    except (OSError, ValueError) as exc:
        log.debug("could not record the restore of %s: %s", entry_name, exc)


def marker_time(base: str) -> datetime | None:
    """The hour a marker's name records, or None if ``base`` is not a marker name."""
    if not base.startswith(MARKER):
        return None
    try:
        return datetime.strptime(base[len(MARKER) :], _FORMAT).replace(tzinfo=UTC)
    except ValueError:
        return None
