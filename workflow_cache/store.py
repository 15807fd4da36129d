"""How a workflow talks to a cache, and adapters for the caches users bring.

Part of the core: it knows no Redis and no files, so ``step`` and ``workflow`` can
depend on it while the caches in ``cache/`` implement it.

The workflow core needs three operations on stored envelopes: ``load``,
``load_many`` and ``save`` (an :class:`OutcomeStore`). ``RedisCache`` and
``LocalCache`` implement them natively. A ``dict`` (or any mutable mapping) and
any object with Map-like ``get``/``set``/``has``/``delete`` methods, sync or
``async``, are wrapped here. Such caches are handed plain JSON-ready data, so a
cache written with ``json.dumps``/``json.loads`` works as it is.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any, Protocol, TypeAlias, TypeVar, cast, runtime_checkable

from workflow_cache.envelope import Envelope

T = TypeVar("T")
U = TypeVar("U")

MaybeAwaitable: TypeAlias = T | Awaitable[T]


class CacheUnavailable(ConnectionError):
    """The shared cache could not be reached, stopped answering, or refused a write.

    The message names the server. A refused write (Redis out of memory under
    ``noeviction``) is one too: the cache cannot do its job until it is fixed.
    """


@runtime_checkable
class OutcomeStore(Protocol):
    """What the workflow core needs; each method may return an awaitable."""

    def load(self, key: str) -> MaybeAwaitable[Envelope | None]: ...

    def load_many(self, keys: Sequence[str]) -> MaybeAwaitable[list[Envelope | None]]: ...

    def save(self, key: str, envelope: Envelope) -> MaybeAwaitable[None]: ...


class Claim(Protocol):
    """The right to run one keyed step, held by this process until commit or release."""

    def commit(self, envelope: Envelope, *, keep: bool) -> bool:
        """Announce the outcome to waiters (and store it if ``keep``); False if fenced off."""
        ...

    def release(self) -> None: ...


@runtime_checkable
class ClaimingStore(OutcomeStore, Protocol):
    """A store shared by many processes that lets exactly one of them run a missing key.

    ``acquire`` blocks while another process runs the key, and returns its
    outcome (an :class:`Envelope`) when it is known, or a :class:`Claim`.
    """

    def acquire(self, key: str) -> Envelope | Claim: ...


_CLAIMING: dict[type, bool] = {}


def can_claim(store: object) -> bool:
    """``isinstance(store, ClaimingStore)``, worked out once per type: a protocol check
    costs microseconds, and every miss asks."""
    kind = type(store)
    known = _CLAIMING.get(kind)
    if known is None:
        known = _CLAIMING[kind] = isinstance(store, ClaimingStore)
    return known


def then(value: MaybeAwaitable[T], fn: Callable[[T], MaybeAwaitable[U]]) -> MaybeAwaitable[U]:
    """Apply ``fn`` now, or after awaiting, so one adapter serves sync and async caches
    (``fn`` may itself return an awaitable: it is awaited too)."""
    if inspect.isawaitable(value):

        async def later() -> U:
            result = fn(await value)
            if inspect.isawaitable(result):
                return cast(U, await result)
            return result

        return later()
    return fn(value)


def gather_all(values: list[Any]) -> MaybeAwaitable[list[Any]]:
    if any(inspect.isawaitable(v) for v in values):

        async def later() -> list[Any]:
            return list(await asyncio.gather(*(_as_coro(v) for v in values)))

        return later()
    return values


async def _as_coro(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


class _Adapter:
    """Shared logic: decode stored data and drop entries whose ttl has passed."""

    def _get(self, key: str) -> Any:
        raise NotImplementedError

    def _set(self, key: str, data: dict[str, Any]) -> Any:
        raise NotImplementedError

    def _delete(self, key: str) -> Any:
        raise NotImplementedError

    def _decode(self, key: str, data: Any) -> MaybeAwaitable[Envelope | None]:
        if data is None:
            return None
        envelope = Envelope.from_data(key, data)
        if envelope.expired():
            return then(self._delete(key), lambda _: None)
        return envelope

    def load(self, key: str) -> MaybeAwaitable[Envelope | None]:
        return then(self._get(key), lambda data: self._decode(key, data))

    def load_many(self, keys: Sequence[str]) -> MaybeAwaitable[list[Envelope | None]]:
        return gather_all([self.load(key) for key in keys])

    def save(self, key: str, envelope: Envelope) -> MaybeAwaitable[None]:
        return then(self._set(key, envelope.detached(key)), lambda _: None)


class MappingStore(_Adapter):
    """A ``dict`` or other mutable mapping: ``del cache[key]`` and ``cache.clear()`` clear it."""

    def __init__(self, mapping: MutableMapping[str, Any]) -> None:
        self.mapping = mapping

    def _get(self, key: str) -> Any:
        return self.mapping.get(key)

    def _set(self, key: str, data: dict[str, Any]) -> None:
        self.mapping[key] = data

    def _delete(self, key: str) -> None:
        self.mapping.pop(key, None)


class MethodStore(_Adapter):
    """An object with Map-like ``get``/``set`` (and ``delete``) methods, sync or async."""

    def __init__(self, cache: Any) -> None:
        self.cache = cache

    def _get(self, key: str) -> Any:
        return self.cache.get(key)

    def _set(self, key: str, data: dict[str, Any]) -> Any:
        return self.cache.set(key, data)

    def _delete(self, key: str) -> Any:
        return self.cache.delete(key)

    def load_many(self, keys: Sequence[str]) -> MaybeAwaitable[list[Envelope | None]]:
        get_many = getattr(self.cache, "get_many", None)
        if get_many is None:
            return super().load_many(keys)
        return then(
            get_many(list(keys)),
            lambda rows: gather_all([self._decode(k, d) for k, d in zip(keys, rows, strict=True)]),
        )


_REQUIRED = ("get", "set", "has", "delete")


def as_store(cache: object) -> OutcomeStore | None:
    """Wrap what the user passed as ``cache=``; a clear ``TypeError`` if it cannot be one."""
    if cache is None:
        return None
    if isinstance(cache, OutcomeStore):
        return cache
    if isinstance(cache, MutableMapping):
        return MappingStore(cache)
    missing = [name for name in _REQUIRED if not callable(getattr(cache, name, None))]
    if missing:
        raise TypeError(
            f"cache must be a dict, a RedisCache/LocalCache, or an object with "
            f"get/set/has/delete methods; {type(cache).__name__} lacks {', '.join(missing)}"
        )
    return MethodStore(cache)
