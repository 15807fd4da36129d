"""workflow-cache: workflow steps that run once and are remembered, across machines."""

from workflow_cache.envelope import EnvelopeError, NotStorableError
from workflow_cache.events import StepEvent
from workflow_cache.result import Result, ResultError, UnexpectedError, err, ok
from workflow_cache.step import CachingSkippedWarning, Step
from workflow_cache.workflow import Workflow, create_workflow

__all__ = [
    "CachingSkippedWarning",
    "EnvelopeError",
    "NotStorableError",
    "Result",
    "ResultError",
    "Step",
    "StepEvent",
    "UnexpectedError",
    "Workflow",
    "create_workflow",
    "err",
    "ok",
]
