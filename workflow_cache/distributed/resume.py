"""The commit side of suspension: the process that commits a key resumes its waiting runs.

The commit script moved the key's waiter set into ``:handoff`` atomically with the
outcome (``waiters.py``). Right after a successful commit the committer (the worker that
ran the step, or the worker's main process recording a time limit or a revocation):

1. takes the handoff set: read and delete in one script (a step's worker does it in its
   commit script itself), so of several processes that might look, exactly one gets
   each waiting run;
2. for each run, ``arrive`` (``runs.py``) removes the key from the run's pending batch,
   delivering the outcome too (``delivered``: always when the cache does not keep it
   or when it is the run's own unkeyed step, else when it is small), so the replay
   reads it with the run's record; the one arrival that empties a suspended run's
   batch gets the resume;
3. sends it: the workflow's own task, with its original task id and arguments, to its
   queue, with a ``wfc_run`` header naming the batch it resumes; or, for one run, a
   step's worker that serves that queue takes the run in that same arrival and replays
   it in its own slot (``continuation.py``).

A worker that receives a message for a key that is already committed (a redelivery
after its executor died just after committing) takes any handoff left behind, so a
crash between the commit and step 1 loses no resume.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from celery import Celery

from workflow_cache.cache.claims import SingleFlight
from workflow_cache.distributed.runs import RUN_STEP_PREFIX, Begun, Carry, Resume, Runs, Taken
from workflow_cache.distributed.waiters import Waiters, parse_member

log = logging.getLogger(__name__)

RUN_HEADER = "wfc_run"

GIVE_LIMIT = 16 * 1024
"""The largest kept outcome (bytes of its text) a commit also delivers into its waiting runs'
records: their replays then read it from there, not with a read of their own."""


def delivered(key: str, text: str, keep: bool) -> str:
    """The outcome an arrival delivers with the commit, else ``""``: always one the cache does
    not keep (the replay would not find it) and one of a run's unkeyed steps (its shared
    copy expires with the retention, the run's record lives as long as the run), and a
    kept one when it is small."""
    if not keep or key.startswith(RUN_STEP_PREFIX) or len(text) <= GIVE_LIMIT:
        return text
    return ""


@dataclass(frozen=True, slots=True)
class Arrival:
    """A run whose batch a commit completed and took for the committer: replay it as the
    delivery of ``batch`` that ``begun`` describes (its epoch and lease are taken)."""

    run_id: str
    batch: int
    resume: Resume
    begun: Begun


def hand_over(
    app: Celery,
    flight: SingleFlight,
    key: str,
    outcome: bytes | str = b"",
    carry: Carry | None = None,
    taken: Sequence[bytes] | None = None,
) -> tuple[int, Arrival | None]:
    """Resume the runs that waited on ``key``; ``outcome`` when it was not kept. Never raises:
    the commit stands whatever happens here. Returns how many resumes were sent, and the
    first run whose task and queue are among ``carry``'s: taken in its arrival for the
    caller, who replays it itself. ``taken``: the waiter entries the commit took itself
    (else the handoff set is taken here)."""
    kept: Arrival | None = None
    sent = 0
    try:
        if taken is None:
            waiting = Waiters(flight).take_handoff(key)
        else:
            waiting = [m for m in (parse_member(raw) for raw in taken) if m is not None]
        if not waiting:
            return 0, None
        runs = Runs(flight)
        for run_id, batch in waiting:
            if kept is None and carry is not None:
                arrived = runs.arrive_or_take(run_id, batch, key, outcome, carry)
            else:
                arrived = runs.arrive(run_id, batch, key, outcome)
            if isinstance(arrived, Taken):
                kept = Arrival(run_id, batch, arrived.resume, arrived.begun)
                continue
            if arrived is None:
                continue
            send_resume(app, run_id, batch, arrived)
            sent += 1
    except Exception as exc:
        log.warning("step %r: waiting workflows not resumed: %s", key, exc)
    return sent, kept


def send_resume(
    app: Celery, run_id: str, batch: int, resume: Resume, countdown: float | None = None
) -> None:
    """The workflow task again, same id and arguments, to replay after batch ``batch``
    (``countdown`` seconds from now: a timer's wake-up)."""
    app.send_task(
        resume.task,
        args=resume.args,
        kwargs=resume.kwargs,
        task_id=run_id,
        queue=resume.queue,
        headers={RUN_HEADER: {"batch": batch}},
        countdown=countdown,
    )


def resumed_batch(headers: object) -> int:
    """The batch a delivery resumes (0 for the first message); untrusted, so validated."""
    if not isinstance(headers, dict):
        return 0
    raw = headers.get(RUN_HEADER)
    if raw is None:
        return 0
    batch = raw.get("batch") if isinstance(raw, dict) else None
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 0:
        raise ValueError(f"{RUN_HEADER} header: batch must be a non-negative integer")
    return batch
