"""A ``RedisCache`` as async workflows see it: the same keys and envelopes, on ``redis.asyncio``.

``RedisCache.for_async()`` gives one of these per event loop (one connection pool
per loop, since ``redis.asyncio`` connections belong to the loop that made them).
Reads, writes, claims, renewals and waits are coroutines; none blocks the loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import redis
import redis.asyncio

from workflow_cache import signing
from workflow_cache.cache.aio import AsyncFlight, AsyncHolder
from workflow_cache.cache.claims import Done, Reaching
from workflow_cache.cache.lua import script
from workflow_cache.cache.redis import REFUSED_RETRIES, ClaimRecord, record_acquire
from workflow_cache.envelope import Envelope, EnvelopeError, UnsignedEnvelopeError
from workflow_cache.options import check_key

if TYPE_CHECKING:
    from workflow_cache.cache.redis import RedisCache

__all__ = ["AsyncRedisCache", "AsyncRedisClaim"]

log = logging.getLogger(__name__)


class AsyncRedisCache:
    """The async face of one ``RedisCache`` on one event loop."""

    def __init__(self, cache: RedisCache, client: redis.asyncio.Redis, where: str) -> None:
        self.cache = cache
        self.client = client
        self.where = where
        self._reaching = Reaching(where)
        self.namespace = cache.namespace
        self.keyspace = cache.keyspace
        self.flight = AsyncFlight(client, cache.keyspace, lease=cache.lease, where=where)

    async def _call(self, coro: Any) -> Any:
        with self._reaching:
            return await coro

    async def load(self, key: str) -> Envelope | None:
        raw = await self._call(self.client.get(self.keyspace.out(check_key(key))))  # type: ignore[arg-type]
        self.cache._looked_up([key], [raw])
        if raw is None:
            return None
        try:  # as _decode, without a coroutine more on the path of every hit
            return Envelope.loads(key, raw)
        except UnsignedEnvelopeError as exc:
            return await self._refuse(key, raw, exc)

    async def load_many(self, keys: Sequence[str]) -> list[Envelope | None]:
        if not keys:
            return []
        names = [self.keyspace.out(check_key(k)) for k in keys]  # type: ignore[arg-type]
        rows = list(await self._call(self.client.mget(names)))
        self.cache._looked_up(keys, rows)
        if signing.enabled():  # each row's signature checked, a refused one removed
            return [
                None if raw is None else await self._decode(k, raw)
                for k, raw in zip(keys, rows, strict=True)
            ]
        return Envelope.loads_many(keys, rows)

    async def _decode(self, key: str, raw: bytes) -> Envelope | None:
        """As ``RedisCache._decode``: a bad signature is a miss, removed if still the same."""
        try:
            return Envelope.loads(key, raw)
        except UnsignedEnvelopeError as exc:
            return await self._refuse(key, raw, exc)

    async def _refuse(self, key: str, raw: bytes, problem: EnvelopeError) -> None:
        log.warning("%s; treating it as a miss and removing it", problem)
        delete = self.client.eval(script("delete_if_same"), 1, self.keyspace.out(key), raw)
        await self._call(delete)

    async def save(self, key: str, envelope: Envelope) -> None:
        text = envelope.sealed(key)
        ttl_ms = envelope.ttl_ms
        await self._call(self.client.set(self.keyspace.out(check_key(key)), text, px=ttl_ms))  # type: ignore[arg-type]

    async def acquire(self, key: str) -> Envelope | AsyncRedisClaim:
        """The key's outcome once known (waiting, on the loop, while another process runs
        it), or its claim."""
        for _ in range(REFUSED_RETRIES):
            started = time.perf_counter()
            got = await self.flight.acquire(check_key(key), timeout=self.cache.wait_timeout)  # type: ignore[arg-type]
            record_acquire(self.namespace, started, got)
            if not isinstance(got, Done):
                return AsyncRedisClaim(key, got, self.namespace)
            found = await self._decode(key, got.outcome)
            if found is not None:
                return found
        raise EnvelopeError(
            f"cache entry for key {key!r} keeps being replaced by unsigned or forged outcomes"
        )

    async def aclose(self) -> None:
        await self.flight.aclose()
        await self.client.aclose()


class AsyncRedisClaim(ClaimRecord):
    """This process runs the key: ``await commit(...)``, or ``release()``.

    ``release`` can be called from plain code (a step's clean-up after an exception):
    it starts the release on the loop and returns the task.
    """

    def __init__(self, key: str, holder: AsyncHolder, namespace: str) -> None:
        super().__init__(key, holder.epoch, namespace)
        self.holder = holder

    async def commit(self, envelope: Envelope, *, keep: bool) -> bool:
        text = envelope.sealed(self.key)
        accepted = await self.holder.commit(text, ttl_ms=envelope.ttl_ms, keep=keep)
        return self._committed(envelope, accepted=accepted, keep=keep)

    def release(self) -> asyncio.Task[Any] | None:
        self._released()
        if self.holder.finished:
            return None
        task = asyncio.ensure_future(self.holder.release())
        _pending.add(task)
        task.add_done_callback(_released)
        return task


def _released(task: asyncio.Task[Any]) -> None:
    _pending.discard(task)
    if not task.cancelled() and task.exception() is not None:
        log.warning("could not release a claim (its lease will expire): %s", task.exception())


_pending: set[asyncio.Task[Any]] = set()
"""Releases started from plain code, kept referenced until they finish."""
