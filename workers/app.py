"""The fleet's Celery app, configured from ``WORKFLOW_CACHE_*`` environment variables.

    celery -A workers.app worker -Q steps -c 8          # step workers
    celery -A workers.app worker -Q workflows -c 4      # workflow workers

Producers import the same module to enqueue work (see examples/distributed.py).
A signature of one of its tasks given to ``step(...)`` is sent as that task itself
(unrouted tasks go to the ``steps`` queue); ``fleet_app`` installs the claim that
wraps it on the worker.
Flows run here too (``workflow-cache run FLOW.yaml --broker URL --queue workflows``);
set ``WORKFLOW_CACHE_STORAGE`` (e.g. ``s3://bucket/prefix``) so every machine shares
archives, and ``WORKFLOW_CACHE_METRICS_PORT`` for a Prometheus endpoint.
This folder is deployed next to the package (see workers/Dockerfile), not installed.
"""

from __future__ import annotations

import workflow_cache.workdir.celery_tasks  # noqa: F401  (flows run on this fleet too)
from workflow_cache import Step
from workflow_cache.distributed import workflow_task
from workflow_cache.distributed.fleet import fleet_app
from workflow_cache.settings import current

settings = current()

app, cache = fleet_app("workflow_cache_workers", settings)


@app.task(name="workers.fetch_user", shared=False)  # type: ignore[untyped-decorator]
def fetch_user(user_id: str) -> dict[str, str]:
    """An ordinary Celery task; workflows may use it as a step."""
    return {"id": user_id, "name": f"user {user_id}"}


@workflow_task(app, name="workers.greet", queue=settings.workflow_queue)  # type: ignore[untyped-decorator]
def greet(step: Step, user_id: str) -> str:
    user = step(fetch_user.s(user_id), key=f"user:{user_id}")
    return f"Hello {user['name']}"
