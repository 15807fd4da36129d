"""The fleet's Celery app, configured from ``WFC_*`` environment variables.

    celery -A workers.app worker -Q steps -c 8          # step workers
    celery -A workers.app worker -Q workflows -c 4      # workflow workers

Producers import the same module to enqueue work (see examples/distributed.py).
Flows run here too: ``workflow-cache run FLOW.yaml --broker $WFC_BROKER_URL --queue workflows``;
set ``WFC_STORAGE`` (e.g. ``s3://bucket/prefix``) so every machine shares archives.
"""

from __future__ import annotations

from celery import Celery

import workflow_cache.workdir.celery_tasks  # noqa: F401  (flows run on this fleet too)
from workflow_cache import RedisCache
from workflow_cache.distributed import install, workflow_task
from workflow_cache.distributed.settings import WorkerSettings

settings = WorkerSettings()

app = Celery("workflow_cache_workers", broker=settings.broker_url, backend=settings.backend)
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
    workflow_cache_storage=settings.storage,
)
cache = RedisCache(settings.cache, namespace=settings.namespace, lease=settings.lease)
install(app, cache, queue=settings.step_queue)


@app.task(name="workers.fetch_user", shared=False)
def fetch_user(user_id: str) -> dict[str, str]:
    """An ordinary Celery task; workflows may use it as a step."""
    return {"id": user_id, "name": f"user {user_id}"}


@workflow_task(app, name="workers.greet", queue=settings.workflow_queue)
def greet(step, user_id: str) -> str:
    user = step(fetch_user.s(user_id), key=f"user:{user_id}")
    return f"Hello {user['name']}"
