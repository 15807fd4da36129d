"""Which workflow runs wait on a step key, and how a commit hands them over.

A suspending workflow joins the key's waiter set (``wfc:<ns>:{<key>}:waiters``, members
``"<run id>|<batch>"``) in the same atomic step (``lua/wait_step.lua``) that finds the key
not done and, when nothing is queued or running, sets the queued marker so that this
caller sends the one message. The commit of the key (``commit.lua``, or ``fail_task.lua``
for a time limit or a revoked message) moves the whole set into ``:handoff`` in the same
script that stores the outcome: a workflow either saw the outcome or is in the set the
commit moved, never neither. The committer then takes the handoff set (``take_handoff``:
read and delete, so exactly one caller gets each member) and resumes each run
(``resume.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from workflow_cache.cache.claims import Done, SingleFlight
from workflow_cache.cache.clients import Keyed, in_one_trip
from workflow_cache.cache.lua import register

WAITERS_TTL_MS = 7 * 24 * 3600 * 1000
"""A waiter set outlives any reasonable suspension; it is deleted when the key commits."""


@dataclass(frozen=True, slots=True)
class Joined:
    """The run now waits on the key; ``send`` is the task id of the message to send (or
    None: a message is queued or a worker runs the step already)."""

    send: str | None


def member(run_id: str, batch: int) -> str:
    return f"{run_id}|{batch}"


def parse_member(raw: bytes | str) -> tuple[str, int] | None:
    """``(run id, batch)`` of a waiter entry; None for an entry that is not one (untrusted)."""
    text = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
    run_id, bar, batch = text.rpartition("|")
    if not bar or not run_id or not batch.isdigit():
        return None
    return run_id, int(batch)


class Waiters:
    """The waiter-set scripts bound to one ``SingleFlight`` (its client and key space)."""

    def __init__(self, flight: SingleFlight) -> None:
        self.flight = flight
        scripts = register(flight.client, ("wait_step", "take_handoff"))
        self._wait, self._take = scripts["wait_step"], scripts["take_handoff"]

    def join_many(
        self,
        keys: Sequence[str],
        task_ids: Sequence[str],
        queued_ttls: Sequence[float],
        run_id: str,
        batch: int,
        *,
        send: bool = True,
    ) -> list[Done | Joined]:
        """For each key: its stored outcome, or joined (and whether to send; never when
        ``send`` is False: something outside the fleet commits the key); one round trip."""
        if not keys:
            return []
        calls = self.join_calls(keys, task_ids, queued_ttls, run_id, batch, send=send)
        return joined(self.flight.claims.call(lambda: in_one_trip(self.flight.client, calls)))

    def join_calls(
        self,
        keys: Sequence[str],
        task_ids: Sequence[str],
        queued_ttls: Sequence[float],
        run_id: str,
        batch: int,
        *,
        send: bool = True,
    ) -> list[Keyed]:
        """``join_many`` as calls, for a caller that makes them in one trip with its own;
        ``joined`` reads their replies."""
        who = member(run_id, batch)
        space = self.flight.keyspace

        def call(key: str, task_id: str, ttl: float) -> Keyed:
            k = space.for_step(key)
            names = [k.out, k.lock, k.queued, k.epoch, k.waiters]
            args = [task_id, max(1, round(ttl * 1000)), who, WAITERS_TTL_MS, int(send)]
            return k.out, lambda target: self._wait(keys=names, args=args, client=target)

        return [call(*row) for row in zip(keys, task_ids, queued_ttls, strict=True)]

    def take_handoff(self, key: str) -> list[tuple[str, int]]:
        """The runs a commit of ``key`` handed over; each is returned to one caller only."""
        handoff = self.flight.keyspace.for_step(key).handoff
        raw = self.flight.claims.call(lambda: self._take(keys=[handoff]))
        return [m for m in (parse_member(r) for r in raw) if m is not None]

    def waiting_on(self, key: str) -> list[str]:
        """Run ids of the workflows suspended until ``key`` commits (sorted)."""
        name = self.flight.keyspace.for_step(key).waiters
        raw = self.flight.claims.call(lambda: self.flight.client.smembers(name))
        return sorted({m[0] for m in (parse_member(r) for r in raw) if m is not None})


def joined(replies: Sequence[Any]) -> list[Done | Joined]:
    """What each join call found: the stored outcome, or joined (with the message to send)."""
    out: list[Done | Joined] = []
    for reply in replies:
        kind = _text(reply[0])
        if kind == "done":
            raw = reply[1]
            out.append(Done(raw if isinstance(raw, bytes) else str(raw).encode()))
        else:
            out.append(Joined(_text(reply[1]) if kind == "send" else None))
    return out


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
