"""One delivery of a suspending workflow task: begin, replay with hits, suspend or finish.

A delivery (the first message, or a resume) runs the workflow function from the top:

- ``begin`` (one script) marks the run running and returns its recorded history and any
  outcomes delivered with commits; a delivery for a batch that is not the current one
  (a duplicate resume) is acknowledged without running, and a run that is done already
  returns its stored outcome;
- the outcomes of every step in the history are served to the replay from memory
  (``ReplayStore``): those delivered into the run's record with their commits come with
  ``begin``'s reply, the others in one batched read (``MGET``); a replay costs one
  script and at most one read, however many steps it replays;
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
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from celery import Celery, Task
from celery.exceptions import Ignore, Reject

from workflow_cache import settings
from workflow_cache.cache.reaching import unreachable
from workflow_cache.cache.redis import RedisCache, RedisClaim
from workflow_cache.distributed.resume import resumed_batch
from workflow_cache.distributed.run_lease import RunLease, Superseded
from workflow_cache.distributed.runs import (
    RUN_STEP_PREFIX,
    Begun,
    Resume,
    RunEvent,
    Runs,
    outcome_key,
)
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
    """The workflow's cache during a replay: outcomes read up front are served from memory;
    a dispatched step past them is not read at all (``fresh``: the dispatcher's ``join``
    returns its outcome if it is stored, in the script it runs anyway); anything else goes
    to the ``RedisCache`` (claims included)."""

    def __init__(
        self, cache: RedisCache, known: dict[str, Envelope], fresh: Collection[str] = ()
    ) -> None:
        self.cache = cache
        self.known = known
        self.fresh = fresh
        self.default_ttl = cache.default_ttl

    def load(self, key: str) -> Envelope | None:
        found = self.known.get(key)
        if found is not None or key in self.fresh:
            return found
        return self.cache.load(key)

    def load_many(self, keys: Sequence[str]) -> list[Envelope | None]:
        found: list[Envelope | None] = [self.known.get(k) for k in keys]
        unknown = [k for k, f in zip(keys, found, strict=True) if f is None and k not in self.fresh]
        if unknown:
            loaded = dict(zip(unknown, self.cache.load_many(unknown), strict=True))
            found = [
                f if f is not None else loaded.get(k) for k, f in zip(keys, found, strict=True)
            ]
        return found

    def save(self, key: str, envelope: Envelope) -> None:
        self.cache.save(key, envelope)

    def acquire(self, key: str) -> Envelope | RedisClaim:
        return self.cache.acquire(key)


def known_outcomes(cache: RedisCache, run_id: str, begun: Begun) -> dict[str, Envelope]:
    """Outcomes delivered into the run's record with their commits, and those of its other
    recorded steps (one ``MGET``, none when every step's outcome was delivered). A
    delivered outcome of the run's own unkeyed step does not expire: its time to live
    bounds the shared copy, and the record lives as long as the run."""
    given = begun.given
    keys = [key for key in history_keys(run_id, begun.steps) if key not in given]
    raw = cache.flight.read_many(keys) if keys else []
    known: dict[str, Envelope] = {}
    for key, value in [*zip(keys, raw, strict=True), *given.items()]:
        envelope = decode_or_none(key, value)
        if envelope is None and value is not None:
            log.warning(
                "run %s: stored outcome of step %r is not valid; treated as a miss", run_id, key
            )
        own = key in given and key.startswith(RUN_STEP_PREFIX)
        if envelope is not None and (own or not envelope.expired()):
            known[key] = envelope
    return known


@dataclass(frozen=True, slots=True)
class WorkflowSpec:
    """What a suspending workflow task runs: kept per task name on the app, so that a
    committer can continue a run in its own slot (``continuation.py``)."""

    name: str
    fn: Callable[..., Any]
    queue: str
    cache: RedisCache | None
    on_event: EventHook | None
    options: dict[str, Any]

    def store(self, app: Celery) -> RedisCache:
        return self.cache or app.conf.workflow_cache["cache"]


@dataclass(frozen=True, slots=True)
class Delivered:
    """How one delivery ended.

    ``finished``: the run's outcome is stored; ``data`` is what the task returns, ``error``
    the exception the workflow function raised (re-raised by a task delivery).
    ``suspended``: the run waits. ``skipped``: nothing to do (a stale or duplicate
    delivery, or one fenced by a newer epoch or a cancellation). ``unreachable``: Redis
    could not be reached; the run's lease lapses and the reconciler sends it again.
    """

    kind: Literal["finished", "suspended", "skipped", "unreachable"]
    data: dict[str, Any] | None = None
    error: BaseException | None = None
    reason: str = ""


SPECS_CONF = "workflow_cache_workflows"
"""The app setting that maps each suspending workflow task's name to its ``WorkflowSpec``."""


def register_spec(app: Celery, spec: WorkflowSpec) -> None:
    specs: dict[str, WorkflowSpec] = app.conf.get(SPECS_CONF) or {}
    specs[spec.name] = spec
    app.conf[SPECS_CONF] = specs


def specs_of(app: Celery) -> dict[str, WorkflowSpec]:
    """Every suspending workflow task of ``app``, by name."""
    specs: dict[str, WorkflowSpec] = app.conf.get(SPECS_CONF) or {}
    return specs


def spec_of(app: Celery, task_name: str) -> WorkflowSpec | None:
    return specs_of(app).get(task_name)


def run_delivery(
    task: Task, app: Celery, spec: WorkflowSpec, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> dict[str, Any]:
    """One message of a suspending workflow task: returns the outcome's data when the run is
    done, raises ``Ignore`` when it suspends (or the delivery is not needed), ``Reject``
    (back to the queue) when Redis cannot be reached."""
    run_id = task.request.id
    try:
        batch = resumed_batch(task.request.headers)
    except ValueError as exc:
        log.warning("workflow %s[%s] refused: %s", spec.name, run_id, exc)
        raise Ignore() from None
    delivered = deliver(app, spec, run_id, batch, args, kwargs)
    if delivered.kind == "finished":
        if delivered.error is not None:
            raise delivered.error
        assert delivered.data is not None
        return delivered.data
    if delivered.kind == "unreachable":
        raise Reject(delivered.reason, requeue=True)
    raise Ignore()


def deliver(
    app: Celery,
    spec: WorkflowSpec,
    run_id: str,
    batch: int,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    begun: Begun | None = None,
) -> Delivered:
    """Replay run ``run_id`` as the delivery of ``batch`` (0: its first message): begin,
    replay with hits, then suspend or finish. Knows nothing of Celery messages, so a task
    delivery and a committer's continuation drive the same code. ``begun``: the run was
    taken already (by the arrival that completed its batch), so it is not begun again."""
    name = spec.name
    cache = spec.store(app)
    runs = Runs(cache.flight)
    if begun is None:
        begun = runs.begin(run_id, batch, Resume(name, list(args), dict(kwargs), spec.queue))
    if begun.kind in ("stale", "busy"):
        log.info(
            "workflow %s[%s]: delivery of batch %d is %s (now batch %d)",
            name,
            run_id,
            batch,
            "stale" if begun.kind == "stale" else "not needed: another delivery holds the run",
            begun.batch,
        )
        return Delivered("skipped")
    if begun.kind == "done":
        key = outcome_key(run_id)
        if cache.flight.read(key) is None:  # the finisher died before writing it: repair
            runs.publish(run_id, begun.outcome)
        return Delivered("finished", Envelope.loads(key, begun.outcome).detached(key))
    emit = _emitter(spec.on_event)
    if batch > 0:
        emit(RunEvent("resumed", run_id, begun.replays, begun.batch))
    error: BaseException | None = None
    with RunLease(runs, run_id, begun.epoch) as lease:
        known = known_outcomes(cache, run_id, begun)
        dispatcher = SuspendingDispatcher(
            app,
            cache,
            lease,
            begun.steps,
            linger=settings.current().suspend_after,
            concurrent=inspect.iscoroutinefunction(spec.fn),
            known=known,
            batch=begun.batch,
        )
        store = ReplayStore(cache, known, dispatcher.fresh)
        workflow = create_workflow(
            None, cache=store, dispatcher=dispatcher, on_event=spec.on_event, **spec.options
        )
        try:
            result = run_body(workflow, spec.fn, args, kwargs)
        except Suspended as suspended:
            emit(RunEvent("suspended", run_id, begun.replays, suspended.batch, suspended.keys))
            return Delivered("suspended")
        except Superseded as exc:
            log.info("workflow %s[%s]: delivery stopped: %s", name, run_id, exc)
            return Delivered("skipped")
        except ReplayDiverged as exc:
            log.error("workflow %s[%s]: %s", name, run_id, exc)
            result = err(UnexpectedError.from_exception(exc))
        except CacheUnavailable as exc:
            if unreachable(exc):
                # Redis away (restarting, loading): not the run's outcome. The run's lease
                # lapses for the reconciler to send it again.
                log.warning("workflow %s[%s]: Redis unreachable (%s)", name, run_id, exc)
                return Delivered("unreachable", reason=str(exc))
            result, error = err(UnexpectedError.from_exception(exc)), exc
        except Exception as exc:
            result, error = err(UnexpectedError.from_exception(exc)), exc
        data = _finish(runs, lease, result)
    if data is None:
        return Delivered("skipped")
    emit(
        RunEvent(
            "finished", run_id, begun.replays, begun.batch, outcome="ok" if result.ok else "err"
        )
    )
    return Delivered("finished", data, error)


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


def _finish(runs: Runs, lease: RunLease, result: Result[Any, Any]) -> dict[str, Any] | None:
    """Store the run's outcome; None for a fenced delivery: the delivery that holds the
    run, or the cancellation, gives the outcome."""
    key = outcome_key(lease.run_id)
    envelope = Envelope.from_result(key, result, ttl=None)
    if not runs.finish(lease.run_id, lease.epoch, envelope.dumps(key)):
        log.info("run %s: epoch %d no longer holds the run; outcome not stored", *_who(lease))
        return None
    return envelope.detached(key)


def _who(lease: RunLease) -> tuple[str, int]:
    return lease.run_id, lease.epoch


def _emitter(on_event: EventHook | None) -> Callable[[RunEvent], None]:
    if on_event is None:
        return lambda _: None
    return on_event  # type: ignore[return-value]


__all__ = [
    "Delivered",
    "ReplayStore",
    "WorkflowSpec",
    "deliver",
    "known_outcomes",
    "register_spec",
    "run_body",
    "run_delivery",
    "spec_of",
    "specs_of",
]
