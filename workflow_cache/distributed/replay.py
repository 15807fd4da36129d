"""One delivery of a suspending workflow task: begin, replay with hits, suspend or finish.

A delivery (the first message, or a resume) runs the workflow function from the top:

- ``begin`` (one script) marks the run running and returns its recorded history and any
  outcomes delivered with commits; a delivery for a batch that is not the current one
  (a duplicate resume) is acknowledged without running, and a run that is done already
  returns its stored outcome;
- the outcomes of every step in the history are read in one batched read (``MGET``) and
  served to the replay from memory (``ReplayStore``): a replay costs one script and one
  read, however many steps it replays;
- steps past the history run as usual: local steps in place (under their claim), and
  dispatched misses suspend the run (``suspend.py``): the task raises Celery's
  ``Ignore``, so the message is acknowledged, no result is stored and the slot is free;
- the last delivery stores the run's outcome under ``run:<id>`` (``finish``) and returns
  it, so ``AsyncResult.get()`` of the first message's id gets it.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable, Sequence
from typing import Any

from celery import Celery, Task
from celery.exceptions import Ignore, Reject

from workflow_cache import settings
from workflow_cache.cache.reaching import unreachable
from workflow_cache.cache.redis import RedisCache, RedisClaim
from workflow_cache.distributed.resume import resumed_batch
from workflow_cache.distributed.run_lease import RunLease, Superseded
from workflow_cache.distributed.runs import Begun, Resume, RunEvent, Runs, outcome_key
from workflow_cache.distributed.suspend import (
    ReplayDiverged,
    Suspended,
    SuspendingDispatcher,
    decode_or_none,
    history_keys,
)
from workflow_cache.envelope import Envelope
from workflow_cache.events import EventHook
from workflow_cache.result import Result, UnexpectedError, err
from workflow_cache.store import CacheUnavailable
from workflow_cache.workflow import create_workflow

log = logging.getLogger(__name__)


class ReplayStore:
    """The workflow's cache during a replay: outcomes read up front are served from memory,
    anything else goes to the ``RedisCache`` (claims included)."""

    def __init__(self, cache: RedisCache, known: dict[str, Envelope]) -> None:
        self.cache = cache
        self.known = known
        self.default_ttl = cache.default_ttl

    def load(self, key: str) -> Envelope | None:
        found = self.known.get(key)
        return found if found is not None else self.cache.load(key)

    def load_many(self, keys: Sequence[str]) -> list[Envelope | None]:
        found: list[Envelope | None] = [self.known.get(k) for k in keys]
        unknown = [k for k, f in zip(keys, found, strict=True) if f is None]
        if unknown:
            loaded = iter(self.cache.load_many(unknown))
            found = [f if f is not None else next(loaded) for f in found]
        return found

    def save(self, key: str, envelope: Envelope) -> None:
        self.cache.save(key, envelope)

    def acquire(self, key: str) -> Envelope | RedisClaim:
        return self.cache.acquire(key)


def known_outcomes(cache: RedisCache, run_id: str, begun: Begun) -> dict[str, Envelope]:
    """Outcomes of the run's recorded steps (one ``MGET``) and of those delivered to it."""
    keys = history_keys(run_id, begun.steps)
    raw = cache.flight.read_many(keys) if keys else []
    known: dict[str, Envelope] = {}
    for key, value in [*zip(keys, raw, strict=True), *begun.given.items()]:
        envelope = decode_or_none(key, value)
        if envelope is None and value is not None:
            log.warning(
                "run %s: stored outcome of step %r is not valid; treated as a miss", run_id, key
            )
        if envelope is not None and not envelope.expired():
            known[key] = envelope
    return known


def run_delivery(
    task: Task,
    app: Celery,
    cache: RedisCache,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    queue: str,
    on_event: EventHook | None,
    options: dict[str, Any],
) -> dict[str, Any]:
    """Run one delivery of a suspending workflow task; returns the outcome's data when done,
    raises ``Ignore`` when it suspends (or the delivery is stale)."""
    run_id = task.request.id
    name = task.name
    try:
        batch = resumed_batch(task.request.headers)
    except ValueError as exc:
        log.warning("workflow %s[%s] refused: %s", name, run_id, exc)
        raise Ignore() from None
    runs = Runs(cache.flight)
    begun = runs.begin(run_id, batch, Resume(name, list(args), dict(kwargs), queue))
    if begun.kind in ("stale", "busy"):
        log.info(
            "workflow %s[%s]: delivery of batch %d is %s (now batch %d)",
            name,
            run_id,
            batch,
            "stale" if begun.kind == "stale" else "not needed: another delivery holds the run",
            begun.batch,
        )
        raise Ignore()
    if begun.kind == "done":
        key = outcome_key(run_id)
        if cache.flight.read(key) is None:  # the finisher died before writing it: repair
            runs.publish(run_id, begun.outcome)
        return Envelope.loads(key, begun.outcome).detached(key)
    emit = _emitter(on_event)
    if batch > 0:
        emit(RunEvent("resumed", run_id, begun.replays, begun.batch))
    with RunLease(runs, run_id, begun.epoch) as lease:
        known = known_outcomes(cache, run_id, begun)
        dispatcher = SuspendingDispatcher(
            app,
            cache,
            lease,
            begun.steps,
            linger=settings.current().suspend_after,
            concurrent=inspect.iscoroutinefunction(fn),
            known=known,
        )
        store = ReplayStore(cache, known)
        workflow = create_workflow(
            None, cache=store, dispatcher=dispatcher, on_event=on_event, **options
        )
        try:
            result = run_body(workflow, fn, args, kwargs)
        except Suspended as suspended:
            emit(RunEvent("suspended", run_id, begun.replays, suspended.batch, suspended.keys))
            raise Ignore() from None
        except Superseded as exc:
            log.info("workflow %s[%s]: delivery stopped: %s", name, run_id, exc)
            raise Ignore() from None
        except ReplayDiverged as exc:
            log.error("workflow %s[%s]: %s", name, run_id, exc)
            result = err(UnexpectedError.from_exception(exc))
        except CacheUnavailable as exc:
            if not unreachable(exc):
                _finish(runs, lease, err(UnexpectedError.from_exception(exc)))
                raise
            # Redis away (restarting, loading): not the run's outcome. The message goes
            # back to its queue, and the run's lease lapses for the reconciler to resend.
            log.warning("workflow %s[%s]: Redis unreachable (%s); requeued", name, run_id, exc)
            raise Reject(str(exc), requeue=True) from exc
        except Exception as exc:
            _finish(runs, lease, err(UnexpectedError.from_exception(exc)))
            raise
        data = _finish(runs, lease, result)
    emit(
        RunEvent(
            "finished", run_id, begun.replays, begun.batch, outcome="ok" if result.ok else "err"
        )
    )
    return data


def run_body(
    workflow: Any, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Result[Any, Any]:
    """``fn(step, *args, **kwargs)`` as a workflow, to its end; an ``async def`` function runs
    on an event loop of its own (a worker slot runs one delivery at a time)."""
    if inspect.iscoroutinefunction(fn):

        async def body(step: Any) -> Any:
            return await fn(step, *args, **kwargs)

        outcome: Result[Any, Any] = asyncio.run(workflow(body))
        return outcome
    done: Result[Any, Any] = workflow(lambda step: fn(step, *args, **kwargs))
    return done


def _finish(runs: Runs, lease: RunLease, result: Result[Any, Any]) -> dict[str, Any]:
    """Store the run's outcome; a fenced delivery stops instead (``Ignore``): the delivery
    that holds the run, or the cancellation, gives the outcome."""
    key = outcome_key(lease.run_id)
    envelope = Envelope.from_result(key, result, ttl=None)
    if not runs.finish(lease.run_id, lease.epoch, envelope.dumps(key)):
        log.info("run %s: epoch %d no longer holds the run; outcome not stored", *_who(lease))
        raise Ignore()
    return envelope.detached(key)


def _who(lease: RunLease) -> tuple[str, int]:
    return lease.run_id, lease.epoch


def _emitter(on_event: EventHook | None) -> Callable[[RunEvent], None]:
    if on_event is None:
        return lambda _: None
    return on_event  # type: ignore[return-value]


__all__ = ["ReplayStore", "known_outcomes", "run_body", "run_delivery"]
