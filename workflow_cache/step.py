"""``step(thunk, key=...)``: run a piece of work once per key and unwrap its outcome.

The logic of one step lives in :meth:`Step._plan`, a generator driven either
synchronously or asynchronously (see :mod:`workflow_cache.drive`), so sync and
``async`` workflows behave the same.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, Literal, Protocol, cast

from workflow_cache import pacing
from workflow_cache.awaits import refuse_awaitables
from workflow_cache.dispatch import Dispatcher, is_signature, member_keys, no_dispatcher
from workflow_cache.drive import Plan, drive_async, drive_sync
from workflow_cache.duration import TTL, to_seconds
from workflow_cache.envelope import Envelope, NotStorableError
from workflow_cache.events import EventHook, EventKind, StepEvent
from workflow_cache.options import UNSET, StepDefaults, StepOptions, check_key, keeps
from workflow_cache.result import Result, UnexpectedError, err, ok
from workflow_cache.retries import RETRY_OPTIONS, retry_policy
from workflow_cache.store import CacheUnavailable, ClaimingStore, OutcomeStore, can_claim
from workflow_cache.timeouts import call_with_timeout, call_with_timeout_async

log = logging.getLogger(__name__)


class CachingSkippedWarning(UserWarning):
    """A keyed step was given a value, not a thunk, so there was nothing to cache."""


class EarlyExit(BaseException):
    """Unwinds the workflow function when a step returns ``err``.

    A ``BaseException`` so that a workflow's own ``except Exception`` cannot swallow it.
    """

    def __init__(self, result: Result[Any, Any]) -> None:
        super().__init__(result.error)
        self.result = result


class StepHost(Protocol):
    """What a step reads from the workflow running it (``Workflow`` is one)."""

    store: OutcomeStore | None
    dispatcher: Dispatcher | None
    defaults: StepDefaults
    on_event: EventHook | None

    def warn_skipped(self, key: str) -> None: ...


class Step:
    """The ``step`` a workflow function receives; one per workflow run."""

    def __init__(self, workflow: StepHost, *, is_async: bool) -> None:
        self._workflow = workflow
        self._store = workflow.store
        self._is_async = is_async
        if is_async:  # a cache with a native async face (RedisCache) uses it here
            for_async = getattr(self._store, "for_async", None)
            if for_async is not None:
                self._store = for_async() or self._store
        self._inflight: dict[str, asyncio.Future[Result[Any, Any]]] = {}
        self._pacer = pacing.pacer() if is_async else None

    # -- public -------------------------------------------------------------------------

    def __call__(
        self,
        thunk: Any,
        /,
        *,
        key: str | None = None,
        ttl: TTL | None = UNSET,
        cache_errors: bool = UNSET,
        cache_exceptions: bool = UNSET,
        returns: Any = None,
        run_locally: bool = False,
        retries: int = UNSET,
        retry_delay: TTL | None = UNSET,
        retry_backoff: float = UNSET,
        retry_jitter: float = UNSET,
        timeout: TTL | None = UNSET,
    ) -> Any:
        """Run ``thunk`` (or reuse its stored outcome) and return its value.

        An ``err`` outcome ends the workflow: its result becomes that ``err``.
        In an ``async`` workflow this returns an awaitable. A Celery signature needs
        the workflow's dispatcher, or ``run_locally=True`` to run it in this process.
        ``retries``, ``retry_delay``, ``retry_backoff``, ``retry_jitter`` and ``timeout``
        apply to a local thunk (see :mod:`workflow_cache.retries`).
        """
        given = _given(retries, retry_delay, retry_backoff, retry_jitter, timeout)
        thunk = self._local_or_refuse(thunk, run_locally)
        dispatched = self._workflow.dispatcher is not None
        if dispatched:
            self._refuse_retries_remote(thunk, given)
            parts = self._expand(thunk)
            if parts is not None:  # e.g. a Celery group: one step per member, sent together
                return self.all(
                    parts,
                    keys=member_keys(check_key(key), len(parts)),
                    ttl=ttl,
                    cache_errors=cache_errors,
                    cache_exceptions=cache_exceptions,
                )
        options = self._options(key, ttl, cache_errors, cache_exceptions, returns, given)
        if dispatched:
            options = self._identify(thunk, options)
        if self._is_async:
            return self._run_async(thunk, options)
        return _unwrap(drive_sync(self._plan(thunk, options)))

    def all(
        self,
        thunks: Sequence[Any],
        /,
        *,
        keys: Sequence[str | None] | None = None,
        ttl: TTL | None = UNSET,
        cache_errors: bool = UNSET,
        cache_exceptions: bool = UNSET,
        returns: Any = None,
        run_locally: bool = False,
        retries: int = UNSET,
        retry_delay: TTL | None = UNSET,
        retry_backoff: float = UNSET,
        retry_jitter: float = UNSET,
        timeout: TTL | None = UNSET,
    ) -> Any:
        """Run several steps, reading all their keys from the cache in one round trip.

        Returns their values in order. Misses run one after another in a sync
        workflow (stopping at the first ``err``) and concurrently in an async one;
        Celery signatures among them are sent together and run side by side.
        """
        given = _given(retries, retry_delay, retry_backoff, retry_jitter, timeout)
        thunks = [self._local_or_refuse(thunk, run_locally) for thunk in thunks]
        for thunk in thunks:
            self._refuse_retries_remote(thunk, given)
        if keys is None:
            keys = [None] * len(thunks)
        keys = list(keys)
        if len(keys) != len(thunks):
            raise ValueError(f"step.all got {len(thunks)} thunks but {len(keys)} keys")
        base = self._options(None, ttl, cache_errors, cache_exceptions, returns, given)
        ttl, errors, exceptions, retry = (
            base.ttl,
            base.cache_errors,
            base.cache_exceptions,
            base.retry,
        )
        checked = [check_key(k) for k in keys]
        named: dict[int, StepOptions] = {}
        if getattr(self._workflow.dispatcher, "identify", None) is not None:
            for i, thunk in enumerate(thunks):  # a replaying dispatcher sees every step, in order
                made = StepOptions(checked[i], ttl, errors, exceptions, returns, retry)
                identified = self._identify(thunk, made)
                if identified is not made:
                    named[i] = identified
                    checked[i] = identified.key

        def options_of(i: int) -> StepOptions:  # made for misses only: hits need the key alone
            return named.get(i) or StepOptions(checked[i], ttl, errors, exceptions, returns, retry)

        if self._is_async:
            return self._all_async(thunks, checked, returns, options_of)
        found = drive_sync(self._lookup_many(checked, returns))
        each = {i: options_of(i) for i, hit in enumerate(found) if hit is None}
        dispatcher = self._workflow.dispatcher
        remote = [i for i in each if dispatcher is not None and dispatcher.accepts(thunks[i])]
        if len(remote) > 1:
            sent = self._run_remote_many([thunks[i] for i in remote], [each[i] for i in remote])
            for i, result in zip(remote, sent, strict=True):
                found[i] = result
        values = []
        for i, hit in enumerate(found):
            result = hit if hit is not None else drive_sync(self._plan(thunks[i], each[i], True))
            values.append(_unwrap(result))
        return values

    def sleep(self, duration: TTL, /, *, key: str | None = None) -> Any:
        """Pause the workflow ``duration`` (seconds or ISO 8601; awaitable in an async one).

        In a workflow task the run suspends, holding no slot, and is resumed when the
        time has come; a replay after the wake-up does not sleep again. Elsewhere it
        sleeps in this process; with a ``key`` the wake time is a step outcome, so a
        re-run whose wake time has passed does not sleep.
        """
        seconds = to_seconds(duration, name="duration")
        if seconds is None or seconds < 0:
            raise ValueError(f"step.sleep needs a duration of 0 or more, got {duration!r}")
        key = check_key(key)
        timer = getattr(self._workflow.dispatcher, "sleep", None)
        if timer is not None:  # see dispatch.Timing
            return asyncio.to_thread(timer, seconds, key) if self._is_async else timer(seconds, key)
        if self._is_async:
            return self._sleep_async(seconds, key)
        if key is not None:
            wake: float = self(partial(_wake_time, seconds), key=key)
            seconds = wake - time.time()
        if seconds > 0:
            time.sleep(seconds)
        return None

    def wait_event(
        self, name: str, /, *, timeout: TTL | None = None, key: str | None = None
    ) -> Any:
        """The payload of the event ``name`` sent by ``send_event`` (awaitable in an async
        workflow); in a workflow task the run waits for it holding no slot. Past
        ``timeout`` (seconds or ISO 8601, from the run's first ask) the workflow ends
        with an ``err`` naming the event and the timeout."""
        seconds = to_seconds(timeout, name="timeout")
        key = check_key(key)
        waiter = getattr(self._workflow.dispatcher, "wait_event", None)
        if waiter is None:  # see dispatch.Awaiting
            raise TypeError(
                "step.wait_event needs a workflow task (workflow_task(app, fn)): the run "
                "waits for the event in Redis, resumed by send_event"
            )
        if self._is_async:
            return self._wait_event_async(waiter, name, seconds, key)
        return _unwrap(waiter(name, seconds, key))

    async def _wait_event_async(
        self,
        waiter: Callable[..., Result[Any, Any]],
        name: str,
        timeout: float | None,
        key: str | None,
    ) -> Any:
        return _unwrap(await asyncio.to_thread(waiter, name, timeout, key))

    async def _sleep_async(self, seconds: float, key: str | None) -> None:
        if key is not None:
            wake: float = await self(partial(_wake_time, seconds), key=key)
            seconds = wake - time.time()
        if seconds > 0:
            await asyncio.sleep(seconds)

    # -- signatures -------------------------------------------------------------------

    def _local_or_refuse(self, thunk: Any, run_locally: bool) -> Any:
        """A signature goes to the dispatcher; without one it is refused, unless the
        caller asked for it to run here (Celery's own eager ``apply``)."""
        if not is_signature(thunk):
            return thunk
        if run_locally:
            return lambda: thunk.apply().get()
        dispatcher = self._workflow.dispatcher
        if dispatcher is None or not dispatcher.accepts(thunk):
            raise no_dispatcher(thunk)
        return thunk

    def _refuse_retries_remote(self, thunk: Any, given: dict[str, Any]) -> None:
        """Retries and time limits of a Celery task are the task's own options."""
        if not given:
            return
        dispatcher = self._workflow.dispatcher
        if dispatcher is not None and dispatcher.accepts(thunk):
            names = ", ".join(sorted(given))
            raise TypeError(
                f"{names} apply to local steps only; a Celery task keeps its own retry and "
                "time-limit options (autoretry_for, max_retries, time_limit, soft_time_limit)"
            )

    def _expand(self, thunk: Any) -> list[Any] | None:
        dispatcher = self._workflow.dispatcher
        if dispatcher is None or not dispatcher.accepts(thunk):
            return None
        expand = getattr(dispatcher, "expand", None)
        return None if expand is None else expand(thunk)

    def _identify(self, thunk: Any, options: StepOptions) -> StepOptions:
        """Let a replaying dispatcher see every dispatched step in order (hits included)
        and give unkeyed ones a stable key (see ``dispatch.Identifying``)."""
        dispatcher = self._workflow.dispatcher
        identify = getattr(dispatcher, "identify", None)
        if identify is None or not dispatcher.accepts(thunk):  # type: ignore[union-attr]
            return options
        identified: StepOptions = identify(thunk, options)
        return identified

    # -- options ----------------------------------------------------------------------

    def _options(
        self,
        key: Any,
        ttl: Any,
        cache_errors: Any,
        cache_exceptions: Any,
        returns: Any,
        given: dict[str, Any] | None = None,
    ) -> StepOptions:
        defaults = self._workflow.defaults
        retry = retry_policy(defaults.retry, **given) if given else defaults.retry
        return StepOptions(
            key=check_key(key),
            ttl=defaults.ttl if ttl is UNSET else to_seconds(ttl),
            cache_errors=defaults.cache_errors if cache_errors is UNSET else bool(cache_errors),
            cache_exceptions=(
                defaults.cache_exceptions if cache_exceptions is UNSET else bool(cache_exceptions)
            ),
            returns=returns,
            retry=retry,
        )

    # -- the plan ---------------------------------------------------------------------

    def _plan(
        self, thunk: Any, options: StepOptions, known_miss: bool = False
    ) -> Plan[Result[Any, Any]]:
        key, store = options.key, self._store
        started = time.perf_counter()
        self._emit("start", key, started)
        dispatcher = self._workflow.dispatcher
        remote = dispatcher is not None and dispatcher.accepts(thunk)
        if not remote and not callable(thunk):
            if key is not None:
                self._workflow.warn_skipped(key)
            result = yield from _execute(thunk)
            self._emit("success" if result.ok else "error", key, started, result)
            return result
        cacheable = key is not None and store is not None
        if key is not None and store is not None and not known_miss:
            envelope: Envelope | None = yield partial(store.load, key)
            if envelope is not None:
                result = envelope.to_result(key, options.returns)
                self._emit("cache_hit", key, started, result)
                return result
        if self._pacer is not None and (cacheable or known_miss):
            yield self._pacer.enter  # one of many misses: claim on a later loop iteration
        if cacheable:
            self._emit("cache_miss", key, started)
        if dispatcher is not None and remote:
            result = yield self._offload(partial(dispatcher.run, thunk, options))
        elif key is not None and store is not None and can_claim(store):
            result = yield from self._run_claimed(thunk, options, cast(ClaimingStore, store))
        else:
            result = yield from self._attempts(thunk, options)
            if key is not None and store is not None and keeps(result, options):
                stored, result = _stored(result, options)
                yield partial(store.save, key, stored)
        self._emit("success" if result.ok else "error", key, started, result)
        return result

    def _run_claimed(
        self, thunk: Any, options: StepOptions, store: ClaimingStore
    ) -> Plan[Result[Any, Any]]:
        """Run under the key's claim: one process in the fleet executes, the rest wait."""
        key = options.key
        assert key is not None
        got = yield self._waiting(lambda: store.acquire(key), store.acquire)
        if isinstance(got, Envelope):  # another process finished it while we waited
            return got.to_result(key, options.returns)
        claim = got
        keep = False
        try:
            if self._pacer is not None:  # a burst of claims: run on a later loop iteration
                yield self._pacer.enter
            result = yield from self._attempts(thunk, options)
            keep = keeps(result, options)
            outcome, result = _stored(result, options)
        except NotStorableError:
            claim.release()
            if keep:
                raise
            return result  # an err that is not kept and cannot be announced
        except BaseException:
            claim.release()
            raise
        try:
            committed = yield self._waiting(lambda: claim.commit(outcome, keep=keep), claim.commit)
        except CacheUnavailable as exc:  # ran, but the outcome could not be recorded
            return err(UnexpectedError.from_exception(exc))
        if not committed and keep:  # our lease ran out and a successor's outcome stands
            newer: Envelope | None = yield partial(store.load, key)
            if newer is not None:
                return newer.to_result(key, options.returns)
        return result

    def _attempts(self, thunk: Any, options: StepOptions) -> Plan[Result[Any, Any]]:
        """Attempt ``thunk`` as the step's retry policy says; the last attempt's outcome counts.

        Only an exception (or a timeout) is retried: an ``err`` the thunk returns is its
        answer. Under a claim this all happens inside the one execution of the key.
        """
        policy = options.retry
        if policy.inactive:
            return (yield from _execute(thunk))
        attempt = 1
        while True:
            call = thunk if policy.timeout is None else self._timed(thunk, options, attempt)
            result, raised = yield from _attempt(call)
            if not raised or attempt >= policy.attempts:
                return result
            delay = policy.delay(attempt)
            log.info(
                "step %r: attempt %d of %d failed (%s); retrying in %.3g s",
                options.key,
                attempt,
                policy.attempts,
                result.error,
                delay,
            )
            attempt += 1
            if delay > 0:
                yield self._sleep(delay)

    def _timed(self, thunk: Any, options: StepOptions, attempt: int) -> Callable[[], Any]:
        policy = options.retry
        timeout = policy.timeout
        assert timeout is not None

        def late() -> str:
            name = "a step" if options.key is None else f"step {options.key!r}"
            return (
                f"{name} did not finish within its timeout of {timeout:g} s "
                f"(attempt {attempt} of {policy.attempts})"
            )

        if self._is_async:
            return lambda: call_with_timeout_async(thunk, timeout, late)
        return lambda: call_with_timeout(thunk, timeout, late)

    def _sleep(self, seconds: float) -> Callable[[], Any]:
        if self._is_async:
            return lambda: asyncio.sleep(seconds)
        return lambda: time.sleep(seconds)

    def _waiting(self, fn: Callable[[], Any], method: Any) -> Callable[[], Any]:
        """A call that may wait on another process: awaited as it is when ``method`` is a
        coroutine function, else sent to a thread in async workflows."""
        return fn if inspect.iscoroutinefunction(method) else self._offload(fn)

    def _offload(self, fn: Callable[[], Any]) -> Callable[[], Any]:
        """Blocking work (waiting on another process) goes to a thread in async workflows."""
        if self._is_async:
            return lambda: asyncio.to_thread(fn)
        return fn

    def _run_remote_many(
        self, thunks: list[Any], each: list[StepOptions]
    ) -> list[Result[Any, Any]]:
        """Send every dispatched miss first, then wait for them all (sync fan-out)."""
        dispatcher = self._workflow.dispatcher
        assert dispatcher is not None
        started = time.perf_counter()
        for options in each:
            self._emit("start", options.key, started)
            if options.key is not None and self._store is not None:
                self._emit("cache_miss", options.key, started)
        results = dispatcher.run_many(list(zip(thunks, each, strict=True)))
        for options, result in zip(each, results, strict=True):
            self._emit("success" if result.ok else "error", options.key, started, result)
        return results

    def _lookup_many(
        self, keys: list[str | None], returns: Any
    ) -> Plan[list[Result[Any, Any] | None]]:
        """One batched read for every keyed step; hits become results, misses ``None``."""
        store = self._store
        keyed = [k for k in keys if k is not None]
        if store is None or not keyed:
            return [None] * len(keys)
        envelopes = iter((yield lambda: store.load_many(keyed)))
        watched = self._workflow.on_event is not None
        found: list[Result[Any, Any] | None] = []
        for key in keys:
            envelope = next(envelopes) if key is not None else None
            if envelope is None:
                found.append(None)
            elif not watched:  # the hot path of a large batch of hits
                found.append(envelope.to_result(key, returns))
            else:
                started = time.perf_counter()
                self._emit("start", key, started)
                result = envelope.to_result(key, returns)
                self._emit("cache_hit", key, started, result)
                found.append(result)
        return found

    # -- async --------------------------------------------------------------------------

    async def _run_async(self, thunk: Any, options: StepOptions, known_miss: bool = False) -> Any:
        return _unwrap(await self._result_async(thunk, options, known_miss))

    async def _result_async(
        self, thunk: Any, options: StepOptions, known_miss: bool = False
    ) -> Result[Any, Any]:
        """Concurrent steps with one key in one run share a single execution.

        The first caller drives the plan itself (no task to create: the common case of
        one step per key stays cheap); later callers of the same key await its future.
        """
        key = options.key
        if key is None:
            return await drive_async(self._plan(thunk, options, known_miss))
        shared = self._inflight.get(key)
        if shared is not None:
            return await asyncio.shield(shared)
        shared = self._inflight[key] = asyncio.get_running_loop().create_future()
        try:
            result = await drive_async(self._plan(thunk, options, known_miss))
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError):
                shared.cancel()
            else:
                shared.set_exception(exc)
                shared.exception()  # nobody else may be waiting: do not warn about it
            raise
        else:
            shared.set_result(result)
            return result
        finally:
            del self._inflight[key]

    async def _all_async(
        self,
        thunks: list[Any],
        keys: list[str | None],
        returns: Any,
        options_of: Callable[[int], StepOptions],
    ) -> list[Any]:
        found = await drive_async(self._lookup_many(keys, returns))
        hits = [hit for hit in found if hit is not None]
        if len(hits) == len(found):
            return [_unwrap(hit) for hit in hits]
        results = await asyncio.gather(
            *(
                self._result_async(thunks[i], options_of(i), True) if hit is None else _ready(hit)
                for i, hit in enumerate(found)
            )
        )
        return [_unwrap(result) for result in results]

    # -- events -------------------------------------------------------------------------

    def _emit(
        self,
        kind: EventKind,
        key: str | None,
        started: float,
        result: Result[Any, Any] | None = None,
    ) -> None:
        hook = self._workflow.on_event
        if hook is None:
            return
        outcome: Literal["ok", "err"] | None = None
        if result is not None:
            outcome = "ok" if result.ok else "err"
        hook(StepEvent(kind, key, time.perf_counter() - started, outcome))


def _wake_time(seconds: float) -> float:
    """When a keyed local ``step.sleep`` ends (a Unix time, stored as the step's value)."""
    return time.time() + seconds


def _execute(thunk: Any) -> Plan[Result[Any, Any]]:
    """Call the thunk (or take the value); an escaping exception becomes an ``err``."""
    result, _ = yield from _attempt(thunk)
    return result


def _attempt(thunk: Any) -> Plan[tuple[Result[Any, Any], bool]]:
    """As :func:`_execute`, also saying whether the thunk raised (what retries act on)."""
    try:
        produced = yield (thunk if callable(thunk) else lambda: thunk)
    except Exception as exc:
        return err(UnexpectedError.from_exception(exc)), True
    return (produced if isinstance(produced, Result) else ok(produced)), False


_NONE_GIVEN: dict[str, Any] = {}


def _given(
    retries: Any, retry_delay: Any, retry_backoff: Any, retry_jitter: Any, timeout: Any
) -> dict[str, Any]:
    """The retry options a call named (the others keep the workflow's defaults)."""
    if (
        retries is UNSET
        and retry_delay is UNSET
        and retry_backoff is UNSET
        and retry_jitter is UNSET
        and timeout is UNSET
    ):
        return _NONE_GIVEN
    values = (retries, retry_delay, retry_backoff, retry_jitter, timeout)
    return {n: v for n, v in zip(RETRY_OPTIONS, values, strict=True) if v is not UNSET}


def _stored(result: Result[Any, Any], options: StepOptions) -> tuple[Envelope, Result[Any, Any]]:
    """The outcome as stored, and as a later hit will read it back, so a run and a hit
    return equal values; what JSON cannot hold is refused before anything is written.

    The round trip through JSON text is the same one a cache read makes: tuples become
    lists, integer dict keys become strings, and ``returns=`` restores the richer type.
    One encoding serves the check and the round trip.
    """
    key = options.key
    assert key is not None
    try:
        stored = Envelope.from_result(key, result, ttl=options.ttl, returns=options.returns)
        text = stored.dumps(key)
    except NotStorableError:
        refuse_awaitables(result.value if result.ok else result.error, f"step {key!r}")
        raise
    back = Envelope.from_data(key, json.loads(text))
    return stored, back.to_result(key, options.returns)


def _unwrap(result: Result[Any, Any]) -> Any:
    if not result.ok:
        raise EarlyExit(result)
    return result.value


async def _ready(result: Result[Any, Any]) -> Result[Any, Any]:
    return result


__all__ = ["CachingSkippedWarning", "EarlyExit", "Step"]
