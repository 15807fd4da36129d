"""The committer carries on the run it resumes, in its own slot: no resume message.

When a step's commit completes a suspended run's batch, the run is normally sent again as
a message: one more trip through the broker and one more Celery delivery for every step
the workflow takes. When the worker that ran the step also serves the workflow's queue
and knows the workflow task, it replays the run itself, right after the commit and
before the step's message is acknowledged, exactly as that resume delivery would
(``replay.deliver``). The arrival that completes the batch takes the run for it as
``begin`` would (``run_arrive.lua``): a new epoch and a lease, so a crash here is a
lapsed lease that the reconciler sends again, and the step's message, if redelivered,
finds its key done. Other runs resumed by the same commit still get messages: a slot
carries on one run per step at most, and never waits for anything.

A message is sent instead (as before) when the step has a time limit (the limit would
cover the replay), when this worker does not consume the workflow's queue or lacks its
task, or when ``WORKFLOW_CACHE_CONTINUE_INLINE`` is false.

A run finished here has its outcome written to the Celery result backend under its id,
as its own delivery would, so ``AsyncResult(run_id).get()`` works either way; Celery's
task signals are not sent for a continued replay (it is not a message).
"""

from __future__ import annotations

import logging
import traceback
from typing import Any

from celery import Celery, Task
from celery.backends.base import DisabledBackend

from workflow_cache import settings
from workflow_cache.distributed.replay import deliver, spec_of, specs_of
from workflow_cache.distributed.resume import Arrival
from workflow_cache.distributed.runs import Carry

log = logging.getLogger(__name__)


def carriable(task: Task) -> Carry | None:
    """The runs the slot running ``task`` (a step) may carry on: those of the workflow tasks
    this worker knows, sent to a queue it consumes. None when it may carry on none."""
    app = task.app
    if not settings.current().continue_inline or _time_limited(task):
        return None
    specs = specs_of(app)
    tasks = tuple(name for name in specs if name in app.tasks)
    queues = _consumed(app)
    if not tasks or not queues:
        return None
    return Carry(tasks, queues)


def carry_on(app: Celery, arrival: Arrival) -> None:
    """Replay the run, taken in its arrival, as the delivery of its new batch. Never
    raises: the step committed whatever happens here, and a run left behind (its lease
    lapses) is the reconciler's."""
    resume = arrival.resume
    spec = spec_of(app, resume.task)
    if spec is None:  # carriable named it: only a changed app gets here
        log.warning("run %s: workflow %r unknown here; left to the reconciler", *_who(arrival))
        return
    try:
        delivered = deliver(
            app,
            spec,
            arrival.run_id,
            arrival.batch,
            tuple(resume.args),
            dict(resume.kwargs),
            begun=arrival.begun,
        )
    except Exception as exc:
        log.warning("run %s: not carried on (%s); left to the reconciler", arrival.run_id, exc)
        return
    if delivered.kind == "finished":
        _report(app, resume.task, arrival.run_id, delivered.data, delivered.error)


def _who(arrival: Arrival) -> tuple[str, str]:
    return arrival.run_id, arrival.resume.task


def _report(
    app: Celery,
    task_name: str,
    run_id: str,
    data: dict[str, Any] | None,
    error: BaseException | None,
) -> None:
    """The run's end in the result backend, as its task's own delivery would store it."""
    task = app.tasks[task_name]
    backend = task.backend
    if task.ignore_result or isinstance(backend, DisabledBackend):
        return
    try:
        if error is not None:
            trace = "".join(traceback.format_exception(error))
            backend.mark_as_failure(run_id, error, trace, call_errbacks=False)
        else:
            backend.mark_as_done(run_id, data)
    except Exception as exc:
        log.warning("run %s: outcome not written to the result backend: %s", run_id, exc)


def _consumed(app: Celery) -> tuple[str, ...]:
    """The queues this worker consumes (``-Q``: the queues it was started with)."""
    try:
        return tuple(app.amqp.queues.consume_from)
    except Exception:
        return ()


def _time_limited(task: Task) -> bool:
    request = task.request
    limits = getattr(request, "timelimit", None) or (None, None)
    conf = task.app.conf
    return any(
        limit
        for limit in (
            *limits,
            task.time_limit,
            task.soft_time_limit,
            conf.task_time_limit,
            conf.task_soft_time_limit,
        )
    )


__all__ = ["carriable", "carry_on"]
