"""A Celery app configured the way a workflow-cache fleet needs, from ``Settings``."""

from __future__ import annotations

from celery import Celery

from workflow_cache import metrics
from workflow_cache.cache.redis import RedisCache
from workflow_cache.distributed.steps import install
from workflow_cache.settings import Settings, load


def fleet_app(main: str, settings: Settings | None = None) -> tuple[Celery, RedisCache]:
    """The app and the step cache its producers and workers share, ready for tasks.

    JSON only (nothing from a shared broker is unpickled), late acknowledgement
    and requeue on a lost worker (crashed work is delivered again), prefetch 1
    (a busy worker does not sit on messages another could start), and the
    visibility timeout that bounds redelivery when a whole machine vanishes.
    With ``metrics_port`` set, a worker of this app serves Prometheus metrics
    there, summed over the processes of its pool.
    """
    settings = settings or load()
    if settings.metrics_port is not None:
        metrics.enable_multiprocess(settings.metrics_dir)
    app = Celery(main, broker=settings.broker_url, backend=settings.backend)
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        task_default_queue=settings.step_queue,
        broker_transport_options={"visibility_timeout": settings.visibility_timeout},
        result_backend_transport_options={"visibility_timeout": settings.visibility_timeout},
        workflow_cache_storage=settings.storage,
    )
    cache = RedisCache(
        settings.cache,
        namespace=settings.namespace,
        lease=settings.lease,
        default_ttl=settings.default_ttl,
        socket_timeout=settings.redis_socket_timeout,
        connect_timeout=settings.redis_connect_timeout,
    )
    install(app, cache)
    metrics.watch_celery(app, port=settings.metrics_port, addr=settings.metrics_addr)
    return app, cache
