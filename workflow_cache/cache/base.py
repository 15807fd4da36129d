"""The Map-like face (``get``/``set``) shared by the caches that store envelopes themselves."""

from __future__ import annotations

from typing import Any

from workflow_cache.duration import TTL, to_seconds
from workflow_cache.envelope import Envelope
from workflow_cache.result import Result, is_result, ok


class NativeCache:
    """User-facing Map-like methods for caches that store envelopes themselves.

    ``get`` returns the stored :class:`Result` (or ``None``) and ``set`` stores a
    value or a ``Result``, so outcomes can be inspected or seeded by hand.
    Subclasses provide ``load``, ``save``, ``has``, ``delete`` and ``clear``.
    """

    default_ttl: float | None = None

    def load(self, key: str) -> Envelope | None:
        raise NotImplementedError

    def save(self, key: str, envelope: Envelope) -> None:
        raise NotImplementedError

    def get(self, key: str) -> Result[Any, Any] | None:
        envelope = self.load(key)
        return None if envelope is None else envelope.to_result(key)

    def set(self, key: str, outcome: Any, *, ttl: TTL | None = None) -> None:
        result = outcome if is_result(outcome) else ok(outcome)
        seconds = to_seconds(ttl) if ttl is not None else self.default_ttl
        self.save(key, Envelope.from_result(key, result, ttl=seconds))
