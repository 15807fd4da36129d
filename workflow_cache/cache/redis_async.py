"""A ``RedisCache`` as async workflows see it: the same keys and envelopes, on ``redis.asyncio``.

``RedisCache.for_async()`` gives one of these per event loop (one connection pool
per loop, since ``redis.asyncio`` connections belong to the loop that made them).
Reads, writes, claims, renewals and waits are coroutines; none blocks the loop.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Sequence
from typing import Any

import redis.asyncio

from workflow_cache import signing
from workflow_cache.cache.aio import AsyncFlight, AsyncHolder
from workflow_cache.cache.coalesce import Coalesced
from workflow_cache.cache.envelopes import acquiring, refusal
from workflow_cache.cache.keys import KeySpace
from workflow_cache.cache.reaching import Reaching
from workflow_cache.cache.records import ClaimRecord, record_lookup
from workflow_cache.drive import drive_async
from workflow_cache.envelope import Envelope, UnsignedEnvelopeError
from workflow_cache.options import check_key

__all__ = ["AsyncRedisCache", "AsyncRedisClaim"]

log = logging.getLogger(__name__)


class AsyncRedisCache:
    """The async face of one ``RedisCache`` on one event loop."""

    def __init__(
        self,
        client: redis.asyncio.Redis,
        where: str,
        *,
        keyspace: KeySpace,
        lease: float,
        wait_timeout: float | None,
    ) -> None:
        self.client = client
        self.where = where
        self.reaching = Reaching(where)
        self.keyspace = keyspace
        self.namespace = keyspace.namespace
        self.wait_timeout = wait_timeout
        slice = _configured_slice()
        self.flight = AsyncFlight(client, keyspace, lease=lease, where=where, slice=slice)
        self._reads = Coalesced(self._fetch, slice)

    async def _call(self, coro: Any) -> Any:
        with self.reaching:
            return await coro

    async def load(self, key: str) -> Envelope | None:
        raw = await self._call(self._reads.get(check_key(key)))
        if raw is None:
            return None
        try:  # as _decode, without a coroutine more on the path of every hit
            return Envelope.loads(key, raw)
        except UnsignedEnvelopeError:
            return await self._decode(key, raw)

    async def _fetch(self, keys: Sequence[str]) -> list[Any]:
        """The stored rows of ``keys``, in one MGET (``load`` gathers single reads into it)."""
        out = self.keyspace.out
        rows = list(await self.client.mget([out(k) for k in keys]))
        record_lookup(self.namespace, keys, rows)
        return rows

    async def load_many(self, keys: Sequence[str]) -> list[Envelope | None]:
        if not keys:
            return []
        checked = [check_key(k) for k in keys]
        rows = await self._call(self._fetch(checked))  # type: ignore[arg-type]
        if signing.enabled():  # each row's signature checked, a refused one removed
            return [
                None if raw is None else await self._decode(k, raw)
                for k, raw in zip(keys, rows, strict=True)
            ]
        return Envelope.loads_many(keys, rows)

    async def _decode(self, key: str, raw: bytes) -> Envelope | None:
        """The stored envelope; None (a miss, removed, one warning) if its signature is bad."""
        try:
            return Envelope.loads(key, raw)
        except UnsignedEnvelopeError as exc:
            await self.flight.perform(refusal(self.keyspace.out(key), raw, exc))
            return None

    async def save(self, key: str, envelope: Envelope) -> None:
        text = envelope.sealed(key)
        ttl_ms = envelope.ttl_ms
        await self._call(self.client.set(self.keyspace.out(check_key(key)), text, px=ttl_ms))  # type: ignore[arg-type]

    async def acquire(self, key: str) -> Envelope | AsyncRedisClaim:
        """The key's outcome once known (waiting, on the loop, while another process runs
        it), or its claim."""
        flight = self.flight
        wait = functools.partial(flight.acquire, check_key(key), timeout=self.wait_timeout)  # type: ignore[arg-type]
        got = await drive_async(acquiring(self.keyspace, key, wait, flight.perform))
        return got if isinstance(got, Envelope) else AsyncRedisClaim(key, got, self.namespace)

    async def aclose(self) -> None:
        await self._reads.aclose()
        await self.flight.aclose()
        await self.client.aclose()


def _configured_slice() -> float:
    """The process's ``async_slice``: how long one iteration may spend on callers whose
    rows came back, as on workflow starts (``pacing.py``)."""
    from workflow_cache.settings import current  # as pacing reads it: with the first view

    return current().async_slice


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
        return self.committed(envelope, accepted=accepted, keep=keep)

    def release(self) -> asyncio.Task[Any] | None:
        self.released()
        if self.holder.finished:
            return None
        task = asyncio.ensure_future(self.holder.release())
        _pending.add(task)
        task.add_done_callback(_settled)
        return task


def _settled(task: asyncio.Task[Any]) -> None:
    _pending.discard(task)
    if not task.cancelled() and task.exception() is not None:
        log.warning("could not release a claim (its lease will expire): %s", task.exception())


_pending: set[asyncio.Task[Any]] = set()
"""Releases started from plain code, kept referenced until they finish."""
