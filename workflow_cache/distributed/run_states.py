"""The state machine of one workflow run, once, without I/O: states, transitions, who fires
each, which script performs it, and what the reconciler does with a run that is due.

Every transition is one Lua script (``lua/run_*.lua``) on the run's record, and the same
script moves the run between the indexes (``runs.py``): a sorted set per state (scored
by when the run entered it) and the *due* set (scored by when someone must look at the
run again: a lease's end, a recheck). The reconciler reads only the due range, so its
cost follows the runs that need attention, not the runs that exist.

``docs/distributed.md`` ("The run's states") draws this table; a test checks that the
drawing, the table and the scripts agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

RunState = Literal[
    "running", "suspending", "suspended", "sleeping", "waiting", "resuming", "done", "cancelled"
]

STATES: tuple[RunState, ...] = (
    "running",
    "suspending",
    "suspended",
    "sleeping",
    "waiting",
    "resuming",
    "done",
    "cancelled",
)
"""Every state, in the order of the index keys each run script is given."""

LIVE: frozenset[RunState] = frozenset(
    {"running", "suspending", "suspended", "sleeping", "waiting", "resuming"}
)
"""States whose record never expires; the others are kept for the retention setting."""

LEASED: frozenset[RunState] = frozenset({"running", "suspending"})
"""States in which a delivery holds the run's lease (and its epoch fences the others)."""


@dataclass(frozen=True, slots=True)
class Transition:
    """One arrow of the machine: ``sources`` -> ``target``, fired by ``actor`` via ``script``."""

    name: str
    sources: tuple[RunState | None, ...]
    target: RunState
    actor: str
    script: str


TRANSITIONS: tuple[Transition, ...] = (
    Transition(
        "enqueue", (None,), "resuming", "the producer, sending the first message", "run_enqueue"
    ),
    Transition("start", (None,), "running", "a delivery (the first message)", "run_begin"),
    Transition(
        "replay",
        ("resuming", "sleeping", "waiting", "suspended", "suspending", "running"),
        "running",
        "a delivery (a resume, a timer's, or a re-send after a lapsed lease)",
        "run_begin",
    ),
    Transition("renew", ("running", "suspending"), "running", "the delivery", "run_renew"),
    Transition("prepare", ("running",), "suspending", "the delivery", "run_prepare"),
    Transition("carry on", ("suspending",), "running", "the delivery", "run_arm"),
    Transition("suspend", ("suspending",), "suspended", "the delivery", "run_arm"),
    Transition("wait", ("suspending",), "waiting", "the delivery (step.wait_event)", "run_arm"),
    Transition("sleep", ("running",), "sleeping", "the delivery (step.sleep)", "run_sleep"),
    Transition(
        "arrive",
        ("suspended", "waiting"),
        "resuming",
        "a committer, send_event or the reconciler",
        "run_arrive",
    ),
    Transition(
        "take",
        ("suspended",),
        "running",
        "a committer whose arrival completes the batch, carrying the run on in its slot",
        "run_arrive",
    ),
    Transition("finish", ("running",), "done", "the delivery", "run_finish"),
    Transition(
        "cancel",
        ("running", "suspending", "suspended", "sleeping", "waiting", "resuming"),
        "cancelled",
        "cancel_run",
        "run_cancel",
    ),
)
"""The whole machine. ``renew`` keeps ``running`` (``suspending`` renews in place)."""


Action = Literal["resend", "check", "wait", "forget"]


def due_action(state: str | None, lease_lapsed: bool) -> Action:
    """What the reconciler does with a run whose due time has come (``run_due.lua``).

    ``resend``: the run's task again (its lease lapsed mid-delivery, its resume may be
    lost, its timer is due, or it was cancelled: that last delivery reports the outcome
    to the result backend); ``check``: a suspended run, whose pending keys are read and
    arrived if done; ``wait``: a delivery holds a live lease; ``forget``: the run is
    finished or gone, it leaves the due index.
    """
    if state in LEASED:
        return "resend" if lease_lapsed else "wait"
    if state in ("resuming", "sleeping", "cancelled"):
        return "resend"
    if state in ("suspended", "waiting"):
        return "check"
    return "forget"


def transitions_into(target: RunState) -> tuple[Transition, ...]:
    return tuple(t for t in TRANSITIONS if t.target == target)


__all__ = [
    "LEASED",
    "LIVE",
    "STATES",
    "TRANSITIONS",
    "Action",
    "RunState",
    "Transition",
    "due_action",
    "transitions_into",
]
