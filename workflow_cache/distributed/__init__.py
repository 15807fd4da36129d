"""Celery glue: steps dispatched to workers, whole workflows enqueued by producers."""

from workflow_cache.distributed.steps import STEP_TASK, CeleryDispatcher, install
from workflow_cache.distributed.workflows import result_of, workflow_task

__all__ = ["STEP_TASK", "CeleryDispatcher", "install", "result_of", "workflow_task"]
