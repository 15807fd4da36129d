"""The claim protocol of ``protocol.py`` on ``redis.asyncio``: its asyncio driver.

Same plans, same Lua scripts, same keys, same notices as the blocking driver
(``claims.py``): a process using this and a process using ``SingleFlight`` share one
key's claim and wait on each other. Nothing here blocks the event loop or hops to a
thread: claims, commits, releases, lease renewals (one task per flight renews every
open holder each lease/3) and waiting (``notices_async.py``) are coroutines on the
loop the flight was made on.

The scripts called during one loop iteration (a thousand workflows claiming their
keys, committing, renewing) go to Redis as pipelines of at most ``Coalesced.BATCH``
EVALSHAs (``coalesce.py``), each caller still getting its own reply; a pipeline's
replies wake their callers a slice of the loop at a time. A renewal round starts its
holders' renewals a chunk per iteration, so no iteration starts them all.

A flight belongs to one event loop, like the ``redis.asyncio`` client it runs on.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import redis
import redis.asyncio
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import NoScriptError

from workflow_cache.cache.clients import pubsub_connection
from workflow_cache.cache.coalesce import Coalesced
from workflow_cache.cache.handoffs import handoff_channel, handoff_notice
from workflow_cache.cache.keys import Keys, KeySpace
from workflow_cache.cache.lua import register, script
from workflow_cache.cache.notices_async import AsyncListener, AsyncWatch
from workflow_cache.cache.presence import Presence, presence_of
from workflow_cache.cache.protocol import (
    EPOCH_TTL_MS,
    SCRIPTS,
    Call,
    Claimed,
    Done,
    Effect,
    Hold,
    Pause,
    Plan,
    Present,
    Rules,
    Subscribe,
    performed,
)
from workflow_cache.cache.reaching import Reaching
from workflow_cache.drive import drive_async
from workflow_cache.store import CacheUnavailable

__all__ = ["AsyncFlight", "AsyncHolder", "AsyncListener"]

_T = TypeVar("_T")

log = logging.getLogger(__name__)


class AsyncHolder(Hold):
    """This coroutine's process runs the step: ``commit`` its outcome or ``release``."""

    def __init__(self, flight: AsyncFlight, key: str, keys: Keys, claim: Claimed) -> None:
        super().__init__(flight.rules, key, keys, claim)
        self._flight = flight
        flight.hold(self)

    async def _run(self, plan: Plan[_T]) -> _T:
        return await drive_async(performed(plan, self._flight.perform))

    async def renew(self) -> None:
        """One renewal, called by the flight's renewing task every lease/3."""
        if not await self._run(self.renewing()):
            self._flight.holders.discard(self)

    def finish(self) -> None:
        super().finish()
        self._flight.holders.discard(self)

    async def commit(
        self, outcome: bytes | str, ttl_ms: int | None = None, keep: bool = True
    ) -> bool:
        """Fenced: store (if ``keep``) and announce ``outcome``, hand over the workflow
        runs suspended on the key (announced on the handoff channel: no Celery app
        here sends their resumes); False if a successor took over."""
        committed = await self._run(self.committing(outcome, ttl_ms, keep))
        if committed and self.handed_over:
            notice = handoff_notice(self.key, None if keep else outcome)
            channel = handoff_channel(self._flight.keyspace)
            try:
                with self._flight.reaching:
                    await self._flight.client.publish(channel, notice)
            except CacheUnavailable as exc:  # the commit stands; the reconciler finds them
                log.warning("step %r: its waiting runs left to the reconciler: %s", self.key, exc)
        return committed

    async def release(self) -> bool:
        """Give the claim up without an outcome; waiters claim at once."""
        return await self._run(self.releasing())


class AsyncFlight:
    """Run each step key at most once across processes, from coroutines of one loop."""

    MARGIN_S = Rules.MARGIN_S
    CONFIRM_S = Rules.CONFIRM_S
    RENEW_CHUNK = 64
    """Renewals a renewal round starts per loop iteration."""

    def __init__(
        self,
        client: redis.asyncio.Redis,
        keyspace: KeySpace,
        *,
        lease: float,
        where: str,
        owner: str | None = None,
        epoch_ttl_ms: int = EPOCH_TTL_MS,
        slice: float = 0.0,
    ) -> None:
        """``slice``: seconds of one loop iteration that callers woken by their scripts'
        replies may take (``coalesce.py``; 0 wakes a whole pipeline's callers at once)."""
        self.client = client
        self.keyspace = keyspace
        self.presence: Presence | None = presence_of(client)
        self.rules = Rules(
            keyspace.namespace,
            lease=lease,
            owner=owner,
            epoch_ttl_ms=epoch_ttl_ms,
            presence=self.presence_id,
        )
        self.lease = self.rules.lease
        self.lease_ms = self.rules.lease_ms
        self.owner = self.rules.owner
        self.where = where
        self.reaching = Reaching(where)
        self._scripts = register(client, SCRIPTS)
        self._calls = Coalesced(self._pipelined, slice)
        self.listener = AsyncListener(self._make_pubsub_connection)
        self.holders: set[AsyncHolder] = set()
        self._renewing: asyncio.Task[None] | None = None
        self._renew_now = asyncio.Event()
        self._forget_presence: Callable[[], None] | None = None

    def presence_id(self) -> int | None:
        """This process's presence id (None on a Cluster or while it reconnects)."""
        return None if self.presence is None else self.presence.cid

    async def _ready(self) -> None:
        """Wait (without blocking the loop) for the presence's first connection."""
        presence = self.presence
        if presence is not None and self._forget_presence is None:
            loop, wake = asyncio.get_running_loop(), self._renew_now.set

            def changed() -> None:
                if not loop.is_closed():
                    loop.call_soon_threadsafe(wake)

            self._forget_presence = presence.on_change(changed)
        if presence is not None and not presence.ready.done():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.wrap_future(presence.ready), self.CONFIRM_S)

    def _make_pubsub_connection(self) -> Any:
        return pubsub_connection(
            self.client.connection_pool, Retry(ExponentialBackoff(cap=0.05, base=0.01), 0)
        )

    # -- the driver

    async def perform(self, effect: Effect, watching: list[AsyncWatch] | None = None) -> Any:
        """Do what ``effect`` says, on the loop; ``watching`` keeps one acquire's watch."""
        if isinstance(effect, Call):
            with self.reaching:
                return await self._calls.get(effect)
        if isinstance(effect, Present):
            with self.reaching:
                try:
                    return bool(await self.client.client_list(client_id=[effect.presence]))
                except redis.ResponseError:  # before Redis 6.2: no ID filter, no takeover
                    return True
        if isinstance(effect, Pause):
            await asyncio.sleep(effect.seconds)
            return None
        assert watching is not None, "only acquire subscribes or listens"
        if isinstance(effect, Subscribe):
            watch = await self.listener.watch(effect.channel)
            watching.append(watch)
            await self.listener.wait_live(watch, effect.confirm_s)
            return None
        return await watching[-1].get(effect.seconds)

    async def acquire(self, key: str, *, timeout: float | None = None) -> Done | AsyncHolder:
        """As ``SingleFlight.acquire``: the outcome (waiting while another owner runs the
        key, woken by its notice or by its lease running out) or a holder to run it."""
        await self._ready()
        keys = self.keyspace.for_step(key)
        watching: list[AsyncWatch] = []
        perform = functools.partial(self.perform, watching=watching)
        try:
            state = await drive_async(performed(self.rules.acquire(key, keys, timeout), perform))
        finally:
            for watch in watching:
                await self.listener.unwatch(watch)
        if isinstance(state, Done):
            return state
        return AsyncHolder(self, key, keys, state)

    async def _pipelined(self, calls: Sequence[Call], load: bool = True) -> list[Any]:
        """The replies of ``calls`` (one loop iteration's), made in one pipeline, errors as
        values; calls refused for an unknown script (a new server, a ``SCRIPT FLUSH``, a
        Redis restart) are made again, in one pipeline, once their scripts are loaded."""
        scripts = self._scripts
        pipe = self.client.pipeline(transaction=False)
        for call in calls:
            keys = call.keys
            pipe.evalsha(scripts[call.script].sha, len(keys), *keys, *call.args)
        replies = list(await pipe.execute(raise_on_error=False))
        unknown = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if unknown and load:  # the server lost its scripts (flushed, restarted): load, again
            for name in {calls[i].script for i in unknown}:
                await self.client.script_load(script(name))
            again = await self._pipelined([calls[i] for i in unknown], load=False)
            for i, reply in zip(unknown, again, strict=True):
                replies[i] = reply
        return replies

    # -- renewing

    def hold(self, holder: AsyncHolder) -> None:
        """Renew ``holder`` every lease/3 until it finishes."""
        self.holders.add(holder)
        if self._renewing is None or self._renewing.done():
            self._renewing = asyncio.ensure_future(self._renew_all())

    async def _renew_all(self) -> None:
        """Every lease/3, renew every open holder (together); stop when none is left."""
        while self.holders:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._renew_now.wait(), self.lease / 3)
            self._renew_now.clear()
            holders = list(self.holders)
            renewing: list[asyncio.Future[None]] = []
            chunk = self.RENEW_CHUNK
            try:
                for i in range(0, len(holders), chunk):
                    if i:  # the loop runs the chunk just started before the next one starts
                        await asyncio.sleep(0)
                    renewing.extend(
                        asyncio.ensure_future(h.renew()) for h in holders[i : i + chunk]
                    )
            except BaseException:  # cancelled (closing): the started renewals end too
                for started in renewing:
                    started.cancel()
                raise
            if renewing:
                await asyncio.gather(*renewing, return_exceptions=True)

    async def aclose(self) -> None:
        forget, self._forget_presence = self._forget_presence, None
        if forget is not None:
            forget()
        renewing, self._renewing = self._renewing, None
        if renewing is not None:
            renewing.cancel()
            await asyncio.gather(renewing, return_exceptions=True)  # ended, however it ends
        await self._calls.aclose()
        await self.listener.aclose()
