"""The Celery app of bench_durable.py's worker: trivial tasks, no instrumentation per step.

Configured from the same ``WORKFLOW_CACHE_*`` variables as ``workers/app.py``. The step
task does nothing, so a ``chain`` of it and a workflow of it differ only by what each path
costs. The one record kept is a workflow delivery's ``task_prerun`` (a list per run id),
which the benchmark counts as messages begun per run; a chain sends none of it.
"""

from __future__ import annotations

import time
from typing import Any

import redis
from celery.signals import task_prerun

from workflow_cache.distributed import workflow_task
from workflow_cache.distributed.fleet import fleet_app
from workflow_cache.distributed.settings import WorkerSettings

settings = WorkerSettings()
app, cache = fleet_app("wfc_bench_durable", settings)
_redis = redis.Redis.from_url(settings.cache)  # the benchmark's own records


@app.task(name="bench.noop", shared=False)
def noop(value: int) -> int:
    return value


@workflow_task(app, name="bench.five_steps")
def five_steps(step: Any, tag: str) -> int:
    """Five trivial dispatched steps one after another."""
    for i in range(5):
        step(noop.s(i), key=f"{tag}:{i}")
    return 5


@workflow_task(app, name="bench.nap_only")
def nap_only(step: Any, tag: str, seconds: float) -> None:
    """A durable sleep, then the time the replay got past it."""
    step.sleep(seconds)
    _redis.rpush(f"woke:{tag}", time.time())


WORKFLOWS = {five_steps.name, nap_only.name}


@task_prerun.connect(weak=False)
def _begun(sender: Any = None, task_id: str | None = None, **_: Any) -> None:
    if sender is not None and sender.name in WORKFLOWS:
        _redis.rpush(f"begun:{task_id}", 1)


def begun(run_id: str) -> int:
    """Workflow messages begun for the run (first delivery and resumes)."""
    return int(_redis.llen(f"begun:{run_id}"))
