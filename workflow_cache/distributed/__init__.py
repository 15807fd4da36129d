"""Celery glue: steps dispatched to workers, whole workflows enqueued by producers."""

from workflow_cache.distributed.fleet import fleet_app
from workflow_cache.distributed.steps import STEP_TASK, CeleryDispatcher, install
from workflow_cache.distributed.workflows import result_of, workflow_task

__all__ = ["STEP_TASK", "CeleryDispatcher", "fleet_app", "install", "result_of", "workflow_task"]
