"""Worker-side metrics: Celery signals that count step messages and flows' archive work.

The counters live in :mod:`workflow_cache.metrics` (core, no Celery); this module
connects them to a Celery app's signals.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from celery import signals

from workflow_cache import metrics

log = logging.getLogger(__name__)


def watch_celery(
    app: Any, *, step_header: str, flow_task: str, port: int | None, addr: str = "0.0.0.0"
) -> None:
    """Count the app's step messages and flows' archive work; serve metrics on ``port``.

    A step message is one that carries the ``step_header`` header; a flow is a task
    named ``flow_task``. The endpoint is started once the worker is up
    (``worker_init``), in the main process, so prefork children never bind the port.
    """

    def sent(headers: Any = None, routing_key: str = "", **_: Any) -> None:
        step = headers.get(step_header) if isinstance(headers, dict) else None
        if isinstance(step, dict):  # a step message: the user's task with the step header
            metrics.message_sent(str(step.get("ns", "")), routing_key or "")

    def flow_done(sender: Any = None, retval: Any = None, **_: Any) -> None:
        if getattr(sender, "name", None) == flow_task:
            for task in _summary_tasks(retval):
                if task.get("restored_bytes"):
                    metrics.archive_transfer(
                        "restore",
                        int(task["restored_bytes"]),
                        float(task.get("restore_seconds", 0)),
                    )
                if task.get("saved"):
                    metrics.archive_transfer(
                        "save", int(task.get("saved_bytes", 0)), float(task.get("save_seconds", 0))
                    )

    def started(**_: Any) -> None:
        if port is not None:
            bound = metrics.serve(port, addr)
            log.info("workflow-cache metrics on http://%s:%d/metrics", addr, bound)

    # One receiver per process however many apps are made (the first app's port wins).
    def stopped(**_: Any) -> None:
        metrics.remove_made_dirs()  # main process only: children never get this signal

    signals.before_task_publish.connect(sent, weak=False, dispatch_uid=f"{__name__}.sent")
    signals.worker_shutdown.connect(stopped, weak=False, dispatch_uid=f"{__name__}.stop")
    signals.task_postrun.connect(flow_done, weak=False, dispatch_uid=f"{__name__}.flow")
    if port is not None:
        signals.worker_init.connect(started, weak=False, dispatch_uid=f"{__name__}.serve")


def _summary_tasks(retval: Any) -> list[Mapping[str, Any]]:
    if not isinstance(retval, Mapping):
        return []
    summary = retval.get("summary")
    tasks = summary.get("tasks") if isinstance(summary, Mapping) else None
    if not isinstance(tasks, list):
        return []
    good = []
    for task in tasks:
        if isinstance(task, Mapping):
            try:
                float(task.get("restore_seconds", 0))
                float(task.get("save_seconds", 0))
                int(task.get("restored_bytes", 0))
                int(task.get("saved_bytes", 0))
            except (TypeError, ValueError):
                continue
            good.append(task)
    return good
