"""The Celery app that bench_dispatch.py's worker subprocesses run.

Configured like ``workers/app.py`` (same ``WORKFLOW_CACHE_*`` variables, late acks, JSON,
prefetch 1) so the figures describe the fleet's settings, but with tasks whose
bodies cost nothing (``noop``) or a known sleep (``counted``), so that what is
measured is dispatch, not work.
"""

from __future__ import annotations

import time

import redis

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
