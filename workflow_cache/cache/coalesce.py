"""Reads of one event-loop iteration go to Redis together: one MGET instead of many GETs.

A thousand async workflows started together each read one key. A GET apiece costs a
pooled connection, a command packed and a reply parsed per key, which is most of what
a hit costs. Gathered until the end of the current loop iteration (``call_soon``), the
same reads become a few MGETs of at most ``BATCH`` keys, sent side by side; each caller
still gets its own row, and a lone read waits for nobody, only for the iteration that
asked for it to end.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

__all__ = ["Coalesced"]

Fetch = Callable[[Sequence[str]], Awaitable[Sequence[Any]]]


class Coalesced:
    """``await reads.get(name)``: the value of ``name`` (None if missing), fetched with
    every other ``get`` of the same loop iteration. Belongs to one event loop."""

    BATCH = 128
    """Most keys per MGET: a larger batch holds one connection (and one parse) longer."""

    __slots__ = ("_fetch", "_names", "_running", "_waiting")

    def __init__(self, fetch: Fetch) -> None:
        self._fetch = fetch
        self._names: list[str] = []
        self._waiting: list[asyncio.Future[Any]] = []
        self._running: set[asyncio.Task[None]] = set()

    def get(self, name: str) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        if not self._names:
            loop.call_soon(self._flush)
        waiter: asyncio.Future[Any] = loop.create_future()
        self._names.append(name)
        self._waiting.append(waiter)
        return waiter

    def _flush(self) -> None:
        names, waiting = self._names, self._waiting
        self._names, self._waiting = [], []
        size = self.BATCH
        for i in range(0, len(names), size):
            task = asyncio.ensure_future(self._one(names[i : i + size], waiting[i : i + size]))
            self._running.add(task)  # referenced until done: the loop keeps weak ones only
            task.add_done_callback(self._running.discard)

    async def _one(self, names: list[str], waiting: list[asyncio.Future[Any]]) -> None:
        try:
            rows = await self._fetch(names)
        except BaseException as exc:  # every caller of the batch sees what its read met
            cancelled = isinstance(exc, asyncio.CancelledError)
            for waiter in waiting:
                if not waiter.done():
                    if cancelled:
                        waiter.cancel()
                    else:
                        waiter.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for waiter, row in zip(waiting, rows, strict=True):
            if not waiter.done():  # a caller cancelled meanwhile has left
                waiter.set_result(row)

    async def aclose(self) -> None:
        """Wait for the batches already sent (the client is about to close)."""
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
