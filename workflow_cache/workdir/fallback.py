"""Fallback restores: start from the newest entry of the same task when the exact one is missing.

With a content key (``keyFiles: [package-lock.json]``) one added dependency
makes a new key, and without a fallback the run installs everything again.
Restoring the newest valid entry of the same (namespace, flow, task) first lets
the package manager add only what changed; the run is reported as a partial
hit and saves its own entry under the exact key afterwards.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from pathlib import Path

from workflow_cache.workdir.entrykey import EntryKey
from workflow_cache.workdir.filecache import FileCache, RestoreResult

log = logging.getLogger(__name__)

MAX_CANDIDATES = 3
"""Entries tried, newest first, before giving up: each failed try costs a read."""


def restore_fallback(
    cache: FileCache,
    key: EntryKey,
    root: Path,
    ttl: timedelta | None,
    exact: RestoreResult,
) -> RestoreResult:
    """Restore the newest valid entry of ``key``'s task other than ``key`` itself.

    Returns a hit whose ``reason`` starts with ``"fallback"``, or ``exact`` (the
    result of the exact restore) when no other entry could be restored.
    """
    task = EntryKey(key.namespace, key.flow, key.task)
    candidates = []
    for entry in cache.entries(f"{key.namespace}/{key.flow}/{key.task}"):
        # The entry's own document says which key it is; it must agree with where it lies.
        same_task = (entry.key.namespace, entry.key.flow, entry.key.task) == (
            task.namespace,
            task.flow,
            task.task,
        )
        if not same_task or entry.key.name != entry.name:
            log.warning("skipping cache entry %s: its metadata names another key", entry.name)
            continue
        if entry.key != key and (ttl is None or cache.now() < entry.created_at + ttl):
            candidates.append(entry)
    candidates.sort(key=lambda entry: entry.created_at, reverse=True)
    for entry in candidates[:MAX_CANDIDATES]:
        result = cache.restore(entry.key, root, ttl)
        if result.hit:
            result.reason = f"fallback from {entry.name}"
            return result
    return exact
