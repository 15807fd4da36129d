"""Reads of one event-loop iteration go to Redis together: one MGET instead of many GETs.

A thousand async workflows started together each read one key. A GET apiece costs a
pooled connection, a command packed and a reply parsed per key, which is most of what
a hit costs. Gathered until the end of the current loop iteration (``call_soon``), the
same reads become a few MGETs of at most ``BATCH`` keys, sent side by side; each caller
still gets its own row, and a lone read waits for nobody, only for the iteration that
asked for it to end.

Handing the rows back is paced too. A caller given its row goes on at the next loop
iteration, and what it does there (decoding the entry, finishing its workflow) is most
of what a hit costs: a whole MGET's callers woken at once, or several MGETs' answers
arriving together, would hold one iteration for all of them. So answered rows queue,
in the order they came, and each iteration wakes only as many callers as fit in
``slice`` seconds at the cost per caller measured so far (the whole iteration's cost,
so the batch shrinks when other work shares the loop); the loop never idles while rows
wait. ``slice`` 0 wakes every caller at once.

The same gathering serves any request that can travel in a batch: ``fetch`` gets the
items of one batch and returns one row per item, in order; a row that is an exception
is raised to its caller alone (``aio.py`` sends the claim scripts of one iteration as
one pipeline this way).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from time import perf_counter
from typing import Any

__all__ = ["Coalesced"]

Fetch = Callable[[Sequence[Any]], Awaitable[Sequence[Any]]]


class Coalesced:
    """``await reads.get(name)``: the value of ``name`` (None if missing), fetched with
    every other ``get`` of the same loop iteration. Belongs to one event loop."""

    BATCH = 128
    """Most keys per MGET: a larger batch holds one connection (and one parse) longer."""

    FIRST_COST = 2e-5
    """Seconds of the loop one woken caller is assumed to take until one is measured."""

    __slots__ = (
        "_answered",
        "_cost",
        "_fetch",
        "_names",
        "_opened",
        "_running",
        "_slice",
        "_waiting",
        "_woken",
    )

    def __init__(self, fetch: Fetch, slice: float = 0.0) -> None:
        self._fetch = fetch
        self._slice = slice
        self._names: list[Any] = []
        self._waiting: list[asyncio.Future[Any]] = []
        self._running: set[asyncio.Task[None]] = set()
        self._answered: deque[tuple[asyncio.Future[Any], Any]] = deque()
        self._cost = self.FIRST_COST  # seconds of the loop one woken caller takes
        self._opened: float | None = None  # when the last batch of callers was woken
        self._woken = 0  # callers woken then

    def get(self, name: Any) -> asyncio.Future[Any]:
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

    async def _one(self, names: list[Any], waiting: list[asyncio.Future[Any]]) -> None:
        if any(waiter.done() for waiter in waiting):  # callers cancelled before it was sent
            kept = [i for i, waiter in enumerate(waiting) if not waiter.done()]
            names, waiting = [names[i] for i in kept], [waiting[i] for i in kept]
            if not names:
                return
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
        if len(rows) != len(waiting):
            mismatch = ValueError(f"{len(rows)} rows for {len(waiting)} keys")
            for waiter in waiting:
                if not waiter.done():
                    waiter.set_exception(mismatch)
            return
        if self._slice <= 0:  # no pacing: every caller goes on at the next iteration
            for waiter, row in zip(waiting, rows, strict=True):
                _answer(waiter, row)
            return
        self._answered.extend(zip(waiting, rows, strict=True))
        if self._opened is None:  # nobody is waking callers: start now
            self._wake()

    def _wake(self) -> None:
        """Wake the next batch of callers: as many as fit in the slice at the cost per
        caller the last batch measured (its callers ran in the iteration since)."""
        now = perf_counter()
        if self._opened is not None and self._woken:
            self._cost = max((now - self._opened) / self._woken, 1e-7)
        answered = self._answered
        if not answered:
            self._opened, self._woken = None, 0
            return
        budget = max(1, int(self._slice / self._cost))
        woken = 0
        while woken < budget and answered:
            waiter, row = answered.popleft()
            woken += _answer(waiter, row)
        self._opened, self._woken = now, woken
        # After the callers just woken (call_soon keeps order): they run first, then this
        # measures them, and wakes the next batch or stops.
        asyncio.get_running_loop().call_soon(self._wake)

    async def aclose(self) -> None:
        """Wait for the batches already sent (the client is about to close)."""
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)


def _answer(waiter: asyncio.Future[Any], row: Any) -> bool:
    """Give ``waiter`` its row (raised if an exception); False if its caller has left."""
    if waiter.done():  # cancelled meanwhile
        return False
    if isinstance(row, Exception):
        waiter.set_exception(row)
    else:
        waiter.set_result(row)
    return True
