"""The producer side of a step: send the user's own task once per key, wait for the outcome.

``CeleryDispatcher.run_many`` subscribes to every key's channel and, in the same round
trip, runs ``enqueue`` for every key, pipelined (``cache/messages.py``): a stored outcome
is a hit, a key already queued or running is only waited on (looked at again once the
subscriptions are live), and for the rest this producer set the queued marker and, once
subscribed, sends ``sig.apply_async(...)`` itself, keeping the
signature's options (queue, priority, countdown/eta, expires, headers, time limits,
``task_routes``) and adding the ``wfc_step`` header. The caller waits on the commit
notice; when none comes within lease/3 it runs ``enqueue`` again, which either finds
the outcome, finds the step still queued or running, or (the message or its worker was
lost) sets a fresh marker so that exactly one waiter sends the step again.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
import uuid
from collections.abc import Sequence
from typing import Any

from celery import Celery, Signature

from workflow_cache.cache.claims import ClaimTimeout, Done, Notices, Running
from workflow_cache.cache.clients import Keyed
from workflow_cache.cache.messages import Busy, Send, StepMessages
from workflow_cache.cache.notices import Watch
from workflow_cache.cache.protocol import (
    NOTICE_OUTCOME,
    PRESENCE_GRACE_S,
    PRESENCE_POLL_S,
    started_by,
)
from workflow_cache.cache.redis import RedisCache
from workflow_cache.distributed.canvas import members, require_task
from workflow_cache.distributed.header import HEADER, StepHeader
from workflow_cache.distributed.pending import PendingStep
from workflow_cache.options import StepOptions
from workflow_cache.result import Result

log = logging.getLogger(__name__)

ONCE_TTL = 600.0
"""Seconds an unkeyed step's outcome is kept: long enough for its caller to read it."""
UNSENT_LEASES = 2.0
"""A queued marker lives this many leases until its producer confirms the message sent."""
QUEUED_TTL = 60.0
"""Default life of a queued marker: how long a sent message may wait in the queue before
a waiter takes it for lost and sends the step again (at most once per expiry)."""

_ONCE = "_once:"


def require_single_flight(cache: Any, who: str) -> RedisCache:
    """``cache`` if it can run a key once across processes, else a ``TypeError`` saying why."""
    if isinstance(cache, RedisCache):
        return cache
    raise TypeError(
        f"{who} needs a cache that can do single flight across processes (a RedisCache: "
        f"claims, leases and commit notices in Redis shared by producers and workers); "
        f"got {type(cache).__name__}, which only stores outcomes on one machine"
    )


class CeleryDispatcher:
    """Sends Celery signatures given to ``step(...)`` to the workers and waits for outcomes.

    ``timeout``: longest wait for one step (None = no limit).
    ``queued_ttl``: seconds a sent message may sit in its queue before waiters send the
    step again (see the module docstring); make it longer than your queues' worst backlog.
    A signature's own ``countdown``/``eta`` is added to it.
    """

    def __init__(
        self,
        app: Celery,
        cache: RedisCache,
        *,
        timeout: float | None = None,
        queued_ttl: float = QUEUED_TTL,
    ) -> None:
        require_single_flight(cache, "CeleryDispatcher")
        if queued_ttl <= 0:
            raise ValueError(f"queued_ttl must be a positive number of seconds, got {queued_ttl}")
        self.app = app
        self.cache = cache
        self.timeout = timeout
        self.queued_ttl = float(queued_ttl)
        self.messages = StepMessages(cache.flight)

    def accepts(self, work: object) -> bool:
        return isinstance(work, Signature)

    def expand(self, work: Signature) -> list[Signature] | None:
        """A group's tasks (each its own step), None for one task; TypeError for the rest."""
        return members(work)

    def run(self, work: Signature, options: StepOptions) -> Result[Any, Any]:
        return self.run_many([(work, options)])[0]

    def run_many(self, works: Sequence[tuple[Signature, StepOptions]]) -> list[Result[Any, Any]]:
        for sig, _ in works:
            require_task(sig)  # before anything is sent: a refusal leaves no message behind
        keyed = [PendingStep(sig, _with_key(options)) for sig, options in works]
        for p in keyed:  # a step no worker would accept is refused before anything is queued
            StepHeader.of(p.options, self.cache.namespace, once=p.key.startswith(_ONCE))
        unique = {p.key: p for p in reversed(keyed)}  # one message per key, first one wins
        outcomes: dict[str, Result[Any, Any]] = {}
        flight = self.cache.flight
        listener = flight.notifier()
        watches: dict[str, Watch] = {}
        try:
            for key in unique:
                watches[key] = listener.watch(flight.keyspace.for_step(key).channel)
            notices = Notices(watches)
            pending = list(unique.values())
            ids = [_task_id() for _ in pending]
            unsent = [self._unsent_ttl(p) for p in pending]
            # The SUBSCRIBEs (sent by the listener thread) and the first enqueue travel
            # side by side, one round trip for both. A commit announced before the
            # subscriptions are live is found by enqueue, or, for a key that was already
            # busy, by enqueue again once they are. A key this producer sends is run by
            # its message, which goes out once they are live (an older message still
            # running past its marker's life is the exception: the wake-up at lease/3
            # finds what its missed notice said).
            states = self.messages.enqueue_many([p.key for p in pending], ids, unsent)
            for w in watches.values():
                listener.wait_live(w, flight.CONFIRM_S)
            states = self._recheck_busy(pending, states, unsent)
            to_send: list[tuple[PendingStep, str]] = []
            since: dict[str, int] = {}
            for p, state in zip(pending, states, strict=True):
                if isinstance(state, Done):
                    outcomes[p.key] = p.decode(state.outcome)
                    continue
                since[p.key] = state.since
                if isinstance(state, Send):
                    to_send.append((p, state.task_id))
            sent = self._publish(to_send, confirm=False)
            for key, p in unique.items():
                if key not in outcomes:
                    outcomes[key] = self._wait(p, notices, since[key], sent)
        finally:
            for w in watches.values():
                listener.unwatch(w)
        return [outcomes[p.key] for p in keyed]

    def _recheck_busy(
        self, pending: list[PendingStep], states: list[Done | Busy | Send], unsent: list[float]
    ) -> list[Done | Busy | Send]:
        """Look again at the keys that were busy, now that their notices reach us: one
        round trip, only when another producer or a worker had the key already."""
        busy = {i: state.since for i, state in enumerate(states) if isinstance(state, Busy)}
        if not busy:
            return states
        again = self.messages.enqueue_many(
            [pending[i].key for i in busy],
            [_task_id() for _ in busy],
            [unsent[i] for i in busy],
            since=list(busy.values()),
        )
        fresh = list(states)
        for i, state in zip(busy, again, strict=True):
            fresh[i] = state
        return fresh

    def _queued_ttl(self, pending: PendingStep) -> float:
        """A message held back by ``countdown``/``eta`` is not lost while it waits."""
        return self.queued_ttl + _delay(pending.signature.options)

    def _unsent_ttl(self, pending: PendingStep) -> float:
        """The life of a marker until its message is known sent: a producer killed
        between the marker and the publish strands the key only this long."""
        return min(self._queued_ttl(pending), UNSENT_LEASES * self.cache.flight.lease)

    def _publish(
        self, items: list[tuple[PendingStep, str]], *, confirm: bool = True
    ) -> Unconfirmed:
        """Send each step's message; its marker then lasts ``_queued_ttl`` once confirmed.

        ``confirm=False`` leaves the confirmation to the caller's first periodic wake-up
        (``Unconfirmed.confirm``): a step that commits before then costs no extra round
        trip, and lease/3 is well within the unsent marker's life of two leases."""
        sent = Unconfirmed()
        if not items:
            return sent
        namespace = self.cache.namespace
        with self.app.producer_or_acquire() as producer:
            for p, task_id in items:
                sig, options = p.signature, p.options
                header = StepHeader.of(options, namespace, once=p.key.startswith(_ONCE))
                headers = {**(sig.options.get("headers") or {}), HEADER: header.dump()}
                extra: dict[str, Any] = {}
                if "ignore_result" not in sig.options:
                    extra["ignore_result"] = True  # the outcome lives in the step cache
                sig.apply_async(task_id=task_id, headers=headers, producer=producer, **extra)
                sent.add(p.key, task_id, self._queued_ttl(p))
        if confirm:
            sent.confirm(self.messages)
        return sent

    def _wait(
        self, pending: PendingStep, notices: Notices, since: int, sent: Unconfirmed
    ) -> Result[Any, Any]:
        """Wake on the commit notice; without one, every lease/3 run ``enqueue`` again.

        While a worker holds the step (known from its start notice, or from ``enqueue``),
        check every ``PRESENCE_POLL_S`` that its process is still connected to Redis:
        gone for ``PRESENCE_GRACE_S``, its claim is ended (fenced, ``take_over``) and the
        step sent again at once, not at lease end."""
        key = pending.key
        interval = self.cache.flight.lease / 3
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        running: Running | None = None
        gone_at: float | None = None
        due = time.monotonic() + interval
        while True:
            now = time.monotonic()
            wait = due - now
            if running is not None and running.presence is not None:
                poll = PRESENCE_POLL_S if gone_at is None else gone_at + PRESENCE_GRACE_S - now
                wait = min(wait, poll)
            notice = notices.next(key, max(wait, 0.0))
            if notice is not None and notice[:1] == NOTICE_OUTCOME:
                return pending.decode(notice[1:])
            started = None if notice is None else started_by(notice)
            if started is not None:  # a worker claimed it: watch that process from now on
                running, gone_at = started, None
                continue
            now = time.monotonic()
            released = notice is not None  # (a release notice): look at the key now
            if not released and now < due and running is not None and running.presence:
                if self.messages.present(running.presence):
                    gone_at = None
                    continue
                if gone_at is None or now < gone_at + PRESENCE_GRACE_S:
                    gone_at = gone_at or now
                    continue
                log.warning("step %r: the process running it is gone; sending it again", key)
                self.messages.take_over(key, running)
            gone_at, due = None, now + interval
            sent.confirm(self.messages)  # the first wake-up: our messages were sent
            state = self.messages.enqueue(key, _task_id(), self._unsent_ttl(pending), since=since)
            running = state.running if isinstance(state, Busy) else None
            if isinstance(state, Done):
                return pending.decode(state.outcome)
            if isinstance(state, Send):
                log.warning("step %r: no worker holds it and no message is queued; sent again", key)
                sent.merge(self._publish([(pending, state.task_id)], confirm=False))
            if deadline is not None and time.monotonic() > deadline:
                raise StepWaitTimeout(key, self.queue_of(pending.signature), self.timeout, state)

    def queue_of(self, sig: Signature) -> str:
        """The queue a signature's message goes to (its own option, else the app's routes)."""
        queue = sig.options.get("queue")
        if queue is None:
            try:
                routed = self.app.amqp.router.route(
                    dict(sig.options), sig.task, sig.args, sig.kwargs
                )
                queue = routed.get("queue")
            except Exception:  # routing is the app's business; the message names what we know
                queue = None
        name = getattr(queue, "name", queue)
        return str(name or self.app.conf.task_default_queue)


class Unconfirmed:
    """Messages handed to the broker whose queued markers still have their short life."""

    __slots__ = ("ids", "keys", "ttls")

    def __init__(self) -> None:
        self.keys: list[str] = []
        self.ids: list[str] = []
        self.ttls: list[float] = []

    def add(self, key: str, task_id: str, ttl: float) -> None:
        self.keys.append(key)
        self.ids.append(task_id)
        self.ttls.append(ttl)

    def merge(self, other: Unconfirmed) -> None:
        for key, task_id, ttl in zip(other.keys, other.ids, other.ttls, strict=True):
            self.add(key, task_id, ttl)

    def confirm(self, messages: StepMessages) -> None:
        """Give every marker its queued life (one round trip), once."""
        if self.keys:
            messages.sent_many(self.keys, self.ids, self.ttls)
            self.keys, self.ids, self.ttls = [], [], []

    def calls(self, messages: StepMessages) -> list[Keyed]:
        """``confirm`` as calls to make in one trip with the caller's own, once."""
        made = messages.sent_calls(self.keys, self.ids, self.ttls)
        self.keys, self.ids, self.ttls = [], [], []
        return made


class StepWaitTimeout(ClaimTimeout):
    """A blocking wait for a dispatched step passed its deadline; names the step and queue."""

    def __init__(self, key: str, queue: str, timeout: float | None, state: object) -> None:
        started = isinstance(state, Busy) and state.holder == "claimed"
        why = (
            "a worker started it and it is still running"
            if started
            else f"no worker has started it: is any worker consuming queue {queue!r} "
            "with a free slot?"
        )
        super().__init__(
            f"step {key!r} (queue {queue!r}) has no outcome after {timeout:g} s: {why}"
        )
        self.key = key
        self.queue = queue


def _delay(options: dict[str, Any]) -> float:
    """Seconds a signature's ``countdown`` or ``eta`` holds its message back (0 if none)."""
    countdown = options.get("countdown")
    if isinstance(countdown, int | float) and countdown > 0:
        return float(countdown)
    eta = options.get("eta")
    if isinstance(eta, str):
        try:
            eta = dt.datetime.fromisoformat(eta)
        except ValueError:
            return 0.0
    if isinstance(eta, dt.datetime):
        now = dt.datetime.now(eta.tzinfo) if eta.tzinfo else dt.datetime.now()
        return max(0.0, (eta - now).total_seconds())
    return 0.0


def _task_id() -> str:
    return str(uuid.uuid4())


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
