"""One attempt of a thunk with a time limit, in a plain function or in a coroutine.

Python cannot interrupt a running function, so a thunk with a ``timeout`` is called in
a worker thread and the step stops waiting for it at the deadline; the thread is left
to finish in the background and whatever it returns is dropped. An awaitable it
returns is awaited with the time that is left and cancelled at the deadline: in an
``async`` workflow on the workflow's own loop, in a sync one on the thread's own loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import inspect
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any


class _Late(Exception):
    """The attempt's deadline passed (internal: becomes the caller's ``TimeoutError``)."""


def call_with_timeout(thunk: Callable[[], Any], timeout: float, late: Callable[[], str]) -> Any:
    """``thunk()``, finished if awaitable, within ``timeout`` seconds; else
    ``TimeoutError(late())``."""
    deadline = time.monotonic() + timeout
    future: concurrent.futures.Future[Any] = concurrent.futures.Future()

    def attempt() -> None:
        try:
            value = thunk()
            if inspect.isawaitable(value):
                value = asyncio.run(_bounded(value, deadline))
            future.set_result(value)
        except _Late:
            future.set_exception(TimeoutError(late()))
        except BaseException as exc:
            future.set_exception(exc)

    threading.Thread(target=attempt, name="wfc-attempt", daemon=True).start()
    done, _ = concurrent.futures.wait([future], timeout=timeout)
    if not done:
        raise TimeoutError(late())
    return future.result()


async def call_with_timeout_async(
    thunk: Callable[[], Any], timeout: float, late: Callable[[], str]
) -> Any:
    """As :func:`call_with_timeout`, without blocking the running event loop."""
    deadline = time.monotonic() + timeout
    if inspect.iscoroutinefunction(thunk):  # nothing blocking before the first await
        value = thunk()
    else:
        called = _in_daemon_thread(thunk)
        done, _ = await asyncio.wait([called], timeout=timeout)
        if not done:
            called.cancel()  # whatever the thread ends with is dropped
            raise TimeoutError(late())
        value = called.result()
    if not inspect.isawaitable(value):
        return value
    try:
        return await _bounded(value, deadline)
    except _Late:
        raise TimeoutError(late()) from None


def _in_daemon_thread(fn: Callable[[], Any]) -> asyncio.Future[Any]:
    """``fn()`` in a daemon thread of its own: unlike the loop's default executor, a thread
    left running after a timeout does not hold up ``asyncio.run`` at exit."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()

    def settle(value: Any, exc: BaseException | None) -> None:
        if future.done():
            return
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(value)

    def call() -> None:
        try:
            value, exc = fn(), None
        except BaseException as error:
            value, exc = None, error
        if not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(settle, value, exc)

    threading.Thread(target=call, name="wfc-attempt", daemon=True).start()
    return future


async def _bounded(value: Awaitable[Any], deadline: float) -> Any:
    left = deadline - time.monotonic()
    task = asyncio.ensure_future(value)
    if left <= 0:
        task.cancel()
        raise _Late
    done, _ = await asyncio.wait([task], timeout=left)
    if not done:
        task.cancel()
        raise _Late
    return task.result()


__all__ = ["call_with_timeout", "call_with_timeout_async"]
