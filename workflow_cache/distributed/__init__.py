"""Celery glue: steps dispatched to workers, whole workflows enqueued by producers."""

from workflow_cache.distributed.dispatcher import CeleryDispatcher
from workflow_cache.distributed.fleet import fleet_app
from workflow_cache.distributed.signature_key import signature_key
from workflow_cache.distributed.steps import install
from workflow_cache.distributed.workflows import result_of, workflow_task

__all__ = [
    "CeleryDispatcher",
    "fleet_app",
    "install",
    "result_of",
    "signature_key",
    "workflow_task",
]
