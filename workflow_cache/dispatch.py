"""How a step's work can run somewhere else (a Celery worker) instead of in this process.

The core only knows this protocol; ``workflow_cache.distributed`` implements it
for Celery signatures. A dispatcher runs the work under the key's claim where
the work executes and returns the committed outcome.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from workflow_cache.options import StepOptions
from workflow_cache.result import Result


class Dispatcher(Protocol):
    def accepts(self, work: object) -> bool:
        """True for work this dispatcher sends away (e.g. a Celery signature)."""
        ...

    def run(self, work: Any, options: StepOptions) -> Result[Any, Any]:
        """Send the work, wait for its outcome, return it (blocking)."""
        ...

    def run_many(self, works: Sequence[tuple[Any, StepOptions]]) -> list[Result[Any, Any]]:
        """Send every piece of work first, then wait for all of them (fan-out)."""
        ...
