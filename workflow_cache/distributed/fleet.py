"""A Celery app configured the way a workflow-cache fleet needs, from ``Settings``."""

from __future__ import annotations

from celery import Celery

from workflow_cache import metrics
from workflow_cache.cache.redis import RedisCache
from workflow_cache.celery_app import RUN_FLOW, celery_app
from workflow_cache.distributed.header import HEADER
from workflow_cache.distributed.steps import install
from workflow_cache.distributed.worker_metrics import watch_celery
from workflow_cache.settings import Settings, current, use


def fleet_app(main: str, settings: Settings | None = None) -> tuple[Celery, RedisCache]:
    """The app and the step cache its producers and workers share, ready for tasks.

    ``settings`` defaults to the process's settings (``settings.current()``); given
    ones become the process's, so what the process signs, and where its defaults
    live, follow the app's settings. The app has the reliability settings of every
    app of the library
    (:mod:`workflow_cache.celery_app`). With ``metrics_port`` set, a worker of this
    app serves Prometheus metrics there, summed over the processes of its pool.
    """
    configured = current() if settings is None else use(settings)
    if configured.metrics_port is not None:
        metrics.enable_multiprocess(configured.metrics_dir)
    app = celery_app(
        main,
        broker=configured.broker_url,
        backend=configured.backend,
        visibility_timeout=configured.visibility_timeout,
        worker_hijack_root_logger=False,
        task_default_queue=configured.step_queue,
        workflow_cache_storage=configured.storage,
    )
    cache = RedisCache(
        configured.cache,
        namespace=configured.namespace,
        lease=configured.lease,
        default_ttl=configured.default_ttl,
        socket_timeout=configured.redis_socket_timeout,
        connect_timeout=configured.redis_connect_timeout,
    )
    install(app, cache)
    watch_celery(
        app,
        step_header=HEADER,
        flow_task=RUN_FLOW,
        port=configured.metrics_port,
        addr=configured.metrics_addr,
    )
    return app, cache
