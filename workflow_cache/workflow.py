"""``create_workflow(deps, cache=...)``: ordinary Python functions whose steps are remembered."""

from __future__ import annotations

import inspect
import threading
import warnings
from collections.abc import Callable, Coroutine
from types import FunctionType
from typing import Any, overload

from workflow_cache import pacing
from workflow_cache.awaits import refuse_awaitables
from workflow_cache.dispatch import Dispatcher
from workflow_cache.duration import TTL, to_seconds
from workflow_cache.events import EventHook
from workflow_cache.options import StepDefaults
from workflow_cache.result import Err, Ok, Result, is_result, ok
from workflow_cache.retries import NO_RETRIES, retry_policy
from workflow_cache.step import CachingSkippedWarning, EarlyExit, Step
from workflow_cache.store import OutcomeStore, as_store


class Workflow:
    """Call it with a function ``fn(step)`` or ``fn(step, deps)``; get a :class:`Result`.

    An ``async def`` function makes the call awaitable. Made by ``create_workflow(deps, ...)``,
    whose keywords are these:

    ``cache``: a ``dict``, ``RedisCache``, ``LocalCache``, any object with
    get/set/has/delete methods (sync or async), or ``None`` for no caching.
    ``ttl``: default lifetime of stored outcomes (seconds, ``timedelta`` or ``"PT1H"``).
    ``cache_errors``: keep ``err`` outcomes (default True).
    ``cache_exceptions``: keep exceptions that escaped a thunk (default False: a
    dropped connection should be retried, not remembered).
    ``on_event``: called with a :class:`StepEvent` as steps start, hit, miss and end.
    ``dispatcher``: sends some steps elsewhere, e.g. ``CeleryDispatcher`` for signatures.
    ``retries``, ``retry_delay``, ``retry_backoff``, ``retry_jitter``, ``timeout``:
    defaults for local steps (see ``step(...)``); a Celery task keeps its own options.
    Any other option is a ``TypeError`` naming it.
    """

    def __init__(
        self,
        deps: Any = None,
        *,
        cache: Any = None,
        ttl: TTL | None = None,
        cache_errors: bool = True,
        cache_exceptions: bool = False,
        on_event: EventHook | None = None,
        dispatcher: Dispatcher | None = None,
        retries: int = 0,
        retry_delay: TTL | None = 0,
        retry_backoff: float = 1.0,
        retry_jitter: float = 0.0,
        timeout: TTL | None = None,
    ) -> None:
        self.deps = deps
        self.dispatcher = dispatcher
        self.cache = cache
        self.store: OutcomeStore | None = as_store(cache)
        if ttl is None:
            ttl = getattr(cache, "default_ttl", None)
        retry = retry_policy(
            NO_RETRIES,
            retries=retries,
            retry_delay=retry_delay,
            retry_backoff=retry_backoff,
            retry_jitter=retry_jitter,
            timeout=timeout,
        )
        self.defaults = StepDefaults(
            to_seconds(ttl), bool(cache_errors), bool(cache_exceptions), retry
        )
        self.on_event = on_event
        self._warned: set[str] = set()
        self._lock = threading.Lock()

    @overload
    def __call__(
        self, fn: Callable[..., Coroutine[Any, Any, Any]], /, *, run_id: str | None = None
    ) -> Coroutine[Any, Any, Result[Any, Any]]: ...

    @overload
    def __call__(
        self, fn: Callable[..., Any], /, *, run_id: str | None = None
    ) -> Result[Any, Any]: ...

    def __call__(
        self, fn: Callable[..., Any], /, *, run_id: str | None = None, **options: Any
    ) -> Any:
        """``run_id`` names the run: its outcome is kept under the key ``run:<run_id>``,
        so a finished run id returns that outcome in one read without running ``fn``,
        and callers racing on one run id (in any process sharing the cache) run it once."""
        if options:
            names = ", ".join(sorted(options))
            raise TypeError(
                f"unknown option(s) for a workflow call: {names}. "
                "Options go to create_workflow(deps, ...), not to the call."
            )
        if not callable(fn):
            raise TypeError(f"a workflow runs a function, not {type(fn).__name__}")
        key = None if run_id is None else run_key(run_id)
        args = (self.deps,) if _wants_deps(fn) else ()
        if _is_async(fn):
            return self._run_async(fn, args, key)
        if key is not None:
            return self._run_named(fn, args, key)
        return self._run_sync(fn, args)

    def _run_sync(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> Result[Any, Any]:
        step = Step(self, is_async=False)
        try:
            return _as_result(fn(step, *args), deep=False)
        except EarlyExit as exit_:
            return exit_.result

    def _run_named(
        self, fn: Callable[..., Any], args: tuple[Any, ...], key: str
    ) -> Result[Any, Any]:
        """The whole body is one keyed step: its claim and stored outcome give the identity."""
        outer = Step(self, is_async=False)
        try:
            return ok(outer(lambda: self._run_sync(fn, args), key=key))
        except EarlyExit as exit_:
            return exit_.result

    async def _run_async(
        self, fn: Callable[..., Any], args: tuple[Any, ...], key: str | None = None
    ) -> Result[Any, Any]:
        gate = pacing.pacer()
        if gate is not None:
            turn = gate.enter()
            if turn is not None:  # a burst of starts: wait for a later loop iteration
                await turn
        if key is None:
            return await self._body_async(fn, args)
        outer = Step(self, is_async=True)
        try:
            return ok(await outer(lambda: self._body_async(fn, args), key=key))
        except EarlyExit as exit_:
            return exit_.result

    async def _body_async(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> Result[Any, Any]:
        step = Step(self, is_async=True)
        try:
            return _as_result(await fn(step, *args))
        except EarlyExit as exit_:
            return exit_.result

    def warn_skipped(self, key: str) -> None:
        """Warn once per key that a value (not a thunk) was passed, so nothing is cached."""
        with self._lock:
            if key in self._warned:
                return
            self._warned.add(key)
        warnings.warn(
            f"step {key!r} got a value, not a thunk, so caching was skipped; "
            f"pass a function: step(lambda: ..., key={key!r})",
            CachingSkippedWarning,
            stacklevel=5,
        )


create_workflow = Workflow
"""``create_workflow(deps, cache=..., ...)`` makes a :class:`Workflow`; its keywords are there."""


def run_key(run_id: str) -> str:
    """The cache key of a named run's outcome, the same for local runs and workflow tasks."""
    if not isinstance(run_id, str) or not run_id:
        raise TypeError(f"a run id is a non-empty str, not {run_id!r}")
    return f"run:{run_id}"


_MARKABLE = hasattr(inspect, "markcoroutinefunction")
"""Python 3.12+ can mark a plain function as a coroutine function; only inspect knows."""


def _is_async(fn: Callable[..., Any]) -> bool:
    if isinstance(fn, FunctionType):  # the common case, without inspect's unwrapping
        if fn.__code__.co_flags & inspect.CO_COROUTINE:
            return True
        if not _MARKABLE:
            return False
    return inspect.iscoroutinefunction(fn)


def _wants_deps(fn: Callable[..., Any]) -> bool:
    if isinstance(fn, FunctionType):  # the common case, without inspect.signature's cost
        code = fn.__code__
        return bool(code.co_flags & inspect.CO_VARARGS) or code.co_argcount >= 2
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return False
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 2 or any(p.kind is p.VAR_POSITIONAL for p in params)


def _as_result(value: Any, *, deep: bool = True) -> Result[Any, Any]:
    """``deep`` (async workflows, whose steps return coroutines) also looks one level in."""
    if deep or type(value) not in _PLAIN:
        refuse_awaitables(value, "the workflow function", deep=deep)
    return value if is_result(value) else ok(value)


_PLAIN = frozenset({type(None), bool, int, float, str, dict, list, tuple, Ok, Err})
"""Types that are never awaitable: a sync workflow's result of one of them needs no check."""
