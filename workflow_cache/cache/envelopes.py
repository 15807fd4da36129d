"""Outcomes read back from Redis are checked before use: with signing on, an unsigned,
forged or wrongly keyed one is a miss with one warning, removed only if it is still
the same bytes, so the step runs and stores a signed outcome.

The blocking and the asyncio cache share these steps; each only performs them.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Generator
from typing import Any

from workflow_cache.cache.keys import KeySpace
from workflow_cache.cache.protocol import Call, Done
from workflow_cache.cache.records import record_acquire
from workflow_cache.envelope import Envelope, EnvelopeError, UnsignedEnvelopeError

__all__ = ["REFUSED_RETRIES", "acquiring", "refusal"]

log = logging.getLogger("workflow_cache.cache.redis")

REFUSED_RETRIES = 3
"""How many refused (unsigned or forged) outcomes ``acquire`` removes before giving up."""


def refusal(out: str, raw: bytes | str, problem: EnvelopeError) -> Call:
    """Warn about a refused outcome; the call that removes it if it is still ``raw``."""
    log.warning("%s; treating it as a miss and removing it", problem)
    return Call("delete_if_same", (out,), (raw,))


def acquiring(
    keyspace: KeySpace,
    key: str,
    acquire: Callable[[], Any],
    perform: Callable[[Call], Any],
) -> Generator[Callable[[], Any], Any, Any]:
    """A cache's ``acquire`` as a plan for ``drive.py``: the flight's outcome as an
    envelope (a refused one removed, and the key acquired again), or its holder."""
    for _ in range(REFUSED_RETRIES):
        started = time.perf_counter()
        got = yield acquire
        record_acquire(keyspace.namespace, started, got)
        if not isinstance(got, Done):
            return got
        try:
            return Envelope.loads(key, got.outcome)
        except UnsignedEnvelopeError as exc:
            yield functools.partial(perform, refusal(keyspace.out(key), got.outcome, exc))
    raise EnvelopeError(
        f"cache entry for key {key!r} keeps being replaced by unsigned or forged outcomes"
    )
