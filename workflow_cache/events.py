"""Step events for the ``on_event`` hook: logging, metrics and tests see what a step did."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

EventKind = Literal["start", "cache_hit", "cache_miss", "success", "error"]


@dataclass(frozen=True, slots=True)
class StepEvent:
    kind: EventKind
    key: str | None
    duration: float = 0.0
    """Seconds since the step started."""
    outcome: Literal["ok", "err"] | None = None
    """Set on ``cache_hit``, ``success`` and ``error``."""


EventHook = Callable[[StepEvent], None]
