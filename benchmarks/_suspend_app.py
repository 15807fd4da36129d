"""The Celery app of bench_suspend.py's workers: one step task, one workflow in each mode.

Configured from the same ``WORKFLOW_CACHE_*`` variables as ``workers/app.py``. Signal handlers
record, in Redis, how many workflow deliveries hold a worker slot right now and, per
delivery, the seconds it held the slot and the round trips it made to the cache's Redis
(counted on the cache client's connections: one packed send is one round trip).
"""

from __future__ import annotations

import threading
import time

import redis
from celery.signals import task_postrun, task_prerun
from redis.connection import Connection

from workflow_cache.distributed import workflow_task
from workflow_cache.distributed.fleet import fleet_app
from workflow_cache.distributed.settings import WorkerSettings

settings = WorkerSettings()
app, cache = fleet_app("wfc_bench_suspend", settings)
_redis = redis.Redis.from_url(settings.cache)  # the benchmark's own records: not counted

_trips = threading.local()


class CountingConnection(Connection):
    """Counts packed sends (round trips) made while a workflow delivery runs."""

    def send_packed_command(self, command, check_health=True):  # type: ignore[no-untyped-def]
        if getattr(_trips, "on", False):
            _trips.count += 1
        return super().send_packed_command(command, check_health)


cache.client.connection_pool.connection_class = CountingConnection


@app.task(name="bench.sleep", shared=False)
def sleep(name: str, seconds: float) -> str:
    time.sleep(seconds)
    return name


def _flow(step, tag: str, seconds: float, steps: int) -> list[str]:
    return [step(sleep.s(f"{tag}:{i}", seconds), key=f"{tag}:{i}") for i in range(steps)]


suspending = workflow_task(app, _flow, name="bench.suspending")
blocking = workflow_task(app, _flow, name="bench.blocking", suspend=False)
_FLOWS = {"bench.suspending", "bench.blocking"}
_began: dict[str, float] = {}


@task_prerun.connect
def _taken(sender=None, task_id=None, task=None, **_):
    if sender is not None and sender.name in _FLOWS:
        _redis.incr(f"active:{sender.name}")
        _began[task_id] = time.perf_counter()
        _trips.on, _trips.count = True, 0


@task_postrun.connect
def _freed(sender=None, task_id=None, task=None, state=None, **_):
    if sender is None or sender.name not in _FLOWS:
        return
    _trips.on = False
    held = time.perf_counter() - _began.pop(task_id, time.perf_counter())
    headers = getattr(task.request, "headers", None) or {}
    batch = (headers.get("wfc_run") or {}).get("batch", 0)
    _redis.decr(f"active:{sender.name}")
    _redis.rpush(f"slot:{sender.name}", f"{task_id} {batch} {held:.6f} {_trips.count}")
