"""What a step's message carries besides the user's task: its key, namespace and policy.

It travels as one message header, ``wfc_step``, so the task's own arguments, name and
options stay exactly what the user wrote, and Celery's retries (which copy the
request's headers) carry it to every attempt. A header read on a worker is untrusted
input: it is validated here, and a bad one is refused with one warning line.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from workflow_cache.duration import MAX_DURATION
from workflow_cache.options import StepOptions

HEADER = "wfc_step"
MAX_KEY_CHARS = 4096


class StepHeader(BaseModel):
    """The step a message runs: key and namespace, and which outcomes are kept."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    v: int = Field(1, ge=1, le=1)
    key: str = Field(min_length=1, max_length=MAX_KEY_CHARS)
    ns: str = Field(min_length=1, max_length=256)
    ttl: float | None = Field(default=None, gt=0, le=MAX_DURATION.total_seconds())
    errors: bool = True
    exceptions: bool = False
    once: bool = False

    @classmethod
    def of(cls, options: StepOptions, namespace: str, *, once: bool) -> StepHeader:
        """The header of a step to send; a step no worker would accept is a ``ValueError``."""
        assert options.key is not None
        try:
            return cls(
                key=options.key,
                ns=namespace,
                ttl=options.ttl,
                errors=options.cache_errors,
                exceptions=options.cache_exceptions,
                once=once,
            )
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()
            )
            raise ValueError(f"step {options.key[:80]!r} cannot be sent: {problems}") from None

    def options(self) -> StepOptions:
        return StepOptions(
            key=self.key, ttl=self.ttl, cache_errors=self.errors, cache_exceptions=self.exceptions
        )

    def dump(self) -> dict[str, Any]:
        return self.model_dump()


class BadHeader(ValueError):
    """The ``wfc_step`` header of a message is not a valid step description."""


def read_header(headers: Any) -> StepHeader | None:
    """The step header of a message's headers, None when it has none; ``BadHeader`` if bad."""
    if not isinstance(headers, dict) or HEADER not in headers:
        return None
    raw = headers[HEADER]
    try:
        return StepHeader.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "header"
        raise BadHeader(f"{HEADER} header: {where}: {first['msg']}") from None
