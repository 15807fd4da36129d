"""Event-loop helpers of the pacing and loop-tick tests: hold the loop, count iterations."""

from __future__ import annotations

import asyncio
import time


def busy(seconds: float) -> None:
    """Hold the loop, as CPU-bound work between two awaits (or after an answer) does."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


class Iterations:
    """Counts loop iterations: a callback that re-arms itself runs once in each."""

    def __init__(self) -> None:
        self.count = 0
        self._running = True
        asyncio.get_running_loop().call_soon(self._tick)

    def _tick(self) -> None:
        if self._running:
            self.count += 1
            asyncio.get_running_loop().call_soon(self._tick)

    def stop(self) -> None:
        self._running = False
