"""Waiting on observable state: the one way tests synchronise with another process,
thread or task.

A test that sleeps and then assumes the other side got there fails on a busy machine
and wastes time on an idle one. These helpers poll a predicate on something the test
can see (a key in Redis, a subscriber count, a file, a list a thunk appends to) with
a short interval, return as soon as it holds, and fail after a generous timeout with
a message naming what was awaited.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

__all__ = ["wait_until", "wait_until_async"]


def wait_until(
    predicate: Callable[[], T],
    what: str | Callable[[], str],
    *,
    timeout: float = 60.0,
    interval: float = 0.02,
    ignoring: tuple[type[BaseException], ...] = (),
) -> T:
    """The first true value of ``predicate()``; ``AssertionError`` naming ``what`` after
    ``timeout`` seconds. Exceptions in ``ignoring`` count as "not yet" (a server still
    starting refuses connections)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = predicate()
        except ignoring:
            pass
        else:
            if value:
                return value
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout:g} s for {_text(what)}")
        time.sleep(interval)


async def wait_until_async(
    predicate: Callable[[], T],
    what: str | Callable[[], str],
    *,
    timeout: float = 60.0,
    interval: float = 0.0,
) -> T:
    """As :func:`wait_until`, yielding to the running loop between checks (``interval``
    0: one loop iteration), so the tasks being waited on can get there."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout:g} s for {_text(what)}")
        await asyncio.sleep(interval)


def _text(what: str | Callable[[], str]) -> str:
    """The description, computed at failure time when it is a callable (a log's tail)."""
    return what if isinstance(what, str) else what()
