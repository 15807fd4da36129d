"""Run a step's plan in a plain function or in a coroutine, with one copy of the logic.

A plan is a generator that yields zero-argument callables (call the thunk,
read the cache, ...). The sync driver calls them and, when one returns an
awaitable (an ``async`` cache method inside a sync workflow), finishes it on a
private event loop; the async driver awaits it. Exceptions go back into the
plan, so the plan decides what an error means.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import Awaitable, Callable, Generator
from types import GeneratorType
from typing import Any, TypeVar

T = TypeVar("T")
Plan = Generator[Callable[[], Any], Any, T]

_local = threading.local()


def resolve_sync(value: Any) -> Any:
    """Finish an awaitable from synchronous code, or return a plain value unchanged."""
    kind = type(value)
    if kind is not GeneratorType and not hasattr(kind, "__await__"):
        return value  # not awaitable, told without inspect's ABC check (every step asks)
    if not inspect.isawaitable(value):
        return value
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        _close(value)
        raise TypeError(
            "a step or cache returned an awaitable inside a running event loop; "
            "make the workflow function `async def` and `await step(...)`"
        )
    runner: asyncio.Runner | None = getattr(_local, "runner", None)
    if runner is None:
        runner = _local.runner = asyncio.Runner()
    return runner.run(_await(value))


async def _await(value: Awaitable[T]) -> T:
    return await value


def _close(value: Any) -> None:
    close = getattr(value, "close", None)
    if callable(close):
        close()


def drive_sync(plan: Plan[T]) -> T:
    sent: Any = None
    thrown: Exception | None = None
    while True:
        try:
            effect = plan.throw(thrown) if thrown is not None else plan.send(sent)
        except StopIteration as stop:
            done: T = stop.value
            return done
        sent, thrown = None, None
        try:
            sent = resolve_sync(effect())
        except Exception as exc:
            thrown = exc


async def drive_async(plan: Plan[T]) -> T:
    sent: Any = None
    thrown: Exception | None = None
    while True:
        try:
            effect = plan.throw(thrown) if thrown is not None else plan.send(sent)
        except StopIteration as stop:
            done: T = stop.value
            return done
        sent, thrown = None, None
        try:
            sent = effect()
            if inspect.isawaitable(sent):
                sent = await sent
        except Exception as exc:
            thrown = exc
        except BaseException:  # cancelled: the plan's clean-up (releasing a claim) runs now,
            plan.close()  # on the loop, not whenever the generator is collected
            raise
