"""workflow-cache: workflow steps that run once and are remembered, across machines.

The step cache is imported eagerly. Celery glue and working directories are
imported on first use (``workflow_cache.CeleryDispatcher``, ``workflow_cache.run_flow``),
so a plain ``import workflow_cache`` stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

from workflow_cache.cache.claims import CacheUnavailable, ClaimTimeout
from workflow_cache.cache.local import LocalCache
from workflow_cache.cache.redis import RedisCache
from workflow_cache.duration import DurationError
from workflow_cache.envelope import EnvelopeError, NotStorableError, UnsignedEnvelopeError
from workflow_cache.events import StepEvent
from workflow_cache.result import Result, ResultError, UnexpectedError, err, ok
from workflow_cache.step import CachingSkippedWarning, Step
from workflow_cache.workflow import Workflow, create_workflow

_LAZY = {
    "CeleryDispatcher": "workflow_cache.distributed",
    "install": "workflow_cache.distributed",
    "result_of": "workflow_cache.distributed",
    "signature_key": "workflow_cache.distributed",
    "workflow_task": "workflow_cache.distributed",
    "EntryKey": "workflow_cache.workdir.filecache",
    "FileCache": "workflow_cache.workdir.filecache",
    "Flow": "workflow_cache.workdir.spec",
    "FlowError": "workflow_cache.workdir.spec",
    "WorkingDirectory": "workflow_cache.workdir.spec",
    "load_flow": "workflow_cache.workdir.loader",
    "parse_flow": "workflow_cache.workdir.loader",
    "run_flow": "workflow_cache.workdir.flow",
    "FlowSummary": "workflow_cache.workdir.flow",
    "InputError": "workflow_cache.workdir.inputs",
    "ExpressionError": "workflow_cache.workdir.expressions",
    "Settings": "workflow_cache.settings",
    "TrustConfigError": "workflow_cache.trust_config",
    "SettingsWarning": "workflow_cache.settings",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'workflow_cache' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = [
    "CacheUnavailable",
    "CachingSkippedWarning",
    "CeleryDispatcher",
    "ClaimTimeout",
    "DurationError",
    "EntryKey",
    "EnvelopeError",
    "ExpressionError",
    "FileCache",
    "Flow",
    "FlowError",
    "FlowSummary",
    "InputError",
    "LocalCache",
    "NotStorableError",
    "RedisCache",
    "Result",
    "ResultError",
    "Settings",
    "SettingsWarning",
    "Step",
    "StepEvent",
    "TrustConfigError",
    "UnexpectedError",
    "UnsignedEnvelopeError",
    "Workflow",
    "WorkingDirectory",
    "create_workflow",
    "err",
    "install",
    "load_flow",
    "ok",
    "parse_flow",
    "result_of",
    "run_flow",
    "signature_key",
    "workflow_task",
]
