"""A dispatched step a producer or a run is waiting for, and how its stored outcome reads."""

from __future__ import annotations

from typing import Any

from celery import Signature

from workflow_cache.envelope import Envelope, NotStorableError
from workflow_cache.options import StepOptions
from workflow_cache.result import Result, UnexpectedError

_NOT_STORABLE = f"{NotStorableError.__module__}.{NotStorableError.__qualname__}"


class PendingStep:
    """A signature with the (always keyed) options it was sent under."""

    __slots__ = ("key", "options", "signature")

    def __init__(self, signature: Signature, options: StepOptions) -> None:
        if options.key is None:
            raise ValueError("a pending step needs a key to wait on")
        self.signature = signature
        self.options = options
        self.key: str = options.key

    def decode(self, raw: bytes) -> Result[Any, Any]:
        """The stored outcome as the caller sees it; a value JSON could not hold is raised."""
        result = Envelope.loads(self.key, raw).to_result(self.key, self.options.returns)
        error = None if result.ok else result.error
        if isinstance(error, UnexpectedError) and error.type == _NOT_STORABLE:
            # As when the step runs here: a value JSON cannot hold is the caller's bug, raised.
            raise NotStorableError(error.message)
        return result
