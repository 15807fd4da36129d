"""The worker side of a step: the key's claim wraps the user's own task as Celery runs it.

``guard(app)`` replaces ``__call__`` on the class of each task of the app (and its
``Request`` class) with a thin wrapper. Celery's tracer calls ``task.__call__`` when a
task class defines one, inside everything Celery does around a task: the request is
pushed (``bind=True`` tasks see the real one), ``task_prerun``/``task_success``/
``task_failure``/``task_retry`` fire, time limits are enforced, ``autoretry_for`` and
``self.retry()`` raise Celery's ``Retry``. A message without the ``wfc_step`` header
runs exactly as before (the wrapper calls ``run``, as Celery would).

For a step message the wrapper:

- starts the claim without waiting (``cache/messages.py``); if the key is committed or
  another execution holds it, raises ``Ignore``: the message is acknowledged and the
  slot is free at once;
- runs the body; on ``Retry`` it *parks* the claim for the retry's countdown, so the
  retried message (same task id) takes it up and waiters keep waiting;
- commits the final outcome: the value, an ``err`` the task returned, or the exception
  that ended it (after the last retry), kept by the step's policy; the exception is
  raised again so Celery records the failure as usual. A ``BaseException`` (the pool
  process is being terminated) leaves the claim to run out its lease instead.

When Celery kills a pool process at its hard time limit, or terminates a revoked
task, the worker's main process commits ``err(TimeLimitExceeded)`` or
``err(TaskRevokedError)`` for the claim that task held.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from celery import Celery, Task
from celery.app.task import Task as BaseTask
from celery.exceptions import Ignore, Reject, Retry, TaskRevokedError, TimeLimitExceeded
from kombu.utils.imports import symbol_by_name

from workflow_cache import metrics, tracing
from workflow_cache.cache.claims import CacheUnavailable, Done, Holder, Running, SingleFlight
from workflow_cache.cache.messages import StepMessages
from workflow_cache.cache.reaching import unreachable
from workflow_cache.cache.redis import RedisCache
from workflow_cache.distributed.continuation import carriable, carry_on
from workflow_cache.distributed.header import BadHeader, StepHeader, read_header
from workflow_cache.distributed.resume import Arrival, delivered, hand_over
from workflow_cache.envelope import Envelope, NotStorableError
from workflow_cache.options import keeps
from workflow_cache.result import Result, UnexpectedError, err, ok

log = logging.getLogger(__name__)

_GUARDED = "_wfc_guarded"
T = TypeVar("T")

PATIENCE_LEASES = 2.0
"""A step delivery that cannot reach Redis keeps trying for this many leases, then gives
its message back to the queue: a restart or a blip never acknowledges a step away."""
FIRST_RETRY_S = 0.05
PARK_SLACK_MIN = 10.0
"""A parked claim lives for the retry's countdown plus max(2 leases, this many seconds):
time for a busy worker to start the retried message before waiters give up on it."""


class StepRunner:
    """Per app: the cache of each namespace a step message may name, made on first use."""

    def __init__(self, cache: RedisCache) -> None:
        self.cache = cache
        self._lock = threading.Lock()
        self._messages: dict[str, StepMessages] = {}

    def messages(self, namespace: str) -> StepMessages:
        with self._lock:
            found = self._messages.get(namespace)
            if found is None:
                base = self.cache
                cache = (
                    base
                    if namespace == base.namespace
                    else RedisCache(
                        base.url, namespace=namespace, lease=base.lease, client=base.client
                    )
                )
                found = self._messages[namespace] = StepMessages(cache.flight)
            return found

    def park_seconds(self, countdown: float) -> float:
        return max(countdown, 0.0) + max(2 * self.cache.lease, PARK_SLACK_MIN)

    def patience(self) -> float:
        """How long a delivery keeps trying to reach Redis before it gives its message back."""
        return PATIENCE_LEASES * self.cache.lease


def patiently(runner: StepRunner, key: str, doing: str, call: Callable[[], T]) -> T:
    """``call()``, tried again while Redis cannot be reached (restarting, loading, a
    dropped link), for up to ``runner.patience()`` seconds; then the message is rejected
    back to its queue (``Reject(requeue=True)``), never acknowledged as done."""
    deadline = time.monotonic() + runner.patience()
    delay = FIRST_RETRY_S
    while True:
        try:
            return call()
        except CacheUnavailable as exc:
            if not unreachable(exc):
                raise
            if time.monotonic() + delay > deadline:
                log.warning("step %r: Redis unreachable %s (%s); message requeued", key, doing, exc)
                raise Reject(str(exc), requeue=True) from exc
            level = logging.WARNING if delay == FIRST_RETRY_S else logging.DEBUG
            log.log(level, "step %r: Redis unreachable %s (%s); trying again", key, doing, exc)
            time.sleep(delay)
            delay = min(delay * 2, 1.0)


def runner_of(app: Celery) -> StepRunner | None:
    config = app.conf.get("workflow_cache") or {}
    return config.get("runner")


# --------------------------------------------------------------------------- guarding


def guard(app: Celery) -> None:
    """Wrap every task of ``app`` (idempotent; called at finalize and at worker start)."""
    for name, task in list(app.tasks.items()):
        if not name.startswith("celery."):
            guard_task(task)


def guard_task(task: Task) -> None:
    cls = type(task)
    if cls.__dict__.get(_GUARDED):
        return
    original = cls.__call__
    plain = original is BaseTask.__call__

    def __call__(self: Task, *args: Any, **kwargs: Any) -> Any:
        try:
            return _call(self, original, plain, args, kwargs)
        except Ignore:
            # Raised again here, its traceback is two frames deep: Celery copies and
            # formats every frame of it twice per ignored message (a suspension).
            raise Ignore() from None

    cls.__call__ = __call__
    base = symbol_by_name(cls.Request)
    if not issubclass(base, _TimeLimitCommit):
        cls.Request = type(base.__name__, (_TimeLimitCommit, base), {})
    setattr(cls, _GUARDED, True)


def _call(
    task: Task,
    original: Callable[..., Any],
    plain: bool,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Any:
    request = task.request
    if request.called_directly:
        return original(task, *args, **kwargs)
    if plain:
        body: Callable[[], Any] = lambda: task.run(*args, **kwargs)  # noqa: E731
    else:
        body = lambda: original(task, *args, **kwargs)  # noqa: E731
    runner = runner_of(task.app)
    try:
        header = read_header(request.headers)
    except BadHeader as exc:
        log.warning("task %s[%s] refused: %s", task.name, request.id, exc)
        raise Ignore() from None
    if header is None or runner is None:
        return body()
    try:
        messages = runner.messages(header.ns)
    except ValueError as exc:
        log.warning("task %s[%s] refused: wfc_step header: %s", task.name, request.id, exc)
        raise Ignore() from None
    begun = time.perf_counter()
    start = functools.partial(messages.start, header.key, request.id)
    started = patiently(runner, header.key, "taking its claim", start)
    if isinstance(started, Running) and patiently(
        runner,
        header.key,
        "checking its holder",
        functools.partial(messages.flight.take_over_if_gone, header.key, started),
    ):
        # its holder's process died (redelivered after a killed pool child): run it now
        started = patiently(runner, header.key, "taking its claim", start)
    if isinstance(started, Done):  # a redelivery: resume runs its executor may have left
        hand_over(task.app, messages.flight, header.key)
    if isinstance(started, Done | Running):
        log.debug("step %r: %s already, message %s acknowledged", header.key, started, request.id)
        raise Ignore()
    started.hands_over = True  # the commit below resumes its waiting runs itself
    # A claim with epoch > 1 follows one that ended without an outcome (crash, release).
    takeover = started.epoch > 1
    metrics.claim_acquired(header.ns, time.perf_counter() - begun, waited=False, takeover=takeover)
    run = _Execution(header, started, begun, tracing.start(header.key, header.ns))
    return _run_holding(task, runner, messages, run, body)


class _Execution:
    """One execution of a step on this worker: what its commit reports to metrics and traces."""

    __slots__ = ("begun", "header", "holder", "span")

    def __init__(self, header: StepHeader, holder: Holder, begun: float, span: Any) -> None:
        self.header = header
        self.holder = holder
        self.begun = begun
        self.span = span


def _run_holding(
    task: Task,
    runner: StepRunner,
    messages: StepMessages,
    run: _Execution,
    body: Callable[[], Any],
) -> Any:
    holder, header = run.holder, run.header
    try:
        produced = body()
    except Retry as exc:
        seconds = runner.park_seconds(_countdown(exc))
        if not messages.park(holder, task.request.id, seconds):
            log.warning("step %r: lease lost before the retry was parked", header.key)
        tracing.end(run.span, retried=True)
        raise
    except (Ignore, Reject):
        holder.release()
        tracing.end(run.span, released=True)
        raise
    except Exception as exc:
        failed = err(UnexpectedError.from_exception(exc))
        _carry_on(task.app, _commit(task, runner, messages.flight, run, failed))
        raise
    except BaseException:
        # the process is being torn down (terminated, revoked, cold shutdown): keep the
        # claim so the worker's main process can record why; otherwise its lease expires
        holder.abandon()
        tracing.end(run.span, abandoned=True)
        raise
    result = produced if isinstance(produced, Result) else ok(produced)
    _carry_on(task.app, _commit(task, runner, messages.flight, run, result))
    if isinstance(produced, Result):
        return Envelope.from_result(header.key, produced, ttl=None).detached(header.key)
    return produced


def _outcome(header: StepHeader, result: Result[Any, Any]) -> tuple[Envelope, bool]:
    """The envelope to announce and whether it is kept (an unstorable value never is)."""
    key = header.key
    keep = header.once or keeps(result, header.options())
    try:
        envelope = Envelope.from_result(key, result, ttl=header.ttl)
        envelope.dumps(key)
    except NotStorableError as exc:
        return Envelope.from_result(key, err(UnexpectedError.from_exception(exc)), ttl=None), False
    return envelope, keep


def _commit(
    task: Task,
    runner: StepRunner,
    flight: SingleFlight,
    run: _Execution,
    result: Result[Any, Any],
) -> Arrival | None:
    """Store the step's outcome and resume its waiting runs; returns the one run this slot
    carries on itself (``continuation.py``), if any."""
    header = run.header
    envelope, keep = _outcome(header, result)
    ttl_ms = envelope.ttl_ms
    text = envelope.sealed(header.key)
    holder = run.holder
    try:
        committed = holder.commit(text, ttl_ms=ttl_ms, keep=keep)
    except CacheUnavailable as exc:
        if not unreachable(exc):
            log.warning("step %r: outcome not recorded, claim released: %s", header.key, exc)
            tracing.end(run.span, released=True)
            return None
        # The same fenced commit again once Redis answers: it lands if nobody took over.
        again = functools.partial(holder.recommit, text, ttl_ms, keep)
        committed = patiently(runner, header.key, "committing", again)
    metrics.commit(header.ns, envelope.status, time.perf_counter() - run.begun, accepted=committed)
    tracing.end(run.span, status=envelope.status, committed=committed, stored=keep)
    if not committed:
        log.warning("step %r: lease lost before commit; a newer outcome stands", header.key)
        return None
    if not run.holder.handed_over:
        return None
    # workflows were suspended on this key: resume them
    taken = run.holder.taken
    outcome = delivered(header.key, text, keep)
    _, kept = hand_over(task.app, flight, header.key, outcome, carriable(task), taken)
    return kept


def _carry_on(app: Celery, kept: Arrival | None) -> None:
    if kept is not None:
        carry_on(app, kept)


def _countdown(exc: Retry) -> float:
    when = exc.when
    if isinstance(when, int | float):
        return float(when)
    if isinstance(when, dt.datetime):
        now = dt.datetime.now(when.tzinfo or dt.UTC)
        if when.tzinfo is None:
            now = now.replace(tzinfo=None)
        return (when - now).total_seconds()
    return 0.0


def fail_message(task: Task, task_id: str, headers: Any, exc: BaseException, what: str) -> None:
    """Commit ``err(exc)`` for the step a message was running (or was queued to run)."""
    runner = runner_of(task.app)
    try:
        header = read_header(headers)
    except BadHeader:
        return
    if header is None or runner is None:
        return
    try:
        envelope, keep = _outcome(header, err(UnexpectedError.from_exception(exc)))
        ttl_ms = envelope.ttl_ms
        messages = runner.messages(header.ns)
        text = envelope.sealed(header.key)
        if messages.fail_task(header.key, task_id, text, ttl_ms, keep):
            hand_over(task.app, messages.flight, header.key, delivered(header.key, text, keep))
    except Exception as error:  # the lease or the queued marker still runs out
        log.warning("step %r: %s not recorded as its outcome: %s", header.key, what, error)


def on_revoked(sender: Task | None = None, request: Any = None, **info: Any) -> None:
    """``task_revoked``: an expired or revoked step message ends the step with that error."""
    if sender is None or request is None or getattr(request, "id", None) is None:
        return
    reason = "expired" if info.get("expired") else "revoked"
    exc = TaskRevokedError(f"{sender.name}[{request.id}] {reason}")
    fail_message(sender, request.id, getattr(request, "headers", None), exc, reason)


class _TimeLimitCommit:
    """Mixed into a task's ``Request`` class: a hard time limit is the step's outcome."""

    _request_dict: dict[str, Any]
    id: str
    task: Task

    def on_timeout(self, soft: bool, timeout: float) -> None:
        super().on_timeout(soft, timeout)  # type: ignore[misc]
        if soft:
            return  # raised inside the task: the wrapper commits it like any exception
        exc = TimeLimitExceeded(timeout)
        fail_message(self.task, self.id, self._request_dict, exc, "hard time limit")
