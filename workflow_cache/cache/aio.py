"""The single-flight protocol of ``claims.py`` on ``redis.asyncio``, for async workflows.

Same Lua scripts, same keys, same notices: a process using this and a process using
the blocking ``SingleFlight`` share one key's claim and wait on each other. Nothing
here blocks the event loop or hops to a thread: claims, commits, releases, lease
renewals (one task per flight renews every open holder each lease/3) and waiting
(one pub/sub connection per flight, read by one task that hands each notice to the
waiters of its channel) are coroutines on the loop the flight was made on.

A flight belongs to one event loop, like the ``redis.asyncio`` client it runs on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import redis
import redis.asyncio

from workflow_cache.cache.base import CacheUnavailable
from workflow_cache.cache.claims import (
    EPOCH_TTL_MS,
    Claimed,
    Done,
    Reaching,
    Running,
    claim_state,
    commit_args,
    default_owner,
    wait_for_holder,
)
from workflow_cache.cache.keys import Keys, KeySpace
from workflow_cache.cache.lua import script
from workflow_cache.cache.notices import NOTICE_OUTCOME

__all__ = ["AsyncFlight", "AsyncHolder", "AsyncListener"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")


class AsyncHolder:
    """This coroutine's process runs the step: ``commit`` its outcome or ``release``."""

    def __init__(self, flight: AsyncFlight, key: str, keys: Keys, claim: Claimed) -> None:
        self.key = key
        self.keys = keys
        self.claim = claim
        self.lost = False
        self.finished = False
        self._flight = flight
        self._last_renewed = time.monotonic()
        flight._hold(self)

    @property
    def epoch(self) -> int:
        return self.claim.epoch

    async def _renew(self) -> None:
        flight = self._flight
        try:
            ok = await flight.call(
                lambda: flight._renew(
                    keys=[self.keys.lock], args=[self.claim.token, flight.lease_ms]
                )
            )
        except CacheUnavailable as exc:
            if time.monotonic() - self._last_renewed < flight.lease:
                return
            log.warning("lease of %r lost: %s", self.key, exc)
            ok = False
        if self.finished:
            return
        if not ok:
            self.lost = True
            flight._holders.discard(self)
            return
        self._last_renewed = time.monotonic()

    def _finish(self) -> None:
        if self.finished:
            raise RuntimeError(f"the claim on {self.key!r} was already committed or released")
        self.finished = True
        self._flight._holders.discard(self)

    async def commit(
        self, outcome: bytes | str, ttl_ms: int | None = None, keep: bool = True
    ) -> bool:
        """Fenced: store (if ``keep``) and announce ``outcome``; False if a successor took over."""
        self._finish()
        flight = self._flight
        args = commit_args(self.keys, self.claim, outcome, ttl_ms, keep)
        k = self.keys
        try:
            ok = await flight.call(
                lambda: flight._commit(keys=[k.out, k.lock, k.epoch, k.last], args=args)
            )
        except CacheUnavailable:
            with contextlib.suppress(CacheUnavailable):
                await self._release_now()
            raise
        if not ok:
            self.lost = True
        return bool(ok)

    async def release(self) -> bool:
        """Give the claim up without an outcome; waiters claim at once."""
        self._finish()
        return await self._release_now()

    async def _release_now(self) -> bool:
        flight, k = self._flight, self.keys
        ok = await flight.call(
            lambda: flight._release(keys=[k.lock], args=[self.claim.token, k.channel])
        )
        if not ok:
            self.lost = True
        return bool(ok)


class _Channel:
    __slots__ = ("live", "waiters")

    def __init__(self) -> None:
        self.waiters: set[asyncio.Queue[bytes]] = set()
        self.live = asyncio.Event()


class AsyncListener:
    """One pub/sub connection per flight; one reader task hands notices to waiters.

    Subscriptions are counted per channel, so a thousand coroutines waiting on one key
    cost one subscription. The reader runs while anybody waits and stops after.
    """

    RETRY_S = 0.05

    def __init__(self, client: redis.asyncio.Redis) -> None:
        self._client = client
        self._pubsub: Any = None
        self._channels: dict[bytes, _Channel] = {}
        self._reader: asyncio.Task[None] | None = None

    async def watch(self, channel: str) -> asyncio.Queue[bytes]:
        name = channel.encode()
        inbox: asyncio.Queue[bytes] = asyncio.Queue()
        ch = self._channels.get(name)
        if ch is None:
            ch = self._channels[name] = _Channel()
            ch.waiters.add(inbox)
            if self._pubsub is None:
                self._pubsub = self._client.pubsub(ignore_subscribe_messages=False)
            try:
                await self._pubsub.subscribe(name)
            except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
                log.warning("could not subscribe to %r (%s); waiting on the lease", name, exc)
        else:
            ch.waiters.add(inbox)
        if self._reader is None or self._reader.done():
            self._reader = asyncio.ensure_future(self._read())
        return inbox

    async def wait_live(self, channel: str, timeout: float) -> bool:
        ch = self._channels.get(channel.encode())
        if ch is None:
            return False
        try:
            await asyncio.wait_for(ch.live.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def unwatch(self, channel: str, inbox: asyncio.Queue[bytes]) -> None:
        name = channel.encode()
        ch = self._channels.get(name)
        if ch is None:
            return
        ch.waiters.discard(inbox)
        if ch.waiters:
            return
        del self._channels[name]
        with contextlib.suppress(redis.ConnectionError, redis.TimeoutError, OSError):
            await self._pubsub.unsubscribe(name)

    def subscriptions(self) -> int:
        return len(self._channels)

    async def _read(self) -> None:
        pubsub = self._pubsub
        while self._channels:
            try:
                message = await pubsub.get_message(timeout=1.0)
            except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
                for ch in self._channels.values():
                    ch.live.clear()
                log.warning("workflow-cache pub/sub connection lost (%s); reconnecting", exc)
                await asyncio.sleep(self.RETRY_S)
                continue
            if message is None:
                continue
            name = message.get("channel")
            if isinstance(name, str):
                name = name.encode()
            ch = self._channels.get(name)
            if ch is None:
                continue
            kind = message.get("type")
            if kind == "subscribe":
                ch.live.set()
            elif kind == "message":
                data = message.get("data")
                if isinstance(data, str):
                    data = data.encode()
                for inbox in ch.waiters:
                    inbox.put_nowait(data)

    async def aclose(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            with contextlib.suppress(Exception):
                await pubsub.aclose()


class AsyncFlight:
    """Run each step key at most once across processes, from coroutines of one loop."""

    MARGIN_S = 0.025
    CONFIRM_S = 2.0

    def __init__(
        self,
        client: redis.asyncio.Redis,
        keyspace: KeySpace,
        *,
        lease: float,
        where: str,
        owner: str | None = None,
        epoch_ttl_ms: int = EPOCH_TTL_MS,
    ) -> None:
        self.client = client
        self.keyspace = keyspace
        self.lease = float(lease)
        self.lease_ms = max(1, round(lease * 1000))
        self.owner = owner or default_owner()
        self.where = where
        self._reaching = Reaching(where)
        self._epoch_ttl_ms = int(epoch_ttl_ms or 0)
        self._claim = client.register_script(script("claim"))
        self._renew = client.register_script(script("renew"))
        self._commit = client.register_script(script("commit"))
        self._release = client.register_script(script("release"))
        self.listener = AsyncListener(client)
        self._holders: set[AsyncHolder] = set()
        self._renewing: asyncio.Task[None] | None = None

    async def call(self, fn: Callable[[], Awaitable[_T]]) -> _T:
        """Await ``fn()``; a connection failure is ``CacheUnavailable`` naming the server."""
        with self._reaching:
            return await fn()

    async def claim(self, keys: Keys) -> Done | Running | Claimed:
        reply = await self.call(
            lambda: self._claim(
                keys=[keys.out, keys.lock, keys.epoch],
                args=[self.owner, self.lease_ms, self._epoch_ttl_ms],
            )
        )
        return claim_state(reply)

    async def acquire(self, key: str, *, timeout: float | None = None) -> Done | AsyncHolder:
        """As ``SingleFlight.acquire``: the outcome (waiting while another owner runs the
        key, woken by its notice or by its lease running out) or a holder to run it."""
        keys = self.keyspace.for_step(key)
        deadline = None if timeout is None else time.monotonic() + timeout
        state = await self.claim(keys)
        if not isinstance(state, Running):
            return self._wrap(key, keys, state)
        inbox = await self.listener.watch(keys.channel)
        try:
            await self.listener.wait_live(keys.channel, self.CONFIRM_S)
            while True:
                state = await self.claim(keys)
                if not isinstance(state, Running):
                    return self._wrap(key, keys, state)
                wait = wait_for_holder(
                    state, self.lease_ms, self.MARGIN_S, deadline, key, self.keyspace, timeout
                )
                try:
                    notice = await asyncio.wait_for(inbox.get(), wait)
                except TimeoutError:
                    continue
                if notice[:1] == NOTICE_OUTCOME:
                    return Done(notice[1:])
        finally:
            await self.listener.unwatch(keys.channel, inbox)

    def _wrap(self, key: str, keys: Keys, state: Done | Claimed) -> Done | AsyncHolder:
        if isinstance(state, Done):
            return state
        return AsyncHolder(self, key, keys, state)

    def _hold(self, holder: AsyncHolder) -> None:
        self._holders.add(holder)
        if self._renewing is None or self._renewing.done():
            self._renewing = asyncio.ensure_future(self._renew_all())

    async def _renew_all(self) -> None:
        """Every lease/3, renew every open holder (together); stop when none is left."""
        while self._holders:
            await asyncio.sleep(self.lease / 3)
            holders = list(self._holders)
            if holders:
                await asyncio.gather(*(h._renew() for h in holders), return_exceptions=True)

    async def aclose(self) -> None:
        renewing, self._renewing = self._renewing, None
        if renewing is not None:
            renewing.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await renewing
        await self.listener.aclose()
