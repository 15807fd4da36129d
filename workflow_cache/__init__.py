"""workflow-cache: workflow steps that run once and are remembered, across machines."""

from workflow_cache.cache.claims import CacheUnavailable
from workflow_cache.cache.local import LocalCache
from workflow_cache.cache.redis import RedisCache
from workflow_cache.envelope import EnvelopeError, NotStorableError
from workflow_cache.events import StepEvent
from workflow_cache.result import Result, ResultError, UnexpectedError, err, ok
from workflow_cache.step import CachingSkippedWarning, Step
from workflow_cache.workflow import Workflow, create_workflow

__all__ = [
    "CacheUnavailable",
    "CachingSkippedWarning",
    "EnvelopeError",
    "LocalCache",
    "NotStorableError",
    "RedisCache",
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
