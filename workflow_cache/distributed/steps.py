"""Celery tasks as steps: ``install(app, cache)`` is the one setup call on the user's app.

A Celery signature given to ``step(...)`` is sent as the user's own task (see
``dispatcher.py``); on the worker, the step's claim wraps the task's execution (see
``execution.py``). Each worker's main process also runs the run reconciler
(``reconciler.py``). ``install`` records the cache on the app and wraps the app's
tasks when the app is finalized and again when a worker starts, so tasks defined
before or after the call are covered and stay unchanged for every other use.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.signals import task_revoked, worker_init

from workflow_cache.cache.redis import RedisCache
from workflow_cache.distributed.dispatcher import require_single_flight
from workflow_cache.distributed.execution import StepRunner, guard, on_revoked
from workflow_cache.distributed.reconciler import reconcile_in_workers


def install(app: Celery, cache: RedisCache) -> None:
    """Let this app's tasks be steps: call once where the app is defined (producers and workers)."""
    runner = StepRunner(require_single_flight(cache, "install()"))
    app.conf.workflow_cache = {"cache": cache, "runner": runner}

    def on_finalize(sender: Celery | None = None, **_: Any) -> None:
        guard(app)

    def on_worker_init(sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", None) is app:
            guard(app)

    def on_task_revoked(sender: Any = None, **info: Any) -> None:
        if getattr(sender, "app", None) is app:
            on_revoked(sender, **info)

    app.on_after_finalize.connect(on_finalize, weak=False)
    worker_init.connect(on_worker_init, weak=False)
    task_revoked.connect(on_task_revoked, weak=False)
    reconcile_in_workers(app, cache)
    if app.finalized:
        guard(app)


def route(app: Celery, task_name: str, queue: str) -> None:
    """Send ``task_name`` to ``queue`` by default, keeping the app's other routes."""
    routes = app.conf.task_routes
    entry = {task_name: {"queue": queue}}
    if routes is None:
        app.conf.task_routes = entry
    elif isinstance(routes, dict):
        routes.update(entry)
    else:
        app.conf.task_routes = (entry, *(routes if isinstance(routes, list | tuple) else [routes]))
