"""A forgotten ``await``: a coroutine where a value belongs, said as a ``TypeError``.

Without the check, a workflow returns ``ok(<coroutine ...>)`` (or a keyed step fails
with an error about JSON) and Python only warns that the coroutine was never awaited.
"""

from __future__ import annotations

import inspect
from types import CoroutineType
from typing import Any

from workflow_cache.result import is_result


def refuse_awaitables(value: Any, what: str, *, deep: bool = True) -> None:
    """Raise ``TypeError`` naming ``what`` if ``value`` is awaitable or, with ``deep``,
    holds a coroutine one level down (in a list, tuple, dict or ``Result``); the
    coroutines found are closed so Python does not also warn about them."""
    items: Any = _inner(value) if deep else ()
    if not inspect.isawaitable(value) and not any(type(item) is CoroutineType for item in items):
        return
    found = next(item for item in (value, *items) if inspect.isawaitable(item))
    for item in (value, *items):
        if inspect.iscoroutine(item):
            item.close()
    raise TypeError(
        f"{what} returned {found!r} where a value was expected: a step in an async "
        "workflow must be awaited (`value = await step(...)`, "
        "`values = await step.all(...)`)"
    )


def _inner(value: Any) -> Any:
    if is_result(value):
        return (value.value, value.error)
    if isinstance(value, list | tuple):
        return value
    if isinstance(value, dict):
        return value.values()
    return ()
