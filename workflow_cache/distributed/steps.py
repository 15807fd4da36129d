"""Celery signatures as steps: the worker that runs one holds its key's claim.

``install(app, cache)`` registers one task, ``workflow_cache.step``, on the
user's Celery app. A step given a signature sends that task instead, with the
signature's task name and arguments; on the worker it claims the key, calls
the user's task function in process, and commits the outcome to Redis. The
caller waits on the outcome key (a pub/sub notice), never on
``AsyncResult.get()``, so no result backend is needed for steps.

A message waiting in a queue holds no claim. When the worker running a step
dies, its lease runs out within seconds; the waiting caller sees the claim
gone without an outcome and sends the step again, and a live worker takes it
over. Redelivery of the dead worker's message later is harmless: its claim
finds the outcome already committed.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Sequence
from typing import Any

from celery import Celery, Signature

from workflow_cache.cache.claims import ClaimTimeout
from workflow_cache.cache.redis import RedisCache
from workflow_cache.envelope import Envelope, NotStorableError
from workflow_cache.options import StepOptions, keeps
from workflow_cache.result import Result, UnexpectedError, err, ok

log = logging.getLogger(__name__)

STEP_TASK = "workflow_cache.step"
STEP_QUEUE = "steps"
ONCE_TTL = 600.0
"""Seconds an unkeyed step's outcome is kept: long enough for its caller to read it."""


def install(app: Celery, cache: RedisCache, *, queue: str = STEP_QUEUE) -> None:
    """Let this app's tasks be steps: call once where the app is defined (producers and workers)."""
    caches: dict[str, RedisCache] = {cache.namespace: cache}

    def cache_for(namespace: str) -> RedisCache:
        if namespace not in caches:
            caches[namespace] = RedisCache(
                cache.url, namespace=namespace, lease=cache.lease, client=cache.client
            )
        return caches[namespace]

    route(app, STEP_TASK, queue)

    @app.task(
        name=STEP_TASK,
        shared=False,  # registered per app, not on every app in the process
        acks_late=True,
        reject_on_worker_lost=True,
        ignore_result=True,
    )
    def run_step(
        task_name: str,
        args: list[Any],
        kwargs: dict[str, Any],
        key: str,
        namespace: str,
        policy: dict[str, Any],
    ) -> None:
        execute_step(app, cache_for(namespace), task_name, args, kwargs, key, policy)

    app.conf.workflow_cache = {"cache": cache, "queue": queue}


def route(app: Celery, task_name: str, queue: str) -> None:
    """Send ``task_name`` to ``queue`` by default, keeping the app's other routes."""
    routes = app.conf.task_routes
    entry = {task_name: {"queue": queue}}
    if routes is None:
        app.conf.task_routes = entry
    elif isinstance(routes, dict):
        routes.update(entry)
    else:
        app.conf.task_routes = (entry, *(routes if isinstance(routes, list | tuple) else [routes]))


def execute_step(
    app: Celery,
    cache: RedisCache,
    task_name: str,
    args: list[Any],
    kwargs: dict[str, Any],
    key: str,
    policy: dict[str, Any],
) -> None:
    """Run one dispatched step under its key's claim and commit the outcome (worker side)."""
    got = cache.acquire(key)
    if isinstance(got, Envelope):
        return  # another worker committed it already (e.g. a redelivered message)
    claim = got
    options = StepOptions(
        key=key,
        ttl=policy.get("ttl"),
        cache_errors=policy.get("cache_errors", True),
        cache_exceptions=policy.get("cache_exceptions", False),
    )
    try:
        task = app.tasks[task_name]
        produced = task(*args, **kwargs)
        result = produced if isinstance(produced, Result) else ok(produced)
    except Exception as exc:
        result = err(UnexpectedError.from_exception(exc))
    except BaseException:
        claim.release()
        raise
    keep = policy.get("once", False) or keeps(result, options)
    try:
        envelope = Envelope.from_result(key, result, ttl=options.ttl)
        envelope.dumps(key)
    except NotStorableError as exc:
        keep = False
        envelope = Envelope.from_result(key, err(UnexpectedError.from_exception(exc)), ttl=None)
    if not claim.commit(envelope, keep=keep):
        log.warning("step %r: lease lost before commit; a newer outcome stands", key)


class CeleryDispatcher:
    """Sends Celery signatures given to ``step(...)`` to the workers and waits for outcomes.

    ``timeout``: longest wait for one step (None = no limit).
    """

    def __init__(
        self,
        app: Celery,
        cache: RedisCache,
        *,
        queue: str | None = None,
        timeout: float | None = None,
    ) -> None:
        self.app = app
        self.cache = cache
        self.queue = queue or app.conf.get("workflow_cache", {}).get("queue", STEP_QUEUE)
        self.timeout = timeout

    def accepts(self, work: object) -> bool:
        return isinstance(work, Signature)

    def run(self, work: Signature, options: StepOptions) -> Result[Any, Any]:
        return self.run_many([(work, options)])[0]

    def run_many(self, works: Sequence[tuple[Signature, StepOptions]]) -> list[Result[Any, Any]]:
        keyed = [_Pending(sig, _with_key(options)) for sig, options in works]
        unique = {p.key: p for p in reversed(keyed)}  # one message per key, first one wins
        flight = self.cache.flight
        outcomes: dict[str, Result[Any, Any]] = {}
        with flight.watch_many(unique) as notices:
            # Subscribed first, then read: a commit landing before our subscription is
            # found here, one landing after it is announced to us. Hits are never sent.
            stored = flight.read_many(list(unique))
            for (key, pending), raw in zip(unique.items(), stored, strict=True):
                if raw is None:
                    self._send(pending)
                else:
                    outcomes[key] = _decode(pending, raw)
            for key, pending in unique.items():
                if key not in outcomes:
                    outcomes[key] = self._wait(pending, notices)
        return [outcomes[p.key] for p in keyed]

    def _send(self, pending: _Pending) -> None:
        sig, options = pending.signature, pending.options
        policy = {
            "ttl": options.ttl,
            "cache_errors": options.cache_errors,
            "cache_exceptions": options.cache_exceptions,
            "once": options.key.startswith(_ONCE),
        }  # type: ignore[union-attr]
        queue = sig.options.get("queue") or self.queue
        self.app.send_task(
            STEP_TASK,
            args=(
                sig.task,
                list(sig.args),
                dict(sig.kwargs),
                options.key,
                self.cache.namespace,
                policy,
            ),
            queue=queue,
        )

    def _wait(self, pending: _Pending, notices: Any) -> Result[Any, Any]:
        """Wake on the commit notice; every lease/3 check that a worker still holds the claim."""
        key = pending.key
        flight = self.cache.flight
        lock = flight.keyspace.for_step(key).lock
        interval = flight.lease / 3
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        seen_running = False
        while True:
            raw = notices.outcome(key, interval)
            if raw is None:
                raw = flight.read(key)
            if raw is not None:
                return _decode(pending, raw)
            running = bool(self.cache.client.exists(lock))
            if running:
                seen_running = True
            elif seen_running:
                log.warning("step %r: its worker stopped without an outcome; sending again", key)
                seen_running = False
                self._send(pending)
            if deadline is not None and time.monotonic() > deadline:
                raise ClaimTimeout(f"step {key!r} has no outcome after {self.timeout:g} s")


_ONCE = "_once:"


def _decode(pending: _Pending, raw: bytes) -> Result[Any, Any]:
    return Envelope.loads(pending.key, raw).to_result(pending.key, pending.options.returns)


def _with_key(options: StepOptions) -> StepOptions:
    """An unkeyed step still needs a key to wait on: a fresh one, kept briefly."""
    if options.key is not None:
        return options
    return StepOptions(
        key=f"{_ONCE}{uuid.uuid4().hex}",
        ttl=ONCE_TTL,
        cache_errors=True,
        cache_exceptions=True,
        returns=options.returns,
    )


class _Pending:
    __slots__ = ("key", "options", "signature")

    def __init__(self, signature: Signature, options: StepOptions) -> None:
        assert options.key is not None
        self.signature = signature
        self.options = options
        self.key: str = options.key
