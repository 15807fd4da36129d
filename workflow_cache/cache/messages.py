"""One message per key: the queued marker, and how a worker starts or parks a sent step.

A step sent to a worker as a message adds four atomic scripts (``lua/<name>.lua``) to the
claim protocol of ``claims.py`` (same keys, same hash slot, plus ``:queued``):

``enqueue`` (producer)
    Outcome stored -> ``Done(outcome)``.  Claim held (running, or parked between retries)
    -> ``Busy`` (with the lock's token and its holder's presence, for a waiter that
    checks the holder is alive).  Queued marker present -> ``Busy``.  Otherwise ``SET
    queued <task id> PX ttl`` -> ``Send``: this caller, and only this one, sends the
    message.  The producer sets the marker short-lived (two leases) and, once the
    message is handed to the broker, ``sent`` makes it last ``queued_ttl``: a producer
    killed between the two strands the key only briefly.  The same script
    is what a waiter runs when it finds no notice: the outcome is read in the same atomic
    step as the claim and the marker, so a commit landing "between a read and a check"
    cannot make anyone send again.  An outcome that was not kept (an error the policy
    drops) is found too: commits leave it in ``:last`` with its epoch for a minute, and a
    waiter takes it when its epoch is at least the ``since`` its first enqueue returned
    (the execution it waits for, never an older one).
``start`` (worker, on receiving the message)
    Outcome stored -> ``Done``.  Claim held by another execution -> ``Running``: the worker
    acknowledges the message and returns at once, no slot ever waits on another holder.
    A claim *parked* for this very task id (a Celery retry of the same execution) is
    adopted.  Otherwise claim as ``claims.py`` does and drop the queued marker (the message
    has arrived), and announce the claim (``s<presence> <token>``) to waiting producers,
    which then watch the holder's presence.
``park`` (worker, when the task raised Celery's ``Retry``)
    The holder's lock becomes ``parked:<task id>|<epoch>`` with an expiry covering the
    retry's countdown plus a lease: waiters keep waiting, no producer re-sends, and only
    the retried message (same task id) may take the claim up again.
``fail_task`` (worker main process: a hard time limit killed the task, or Celery
    revoked it, e.g. its ``expires`` passed before it started)
    Commit an outcome for the claim the task id holds, or, when nobody holds a claim, for
    the step whose queued marker is this task id; otherwise nothing.

The claim's owner string for a dispatched step is ``<task id>@<host>:<pid>:<uuid>``, so
the lock says which message runs the step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from workflow_cache.cache.claims import Holder, SingleFlight
from workflow_cache.cache.clients import Keyed, in_one_trip
from workflow_cache.cache.keys import Keys
from workflow_cache.cache.lua import register
from workflow_cache.cache.protocol import (
    EPOCH_TTL_MS,
    LAST_TTL_MS,
    Done,
    Running,
    as_bytes,
    as_text,
    claim_state,
    default_owner,
    presence_key,
)

__all__ = ["Busy", "Send", "StepMessages", "parked_value"]

PARKED = "parked:"


@dataclass(frozen=True, slots=True)
class Send:
    """The caller set the queued marker: it must send the message with this task id."""

    task_id: str
    since: int


@dataclass(frozen=True, slots=True)
class Busy:
    """A message is queued (``holder`` is its task id) or a worker holds the claim
    (``holder`` is ``"claimed"``, ``running`` the claim as a waiter sees it)."""

    holder: str
    since: int
    running: Running | None = field(default=None, compare=False)


def parked_value(task_id: str, epoch: int) -> str:
    return f"{PARKED}{task_id}|{epoch}"


def task_owner(task_id: str) -> str:
    """The owner string of a claim taken by the message ``task_id``."""
    return f"{task_id}@{default_owner()}"


class StepMessages:
    """The message-side scripts bound to one ``SingleFlight`` (its client, keys and lease)."""

    def __init__(self, flight: SingleFlight) -> None:
        self.flight = flight
        scripts = register(flight.client, ("enqueue", "sent", "start", "park", "fail_task"))
        self._enqueue = scripts["enqueue"]
        self._sent = scripts["sent"]
        self._start = scripts["start"]
        self._park = scripts["park"]
        self._fail = scripts["fail_task"]

    def keys(self, key: str) -> Keys:
        return self.flight.keyspace.for_step(key)

    def enqueue_many(
        self,
        keys: Sequence[str],
        task_ids: Sequence[str],
        queued_ttl: float | Sequence[float],
        since: Sequence[int] | None = None,
    ) -> list[Done | Busy | Send]:
        """For each key: its outcome, busy, or ``Send`` (marker set for ``queued_ttl``
        seconds, one value or one per key); one round trip. With ``since`` (one per key,
        as ``enqueue`` takes it) a key's outcome that was not kept counts too."""
        if not keys:
            return []
        ttls = [queued_ttl] * len(keys) if isinstance(queued_ttl, int | float) else queued_ttl
        bars: Sequence[int | str] = [""] * len(keys) if since is None else since
        client = self.flight.client

        def call(key: str, task_id: str, ttl: float, bar: int | str) -> Keyed:
            args = [task_id, max(1, round(ttl * 1000)), bar]
            keys = self._enqueue_keys(key)
            return keys[0], lambda target: self._enqueue(keys=keys, args=args, client=target)

        def run() -> list[Any]:
            calls = [call(*row) for row in zip(keys, task_ids, ttls, bars, strict=True)]
            return in_one_trip(client, calls)

        return [_enqueued(reply) for reply in self.flight.claims.call(run)]

    def sent_many(
        self, keys: Sequence[str], task_ids: Sequence[str], queued_ttl: Sequence[float]
    ) -> None:
        """The messages of ``task_ids`` were handed to the broker: their markers, set
        short-lived by ``enqueue``, now last ``queued_ttl`` seconds; one round trip."""
        if not keys:
            return
        calls = self.sent_calls(keys, task_ids, queued_ttl)
        self.flight.claims.call(lambda: in_one_trip(self.flight.client, calls))

    def sent_calls(
        self, keys: Sequence[str], task_ids: Sequence[str], queued_ttl: Sequence[float]
    ) -> list[Keyed]:
        """``sent_many`` as calls, for a caller that makes them in one trip with its own."""

        def call(key: str, task_id: str, ttl: float) -> Keyed:
            args = [task_id, max(1, round(ttl * 1000))]
            queued = self.keys(key).queued
            return queued, lambda target: self._sent(keys=[queued], args=args, client=target)

        return [call(*row) for row in zip(keys, task_ids, queued_ttl, strict=True)]

    def enqueue(
        self, key: str, task_id: str, queued_ttl: float, *, since: int
    ) -> Done | Busy | Send:
        """A waiter's check: as ``enqueue_many``, and also the outcome of any execution of
        epoch ``since`` or later that was not kept (its notice may have been missed)."""
        ttl_ms = max(1, round(queued_ttl * 1000))
        reply = self.flight.claims.call(
            lambda: self._enqueue(keys=self._enqueue_keys(key), args=[task_id, ttl_ms, since])
        )
        return _enqueued(reply)

    def _enqueue_keys(self, key: str) -> list[str]:
        k = self.keys(key)
        return [k.out, k.lock, k.queued, k.epoch, k.last, presence_key(k)]

    def present(self, presence: int) -> bool:
        """Whether the process of presence id ``presence`` is still connected to Redis."""
        return self.flight.claims.present(presence)

    def take_over(self, key: str, running: Running) -> bool:
        """End ``running``'s claim if it is still the lock's under the same presence."""
        return self.flight.claims.take_over(self.keys(key), running)

    def start(self, key: str, task_id: str) -> Done | Running | Holder:
        """Claim ``key`` for the message ``task_id`` without waiting (see the module doc)."""
        flight = self.flight
        k = self.keys(key)
        owner = task_owner(task_id)
        presence = flight.presence_id()
        reply = flight.claims.call(
            lambda: self._start(
                keys=[k.out, k.lock, k.epoch, k.queued, presence_key(k)],
                args=[owner, flight.lease_ms, EPOCH_TTL_MS, task_id, presence or "", k.channel],
            )
        )
        if as_text(reply[0]) == "done":
            return Done(b"")  # the script does not read the outcome back
        state = claim_state(reply)
        assert not isinstance(state, Done)
        return state if isinstance(state, Running) else Holder(flight, key, k, state)

    def park(self, holder: Holder, task_id: str, seconds: float) -> bool:
        """Keep ``holder``'s claim for the retry of ``task_id`` for ``seconds``; False if lost."""
        holder.finish()
        px = max(1, round(seconds * 1000))
        value = parked_value(task_id, holder.epoch)
        return bool(
            self.flight.claims.call(
                lambda: self._park(
                    keys=[holder.keys.lock, presence_key(holder.keys)],
                    args=[holder.token, value, px],
                )
            )
        )

    def fail_task(
        self, key: str, task_id: str, outcome: bytes | str, ttl_ms: int | None, keep: bool
    ) -> bool:
        """Commit ``outcome`` for the claim (or queued marker) of the message ``task_id``."""
        k = self.keys(key)
        args = [
            f"{task_id}@",
            outcome,
            int(ttl_ms or 0),
            1 if keep else 0,
            k.channel,
            task_id,
            LAST_TTL_MS,
        ]
        return bool(
            self.flight.claims.call(
                lambda: self._fail(
                    keys=[
                        k.out,
                        k.lock,
                        k.queued,
                        k.epoch,
                        k.last,
                        k.waiters,
                        k.handoff,
                        presence_key(k),
                    ],
                    args=args,
                )
            )
        )


def _enqueued(reply: Any) -> Done | Busy | Send:
    kind = as_text(reply[0])
    if kind == "done":
        return Done(as_bytes(reply[1]))
    if kind == "busy":
        running: Running | None = None
        if len(reply) > 4:  # claimed: the lock's token and its holder's presence
            state = claim_state([b"running", reply[3], -1, reply[4]])
            assert isinstance(state, Running)
            running = state
        return Busy(as_text(reply[1]), int(reply[2]), running)
    return Send(as_text(reply[1]), int(reply[2]))
