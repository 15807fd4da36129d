"""The record of one workflow run in Redis: its batches, its history, its state.

A run is one enqueued workflow task; its id is the task id of the first message, and
every resume is sent again with that id (so Celery's result backend sees one task). Its
keys share the hash tag ``{run:<id>}``:

``:run`` (hash)
    ``state`` (running, suspending, suspended, resuming, done), ``batch`` (how many
    times it suspended), ``replays`` (deliveries after the first), and what a resume
    sends: ``task``, ``args``, ``kwargs`` (JSON), ``queue``.
``:steps`` (list)
    ``"<task>|<key>"`` of each dispatched step in the order the run asked for it: the
    history a replay must repeat (see ``suspend.py``).
``:pending`` (set)
    The keys the current batch still waits on, plus ``""`` until the run has finished
    suspending.
``:given`` (hash)
    Outcomes that are not kept in the cache (an error the step's policy drops),
    delivered with the commit so the replay sees the outcome it waited for.
``:out``
    The run's own outcome once done: a normal cache entry under the key ``run:<id>``.

Each transition is one Lua script on those keys (``lua/run_*.lua``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from workflow_cache.cache.claims import SingleFlight
from workflow_cache.cache.lua import script

RUN_TTL_MS = 7 * 24 * 3600 * 1000
"""A run's record (and its outcome key) lives a week after its last change."""


def outcome_key(run_id: str) -> str:
    """The cache key of a workflow run's own outcome."""
    return f"run:{run_id}"


@dataclass(frozen=True, slots=True)
class RunKeys:
    run: str
    steps: str
    pending: str
    given: str
    out: str
    channel: str


@dataclass(frozen=True, slots=True)
class Begun:
    """What ``begin`` found: run it (with its history), done already, or a stale delivery."""

    kind: Literal["run", "done", "stale"]
    batch: int = 0
    replays: int = 0
    steps: tuple[str, ...] = ()
    given: dict[str, bytes] = field(default_factory=dict)
    outcome: bytes = b""


@dataclass(frozen=True, slots=True)
class Resume:
    """The message that resumes a run: its task, arguments and queue (from the record)."""

    task: str
    args: list[Any]
    kwargs: dict[str, Any]
    queue: str


@dataclass(frozen=True, slots=True)
class RunInfo:
    """A run as its record shows it: for ``run_info`` and operators."""

    run_id: str
    state: str
    batch: int
    replays: int
    steps: tuple[str, ...]
    waiting_on: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class RunEvent:
    """Given to a workflow task's ``on_event`` as a run suspends, resumes and finishes.

    ``key`` is None (like a ``StepEvent`` of no step) so one hook can take both kinds.
    """

    kind: Literal["suspended", "resumed", "finished"]
    run_id: str
    replays: int
    batch: int
    waiting_on: tuple[str, ...] = ()
    key: None = None
    outcome: Literal["ok", "err"] | None = None


class Runs:
    """The run-record scripts bound to one ``SingleFlight`` (its client and key space)."""

    def __init__(self, flight: SingleFlight) -> None:
        self.flight = flight
        client = flight.client
        self._begin = client.register_script(script("run_begin"))
        self._prepare = client.register_script(script("run_prepare"))
        self._arm = client.register_script(script("run_arm"))
        self._arrive = client.register_script(script("run_arrive"))
        self._finish = client.register_script(script("run_finish"))

    def keys(self, run_id: str) -> RunKeys:
        k = self.flight.keyspace.for_step(outcome_key(run_id))
        base = k.out[: -len(":out")]
        return RunKeys(
            run=f"{base}:run",
            steps=f"{base}:steps",
            pending=f"{base}:pending",
            given=f"{base}:given",
            out=k.out,
            channel=k.channel,
        )

    def _call(self, fn: Any, keys: list[str], args: list[Any]) -> Any:
        return self.flight.claims.call(lambda: fn(keys=keys, args=args))

    def begin(self, run_id: str, batch: int, resume: Resume) -> Begun:
        """A delivery starts (``batch`` 0 = the first message, n = the resume of batch n)."""
        k = self.keys(run_id)
        reply = self._call(
            self._begin,
            [k.run, k.steps, k.given, k.out],
            [
                batch,
                resume.task,
                json.dumps(resume.args),
                json.dumps(resume.kwargs),
                resume.queue,
                RUN_TTL_MS,
            ],
        )
        kind = _text(reply[0])
        if kind == "done":
            raw = reply[1]
            return Begun("done", outcome=raw if isinstance(raw, bytes) else str(raw).encode())
        if kind == "stale":
            return Begun("stale", batch=int(reply[1]))
        flat = reply[4]
        given = {_text(flat[i]): _bytes(flat[i + 1]) for i in range(0, len(flat) - 1, 2)}
        return Begun(
            "run",
            batch=int(reply[1]),
            replays=int(reply[2]),
            steps=tuple(_text(s) for s in reply[3]),
            given=given,
        )

    def prepare(self, run_id: str, history: Sequence[str], keys: Sequence[str]) -> int:
        """Open a new batch waiting on ``keys``; returns its number."""
        k = self.keys(run_id)
        args = [RUN_TTL_MS, len(history), *history, *keys]
        return int(self._call(self._prepare, [k.run, k.pending, k.steps], args))

    def arm(self, run_id: str, batch: int, done: Sequence[str]) -> str:
        """``"wait"`` (suspended), ``"go"`` (all committed meanwhile) or ``"stale"``."""
        k = self.keys(run_id)
        return _text(self._call(self._arm, [k.run, k.pending], [batch, *done]))

    def arrive(self, run_id: str, batch: int, key: str, outcome: bytes | str) -> Resume | None:
        """``key`` committed: the resume to send if this arrival completes the batch."""
        k = self.keys(run_id)
        reply = self._call(
            self._arrive, [k.run, k.pending, k.given], [batch, key, outcome, RUN_TTL_MS]
        )
        if _text(reply[0]) != "resume":
            return None
        args = json.loads(reply[2])
        kwargs = json.loads(reply[3])
        if not isinstance(args, list) or not isinstance(kwargs, dict):
            raise ValueError(f"run {run_id}: stored arguments are not a list and a dict")
        return Resume(_text(reply[1]), args, kwargs, _text(reply[4]))

    def given(self, run_id: str) -> dict[str, bytes]:
        raw = self.flight.claims.call(lambda: self.flight.client.hgetall(self.keys(run_id).given))
        return {_text(k): _bytes(v) for k, v in raw.items()}

    def finish(self, run_id: str, outcome: str) -> None:
        """Store and announce the run's outcome under ``run:<id>``; the run is done."""
        k = self.keys(run_id)
        self._call(self._finish, [k.run, k.out, k.pending], [outcome, k.channel, RUN_TTL_MS])

    def info(self, run_id: str) -> RunInfo | None:
        k = self.keys(run_id)
        client = self.flight.client

        def read() -> list[Any]:
            pipe = client.pipeline(transaction=False)
            pipe.hgetall(k.run)
            pipe.lrange(k.steps, 0, -1)
            pipe.smembers(k.pending)
            return pipe.execute()

        record, steps, pending = self.flight.claims.call(read)
        if not record:
            return None
        fields = {_text(a): _text(b) for a, b in record.items()}
        return RunInfo(
            run_id=run_id,
            state=fields.get("state", "?"),
            batch=_int(fields.get("batch")),
            replays=_int(fields.get("replays")),
            steps=tuple(_text(s) for s in steps),
            waiting_on=tuple(sorted(_text(p) for p in pending if _text(p))),
        )


def _int(value: str | None) -> int:
    return int(value) if value is not None and value.isdigit() else 0


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()
