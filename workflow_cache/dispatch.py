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


class Expanding(Protocol):
    """A dispatcher whose work may be several steps at once (e.g. a Celery group)."""

    def expand(self, work: Any) -> list[Any] | None:
        """The separate pieces of ``work``, None when it is one step; TypeError if it cannot
        be a step at all (e.g. a chain), raised before anything is sent."""
        ...


_KINDS: dict[type, bool] = {}


class Identifying(Protocol):
    """A dispatcher that replays workflows: it sees every dispatched step in the order the
    workflow asks for it, hit or miss, before anything is read or sent."""

    def identify(self, work: Any, options: StepOptions) -> StepOptions:
        """The step's options with a stable key (unkeyed steps get one from their position);
        raises when the order differs from the run's recorded history."""
        ...


class Timing(Protocol):
    """A dispatcher that can pause a workflow durably (``step.sleep`` in a workflow task)."""

    def sleep(self, seconds: float, key: str | None) -> None:
        """Return once ``seconds`` have passed since the run first asked (which a replay
        after the wake-up finds at once), or end this delivery until then."""
        ...


class Awaiting(Protocol):
    """A dispatcher that can wait for an event from outside (``step.wait_event``)."""

    def wait_event(self, name: str, timeout: float | None, key: str | None) -> Result[Any, Any]:
        """The event's payload as an outcome (an ``err`` past ``timeout`` seconds from the
        run's first ask), or end this delivery until it arrives."""
        ...


def is_signature(work: object) -> bool:
    """True for a Celery signature, told apart without importing Celery (the core stays light).

    The answer depends on the type alone, so it is worked out once per type: ``step.all``
    over a thousand lambdas asks a thousand times.
    """
    kind = type(work)
    known = _KINDS.get(kind)
    if known is None:
        known = _KINDS[kind] = any(
            cls.__name__ == "Signature" and cls.__module__ == "celery.canvas"
            for cls in kind.__mro__
        )
    return known


def no_dispatcher(work: Any) -> TypeError:
    """The error for a signature given to a workflow that has no way to send it."""
    name = getattr(work, "task", None) or type(work).__name__
    return TypeError(
        f"step() got a Celery signature ({name}) but the workflow has no dispatcher for it: "
        "pass dispatcher=CeleryDispatcher(app, cache) to create_workflow to run it on "
        "workers, or step(..., run_locally=True) to run it in this process"
    )


def member_keys(key: str | None, count: int) -> list[str | None]:
    """Keys of the pieces of expanded work: ``key[0]``, ``key[1]``, ... (None when unkeyed)."""
    return [None if key is None else f"{key}[{i}]" for i in range(count)]
