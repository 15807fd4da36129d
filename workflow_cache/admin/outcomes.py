"""Seeing and cleaning stored step outcomes, in Redis (one namespace) or a LocalCache.

Listing pages through Redis with ``SCAN`` (never ``KEYS``), a bounded number of names
per call, so it is safe on a busy production server; each page returns the cursor of
the next one. Stored bytes are untrusted: an entry that is not a valid envelope is
listed with status ``invalid`` (and can be deleted), never a traceback.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from workflow_cache.cache.keys import escape_glob
from workflow_cache.cache.local import LocalCache
from workflow_cache.cache.redis import RedisCache
from workflow_cache.envelope import Envelope

__all__ = ["LocalOutcomes", "OutcomeInfo", "Outcomes", "Page", "RedisOutcomes", "Stats"]

_SUFFIXES = ("out", "lock", "epoch", "queued")
_STEP_SUFFIXES = {"out", "lock", "queued"}


@dataclass
class OutcomeInfo:
    """One step key as an operator sees it."""

    key: str
    status: str
    """``ok``, ``err``, ``running`` (claimed, no outcome yet), ``queued`` or ``invalid``."""
    created_at: float | None = None
    age_seconds: float | None = None
    ttl_seconds: float | None = None
    """Seconds until the outcome expires; ``None`` when it never does."""
    size: int = 0
    """Bytes of the stored envelope."""
    holder: str | None = None
    epoch: int | None = None
    lease_seconds: float | None = None
    queued: bool = False
    value: Any = None
    error: Any = None

    def to_dict(self, *, full: bool = False) -> dict[str, Any]:
        data = asdict(self)
        if not full:
            data.pop("value")
            data.pop("error")
        return data


@dataclass
class Page:
    entries: list[OutcomeInfo]
    cursor: str
    """Pass back to get the next page; ``"0"`` when the listing is complete."""


@dataclass
class Stats:
    outcomes: int = 0
    ok: int = 0
    err: int = 0
    invalid: int = 0
    running: int = 0
    without_ttl: int = 0
    bytes: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(data.pop("extra"))
        return data


def _from_raw(key: str, raw: bytes | str, now: float) -> OutcomeInfo:
    size = len(raw)
    try:
        envelope = Envelope.loads(key, raw)
    except Exception:  # untrusted bytes: whatever fails to decode is "invalid"
        return OutcomeInfo(key, "invalid", size=size)
    created = envelope.created_at or None
    return OutcomeInfo(
        key,
        envelope.status,
        created_at=created,
        age_seconds=None if created is None else max(0.0, now - created),
        size=size,
        value=envelope.value,
        error=envelope.error,
    )


class Outcomes:
    """What both stores offer; see :class:`RedisOutcomes` and :class:`LocalOutcomes`."""

    where: str

    def page(self, prefix: str = "", cursor: str = "0", count: int = 100) -> Page:
        raise NotImplementedError

    def show(self, key: str) -> OutcomeInfo | None:
        raise NotImplementedError

    def delete(self, key: str) -> bool:
        raise NotImplementedError

    def delete_prefix(self, prefix: str) -> int:
        raise NotImplementedError

    def clear(self) -> int:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def all(self, prefix: str = "", count: int = 500) -> Iterator[OutcomeInfo]:
        cursor = "0"
        while True:
            page = self.page(prefix, cursor, count)
            yield from page.entries
            cursor = page.cursor
            if cursor == "0":
                return

    def stats(self, prefix: str = "") -> Stats:
        stats = Stats()
        for info in self.all(prefix):
            if info.status == "running" or info.status == "queued":
                stats.running += 1
                continue
            stats.outcomes += 1
            stats.bytes += info.size
            if info.status in ("ok", "err", "invalid"):
                setattr(stats, info.status, getattr(stats, info.status) + 1)
            if info.ttl_seconds is None:
                stats.without_ttl += 1
        return stats


class RedisOutcomes(Outcomes):
    """Outcomes of one namespace of a Redis server (the keys ``wfc:<namespace>:{...}:*``)."""

    def __init__(self, cache: RedisCache) -> None:
        self.cache = cache
        self.client = cache.client
        self.where = repr(cache)
        self._base = f"wfc:{cache.namespace}:"

    def _split(self, name: bytes | str) -> tuple[str, str] | None:
        text = name.decode("utf-8", "replace") if isinstance(name, bytes) else name
        if not text.startswith(self._base + "{"):
            return None
        inner, sep, suffix = text[len(self._base) + 1 :].rpartition("}:")
        if not sep or suffix not in _SUFFIXES:
            return None
        return inner, suffix

    def _names(self, key: str) -> dict[str, str]:
        keys = self.cache.keyspace.for_step(key)
        return {
            "out": keys.out,
            "lock": keys.lock,
            "epoch": keys.epoch,
            "queued": _queued(keys.out),
        }

    def page(self, prefix: str = "", cursor: str = "0", count: int = 100) -> Page:
        """One ``SCAN`` call's worth of step keys starting with ``prefix``."""
        pattern = f"{escape_glob(self._base)}{{{escape_glob(prefix)}*"
        with self.cache.reaching:
            next_cursor, names = self.client.scan(int(cursor), match=pattern, count=count)
            keys: dict[str, set[str]] = {}
            for name in names:
                split = self._split(name)
                if split is not None and split[1] in _STEP_SUFFIXES:
                    keys.setdefault(split[0], set()).add(split[1])
            ordered = sorted(keys)
            # A key seen only through its lock or queued marker is listed where its
            # outcome name falls, so each step is listed once across pages.
            entries = self._describe(ordered, fetch_outcome=[("out" in keys[k]) for k in ordered])
        return Page([e for e in entries if e is not None], str(next_cursor))

    def _describe(self, keys: list[str], fetch_outcome: list[bool]) -> list[OutcomeInfo | None]:
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            names = self._names(key)
            pipe.get(names["out"])
            pipe.pttl(names["out"])
            pipe.get(names["lock"])
            pipe.pttl(names["lock"])
            pipe.exists(names["queued"])
        replies = pipe.execute()
        now = time.time()
        infos: list[OutcomeInfo | None] = []
        for i, key in enumerate(keys):
            raw, out_ttl, lock, lock_ttl, queued = replies[i * 5 : i * 5 + 5]
            if raw is not None and not fetch_outcome[i]:
                infos.append(None)  # listed on the page where SCAN returns its outcome
                continue
            if raw is not None:
                info = _from_raw(key, raw, now)
                info.ttl_seconds = out_ttl / 1000 if out_ttl is not None and out_ttl >= 0 else None
            elif lock is not None:
                info = OutcomeInfo(key, "running")
            elif queued:
                info = OutcomeInfo(key, "queued")
            else:
                infos.append(None)  # gone between SCAN and the reads
                continue
            if lock is not None:
                holder, _, epoch = lock.decode("utf-8", "replace").rpartition("|")
                info.holder = holder or None
                info.epoch = int(epoch) if epoch.isdigit() else None
                info.lease_seconds = lock_ttl / 1000 if lock_ttl and lock_ttl > 0 else None
            info.queued = bool(queued)
            infos.append(info)
        return infos

    def show(self, key: str) -> OutcomeInfo | None:
        with self.cache.reaching:
            return self._describe([key], [True])[0]

    def delete(self, key: str) -> bool:
        """Delete the stored outcome (a running claim is left to its holder)."""
        return self.cache.delete(key)

    def delete_prefix(self, prefix: str) -> int:
        pattern = f"{escape_glob(self._base)}{{{escape_glob(prefix)}*"
        removed = 0
        with self.cache.reaching:
            batch: list[Any] = []
            for name in self.client.scan_iter(match=pattern, count=500):
                split = self._split(name)
                if split is not None and split[1] == "out":
                    batch.append(name)
                if len(batch) >= 500:
                    removed += self.client.unlink(*batch)
                    batch.clear()
            if batch:
                removed += self.client.unlink(*batch)
        return removed

    def clear(self) -> int:
        return self.cache.clear()

    def stats(self, prefix: str = "") -> Stats:
        stats = super().stats(prefix)
        with self.cache.reaching:
            memory = self.client.info("memory")
            try:
                policy = self.client.config_get("maxmemory-policy").get("maxmemory-policy")
            except Exception:  # CONFIG is often disabled on managed Redis
                policy = memory.get("maxmemory_policy")
        stats.extra = {
            "namespace": self.cache.namespace,
            "redis_used_memory": memory.get("used_memory"),
            "redis_maxmemory": memory.get("maxmemory"),
            "maxmemory_policy": policy,
        }
        return stats

    def close(self) -> None:
        self.cache.close()


def _queued(out: str) -> str:
    """The queued marker's name: the outcome's name with ``:queued`` for ``:out``."""
    return out[: -len("out")] + "queued"


class LocalOutcomes(Outcomes):
    """Outcomes in a :class:`LocalCache` folder (one machine)."""

    def __init__(self, cache: LocalCache) -> None:
        self.cache = cache
        self.where = repr(cache)

    def page(self, prefix: str = "", cursor: str = "0", count: int = 100) -> Page:
        """Keys in sorted order after ``cursor`` (a position in that order)."""
        start = int(cursor) if cursor.isdigit() else 0
        keys = self.cache.keys(prefix)
        chosen = keys[start : start + count]
        entries = [info for info in (self.show(k) for k in chosen) if info is not None]
        end = start + count
        return Page(entries, str(end) if end < len(keys) else "0")

    def show(self, key: str) -> OutcomeInfo | None:
        row = self.cache.row(key)
        if row is None:
            return None
        raw, expires = row
        now = time.time()
        info = _from_raw(key, raw if isinstance(raw, str | bytes) else "", now)
        if isinstance(expires, int | float):
            info.ttl_seconds = max(0.0, expires - now)
        return info

    def delete(self, key: str) -> bool:
        return self.cache.delete(key)

    def delete_prefix(self, prefix: str) -> int:
        return sum(self.cache.delete(k) for k in self.cache.keys(prefix))

    def clear(self) -> int:
        return self.cache.clear()

    def stats(self, prefix: str = "") -> Stats:
        stats = super().stats(prefix)
        stats.extra = {
            "directory": str(self.cache.directory),
            "disk_bytes": self.cache.disk_bytes(),
        }
        return stats

    def close(self) -> None:
        self.cache.close()
