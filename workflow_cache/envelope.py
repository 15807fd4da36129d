"""The stored form of a step outcome: a small JSON document, never pickle.

A shared cache must not be a remote-code-execution channel, so everything
stored is plain JSON: ``{"v": 1, "status": "ok"|"err", "value": ..., "error": ...,
"created_at": ..., "ttl": ...}``. Exceptions are stored as
:class:`~workflow_cache.result.UnexpectedError` text, flagged by ``"unexpected": true``.

What is read back is untrusted: :meth:`Envelope.loads` is the one way in. It
bounds the size (:data:`MAX_BYTES`) and nesting depth (:data:`MAX_DEPTH`),
checks every field's type and range with one pydantic model, and raises
:class:`EnvelopeError` naming the key for anything else. With signing keys
(a :class:`~workflow_cache.signing.Signer` given, else the process's own), stores
write :meth:`Envelope.sealed` text, which carries an HMAC-SHA256 ``"sig"`` over the
rest of the document and the key, and :meth:`Envelope.loads` refuses a missing or
wrong signature with :class:`UnsignedEnvelopeError` before parsing anything.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from workflow_cache import signing
from workflow_cache.duration import MAX_DURATION
from workflow_cache.result import Result, UnexpectedError, err, ok

VERSION = 1
MAX_BYTES = 64 << 20
"""The largest envelope written or read: 64 MiB of JSON text."""
MAX_DEPTH = 500
_BATCH_ROW_LIMIT = MAX_DEPTH
"""Rows short enough to parse together: they cannot nest past MAX_DEPTH (others: one by one)."""
"""The deepest nesting of lists and objects in a stored value."""
SIGNATURE_PURPOSE = "workflow-cache step outcome v1"
_SIG_START = '{"sig":"'
_LATEST = 32503680000.0  # the year 3000, as a Unix time (envelope_schema.LATEST too)
_MAX_TTL_SECONDS = MAX_DURATION.total_seconds()
_NUMBERS = (int, float)


class NotStorableError(TypeError):
    """A step's outcome cannot be written as JSON; nothing was stored."""


class EnvelopeError(ValueError):
    """A stored entry is not an envelope this version understands."""


class UnsignedEnvelopeError(EnvelopeError):
    """A stored entry without a valid signature while signing keys are configured.

    Stores treat it as a miss (with one warning) and remove it, so the step runs
    and its outcome is stored again, signed.
    """


def to_json_data(value: Any, returns: Any = None) -> Any:
    """Turn a value into JSON-ready data (pydantic models become dicts)."""
    if returns is not None:
        from workflow_cache.envelope_schema import adapter

        return adapter(returns).dump_python(value, mode="json")
    pydantic = sys.modules.get("pydantic")  # not loaded: the value cannot be one of its models
    if pydantic is not None and isinstance(value, pydantic.BaseModel):
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

    @property
    def ttl_ms(self) -> int | None:
        """The lifetime as Redis takes it (PX milliseconds, at least 1); None: kept."""
        return None if self.ttl is None else max(1, int(self.ttl * 1000))

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
        """Encode as JSON text; a value JSON cannot hold raises :class:`NotStorableError`.

        What could not be read back (too large, too deeply nested) is refused too.
        """
        try:
            text = json.dumps(self.to_data(), separators=(",", ":"), allow_nan=False)
        except RecursionError:
            raise _not_storable(key, self, ValueError("nested too deeply")) from None
        except (TypeError, ValueError) as exc:
            raise _not_storable(key, self, exc) from exc
        if len(text) > MAX_BYTES:
            raise NotStorableError(
                f"step {key!r}: the outcome is {len(text):,} bytes of JSON, more than the "
                f"{MAX_BYTES:,} a cache entry may hold; nothing was stored"
            )
        if _too_deep_text(text):
            raise NotStorableError(
                f"step {key!r}: the outcome is nested more than {MAX_DEPTH} levels deep; "
                "nothing was stored"
            )
        return text

    def sealed(self, key: str, *, signer: signing.Signer | None = None) -> str:
        """The text a shared store writes: :meth:`dumps`, signed when the signer has keys
        (default: the process's signer)."""
        text = self.dumps(key)
        token = (signer or signing.default()).sign(SIGNATURE_PURPOSE, key, text.encode())
        return text if token is None else f'{_SIG_START}{token}",{text[1:]}'

    def detached(self, key: str) -> dict[str, Any]:
        """JSON-ready data that shares nothing with the caller's objects."""
        data: dict[str, Any] = json.loads(self.dumps(key))
        return data

    @classmethod
    def from_data(cls, key: str, data: Any) -> Envelope:
        """Check stored data (already parsed) and build the envelope; :class:`EnvelopeError`."""
        if not isinstance(data, dict) or type(data.get("v")) is not int or data["v"] != VERSION:
            raise EnvelopeError(
                f"cache entry for key {key!r} is not a workflow-cache envelope "
                f'(expected a JSON object with "v": {VERSION} and a status of ok/err)'
            )
        if _too_deep(data):
            raise EnvelopeError(
                f"cache entry for key {key!r} is nested more than {MAX_DEPTH} levels deep"
            )
        return cls._checked(key, data)

    @classmethod
    def _plain(cls, data: dict[str, Any]) -> Envelope | None:
        """The common shape checked by hand (the hot path of every hit), else None.

        Accepts only what ``envelope_schema.StoredEnvelope`` accepts; anything else (an
        unexpected error, a value out of bounds, NaN) takes the full check and its message.
        """
        status = data.get("status")
        created = data.get("created_at", 0.0)
        ttl = data.get("ttl")
        if (
            (status == "ok" or status == "err")
            and data.get("unexpected", False) is False
            and type(created) in _NUMBERS
            and 0 <= created <= _LATEST
            and (ttl is None or (type(ttl) in _NUMBERS and 0 < ttl <= _MAX_TTL_SECONDS))
        ):
            return cls(
                status=status,
                value=data.get("value"),
                error=data.get("error"),
                unexpected=False,
                created_at=float(created),
                ttl=None if ttl is None else float(ttl),
            )
        return None

    @classmethod
    def _checked(cls, key: str, data: Any) -> Envelope:
        if not isinstance(data, dict) or type(data.get("v")) is not int or data["v"] != VERSION:
            raise EnvelopeError(
                f"cache entry for key {key!r} is not a workflow-cache envelope "
                f'(expected a JSON object with "v": {VERSION} and a status of ok/err)'
            )
        fast = cls._plain(data)
        if fast is not None:
            return fast
        from workflow_cache.envelope_schema import check_stored

        stored = check_stored(data)
        if isinstance(stored, str):
            raise EnvelopeError(f"cache entry for key {key!r} {stored}")
        return cls(
            status=stored.status,
            value=stored.value,
            error=stored.error,
            unexpected=stored.unexpected,
            created_at=float(stored.created_at),
            ttl=None if stored.ttl is None else float(stored.ttl),
        )

    @classmethod
    def loads(
        cls, key: str, text: str | bytes, *, signer: signing.Signer | None = None
    ) -> Envelope:
        """Parse and check stored text: the one way an envelope comes back from a store.

        When the signer (default: the process's) has keys, the signature is checked
        first, and a missing or wrong one raises :class:`UnsignedEnvelopeError`.
        """
        if len(text) > MAX_BYTES:
            raise EnvelopeError(
                f"cache entry for key {key!r} is {len(text):,} bytes, more than {MAX_BYTES:,}"
            )
        if isinstance(text, bytes | bytearray):
            try:
                text = text.decode("utf-8")
            except UnicodeDecodeError:
                raise EnvelopeError(f"cache entry for key {key!r} is not UTF-8 text") from None
        signer = signer or signing.default()
        if signer.enabled:
            text = _verified(key, text, signer)
        try:
            data = json.loads(text)
        except RecursionError:
            raise EnvelopeError(
                f"cache entry for key {key!r} is nested more than {MAX_DEPTH} levels deep"
            ) from None
        except ValueError as exc:
            raise EnvelopeError(f"cache entry for key {key!r} is not valid JSON: {exc}") from None
        if (
            len(text) > MAX_DEPTH
            and text.count("[") + text.count("{") > MAX_DEPTH
            and _too_deep(data)
        ):
            raise EnvelopeError(
                f"cache entry for key {key!r} is nested more than {MAX_DEPTH} levels deep"
            )
        return cls._checked(key, data)

    @classmethod
    def loads_many(
        cls,
        keys: Sequence[str],
        rows: Sequence[bytes | None],
        *,
        signer: signing.Signer | None = None,
    ) -> list[Envelope | None]:
        """:meth:`loads` of each row (``None`` stays ``None``), parsing the JSON in one call.

        One parse of ``[row, row, ...]`` costs a third of a thousand separate ones. It is
        only trusted when it yields exactly one document per row; otherwise each row is
        parsed on its own, so a bad row is reported as :meth:`loads` reports it.
        """
        signer = signer or signing.default()
        pairs = list(zip(keys, rows, strict=True))
        short = [raw for raw in rows if type(raw) is bytes and len(raw) <= _BATCH_ROW_LIMIT]
        if len(short) < 2 or signer.enabled:  # signatures are checked row by row
            return [None if raw is None else cls.loads(k, raw, signer=signer) for k, raw in pairs]
        try:
            parsed = json.loads(b"[" + b",".join(short) + b"]")
        except (ValueError, RecursionError):
            parsed = None
        if type(parsed) is not list or len(parsed) != len(short):
            return [None if raw is None else cls.loads(k, raw, signer=signer) for k, raw in pairs]
        documents = iter(parsed)
        return [
            None
            if raw is None
            else cls._checked(k, next(documents))
            if type(raw) is bytes and len(raw) <= _BATCH_ROW_LIMIT
            else cls.loads(k, raw, signer=signer)
            for k, raw in pairs
        ]

    def to_result(self, key: str, returns: Any = None) -> Result[Any, Any]:
        if self.status == "err":
            if not self.unexpected:
                return err(self.error)
            from workflow_cache.envelope_schema import check_unexpected

            fields = check_unexpected(self.error)
            if isinstance(fields, str):
                raise EnvelopeError(f"cache entry for key {key!r} {fields}")
            return err(UnexpectedError(fields.type, fields.message, fields.traceback))
        if returns is None:
            return ok(self.value)
        from workflow_cache.envelope_schema import adapter

        try:
            return ok(adapter(returns).validate_python(self.value))
        except ValueError as exc:  # pydantic's ValidationError
            raise EnvelopeError(
                f"cached value for key {key!r} does not match returns={returns!r}: {exc}"
            ) from None


def _verified(key: str, text: str, signer: signing.Signer) -> str:
    """The envelope text under a valid signature; :class:`UnsignedEnvelopeError` otherwise."""
    if not text.startswith(_SIG_START):
        raise UnsignedEnvelopeError(
            f"cache entry for key {key!r} is not signed (signing keys are configured)"
        )
    end = text.find('"', len(_SIG_START), len(_SIG_START) + 201)
    if end < 0 or text[end + 1 : end + 2] != ",":
        raise UnsignedEnvelopeError(f"cache entry for key {key!r} has a malformed signature")
    payload = "{" + text[end + 2 :]
    try:
        signer.verify(SIGNATURE_PURPOSE, key, payload.encode(), text[len(_SIG_START) : end])
    except signing.SignatureError as exc:
        raise UnsignedEnvelopeError(f"cache entry for key {key!r}: {exc}") from None
    return payload


def _too_deep_text(text: str) -> bool:
    """Whether JSON ``text`` nests deeper than :data:`MAX_DEPTH` (cheap when it cannot)."""
    if text.count("[") + text.count("{") <= MAX_DEPTH:
        return False
    try:
        return _too_deep(json.loads(text))
    except RecursionError:
        return True


def _too_deep(data: Any) -> bool:
    """Whether parsed data nests lists and dicts deeper than :data:`MAX_DEPTH` (no recursion)."""
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item
        if depth > MAX_DEPTH:
            return True
        stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))
    return False


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
