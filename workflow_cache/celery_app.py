"""The one way the library makes a Celery app, so the fleet and flows run with one reliability.

Both the fleet's app (``distributed.fleet.fleet_app``) and the flows' app
(``workdir.celery_tasks.make_app``) come from :func:`celery_app`: JSON only (nothing
from a shared broker is unpickled), late acknowledgement and requeue on a lost worker
(crashed work is delivered again), prefetch 1 (a busy worker does not sit on messages
another could start), the visibility timeout that bounds redelivery when a whole
machine vanishes, and retrying the broker connection at start.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

__all__ = ["RELIABILITY", "RUN_FLOW", "celery_app", "reliability"]

RUN_FLOW = "workflow_cache.workdir.run_flow"
"""The task that runs a flow on a worker; producers and metrics only need its name."""

RELIABILITY = (
    "task_serializer",
    "result_serializer",
    "accept_content",
    "task_acks_late",
    "task_reject_on_worker_lost",
    "worker_prefetch_multiplier",
    "broker_connection_retry_on_startup",
    "broker_transport_options",
    "result_backend_transport_options",
)
"""The app settings :func:`reliability` fills in."""


def reliability(visibility_timeout: int) -> dict[str, Any]:
    """The app settings every app of the library runs with."""
    transport = {"visibility_timeout": visibility_timeout}
    return {
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": dict(transport),
        "result_backend_transport_options": dict(transport),
    }


def celery_app(
    main: str,
    *,
    broker: str,
    backend: str | None,
    visibility_timeout: int,
    set_as_current: bool = True,
    **conf: Any,
) -> Celery:
    """A Celery app with :func:`reliability`'s settings; ``conf`` adds (or overrides) others."""
    app = Celery(main, broker=broker, backend=backend, set_as_current=set_as_current)
    app.conf.update({**reliability(visibility_timeout), **conf})
    return app
