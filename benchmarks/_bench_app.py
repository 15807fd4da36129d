"""The Celery app that bench_dispatch.py's worker subprocesses run.

Configured like ``workers/app.py`` (same ``WFC_*`` variables, late acks, JSON,
prefetch 1) so the figures describe the fleet's settings, but with tasks whose
bodies cost nothing (``noop``) or a known sleep (``counted``), so that what is
measured is dispatch, not work.
"""

from __future__ import annotations

import time

import redis
from celery import Celery

from workflow_cache import RedisCache
from workflow_cache.distributed import install
from workflow_cache.distributed.settings import WorkerSettings

settings = WorkerSettings()

app = Celery("wfc_bench", broker=settings.broker_url, backend=settings.backend)
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_default_queue=settings.step_queue,
    broker_transport_options={"visibility_timeout": settings.visibility_timeout},
    result_backend_transport_options={"visibility_timeout": settings.visibility_timeout},
    worker_hijack_root_logger=False,
)
cache = RedisCache(settings.cache, namespace=settings.namespace, lease=settings.lease)
install(app, cache, queue=settings.step_queue)
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
