"""Keep a burst of async workflows from holding the event loop.

asyncio runs every ready task once per loop iteration, so a thousand workflows started
together (``asyncio.gather``) all run up to their first real wait before any timer,
socket or other request on the same loop gets a turn: a 1 ms timer waits 10-15 ms
behind a thousand bare ``redis.asyncio`` GETs, longer behind workflows. A loop's
:class:`Pacer` lets starts through until ``slice`` seconds of the current iteration are
spent; later ones wait in a queue, in the order they came, and go through a batch per
iteration, each batch sized to the slice at the cost per start measured so far. The
loop never idles while starts wait, so a burst takes about as long as before; other
work just gets a turn every ``slice``.

The slice is the ``async_slice`` of the process's settings (``WORKFLOW_CACHE_ASYNC_SLICE``,
seconds, default 0.001; 0 turns pacing off), asked when a loop gets its pacer.
"""

from __future__ import annotations

import asyncio
import weakref
from collections import deque
from time import perf_counter

from workflow_cache.defaults import DEFAULT_ASYNC_SLICE

__all__ = ["DEFAULT_SLICE", "Pacer", "pacer"]

DEFAULT_SLICE = DEFAULT_ASYNC_SLICE


class Pacer:
    """The start gate of one event loop: ``wait = pacer.enter()``; ``if wait: await wait``."""

    __slots__ = ("_cost", "_opened", "_slice", "_started", "_waiting")

    def __init__(self, slice: float = DEFAULT_SLICE) -> None:
        # No reference to the loop: the loop's entry in _pacers must not keep it alive.
        self._slice = slice
        self._opened: float | None = None  # when this iteration's starts began
        self._started = 0  # starts let through since then
        self._cost = slice  # seconds of the loop one start takes, as last measured
        self._waiting: deque[asyncio.Future[None]] = deque()

    def enter(self) -> asyncio.Future[None] | None:
        """None to go ahead now, or a future to await first (then go ahead)."""
        if not self._waiting:
            opened = self._opened
            if opened is None:  # the first start of this iteration
                self._opened = perf_counter()
                self._started = 1
                asyncio.get_running_loop().call_soon(self._next_iteration)
                return None
            spent = perf_counter() - opened
            if spent < self._slice:
                self._started += 1
                return None
            self._cost = spent / self._started
        turn = asyncio.get_running_loop().create_future()
        self._waiting.append(turn)
        return turn

    def _next_iteration(self) -> None:
        """Runs once per loop iteration while starts wait, after the batch it let through
        last time: measure what that iteration cost per start, let the next batch through.

        The measure takes in whatever else the loop did meanwhile (replies arriving,
        other tasks), so batches shrink when the loop is busy and iterations stay near
        the slice.
        """
        now = perf_counter()
        if self._started and self._opened is not None:
            self._cost = max((now - self._opened) / self._started, 1e-6)
        self._opened = None
        if not self._waiting:
            return
        batch = max(1, int(self._slice / self._cost))
        released = 0
        while released < batch and self._waiting:
            turn = self._waiting.popleft()
            if not turn.done():  # a cancelled waiter gives its place up
                turn.set_result(None)
                released += 1
        self._opened = now
        self._started = released
        asyncio.get_running_loop().call_soon(self._next_iteration)  # after the batch it let through


def _configured_slice() -> float:
    from workflow_cache.settings import current  # loads with the first async workflow

    return current().async_slice


_pacers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Pacer] = weakref.WeakKeyDictionary()


_last: tuple[weakref.ref[asyncio.AbstractEventLoop], Pacer | None] | None = None


def pacer() -> Pacer | None:
    """The running loop's pacer, or None when pacing is off."""
    global _last
    loop = asyncio.get_running_loop()
    last = _last  # every async workflow start asks: the common answer first
    if last is not None and last[0]() is loop:
        return last[1]
    found = _pacers.get(loop)
    if found is None:
        seconds = _configured_slice()
        if seconds > 0:
            found = _pacers[loop] = Pacer(seconds)
    _last = (weakref.ref(loop), found)
    return found
