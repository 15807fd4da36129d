"""Per-step options after defaults are applied, and the rule for keys."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from workflow_cache.result import Result, UnexpectedError
from workflow_cache.retries import NO_RETRIES, RetryPolicy


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


UNSET: Any = _Unset()
"""An option left out of a ``step(...)`` call, so the workflow's default applies."""


@dataclass(frozen=True, slots=True)
class StepDefaults:
    """Workflow-wide step options; each ``step(...)`` call may override them."""

    ttl: float | None = None
    cache_errors: bool = True
    cache_exceptions: bool = False
    retry: RetryPolicy = NO_RETRIES


@dataclass(frozen=True, slots=True)
class StepOptions:
    key: str | None = None
    ttl: float | None = None
    cache_errors: bool = True
    cache_exceptions: bool = False
    returns: Any = None
    retry: RetryPolicy = NO_RETRIES


def check_key(key: object) -> str | None:
    if key is None:
        return None
    if not isinstance(key, str):
        raise TypeError(f"step key must be a non-empty string, not {type(key).__name__}")
    if not key:
        raise ValueError("step key must be a non-empty string, got ''")
    return key


def keeps(result: Result[Any, Any], options: StepOptions) -> bool:
    """Whether an outcome is stored: values always, errors and exceptions as configured."""
    if result.ok:
        return True
    if isinstance(result.error, UnexpectedError):
        return options.cache_exceptions
    return options.cache_errors
