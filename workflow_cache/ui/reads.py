"""What the dashboard shows, as plain JSON-ready data: one source for pages and the API.

Each page renders the dictionary that its ``/api/...`` twin returns, so the page's
script can refresh it from the API and the two never disagree. Everything here came
from Redis or the archive storage, already checked by the read models it reuses
(``admin.runs``, ``admin.outcomes``, the archive catalog); values of steps are turned
into size-limited text here and never reach a page as markup.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from typing import Any

from workflow_cache.admin.outcomes import RedisOutcomes
from workflow_cache.admin.runs import count_runs, list_runs, show_run
from workflow_cache.cache.redis import RedisCache
from workflow_cache.distributed.cancel import cancel_run
from workflow_cache.distributed.run_states import LIVE
from workflow_cache.ui.config import UiConfig
from workflow_cache.ui.formats import as_text
from workflow_cache.ui.scrape import scrape_counters
from workflow_cache.workdir.catalog import EntryInfo
from workflow_cache.workdir.entrykey import storage_prefix
from workflow_cache.workdir.filecache import FileCache
from workflow_cache.workdir.usage import marker_time

__all__ = ["PAGE_LIMIT", "Reads"]

log = logging.getLogger(__name__)

PAGE_LIMIT = 200
"""The most rows one page of runs, steps or archives holds."""
SCAN_BUDGET = 20_000
"""Step keys the overview counts at most; past it the counts say they are partial."""


def _page_size(limit: int | None, default: int = 50) -> int:
    return max(1, min(PAGE_LIMIT, default if limit is None else limit))


class Reads:
    """The dashboard's view of one namespace's runs and step outcomes and one archive storage."""

    def __init__(self, config: UiConfig, cache: RedisCache | None = None) -> None:
        self.config = config
        self.cache = cache or RedisCache(config.redis_url, namespace=config.namespace)
        self.outcomes = RedisOutcomes(self.cache)
        self.files = FileCache(config.storage)
        self._summary: tuple[float, dict[str, Any]] | None = None
        self._summary_lock = threading.Lock()

    def close(self) -> None:
        self.cache.close()

    # ------------------------------------------------------------------ overview

    def overview(self) -> dict[str, Any]:
        """Runs per state (from the index, every time) and the slower counts, reused a while."""
        return {"runs": count_runs(self.cache), **self._slow_counts()}

    def _slow_counts(self) -> dict[str, Any]:
        with self._summary_lock:
            now = time.monotonic()
            if self._summary is None or now - self._summary[0] >= self.config.summary_seconds:
                self._summary = (
                    now,
                    {
                        "steps": self._step_counts(),
                        "archives": self._archive_counts(),
                        "metrics": self._metrics(),
                    },
                )
            return self._summary[1]

    def _step_counts(self) -> dict[str, Any]:
        statuses: Counter[str] = Counter()
        stored_bytes = 0
        cursor, seen = "0", 0
        while True:
            page = self.outcomes.page("", cursor, 1000)
            for entry in page.entries:
                statuses[entry.status] += 1
                stored_bytes += entry.size
            seen += len(page.entries)
            cursor = page.cursor
            if cursor == "0" or seen >= SCAN_BUDGET:
                break
        return {
            "by_status": dict(sorted(statuses.items())),
            "bytes": stored_bytes,
            "complete": cursor == "0",
        }

    def _archive_counts(self) -> dict[str, Any]:
        try:
            entries = self.files.entries()
        except (OSError, ValueError) as exc:
            log.warning("archive storage unreadable: %s", _line(exc))
            return {"entries": None, "bytes": None, "file_bytes": None, "error": _line(exc)}
        return {
            "entries": len(entries),
            "bytes": sum(e.size for e in entries),
            "file_bytes": sum(e.bytes for e in entries),
            "error": None,
        }

    def _metrics(self) -> dict[str, Any] | None:
        if not self.config.metrics_urls:
            return None
        counters = scrape_counters(self.config.metrics_urls, self.config.namespace)
        looked = counters.hits + counters.misses
        return {
            "hits": counters.hits,
            "misses": counters.misses,
            "hit_ratio": counters.hits / looked if looked else None,
            "executions": dict(sorted(counters.executions.items())),
            "endpoints": counters.answered,
            "unreachable": counters.unreachable,
        }

    # ------------------------------------------------------------------ runs

    def runs(
        self,
        *,
        state: str | None = None,
        task: str | None = None,
        since: float | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> dict[str, Any]:
        page = list_runs(
            self.cache,
            state=state or None,
            task=task or None,
            since=since,
            limit=_page_size(limit),
            cursor=cursor or None,
        )
        return page.to_dict()  # what `workflow-cache runs list --json` prints

    def run(self, run_id: str) -> dict[str, Any] | None:
        detail = show_run(self.cache, run_id)
        if detail is None:
            return None
        data = detail.to_dict()  # what `workflow-cache runs show --json` prints, and:
        data["live"] = detail.summary.state in LIVE
        data["idle"] = not (
            detail.waiting_on_keys or detail.sleeping_until or detail.waiting_for_event
        )
        return data

    def cancel(self, run_id: str) -> bool:
        return cancel_run(self.cache, run_id, reason="cancelled from the dashboard")

    # ------------------------------------------------------------------ steps

    def steps(
        self, prefix: str = "", cursor: str = "0", limit: int | None = None
    ) -> dict[str, Any]:
        """One ``SCAN`` page of keys under ``prefix`` (it may hold fewer rows than asked)."""
        if not cursor.isdigit():
            cursor = "0"
        page = self.outcomes.page(prefix, cursor, _page_size(limit, 100))
        return {
            "steps": [entry.to_dict() for entry in page.entries],
            "next_cursor": None if page.cursor == "0" else page.cursor,
        }

    def step(self, key: str) -> dict[str, Any] | None:
        info = self.outcomes.show(key)
        if info is None:
            return None
        data = info.to_dict()
        data["value_text"] = None if info.status != "ok" else as_text(info.value)
        data["error_text"] = None if info.error is None else as_text(info.error)
        return data

    def delete_step(self, key: str) -> bool:
        return self.outcomes.delete(key)

    # ------------------------------------------------------------------ archives

    def archives(
        self, prefix: str = "", offset: int = 0, limit: int | None = None
    ) -> dict[str, Any]:
        """Entries under ``prefix`` by name, ``limit`` of them from ``offset``."""
        size = _page_size(limit)
        offset = max(0, offset)
        entries = self.files.entries(prefix)
        chosen = entries[offset : offset + size]
        restored = self._last_restores(storage_prefix(prefix))
        more = offset + size < len(entries)
        return {
            "archives": [_entry(e, restored.get(e.name)) for e in chosen],
            "total": len(entries),
            "next_offset": offset + size if more else None,
        }

    def archive(self, name: str) -> dict[str, Any] | None:
        try:
            entry = self.files.show(name)
        except ValueError as exc:  # unreadable or forged entry.json: shown as a message
            log.warning("cache entry %s unreadable: %s", name, _line(exc))
            return None
        if entry is None:
            return None
        restored = self._last_restores(f"{entry.name}/")
        data = _entry(entry, restored.get(entry.name))
        data["patterns"] = [p for p in entry.patterns if not p.startswith(".workflow-cache/")]
        data["digest"] = entry.digest
        data["archive"] = entry.archive
        return data

    def delete_archive(self, name: str) -> bool:
        return self.files.delete_name(name)

    def _last_restores(self, prefix: str) -> dict[str, float]:
        """The newest restore marker's hour of each entry folder under ``prefix``."""
        newest: dict[str, float] = {}
        for name in self.files.storage.list(prefix):
            folder, _, base = name.rpartition("/")
            moment = marker_time(base)
            if moment is not None:
                stamp = moment.timestamp()
                newest[folder] = max(stamp, newest.get(folder, stamp))
        return newest


def _entry(entry: EntryInfo, last_restore: float | None) -> dict[str, Any]:
    expires = entry.expires_at
    return {
        "name": entry.name,
        "namespace": entry.key.namespace,
        "flow": entry.key.flow,
        "task": entry.key.task,
        "created_at": entry.created_at.timestamp(),
        "expires_at": None if expires is None else expires.timestamp(),
        "files": entry.files,
        "bytes": entry.bytes,
        "size": entry.size,
        "last_restore": last_restore,
    }


def _line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__
