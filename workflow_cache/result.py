"""Outcomes of steps and workflows: ``ok(value)`` or ``err(error)``.

A step's failure is data, not an exception, so it can be stored in a cache,
read back on another machine and returned from a workflow like any value.

``Result[T, E]`` is the union ``Ok[T] | Err[E]``: a type checker narrows it on
``.ok`` (``if r.ok: r.value`` is a ``T``, else ``r.error`` is an ``E``). At run
time ``Result`` is the common base class, so ``isinstance(x, Result)`` and
``Result[int, str]`` keep working for code that predates the union.
"""

from __future__ import annotations

import traceback as _traceback
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Literal, NoReturn, TypeAlias, TypeGuard, TypeVar

__all__ = [
    "Err",
    "Ok",
    "Result",
    "ResultBase",
    "ResultError",
    "UnexpectedError",
    "err",
    "is_result",
    "ok",
]

T = TypeVar("T")
E = TypeVar("E")
T_co = TypeVar("T_co", covariant=True)
E_co = TypeVar("E_co", covariant=True)


class ResultBase(Generic[T_co, E_co]):
    """What ``Ok`` and ``Err`` share; at run time it is ``Result`` itself."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class Ok(ResultBase[T_co, Any]):
    """A success carrying ``value``."""

    value: T_co

    @property
    def ok(self) -> Literal[True]:
        return True

    @property
    def error(self) -> None:
        return None

    def unwrap(self) -> T_co:
        return self.value

    def __repr__(self) -> str:
        return f"ok({self.value!r})"


@dataclass(frozen=True, slots=True)
class Err(ResultBase[Any, E_co]):
    """A failure carrying ``error``."""

    error: E_co

    @property
    def ok(self) -> Literal[False]:
        return False

    @property
    def value(self) -> None:
        return None

    def unwrap(self) -> NoReturn:
        """Raise :class:`ResultError` carrying the error (an ``err`` has no value)."""
        raise ResultError(self.error)

    def __repr__(self) -> str:
        return f"err({self.error!r})"


if TYPE_CHECKING:
    Result: TypeAlias = Ok[T] | Err[E]
else:
    Result = ResultBase


def is_result(value: object) -> TypeGuard[Ok[Any] | Err[Any]]:
    """Whether ``value`` is an ``ok``/``err`` outcome (``isinstance`` a type checker follows)."""
    return isinstance(value, ResultBase)


def ok(value: T = None) -> Ok[T]:  # type: ignore[assignment]  # ok() is ok(None)
    return Ok(value)


def err(error: E) -> Err[E]:
    return Err(error)


class ResultError(Exception):
    """Raised by ``unwrap()`` on an ``err``."""

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
