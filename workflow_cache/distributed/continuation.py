"""The committer carries on the run it resumes, in its own slot: no resume message.

When a step's commit completes a suspended run's batch, the run is normally sent again as
a message: one more trip through the broker and one more Celery delivery for every step
the workflow takes. When the worker that ran the step also serves the workflow's queue
and knows the workflow task, it replays the run itself, right after the commit and
before the step's message is acknowledged, exactly as that resume delivery would
(``replay.deliver``). ``begin`` gives it a new epoch and a lease, so a crash here is a
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
from workflow_cache.distributed.replay import deliver, spec_of
from workflow_cache.distributed.resume import Arrival, send_resume
from workflow_cache.distributed.runs import Resume

log = logging.getLogger(__name__)


def may_continue(task: Task, resume: Resume) -> bool:
    """Whether the slot running ``task`` (a step) may carry on the run ``resume`` names."""
    app = task.app
    if not settings.current().continue_inline or spec_of(app, resume.task) is None:
        return False
    if resume.task not in app.tasks or not _consumes(app, resume.queue):
        return False
    return not _time_limited(task)


def carry_on(app: Celery, arrival: Arrival) -> None:
    """Replay the run as the delivery of its new batch. Never raises: the step committed
    whatever happens here, and a run left behind is the reconciler's."""
    spec = spec_of(app, arrival.resume.task)
    if spec is None:  # may_continue said yes: only a changed app gets here
        send_resume(app, arrival.run_id, arrival.batch, arrival.resume)
        return
    resume = arrival.resume
    try:
        delivered = deliver(
            app, spec, arrival.run_id, arrival.batch, tuple(resume.args), dict(resume.kwargs)
        )
    except Exception as exc:
        log.warning("run %s: not carried on (%s); left to the reconciler", arrival.run_id, exc)
        return
    if delivered.kind == "finished":
        _report(app, resume.task, arrival.run_id, delivered.data, delivered.error)


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


def _consumes(app: Celery, queue: str) -> bool:
    """Whether this worker consumes ``queue`` (``-Q``: the queues it was started with)."""
    try:
        return queue in app.amqp.queues.consume_from
    except Exception:
        return False


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


__all__ = ["carry_on", "may_continue"]
