"""Whole workflows as Celery tasks: any producer enqueues one, a worker runs it.

A workflow task is acknowledged late and rejected when its worker dies, so the
broker delivers it again; the re-run starts from the top and every step that
had finished is a cache hit. Workflow tasks go to their own queue
(``workflows``) so a pool busy with workflows waiting on steps never starves
the ``steps`` queue those steps need.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from celery import Celery
from celery.result import AsyncResult

from workflow_cache.cache.redis import RedisCache
from workflow_cache.distributed.dispatcher import CeleryDispatcher
from workflow_cache.distributed.steps import route
from workflow_cache.envelope import Envelope
from workflow_cache.result import Result
from workflow_cache.workflow import create_workflow

WORKFLOW_QUEUE = "workflows"


def workflow_task(
    app: Celery,
    fn: Callable[..., Any] | None = None,
    *,
    name: str | None = None,
    queue: str = WORKFLOW_QUEUE,
    cache: RedisCache | None = None,
    **workflow_options: Any,
) -> Any:
    """Register ``fn(step, *args, **kwargs)`` as a task that runs it as a workflow.

    Use as ``workflow_task(app, fn)`` or ``@workflow_task(app)``. ``cache``
    defaults to the one given to :func:`install`; other keyword arguments go to
    :func:`create_workflow` (``ttl``, ``cache_errors``, ...). Enqueue with
    ``task.delay(*args)`` and read the outcome with :func:`result_of`.
    """
    if fn is None:
        return lambda f: workflow_task(
            app, f, name=name, queue=queue, cache=cache, **workflow_options
        )
    task_name = name or f"{fn.__module__}.{fn.__qualname__}"

    route(app, task_name, queue)

    @app.task(
        name=task_name, shared=False, acks_late=True, reject_on_worker_lost=True, serializer="json"
    )
    def run_workflow(*args: Any, **kwargs: Any) -> dict[str, Any]:
        store = cache or app.conf.workflow_cache["cache"]
        workflow = create_workflow(
            None, cache=store, dispatcher=CeleryDispatcher(app, store), **workflow_options
        )
        result = workflow(lambda step: fn(step, *args, **kwargs))
        return Envelope.from_result(task_name, result, ttl=None).detached(task_name)

    return run_workflow


def result_of(async_result: AsyncResult, timeout: float | None = None) -> Result[Any, Any]:
    """The :class:`Result` of an enqueued workflow task (waits up to ``timeout`` seconds)."""
    data = async_result.get(timeout=timeout)
    return Envelope.from_data(async_result.id, data).to_result(async_result.id)
