"""Outcomes of steps and workflows: ``ok(value)`` or ``err(error)``.

A step's failure is data, not an exception, so it can be stored in a cache,
read back on another machine and returned from a workflow like any value.
"""

from __future__ import annotations

import traceback as _traceback
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

T = TypeVar("T")
E = TypeVar("E")


@dataclass(frozen=True, slots=True)
class Result(Generic[T, E]):
    """``ok`` is True for a success; then ``value`` holds it, else ``error`` does."""

    ok: bool
    value: T | None = None
    error: E | None = None

    def unwrap(self) -> T:
        """The value, or :class:`ResultError` carrying the error."""
        if not self.ok:
            raise ResultError(self.error)
        return self.value  # type: ignore[return-value]

    def __repr__(self) -> str:
        return f"ok({self.value!r})" if self.ok else f"err({self.error!r})"


def ok(value: T = None) -> Result[T, Any]:  # type: ignore[assignment]
    return Result(True, value, None)


def err(error: E) -> Result[Any, E]:
    return Result(False, None, error)


class ResultError(Exception):
    """Raised by :meth:`Result.unwrap` on an ``err``."""

    def __init__(self, error: object) -> None:
        super().__init__(error)
        self.error = error


@dataclass(frozen=True, slots=True)
class UnexpectedError:
    """An exception that escaped a step, reduced to text so it can be stored and shared."""

    type: str
    message: str
    traceback: str = ""

    @classmethod
    def from_exception(cls, exc: BaseException) -> UnexpectedError:
        name = type(exc).__qualname__
        module = type(exc).__module__
        qualified = name if module == "builtins" else f"{module}.{name}"
        text = "".join(_traceback.format_exception(exc))
        return cls(type=qualified, message=str(exc), traceback=text)

    def to_json(self) -> dict[str, str]:
        return {"type": self.type, "message": self.message, "traceback": self.traceback}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> UnexpectedError:
        return cls(
            type=str(data["type"]),
            message=str(data["message"]),
            traceback=str(data.get("traceback", "")),
        )

    def __str__(self) -> str:
        return f"{self.type}: {self.message}"
