"""The stored form of a step outcome: a small JSON document, never pickle.

A shared cache must not be a remote-code-execution channel, so everything
stored is plain JSON: ``{"v": 1, "status": "ok"|"err", "value": ..., "error": ...,
"created_at": ..., "ttl": ...}``. Exceptions are stored as
:class:`~workflow_cache.result.UnexpectedError` text, flagged by ``"unexpected": true``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from pydantic import BaseModel, TypeAdapter, ValidationError

from workflow_cache.result import Result, UnexpectedError, err, ok

VERSION = 1


class NotStorableError(TypeError):
    """A step's outcome cannot be written as JSON; nothing was stored."""


class EnvelopeError(ValueError):
    """A stored entry is not an envelope this version understands."""


@lru_cache(maxsize=256)
def _adapter(returns: Any) -> TypeAdapter[Any]:
    return TypeAdapter(returns)


def to_json_data(value: Any, returns: Any = None) -> Any:
    """Turn a value into JSON-ready data (pydantic models become dicts)."""
    if returns is not None:
        return _adapter(returns).dump_python(value, mode="json")
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    return value


@dataclass(frozen=True, slots=True)
class Envelope:
    status: str
    value: Any = None
    error: Any = None
    unexpected: bool = False
    created_at: float = 0.0
    ttl: float | None = None

    @classmethod
    def from_result(
        cls,
        key: str,
        result: Result[Any, Any],
        *,
        ttl: float | None,
        returns: Any = None,
        now: float | None = None,
    ) -> Envelope:
        """Build and check an envelope; raise :class:`NotStorableError` naming key and type."""
        created = time.time() if now is None else now
        try:
            if result.ok:
                return cls(
                    "ok", value=to_json_data(result.value, returns), created_at=created, ttl=ttl
                )
            error = result.error
            if isinstance(error, UnexpectedError):
                return cls(
                    "err", error=error.to_json(), unexpected=True, created_at=created, ttl=ttl
                )
            return cls("err", error=to_json_data(error), created_at=created, ttl=ttl)
        except Exception as exc:  # pydantic serialisation errors
            raise _not_storable(key, result, exc) from exc

    def expired(self, now: float | None = None) -> bool:
        if self.ttl is None:
            return False
        return (time.time() if now is None else now) >= self.created_at + self.ttl

    def to_data(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "v": VERSION,
            "status": self.status,
            "value": self.value,
            "error": self.error,
            "created_at": self.created_at,
            "ttl": self.ttl,
        }
        if self.unexpected:
            data["unexpected"] = True
        return data

    def dumps(self, key: str) -> str:
        """Encode as JSON text; a value JSON cannot hold raises :class:`NotStorableError`."""
        try:
            return json.dumps(self.to_data(), separators=(",", ":"), allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise _not_storable(key, self, exc) from exc

    def detached(self, key: str) -> dict[str, Any]:
        """JSON-ready data that shares nothing with the caller's objects."""
        return json.loads(self.dumps(key))

    @classmethod
    def from_data(cls, key: str, data: Any) -> Envelope:
        if (
            not isinstance(data, dict)
            or data.get("v") != VERSION
            or data.get("status") not in ("ok", "err")
        ):
            raise EnvelopeError(
                f"cache entry for key {key!r} is not a workflow-cache envelope "
                f'(expected a JSON object with "v": {VERSION} and a status of ok/err)'
            )
        ttl = data.get("ttl")
        return cls(
            status=data["status"],
            value=data.get("value"),
            error=data.get("error"),
            unexpected=bool(data.get("unexpected")),
            created_at=float(data.get("created_at") or 0.0),
            ttl=None if ttl is None else float(ttl),
        )

    @classmethod
    def loads(cls, key: str, text: str | bytes) -> Envelope:
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise EnvelopeError(f"cache entry for key {key!r} is not valid JSON: {exc}") from None
        return cls.from_data(key, data)

    @classmethod
    def loads_many(cls, keys: Sequence[str], rows: Sequence[bytes | None]) -> list[Envelope | None]:
        """:meth:`loads` of each row (``None`` stays ``None``), parsing the JSON in one call.

        One parse of ``[row, row, ...]`` costs a third of a thousand separate ones. It is
        only trusted when it yields exactly one document per row; otherwise each row is
        parsed on its own, so a bad row is reported as :meth:`loads` reports it.
        """
        present = [raw for raw in rows if raw is not None]
        pairs = list(zip(keys, rows, strict=True))
        if len(present) < 2 or not all(type(raw) is bytes for raw in present):
            return [None if raw is None else cls.loads(k, raw) for k, raw in pairs]
        try:
            parsed = json.loads(b"[" + b",".join(present) + b"]")  # type: ignore[arg-type]
        except ValueError:
            parsed = None
        if type(parsed) is not list or len(parsed) != len(present):
            return [None if raw is None else cls.loads(k, raw) for k, raw in pairs]
        documents = iter(parsed)
        return [None if raw is None else cls.from_data(k, next(documents)) for k, raw in pairs]

    def to_result(self, key: str, returns: Any = None) -> Result[Any, Any]:
        if self.status == "err":
            error = UnexpectedError.from_json(self.error) if self.unexpected else self.error
            return err(error)
        if returns is None:
            return ok(self.value)
        try:
            return ok(_adapter(returns).validate_python(self.value))
        except ValidationError as exc:
            raise EnvelopeError(
                f"cached value for key {key!r} does not match returns={returns!r}: {exc}"
            ) from None


def _not_storable(key: str, what: Any, exc: Exception) -> NotStorableError:
    kind = _offending_type(what)
    return NotStorableError(
        f"step {key!r}: a value of type {kind} cannot be stored as JSON ({exc}); "
        "nothing was stored. Return JSON data or a pydantic model, or pass returns=<type>."
    )


def _offending_type(what: Result[Any, Any] | Envelope) -> str:
    if isinstance(what, Result):
        target = what.value if what.ok else what.error
    else:
        target = what.value if what.status == "ok" else what.error
    return _find_unjsonable(target) or type(target).__name__


def _find_unjsonable(value: Any) -> str:
    """Name the first type inside ``value`` that JSON cannot hold."""
    if isinstance(value, dict):
        for item in value.values():
            found = _find_unjsonable(item)
            if found:
                return found
        return ""
    if isinstance(value, list | tuple):
        for item in value:
            found = _find_unjsonable(item)
            if found:
                return found
        return ""
    if value is None or isinstance(value, str | int | float | bool):
        return ""
    return type(value).__name__
