"""How often a local step is attempted, how long to wait in between, and how long one
attempt may take.

An attempt fails when its thunk raises (or runs past ``timeout``); an ``err(...)`` it
returns is an outcome, not a failure, and is never retried. Under a claim every attempt
belongs to the one execution of the key: waiters keep waiting and the lease is renewed
until the last attempt ends.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from workflow_cache.duration import to_seconds


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """``retries`` more attempts after the first; the n-th wait is
    ``retry_delay * retry_backoff ** (n - 1)``, scaled by a random factor in
    ``[1 - retry_jitter, 1 + retry_jitter]``; ``timeout`` bounds each attempt."""

    retries: int = 0
    retry_delay: float = 0.0
    retry_backoff: float = 1.0
    retry_jitter: float = 0.0
    timeout: float | None = None

    @property
    def attempts(self) -> int:
        return self.retries + 1

    @property
    def inactive(self) -> bool:
        """Nothing to do: one attempt, no time limit (the fast path)."""
        return self.retries == 0 and self.timeout is None

    def delay(self, failed: int) -> float:
        """Seconds to wait after the ``failed``-th failed attempt (1-based)."""
        base = self.retry_delay * self.retry_backoff ** (failed - 1)
        if self.retry_jitter and base:
            base *= random.uniform(1.0 - self.retry_jitter, 1.0 + self.retry_jitter)
        return max(0.0, base)


NO_RETRIES = RetryPolicy()

RETRY_OPTIONS = ("retries", "retry_delay", "retry_backoff", "retry_jitter", "timeout")


def retry_policy(base: RetryPolicy, **given: Any) -> RetryPolicy:
    """``base`` with the options in ``given`` (left-out ones are not in it) checked and
    applied; a bad value is an error naming the option."""
    if not given:
        return base
    values = {name: getattr(base, name) for name in RETRY_OPTIONS}
    for name, value in given.items():
        values[name] = _check(name, value)
    return RetryPolicy(**values)


def _check(name: str, value: Any) -> Any:
    if name == "retries":
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"retries must be a whole number >= 0, got {value!r}")
        return value
    if name == "retry_delay":
        if value is None or (isinstance(value, int | float) and value == 0):
            return 0.0
        return to_seconds(value, name="retry_delay")
    if name == "timeout":
        return to_seconds(value, name="timeout")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number, not {type(value).__name__}")
    if name == "retry_backoff" and value < 1:
        raise ValueError(f"retry_backoff must be >= 1 (1 = the same delay each time), got {value}")
    if name == "retry_jitter" and not 0 <= value <= 1:
        raise ValueError(f"retry_jitter must be between 0 and 1, got {value}")
    return float(value)


__all__ = ["NO_RETRIES", "RETRY_OPTIONS", "RetryPolicy", "retry_policy"]
