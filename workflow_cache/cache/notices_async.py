"""Commit and release notices on an event loop: one pub/sub connection per flight, one
mailbox per waiting coroutine (the asyncio counterpart of ``notices.py``).

One reader task reads the connection while anybody waits and hands each notice to
the mailboxes of its channel; waiters send their own (UN)SUBSCRIBE. Subscribing is
counted per channel (``subscriptions.py``), so a thousand coroutines waiting on one
key cost one subscription, and a waiter's subscription counts once the server has
confirmed it. After a connection loss the reader reconnects and resubscribes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import redis

from workflow_cache.cache.subscriptions import Mailbox, Subscriptions

__all__ = ["AsyncListener", "AsyncWatch"]

log = logging.getLogger(__name__)

_LOST = (redis.ConnectionError, redis.TimeoutError, OSError)


class AsyncWatch(Mailbox):
    """One waiting coroutine's mailbox for the notices of one channel."""

    __slots__ = ("inbox",)

    def __init__(self, channel: bytes) -> None:
        self.inbox: asyncio.Queue[bytes] = asyncio.Queue()
        super().__init__(channel, self.inbox.put_nowait)

    async def get(self, timeout: float) -> bytes | None:
        try:
            return await asyncio.wait_for(self.inbox.get(), max(timeout, 0.0))
        except TimeoutError:
            return None


class AsyncListener:
    """One pub/sub connection per flight, read by one task while anybody waits."""

    IDLE_PING_S = 15.0
    RETRY_S = 0.05

    def __init__(self, make_connection: Callable[[], Any]) -> None:
        self._make_connection = make_connection
        self._subs: Subscriptions[AsyncWatch] = Subscriptions()
        self._conn: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()

    async def watch(self, channel: str) -> AsyncWatch:
        w = AsyncWatch(channel.encode())
        if self._subs.add(w):
            await self._send_due()
        if self._reader is None or self._reader.done():
            self._reader = asyncio.ensure_future(self._read())
        return w

    async def wait_live(self, w: AsyncWatch, timeout: float) -> bool:
        """Wait until the server has confirmed the subscription ``w`` relies on."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self._subs.live(w.channel):
            left = deadline - loop.time()
            if left <= 0:
                return False
            changed = self._changed
            try:
                await asyncio.wait_for(changed.wait(), left)
            except TimeoutError:
                return False
        return True

    async def unwatch(self, w: AsyncWatch) -> None:
        if self._subs.remove(w):
            await self._send_due()

    def subscriptions(self) -> int:
        return self._subs.subscribed()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def _send_due(self) -> None:
        """Send what ``Subscriptions`` says is due, if connected (else the reader will)."""
        conn = self._conn
        if conn is None or not conn.is_connected:
            return
        commands = self._subs.due()
        if commands:
            with contextlib.suppress(*_LOST):  # the reader sees the loss and resubscribes
                await conn.send_packed_command(conn.pack_commands(commands), check_health=False)

    async def _read(self) -> None:
        delay = self.RETRY_S
        while self._subs.watched():
            try:
                if self._conn is None:
                    conn = self._make_connection()
                    await conn.connect()
                    self._conn = conn
                    self._subs.reset()
                    await self._send_due()
                await self._pump(self._conn)
                delay = self.RETRY_S
            except _LOST as exc:
                conn, self._conn = self._conn, None
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await conn.disconnect()
                self._subs.reset()  # confirmations died with it
                self._notify()
                log.warning("workflow-cache pub/sub connection lost (%s); reconnecting", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def _pump(self, conn: Any) -> None:
        ping_sent = False
        while self._subs.watched():
            reply = await conn.read_response(timeout=self.IDLE_PING_S)
            if reply is None:
                if ping_sent:
                    raise redis.TimeoutError("no answer to PING on the pub/sub connection")
                await conn.send_command("PING", check_health=False)
                ping_sent = True
                continue
            ping_sent = False
            if self._subs.received(reply) is True:  # one server: no subscription is ended
                self._notify()

    async def aclose(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)  # ended, however it ends
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.disconnect()
