"""A run is recorded when its first message is sent, not only when a worker begins it.

Until a delivery begins, a run has nothing in Redis but a message, and a message can be
lost: a worker killed whole holds the messages it prefetched until the broker's
visibility timeout (an hour by default) gives them back. So a producer sending the first
message of a suspending workflow task records the run (``runs.enqueue``: state
``resuming``, batch 0, due for a recheck) in the same breath, from Celery's
``before_task_publish`` signal. The reconciler then sends the task again if no delivery
has begun by the recheck, and the first delivery to begin runs it (``run_begin``); later
copies find it busy or done. Resumes (``wfc_run`` header) are not first messages.
"""

from __future__ import annotations

import logging
import threading
import weakref
from typing import Any

from celery import Celery
from celery.signals import before_task_publish

from workflow_cache.cache.redis import RedisCache
from workflow_cache.distributed.resume import RUN_HEADER
from workflow_cache.distributed.runs import Resume, Runs

log = logging.getLogger(__name__)

DURABLE = "wfc_durable"
"""The attribute that marks a task class as a suspending workflow task (True)."""


class _Recorder:
    """One installed app's side: its cache's run records, made on first use."""

    def __init__(self, app: Celery, cache: RedisCache) -> None:
        self.app = weakref.ref(app)
        self.cache = cache
        self._runs: Runs | None = None

    def runs(self) -> Runs:
        if self._runs is None:
            self._runs = Runs(self.cache.flight)
        return self._runs


_recorders: list[_Recorder] = []
_lock = threading.Lock()


def record_enqueues(app: Celery, cache: RedisCache) -> None:
    """Record each run of ``app``'s suspending workflow tasks as its first message is sent.

    Celery's signal names the task, not the app that sends it: the app installed last
    that has a suspending task of that name records it (one app per process is the rule;
    a test that makes the app again makes the newest one the one in use)."""
    with _lock:
        _recorders[:] = [r for r in _recorders if r.app() not in (None, app)]
        _recorders.append(_Recorder(app, cache))
        if len(_recorders) == 1:
            before_task_publish.connect(_on_publish, weak=False, dispatch_uid=DURABLE)


def _on_publish(
    sender: Any = None, body: Any = None, headers: Any = None, routing_key: Any = None, **_: Any
) -> None:
    if not isinstance(sender, str) or not isinstance(headers, dict) or RUN_HEADER in headers:
        return
    with _lock:
        recorders = list(reversed(_recorders))
    for recorder in recorders:
        app = recorder.app()
        if app is not None and sender in app.tasks:
            if getattr(app.tasks[sender], DURABLE, False):
                _record(app, recorder, sender, body, headers, routing_key)
            return


def _record(
    app: Celery, recorder: _Recorder, task: str, body: Any, headers: dict[str, Any], route: Any
) -> None:
    run_id = headers.get("id")
    if not isinstance(run_id, str) or not isinstance(body, list | tuple) or len(body) < 2:
        return
    args, kwargs = body[0], body[1]
    if not isinstance(args, list | tuple) or not isinstance(kwargs, dict):
        return
    queue = route if isinstance(route, str) and route else app.conf.task_default_queue
    try:
        recorder.runs().enqueue(run_id, Resume(task, list(args), kwargs, queue))
    except Exception as exc:  # the message still goes; its first delivery records it
        log.warning("run %s: not recorded as it was sent: %s", run_id, exc)
