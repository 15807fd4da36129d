"""The Celery app that bench_dispatch.py's worker subprocesses run.

Configured like ``workers/app.py`` (same ``WORKFLOW_CACHE_*`` variables, late acks, JSON,
prefetch 1) so the figures describe the fleet's settings, but with tasks whose
bodies cost nothing (``noop``) or a known sleep (``counted``), so that what is
measured is dispatch, not work.
"""

from __future__ import annotations

import time

import redis
from celery.signals import task_postrun, task_prerun

from workflow_cache.distributed.fleet import fleet_app
from workflow_cache.distributed.settings import WorkerSettings

settings = WorkerSettings()

app, cache = fleet_app("wfc_bench", settings)
_redis = redis.Redis.from_url(settings.cache)


@app.task(name="bench.noop")
def noop(value: int) -> int:
    """The trivial task both dispatch paths run: any difference is the path's own cost."""
    return value


@app.task(name="bench.counted")
def counted(name: str, seconds: float) -> int:
    """Counts its executions in Redis (INCR), then sleeps: the stampede's task body."""
    n = int(_redis.incr(f"bench-count:{name}"))
    time.sleep(seconds)
    return n


def executions(name: str) -> int:
    return int(_redis.get(f"bench-count:{name}") or 0)


@app.task(name="bench.timed", bind=True)
def timed(self, name: str, seconds: float) -> int:
    """Sleeps, recording which message ran the body: the starvation benchmark's task."""
    _redis.rpush(f"bench-ran:{name}", self.request.id)
    time.sleep(seconds)
    return 1


_started: dict[str, float] = {}


@task_prerun.connect
def _slot_taken(sender=None, task_id=None, **_):
    if sender is not None and sender.name == "bench.timed":
        _started[task_id] = time.perf_counter()


@task_postrun.connect
def _slot_freed(sender=None, task_id=None, args=None, **_):
    """Seconds each ``bench.timed`` message held a worker slot, per step name."""
    began = _started.pop(task_id, None)
    if began is not None and args:
        _redis.rpush(f"bench-slot:{args[0]}", f"{task_id} {time.perf_counter() - began:.6f}")


def slots(name: str) -> list[tuple[str, float, bool]]:
    """(task id, seconds in a worker slot, whether it ran the body) per message handled."""
    ran = {r.decode() for r in _redis.lrange(f"bench-ran:{name}", 0, -1)}
    out = []
    for row in _redis.lrange(f"bench-slot:{name}", 0, -1):
        task_id, seconds = row.decode().split()
        out.append((task_id, float(seconds), task_id in ran))
    return out
