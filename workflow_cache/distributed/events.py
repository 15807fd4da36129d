"""External events: a run waits for something outside the fleet (an approval, a webhook).

``send_event(cache, name, payload)`` stores the payload like a step's outcome under the
key ``event:<name>``: the first send wins, later sends change nothing (and say so), so
what a run saw never changes. The commit hands over the runs waiting on it (the
waiter set, as for any step); a producer has no Celery app to send their resumes, so
each run is made due at once and the fleet's reconciler sends it within its interval.
An event sent before any run waits is simply found when one asks.

Inside a workflow task, ``step.wait_event(name, timeout=None, key=None)`` returns the
payload; a run that has to wait suspends (state ``waiting``), holding no slot, until the
event or its timeout (written once, from the first ask), which ends the wait with an
``err`` naming the event and the timeout (``suspend.py``).
"""

from __future__ import annotations

import asyncio
from typing import Any

from workflow_cache.cache.claims import Done
from workflow_cache.cache.redis import RedisCache
from workflow_cache.distributed.runs import Runs
from workflow_cache.distributed.waiters import Waiters
from workflow_cache.envelope import Envelope
from workflow_cache.result import ok

EVENT_PREFIX = "event:"


class EventTimeout(TimeoutError):
    """A run's ``step.wait_event`` saw no event within its timeout."""


def event_key(name: str) -> str:
    """The step key an event is stored under."""
    if not name:
        raise ValueError("an event needs a name")
    return f"{EVENT_PREFIX}{name}"


def send_event(cache: RedisCache, name: str, payload: Any = None) -> bool:
    """Deliver the event ``name`` (JSON-storable ``payload``) to the runs that wait for it,
    now or later; False when it was sent before (the first payload stays)."""
    key = event_key(name)
    flight = cache.flight
    holder = flight.acquire(key)
    if isinstance(holder, Done):
        return False
    runs = Runs(flight)
    envelope = Envelope.from_result(key, ok(payload), ttl=runs.retention_ms / 1000)
    try:
        data = envelope.dumps(key)
    except BaseException:
        holder.release()
        raise
    if not holder.commit(data, ttl_ms=runs.retention_ms):
        return False
    for run_id, batch in Waiters(flight).take_handoff(key):
        runs.arrive(run_id, batch, key, b"", at_once=True)
    return True


async def send_event_async(cache: RedisCache, name: str, payload: Any = None) -> bool:
    """:func:`send_event` for a coroutine (it runs in a worker thread)."""
    return await asyncio.to_thread(send_event, cache, name, payload)


__all__ = ["EventTimeout", "event_key", "send_event", "send_event_async"]
