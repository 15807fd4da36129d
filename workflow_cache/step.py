"""``step(thunk, key=...)``: run a piece of work once per key and unwrap its outcome.

The logic of one step lives in :meth:`Step._plan`, a generator driven either
synchronously or asynchronously (see :mod:`workflow_cache.drive`), so sync and
``async`` workflows behave the same.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from workflow_cache.cache.base import ClaimingStore
from workflow_cache.dispatch import is_signature, member_keys, no_dispatcher
from workflow_cache.drive import Plan, drive_async, drive_sync
from workflow_cache.duration import TTL, to_seconds
from workflow_cache.envelope import Envelope, NotStorableError
from workflow_cache.events import EventKind, StepEvent
from workflow_cache.options import UNSET, StepOptions, check_key, keeps
from workflow_cache.result import Result, UnexpectedError, err, ok

if TYPE_CHECKING:
    from workflow_cache.workflow import Workflow


class CachingSkippedWarning(UserWarning):
    """A keyed step was given a value, not a thunk, so there was nothing to cache."""


class EarlyExit(BaseException):
    """Unwinds the workflow function when a step returns ``err``.

    A ``BaseException`` so that a workflow's own ``except Exception`` cannot swallow it.
    """

    def __init__(self, result: Result[Any, Any]) -> None:
        super().__init__(result.error)
        self.result = result


class Step:
    """The ``step`` a workflow function receives; one per workflow run."""

    def __init__(self, workflow: Workflow, *, is_async: bool) -> None:
        self._workflow = workflow
        self._store = workflow.store
        self._is_async = is_async
        self._inflight: dict[str, asyncio.Task[Result[Any, Any]]] = {}

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
    ) -> Any:
        """Run ``thunk`` (or reuse its stored outcome) and return its value.

        An ``err`` outcome ends the workflow: its result becomes that ``err``.
        In an ``async`` workflow this returns an awaitable. A Celery signature needs
        the workflow's dispatcher, or ``run_locally=True`` to run it in this process.
        """
        thunk = self._local_or_refuse(thunk, run_locally)
        parts = self._expand(thunk)
        if parts is not None:  # e.g. a Celery group: one step per member, sent together
            return self.all(
                parts,
                keys=member_keys(check_key(key), len(parts)),
                ttl=ttl,
                cache_errors=cache_errors,
                cache_exceptions=cache_exceptions,
            )
        options = self._identify(
            thunk, self._options(key, ttl, cache_errors, cache_exceptions, returns)
        )
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
    ) -> Any:
        """Run several steps, reading all their keys from the cache in one round trip.

        Returns their values in order. Misses run one after another in a sync
        workflow (stopping at the first ``err``) and concurrently in an async one;
        Celery signatures among them are sent together and run side by side.
        """
        thunks = [self._local_or_refuse(thunk, run_locally) for thunk in thunks]
        if keys is None:
            keys = [None] * len(thunks)
        keys = list(keys)
        if len(keys) != len(thunks):
            raise ValueError(f"step.all got {len(thunks)} thunks but {len(keys)} keys")
        base = self._options(None, ttl, cache_errors, cache_exceptions, returns)
        each = [
            StepOptions(check_key(k), base.ttl, base.cache_errors, base.cache_exceptions, returns)
            for k in keys
        ]
        each = [self._identify(thunk, options) for thunk, options in zip(thunks, each, strict=True)]
        if self._is_async:
            return self._all_async(thunks, each)
        found = drive_sync(self._lookup_many(each))
        dispatcher = self._workflow.dispatcher
        remote = [
            i
            for i, hit in enumerate(found)
            if hit is None and dispatcher is not None and dispatcher.accepts(thunks[i])
        ]
        if len(remote) > 1:
            sent = self._run_remote_many([thunks[i] for i in remote], [each[i] for i in remote])
            for i, result in zip(remote, sent, strict=True):
                found[i] = result
        values = []
        for thunk, options, hit in zip(thunks, each, found, strict=True):
            result = hit if hit is not None else drive_sync(self._plan(thunk, options, True))
            values.append(_unwrap(result))
        return values

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
        return identify(thunk, options)

    # -- options ----------------------------------------------------------------------

    def _options(
        self, key: Any, ttl: Any, cache_errors: Any, cache_exceptions: Any, returns: Any
    ) -> StepOptions:
        defaults = self._workflow.defaults
        return StepOptions(
            key=check_key(key),
            ttl=defaults.ttl if ttl is UNSET else to_seconds(ttl),
            cache_errors=defaults.cache_errors if cache_errors is UNSET else bool(cache_errors),
            cache_exceptions=(
                defaults.cache_exceptions if cache_exceptions is UNSET else bool(cache_exceptions)
            ),
            returns=returns,
        )

    # -- the plan ---------------------------------------------------------------------

    def _plan(self, thunk: Any, options: StepOptions, known_miss: bool = False) -> Plan[Result]:
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
        if cacheable and not known_miss:
            envelope = yield lambda: store.load(key)
            if envelope is not None:
                result = envelope.to_result(key, options.returns)
                self._emit("cache_hit", key, started, result)
                return result
        if cacheable:
            self._emit("cache_miss", key, started)
        if remote:
            result = yield self._offload(lambda: dispatcher.run(thunk, options))
        elif cacheable and isinstance(store, ClaimingStore):
            result = yield from self._run_claimed(thunk, options, store)
        else:
            result = yield from _execute(thunk)
            if cacheable and keeps(result, options):
                stored = _envelope(result, options)
                yield lambda: store.save(key, stored)
        self._emit("success" if result.ok else "error", key, started, result)
        return result

    def _run_claimed(self, thunk: Any, options: StepOptions, store: ClaimingStore) -> Plan[Result]:
        """Run under the key's claim: one process in the fleet executes, the rest wait."""
        key = options.key
        assert key is not None
        got = yield self._offload(lambda: store.acquire(key))
        if isinstance(got, Envelope):  # another process finished it while we waited
            return got.to_result(key, options.returns)
        claim = got
        keep = False
        try:
            result = yield from _execute(thunk)
            keep = keeps(result, options)
            outcome = _envelope(result, options)
        except NotStorableError:
            claim.release()
            if keep:
                raise
            return result  # an err that is not kept and cannot be announced
        except BaseException:
            claim.release()
            raise
        committed = yield self._offload(lambda: claim.commit(outcome, keep=keep))
        if not committed and keep:  # our lease ran out and a successor's outcome stands
            newer = yield lambda: store.load(key)
            if newer is not None:
                return newer.to_result(key, options.returns)
        return result

    def _offload(self, fn: Callable[[], Any]) -> Callable[[], Any]:
        """Blocking work (waiting on another process) goes to a thread in async workflows."""
        if self._is_async:
            return lambda: asyncio.to_thread(fn)
        return fn

    def _run_remote_many(self, thunks: list[Any], each: list[StepOptions]) -> list[Result]:
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

    def _lookup_many(self, each: list[StepOptions]) -> Plan[list[Result | None]]:
        """One batched read for every keyed step; hits become results, misses ``None``."""
        store = self._store
        keyed = [o.key for o in each if o.key is not None]
        if store is None or not keyed:
            return [None] * len(each)
        envelopes = iter((yield lambda: store.load_many(keyed)))
        found: list[Result | None] = []
        for options in each:
            envelope = next(envelopes) if options.key is not None else None
            if envelope is None:
                found.append(None)
                continue
            started = time.perf_counter()
            self._emit("start", options.key, started)
            result = envelope.to_result(options.key, options.returns)  # type: ignore[arg-type]
            self._emit("cache_hit", options.key, started, result)
            found.append(result)
        return found

    # -- async --------------------------------------------------------------------------

    async def _run_async(self, thunk: Any, options: StepOptions, known_miss: bool = False) -> Any:
        return _unwrap(await self._result_async(thunk, options, known_miss))

    async def _result_async(
        self, thunk: Any, options: StepOptions, known_miss: bool = False
    ) -> Result[Any, Any]:
        """Concurrent steps with one key in one run share a single execution."""
        key = options.key
        if key is None:
            return await drive_async(self._plan(thunk, options, known_miss))
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.ensure_future(drive_async(self._plan(thunk, options, known_miss)))
            self._inflight[key] = task
            task.add_done_callback(lambda _: self._inflight.pop(key, None))
        return await asyncio.shield(task)

    async def _all_async(self, thunks: list[Any], each: list[StepOptions]) -> list[Any]:
        found = await drive_async(self._lookup_many(each))
        results = await asyncio.gather(
            *(
                _ready(hit) if hit is not None else self._result_async(thunk, options, True)
                for thunk, options, hit in zip(thunks, each, found, strict=True)
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
        outcome = None if result is None else ("ok" if result.ok else "err")
        hook(StepEvent(kind, key, time.perf_counter() - started, outcome))


def _execute(thunk: Any) -> Plan[Result]:
    """Call the thunk (or take the value); an escaping exception becomes an ``err``."""
    try:
        produced = yield (thunk if callable(thunk) else lambda: thunk)
    except Exception as exc:
        return err(UnexpectedError.from_exception(exc))
    return produced if isinstance(produced, Result) else ok(produced)


def _envelope(result: Result[Any, Any], options: StepOptions) -> Envelope:
    """The outcome as stored; refuses what JSON cannot hold before anything is written."""
    key = options.key
    assert key is not None
    stored = Envelope.from_result(key, result, ttl=options.ttl, returns=options.returns)
    stored.dumps(key)
    return stored


def _unwrap(result: Result[Any, Any]) -> Any:
    if not result.ok:
        raise EarlyExit(result)
    return result.value


async def _ready(result: Result[Any, Any]) -> Result[Any, Any]:
    return result


__all__ = ["CachingSkippedWarning", "EarlyExit", "Step"]
