"""Celery glue: steps dispatched to workers, whole workflows enqueued by producers."""

from workflow_cache.distributed.cancel import RunCancelled, cancel_run, cancel_run_async
from workflow_cache.distributed.dispatcher import CeleryDispatcher, StepWaitTimeout
from workflow_cache.distributed.events import EventTimeout, send_event, send_event_async
from workflow_cache.distributed.fleet import fleet_app
from workflow_cache.distributed.runs import RunEvent, RunInfo
from workflow_cache.distributed.signature_key import signature_key
from workflow_cache.distributed.steps import install
from workflow_cache.distributed.suspend import ReplayDiverged
from workflow_cache.distributed.workflows import (
    outcome_of,
    result_of,
    run_info,
    waiting_on,
    workflow_task,
)

__all__ = [
    "CeleryDispatcher",
    "EventTimeout",
    "ReplayDiverged",
    "RunCancelled",
    "RunEvent",
    "RunInfo",
    "StepWaitTimeout",
    "cancel_run",
    "cancel_run_async",
    "fleet_app",
    "install",
    "outcome_of",
    "result_of",
    "run_info",
    "send_event",
    "send_event_async",
    "signature_key",
    "waiting_on",
    "workflow_task",
]
