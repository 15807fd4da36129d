"""The pydantic shapes of a stored envelope, for what the hand-written checks leave over.

Kept apart from ``envelope.py`` and imported on first need, so that reading the
common envelope (checked by hand) and a bare ``import workflow_cache`` never load
pydantic. Problems come back as one line of text; ``envelope.py`` turns them into
its errors.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from workflow_cache.duration import MAX_DURATION

LATEST = 32503680000.0  # the year 3000, as a Unix time


class UnexpectedFields(BaseModel):
    """The error of an outcome flagged ``"unexpected"``: an exception reduced to text."""

    model_config = ConfigDict(extra="ignore", strict=True)

    type: str
    message: str
    traceback: str = ""


class StoredEnvelope(BaseModel):
    """The shape every stored envelope must have; extra fields are ignored."""

    model_config = ConfigDict(extra="ignore", strict=True)

    v: Literal[1]
    status: Literal["ok", "err"]
    value: Any = None
    error: Any = None
    unexpected: bool = False
    created_at: Annotated[float, Field(ge=0, le=LATEST, allow_inf_nan=False)] = 0.0
    ttl: (
        Annotated[float, Field(gt=0, le=MAX_DURATION.total_seconds(), allow_inf_nan=False)] | None
    ) = None

    @model_validator(mode="after")
    def _error_shape(self) -> StoredEnvelope:
        if self.unexpected:
            if self.status != "err":
                raise ValueError('"unexpected" is only allowed on an err outcome')
            try:
                UnexpectedFields.model_validate(self.error)
            except ValidationError:
                raise ValueError(
                    'the "error" of an unexpected outcome needs "type" and "message" text'
                ) from None
        return self


def check_stored(data: Any) -> StoredEnvelope | str:
    """The validated envelope, or one line saying what is wrong with it."""
    try:
        return StoredEnvelope.model_validate(data)
    except ValidationError as exc:
        return first_problem(exc)


def check_unexpected(error: Any) -> UnexpectedFields | str:
    """The fields of an unexpected error, or one line saying what is wrong with them."""
    try:
        return UnexpectedFields.model_validate(error)
    except ValidationError as exc:
        return first_problem(exc)


@lru_cache(maxsize=256)
def adapter(returns: Any) -> TypeAdapter[Any]:
    """The (cached) pydantic adapter for a step's ``returns=`` type."""
    return TypeAdapter(returns)


def first_problem(exc: ValidationError) -> str:
    """One line for the first thing wrong in stored data, naming the field."""
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first["loc"])
    if not where:
        return f"is malformed: {first['msg'].removeprefix('Value error, ')}"
    return f"has a bad {where!r} field: {first['msg']}"
