"""The Celery app of the distributed tests, run by real ``celery -A tests.celery_app worker``.

Configured from the same ``WORKFLOW_CACHE_*`` variables as ``workers/app.py``. Its tasks
count their executions in Redis, so tests can prove how often a body ran.
"""

from __future__ import annotations

import os
import time

import redis

from workflow_cache import err
from workflow_cache.distributed import workflow_task
from workflow_cache.distributed.fleet import fleet_app
from workflow_cache.distributed.settings import WorkerSettings

settings = WorkerSettings()
app, cache = fleet_app("wfc_tests", settings)
_redis = redis.Redis.from_url(settings.cache)


def count(name: str) -> int:
    return int(_redis.get(f"count:{name}") or 0)


@app.task(name="tests.work", shared=False)
def work(name: str, seconds: float = 0.0, value: object = None) -> object:
    """Counts itself, records which process runs it, sleeps, returns ``value`` or the count."""
    n = _redis.incr(f"count:{name}")
    _redis.rpush(f"pids:{name}", os.getpid())
    time.sleep(seconds)
    return {"count": n, "pid": os.getpid()} if value is None else value


@app.task(name="tests.slow_first", shared=False)
def slow_first(name: str, seconds: float) -> dict[str, int]:
    """Sleeps only on its first execution: the one a test kills or stops."""
    n = _redis.incr(f"count:{name}")
    _redis.rpush(f"pids:{name}", os.getpid())
    if n == 1:
        time.sleep(seconds)
    _redis.rpush(f"finished:{name}", os.getpid())
    return {"count": n, "pid": os.getpid()}


@app.task(name="tests.fails", shared=False)
def fails(name: str) -> None:
    _redis.incr(f"count:{name}")
    raise ValueError(f"{name} always fails")


@app.task(name="tests.not_found", shared=False)
def not_found(name: str):
    _redis.incr(f"count:{name}")
    return err("NOT_FOUND")


@workflow_task(app, name="tests.two_steps", queue=settings.workflow_queue)
def two_steps(step, name: str, crash_seconds: float = 0.0) -> dict[str, object]:
    """Step one is a local thunk, step two a dispatched task that is slow the first time."""

    def first() -> int:
        return _redis.incr(f"count:{name}:first")

    def second() -> int:
        n = _redis.incr(f"count:{name}:second")
        _redis.rpush(f"pids:{name}", os.getpid())
        if n == 1:
            time.sleep(crash_seconds)
        return n

    a = step(first, key=f"{name}:first")
    b = step(second, key=f"{name}:second")
    c = step(work.s(f"{name}:third"), key=f"{name}:third")
    return {"first": a, "second": b, "third": c["count"]}
