"""What a Redis cache records, blocking or async: metrics and debug lines of lookups,
and of claims a span from claim to commit or release with the commit's metrics."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from workflow_cache import metrics, tracing
from workflow_cache.cache.protocol import Done
from workflow_cache.envelope import Envelope

__all__ = ["ClaimRecord", "record_acquire", "record_lookup"]

log = logging.getLogger("workflow_cache.cache.redis")


def record_lookup(namespace: str, keys: Sequence[str], rows: Sequence[Any]) -> None:
    """The hits and misses of one read of ``keys`` (``rows``: None where missing)."""
    hits = sum(raw is not None for raw in rows)
    metrics.lookup(namespace, hits, len(rows) - hits)
    debug = log.isEnabledFor(logging.DEBUG)
    traced = hits and tracing.recording()
    if debug or traced:
        for key, raw in zip(keys, rows, strict=True):
            if traced and raw is not None:
                tracing.hit(key, namespace)
            if debug:
                found = "hit" if raw is not None else "miss"
                log.debug("step %s: %s in namespace %s", found, key, namespace)


def record_acquire(namespace: str, started: float, got: Any) -> None:
    """The metrics of one ``acquire`` that began at ``started`` and returned ``got``."""
    waited = time.perf_counter() - started
    done = isinstance(got, Done)
    # Epoch keys are deleted at commit, so a claim with epoch > 1 follows one that
    # ended without an outcome: its holder crashed or gave the key back.
    takeover = not done and got.epoch > 1
    metrics.claim_acquired(namespace, waited, waited=done, takeover=takeover)


class ClaimRecord:
    """What a claim records, blocking or async: a span from claim to commit or release,
    and the commit's metrics."""

    def __init__(self, key: str, epoch: int, namespace: str) -> None:
        self.key = key
        self.namespace = namespace
        self._started = time.perf_counter()
        self._span = tracing.start(
            key, namespace, **{"workflow_cache.epoch": epoch, "workflow_cache.hit": False}
        )

    def committed(self, envelope: Envelope, *, accepted: bool, keep: bool) -> bool:
        seconds = time.perf_counter() - self._started
        metrics.commit(self.namespace, envelope.status, seconds, accepted=accepted)
        tracing.end(self._span, status=envelope.status, committed=accepted, stored=keep)
        self._span = None
        return accepted

    def released(self) -> None:
        tracing.end(self._span, released=True)
        self._span = None
