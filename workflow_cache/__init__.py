"""workflow-cache: workflow steps that run once and are remembered, across machines.

The step cache is imported eagerly. Celery glue and working directories are
imported on first use (``workflow_cache.CeleryDispatcher``, ``workflow_cache.run_flow``),
so a plain ``import workflow_cache`` stays light.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from workflow_cache.duration import DurationError
from workflow_cache.envelope import EnvelopeError, NotStorableError, UnsignedEnvelopeError
from workflow_cache.events import StepEvent
from workflow_cache.result import Err, Ok, Result, ResultError, UnexpectedError, err, ok
from workflow_cache.step import CachingSkippedWarning, Step
from workflow_cache.store import CacheUnavailable
from workflow_cache.workflow import Workflow, create_workflow

if TYPE_CHECKING:  # what __getattr__ below imports on first use, spelled out for type checkers
    from workflow_cache.cache.claims import ClaimTimeout
    from workflow_cache.cache.local import LocalCache
    from workflow_cache.cache.redis import RedisCache
    from workflow_cache.distributed import CeleryDispatcher, install, result_of, workflow_task
    from workflow_cache.distributed.signature_key import signature_key
    from workflow_cache.settings import Settings, SettingsWarning
    from workflow_cache.trust_config import TrustConfigError
    from workflow_cache.workdir.entrykey import EntryKey
    from workflow_cache.workdir.expressions import ExpressionError
    from workflow_cache.workdir.filecache import FileCache
    from workflow_cache.workdir.flow import FlowSummary, run_flow
    from workflow_cache.workdir.inputs import InputError
    from workflow_cache.workdir.loader import load_flow, parse_flow
    from workflow_cache.workdir.spec import Flow, FlowError, WorkingDirectory

_LAZY = {
    "ClaimTimeout": "workflow_cache.cache.claims",
    "LocalCache": "workflow_cache.cache.local",
    "RedisCache": "workflow_cache.cache.redis",
    "CeleryDispatcher": "workflow_cache.distributed",
    "install": "workflow_cache.distributed",
    "result_of": "workflow_cache.distributed",
    "signature_key": "workflow_cache.distributed",
    "workflow_task": "workflow_cache.distributed",
    "EntryKey": "workflow_cache.workdir.entrykey",
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
"""Names imported on first use, so ``import workflow_cache`` loads no Redis, Celery or files."""


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'workflow_cache' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups are plain attribute reads
    return value


__all__ = [
    "CacheUnavailable",
    "CachingSkippedWarning",
    "CeleryDispatcher",
    "ClaimTimeout",
    "DurationError",
    "EntryKey",
    "EnvelopeError",
    "Err",
    "ExpressionError",
    "FileCache",
    "Flow",
    "FlowError",
    "FlowSummary",
    "InputError",
    "LocalCache",
    "NotStorableError",
    "Ok",
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
