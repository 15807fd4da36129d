"""Whole workflows as Celery tasks: any producer enqueues one, a worker runs it.

By default a workflow task *suspends*: when it reaches a dispatched step whose outcome
is not there, it sends the step, registers itself as the step's waiter and returns,
freeing its worker slot; the step's commit enqueues it again and it replays from the top,
its finished steps being cache hits (``replay.py``). One worker serving both the
``workflows`` and ``steps`` queues, even with one slot, cannot deadlock.

``suspend=False`` keeps the blocking behaviour: the task waits in its slot for each
step, at most ``block_timeout`` seconds, then fails with ``StepWaitTimeout`` naming the
step and its queue. A worker that consumes the queue of a blocking workflow task and
the default step queue logs a warning when it starts: its slots can all be taken by
waiting workflows.

Workflow tasks are acknowledged late and rejected when their worker dies, so the broker
delivers them again; the re-run starts from the top and every step that had finished is
a cache hit.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from celery import Celery
from celery.result import AsyncResult
from celery.signals import worker_ready

from workflow_cache import settings
from workflow_cache.cache.claims import ClaimTimeout
from workflow_cache.cache.redis import RedisCache
from workflow_cache.distributed.dispatcher import CeleryDispatcher
from workflow_cache.distributed.replay import WorkflowSpec, register_spec, run_body, run_delivery
from workflow_cache.distributed.runs import RunInfo, Runs, outcome_key
from workflow_cache.distributed.steps import route
from workflow_cache.distributed.waiters import Waiters
from workflow_cache.envelope import Envelope
from workflow_cache.result import Result, UnexpectedError, err
from workflow_cache.workflow import create_workflow

log = logging.getLogger(__name__)

WORKFLOW_QUEUE = "workflows"


def workflow_task(
    app: Celery,
    fn: Callable[..., Any] | None = None,
    *,
    name: str | None = None,
    queue: str = WORKFLOW_QUEUE,
    cache: RedisCache | None = None,
    suspend: bool = True,
    block_timeout: float | None = None,
    **workflow_options: Any,
) -> Any:
    """Register ``fn(step, *args, **kwargs)`` (a function or an ``async def`` one) as a task
    that runs it as a workflow.

    Use as ``workflow_task(app, fn)`` or ``@workflow_task(app)``. ``cache`` defaults to
    the one given to :func:`install`. ``suspend`` (default True): a pending dispatched
    step frees the worker slot and the workflow resumes by replay; False: the task waits
    for its steps in its slot, each for at most ``block_timeout`` seconds (default: the
    ``WORKFLOW_CACHE_BLOCK_TIMEOUT`` setting, 600 s). Other keyword
    arguments go to :func:`create_workflow` (``ttl``, ``cache_errors``, ``on_event``,
    ...); ``on_event`` also receives :class:`RunEvent` as the run suspends, resumes and
    finishes. Enqueue with ``task.delay(*args)`` and read the outcome with
    :func:`result_of` (or :func:`outcome_of` with the task id).
    """
    if fn is None:
        return lambda f: workflow_task(
            app,
            f,
            name=name,
            queue=queue,
            cache=cache,
            suspend=suspend,
            block_timeout=block_timeout,
            **workflow_options,
        )
    if block_timeout is None:
        block_timeout = settings.current().block_timeout
    if block_timeout <= 0:
        raise ValueError(f"block_timeout must be a positive number of seconds, got {block_timeout}")
    task_name = name or f"{fn.__module__}.{fn.__qualname__}"
    on_event = workflow_options.pop("on_event", None)

    route(app, task_name, queue)
    spec = WorkflowSpec(task_name, fn, queue, cache, on_event, workflow_options)
    if suspend:
        register_spec(app, spec)
    if not suspend:
        _watch_blocking(app, task_name, queue)

    @app.task(  # type: ignore[untyped-decorator]  # celery ships no type information
        name=task_name,
        bind=True,
        shared=False,
        acks_late=True,
        reject_on_worker_lost=True,
        serializer="json",
        wfc_durable=suspend,  # its runs are recorded as they are sent (enqueues.py)
    )
    def run_workflow(self: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        if suspend:
            return run_delivery(self, app, spec, args, kwargs)
        store = spec.store(app)
        dispatcher = CeleryDispatcher(app, store, timeout=block_timeout)
        workflow = create_workflow(
            None, cache=store, dispatcher=dispatcher, on_event=on_event, **workflow_options
        )
        try:
            result = run_body(workflow, fn, args, kwargs)
        except ClaimTimeout as exc:  # past block_timeout: the workflow fails, saying why
            log.error("workflow %s[%s]: %s", task_name, self.request.id, exc)
            result = err(UnexpectedError.from_exception(exc))
        return Envelope.from_result(task_name, result, ttl=None).detached(task_name)

    return run_workflow


def result_of(async_result: AsyncResult, timeout: float | None = None) -> Result[Any, Any]:
    """The :class:`Result` of an enqueued workflow task (waits up to ``timeout`` seconds)."""
    data = async_result.get(timeout=timeout)
    return Envelope.from_data(async_result.id, data).to_result(async_result.id)


def outcome_of(cache: RedisCache, run_id: str, timeout: float | None = None) -> Result[Any, Any]:
    """The :class:`Result` of a suspending workflow run, read from its own outcome key
    ``run:<id>`` (no Celery result backend needed); waits on the key's commit notice up to
    ``timeout`` seconds, then ``ClaimTimeout``."""
    key = outcome_key(run_id)
    flight = cache.flight
    deadline = None if timeout is None else time.monotonic() + timeout
    with flight.watch_many([key]) as notices:
        while True:
            raw = flight.read(key)
            if raw is not None:
                return Envelope.loads(key, raw).to_result(key)
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise ClaimTimeout(f"workflow run {run_id} has no outcome after {timeout:g} s")
            raw = notices.outcome(key, 1.0 if left is None else min(1.0, left))
            if raw is not None:
                return Envelope.loads(key, raw).to_result(key)


def _watch_blocking(app: Celery, task_name: str, queue: str) -> None:
    """Warn at worker start when this worker serves a blocking workflow and its steps."""
    blocking: dict[str, str] = app.conf.get("workflow_cache_blocking") or {}
    first = not blocking
    blocking[task_name] = queue
    app.conf.workflow_cache_blocking = blocking
    if not first:
        return

    def on_ready(sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", None) is not app:
            return
        warn_if_starvable(app, sender)

    worker_ready.connect(on_ready, weak=False)


def warn_if_starvable(app: Celery, consumer: Any) -> str | None:
    """The warning logged (or None) for a worker consuming blocking workflows and steps."""
    blocking: dict[str, str] = app.conf.get("workflow_cache_blocking") or {}
    queues = {q.name for q in consumer.task_consumer.queues}
    step_queue = app.conf.task_default_queue
    served = sorted(t for t, q in blocking.items() if q in queues)
    if not served or step_queue not in queues:
        return None
    slots = getattr(consumer.controller, "concurrency", None) or getattr(
        consumer.pool, "limit", "?"
    )
    message = (
        f"this worker consumes the queue of blocking workflow task(s) {', '.join(served)} "
        f"and the step queue {step_queue!r} with {slots} slot(s): waiting workflows can "
        "take every slot and starve the steps they wait for (each then fails after its "
        "block_timeout); use suspending workflows (the default) or separate workers"
    )
    log.warning(message)
    return message


def run_info(cache: RedisCache, run_id: str) -> RunInfo | None:
    """A workflow run's state, batches, replays, step history and pending keys (or None)."""
    return Runs(cache.flight).info(run_id)


def waiting_on(cache: RedisCache, key: str) -> list[str]:
    """Ids of the workflow runs suspended until the step ``key`` commits."""
    return Waiters(cache.flight).waiting_on(key)
