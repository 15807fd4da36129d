"""The record of one workflow run in Redis: its batches, its history, its state.

A run is one enqueued workflow task; its id is the task id of the first message, and
every resume is sent again with that id (so Celery's result backend sees one task). Its
record and the namespace's run indexes share the hash tag ``{_runs}``, so each
transition is one Lua script on one cluster slot (``wfc:<ns>:{_runs}:...``):

``run:<id>`` (hash)
    ``state`` (``run_states.STATES``), ``since``, ``batch`` (how many times it
    suspended), ``replays`` (deliveries after the first), ``epoch`` and ``lease`` (the
    delivery that holds the run, and until when, in ms of Redis time), ``checks``
    (reconciler looks since it suspended), ``outcome`` once finished, and what a resume
    sends: ``task``, ``args``, ``kwargs`` (JSON), ``queue``.
``steps:<id>`` (list)
    ``"<task>|<key>"`` of each dispatched step in the order the run asked for it: the
    history a replay must repeat (see ``suspend.py``).
``pending:<id>`` (set)
    The keys the current batch still waits on, plus ``""`` until the run has finished
    suspending.
``given:<id>`` (hash)
    Outcomes delivered with their commits (``resume.delivered``): those the cache does
    not keep (an error the step's policy drops), so the replay sees the outcome it
    waited for; those of the run's unkeyed steps, whose shared copy expires with the
    retention; and small kept ones, so the replay need not read them. Kept with the
    record: ``run_info`` shows them for a finished run.
``state:<state>``, ``due`` (sorted sets)
    The indexes: runs by state (scored by when they entered it) and by due time (when
    the reconciler must look at them: a lease's end, a recheck).
``server`` (hash)
    The ``run_id`` of the Redis server the reconciler last saw and when it started
    (``restarted``, ms): a restart may have lost step messages (``reconciler.py``).
``started``, ``task:<task>`` (sorted sets), ``task_of`` (hash)
    Runs by start time, all of them and per workflow task, written by the script that
    starts a run; ``task_of`` names each indexed run's task, so that a finished run
    leaves its task's set when it leaves the index with its retention (``forget``).

The run's own outcome is also a normal cache entry under the key ``run:<id>``, written
after the record says finished (``finish``). The transitions are ``run_states.py``'s.

A live run's record never expires; a finished one is kept ``retention`` seconds.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from weakref import WeakKeyDictionary

from workflow_cache import settings
from workflow_cache.cache.claims import SingleFlight
from workflow_cache.cache.clients import Keyed, in_one_trip
from workflow_cache.cache.lua import Script, script
from workflow_cache.distributed.run_states import STATES

RUNS_TAG = "_runs"
"""The hash tag of every run record and index of a namespace."""

RUN_STEP_PREFIX = "_run:"
"""The keys of a run's unkeyed dispatched steps begin so (``_run:<run id>:<position>``)."""


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
    indexes: tuple[str, ...]
    """One sorted set per state (``STATES`` order), the due set, the started set and the
    ``task_of`` hash."""


@dataclass(frozen=True, slots=True)
class Begun:
    """What ``begin`` found: run it (with its history and epoch), finished already (its
    outcome), a stale delivery, or one another live delivery holds (busy)."""

    kind: Literal["run", "done", "stale", "busy"]
    batch: int = 0
    replays: int = 0
    steps: tuple[str, ...] = ()
    given: dict[str, bytes] = field(default_factory=dict)
    outcome: bytes = b""
    epoch: int = 0


@dataclass(frozen=True, slots=True)
class Resume:
    """The message that resumes a run: its task, arguments and queue (from the record)."""

    task: str
    args: list[Any]
    kwargs: dict[str, Any]
    queue: str


@dataclass(frozen=True, slots=True)
class Carry:
    """The workflow tasks and queues whose runs a committer may take at their arrival, to
    replay them in its own slot (``continuation.py``)."""

    tasks: tuple[str, ...]
    queues: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Taken:
    """A run an arrival took for its caller, as ``begin`` would for the resume's delivery:
    replay it as ``begun``."""

    resume: Resume
    begun: Begun


@dataclass(frozen=True, slots=True)
class Slept:
    """What ``sleep`` decided: carry on (``go``), the caller is fenced, or the run sleeps as
    ``batch`` for ``delay_ms`` and ``resume`` is the message to send with that countdown."""

    kind: Literal["go", "fenced", "sleep"]
    batch: int = 0
    delay_ms: int = 0
    resume: Resume | None = None


@dataclass(frozen=True, slots=True)
class Due:
    """What the reconciler found on a due run (``run_due.lua``): its state, whether its
    lease lapsed, its batch, the message that resumes it and the keys it still waits on."""

    state: str
    lease_lapsed: bool = False
    batch: int = 0
    resume: Resume | None = None
    pending: tuple[str, ...] = ()
    outcome: bytes = b""
    """A done run's outcome (its ``run:<id>`` is written from it if missing)."""


@dataclass(frozen=True, slots=True)
class RunInfo:
    """A run as its record shows it: for ``run_info`` and operators."""

    run_id: str
    state: str
    batch: int
    replays: int
    steps: tuple[str, ...]
    waiting_on: tuple[str, ...]
    epoch: int = 0
    lease_ms: int | None = None
    """Until when (ms of Redis time) the delivery holding the run has it, while one does."""
    wake_ms: int | None = None
    """When (ms of Redis time) a sleeping run's timer fires."""


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


MAX_RECHECK_MS = 60_000
"""The longest wait between two reconciler looks at one suspended run."""
FORGET_BATCH = 500
"""The most finished runs of each state one ``forget_finished`` script drops."""

RUN_SCRIPTS = (
    "run_begin",
    "run_renew",
    "run_prepare",
    "run_arm",
    "run_arrive",
    "run_finish",
    "run_due",
    "run_cancel",
    "run_sleep",
    "run_soon",
    "run_enqueue",
    "run_restarted",
)
"""The transitions; each is run with ``run_index.lua`` in front, which keeps the indexes."""

_REGISTERED: WeakKeyDictionary[Any, dict[str, Any]] = WeakKeyDictionary()


def _scripts_of(client: Any) -> dict[str, Any]:
    """The run scripts registered on ``client`` once: a registration hashes its source,
    and a ``Runs`` is made per delivery and per handed-over commit. Each is a ``Script``,
    so that one queued in a pipeline costs no ``SCRIPT EXISTS`` round trip first."""
    found = _REGISTERED.get(client)
    if found is None:
        index = script("run_index")
        found = {name: Script(client, index + script(name)) for name in RUN_SCRIPTS}
        found["run_forget"] = Script(client, script("run_forget"))
        _REGISTERED[client] = found
    return found


class Runs:
    """The run-record scripts bound to one ``SingleFlight`` (its client and key space).

    ``lease`` (default: the flight's claim lease), ``retention`` and ``recheck`` (default:
    the process's settings) are in seconds."""

    def __init__(
        self,
        flight: SingleFlight,
        *,
        lease: float | None = None,
        retention: float | None = None,
        recheck: float | None = None,
    ) -> None:
        self.flight = flight
        configured = settings.current()
        self.lease_ms = _ms(flight.lease if lease is None else lease)
        self.retention_ms = _ms(configured.run_retention if retention is None else retention)
        self.recheck_ms = _ms(configured.run_recheck if recheck is None else recheck)
        self._scripts = _scripts_of(flight.client)
        self._forget = self._scripts["run_forget"]
        base = flight.keyspace.for_step(RUNS_TAG).out[: -len(":out")]
        self.base = base
        self.indexes = (
            *(f"{base}:state:{s}" for s in STATES),
            f"{base}:due",
            f"{base}:started",
            f"{base}:task_of",
        )

    def keys(self, run_id: str) -> RunKeys:
        k = self.flight.keyspace.for_step(outcome_key(run_id))
        base = self.base
        return RunKeys(
            run=f"{base}:run:{run_id}",
            steps=f"{base}:steps:{run_id}",
            pending=f"{base}:pending:{run_id}",
            given=f"{base}:given:{run_id}",
            out=k.out,
            channel=k.channel,
            indexes=self.indexes,
        )

    @property
    def due_key(self) -> str:
        return f"{self.base}:due"

    @property
    def started_key(self) -> str:
        """Every indexed run, scored by its start (ms of Redis time)."""
        return f"{self.base}:started"

    @property
    def task_of_key(self) -> str:
        return f"{self.base}:task_of"

    @property
    def server_key(self) -> str:
        """The server the reconciler last saw: its ``run_id`` and its start."""
        return f"{self.base}:server"

    def state_key(self, state: str) -> str:
        return f"{self.base}:state:{state}"

    def task_key(self, task: str) -> str:
        """The indexed runs of one workflow task, scored by their start."""
        return f"{self.base}:task:{task}"

    @property
    def lock_key(self) -> str:
        """The reconciler's tick lock of this namespace."""
        return f"{self.base}:reconciler"

    def _keyed(self, name: str, keys: list[str], args: list[Any]) -> Keyed:
        """The transition ``name`` as a call on any client or pipeline (the indexes added)."""
        fn = self._scripts[name]
        names = [*keys, *self.indexes]  # all in the run's slot; some scripts take no others
        return names[0], lambda target: fn(keys=names, args=args, client=target)

    def _call(self, name: str, keys: list[str], args: list[Any]) -> Any:
        _, call = self._keyed(name, keys, args)
        return self.flight.claims.call(lambda: call(self.flight.client))

    def enqueue(self, run_id: str, resume: Resume) -> bool:
        """Record a run whose first message is being sent (``resuming``, batch 0, due for a
        recheck); False when the run is recorded already."""
        k = self.keys(run_id)
        args = [run_id, resume.task, json.dumps(resume.args), json.dumps(resume.kwargs)]
        keys = [k.run, self.task_key(resume.task)]
        return bool(self._call("run_enqueue", keys, [*args, resume.queue, self.recheck_ms]))

    def begin(self, run_id: str, batch: int, resume: Resume) -> Begun:
        """A delivery starts (``batch`` 0 = the first message, n = the resume of batch n)."""
        k = self.keys(run_id)
        reply = self._call(
            "run_begin",
            [k.run, k.steps, k.given, k.pending, self.task_key(resume.task)],
            [
                run_id,
                batch,
                resume.task,
                json.dumps(resume.args),
                json.dumps(resume.kwargs),
                resume.queue,
                self.lease_ms,
            ],
        )
        return _begun(reply)

    def renew(self, run_id: str, epoch: int) -> bool:
        """Extend the lease of the delivery holding ``epoch``; False once it no longer does."""
        k = self.keys(run_id)
        return bool(self._call("run_renew", [k.run], [run_id, epoch, self.lease_ms]))

    def prepare(self, run_id: str, epoch: int, history: Sequence[str], keys: Sequence[str]) -> int:
        """Open a new batch waiting on ``keys``; returns its number, or -1 when fenced."""
        k = self.keys(run_id)
        args = [run_id, epoch, len(history), *history, *keys]
        return int(self._call("run_prepare", [k.run, k.pending, k.steps], args))

    def prepare_call(
        self, run_id: str, epoch: int, history: Sequence[str], keys: Sequence[str]
    ) -> Keyed:
        """``prepare`` as a call, for a caller that makes it in one trip with its own (its
        reply, as an int, is ``prepare``'s)."""
        k = self.keys(run_id)
        args = [run_id, epoch, len(history), *history, *keys]
        return self._keyed("run_prepare", [k.run, k.pending, k.steps], args)

    def arm(
        self,
        run_id: str,
        epoch: int,
        batch: int,
        done: Sequence[str],
        *,
        waiting: bool = False,
        deadline: str = "",
        timeout: float = 0.0,
        along: Sequence[Keyed] = (),
    ) -> str:
        """``"wait"`` (suspended, or ``waiting`` for an event until the ``deadline`` named
        so, written once ``timeout`` seconds from the first ask), ``"go"`` (all committed
        meanwhile), ``"stale"`` (a later batch replaced it) or ``"fenced"`` (another
        delivery holds the run). ``along``: the caller's calls, made in the same trip."""
        k = self.keys(run_id)
        state = "waiting" if waiting else "suspended"
        args = [run_id, epoch, batch, self.recheck_ms, state, deadline, _ms(timeout), *done]
        arm = self._keyed("run_arm", [k.run, k.pending], args)
        client = self.flight.client
        replies = self.flight.claims.call(lambda: in_one_trip(client, [arm, *along]))
        return _text(replies[0])

    def sleep(
        self, run_id: str, epoch: int, history: Sequence[str], timer: str, seconds: float
    ) -> Slept:
        """``step.sleep`` under the timer key ``timer``: go on, or sleep as a new batch."""
        k = self.keys(run_id)
        args = [run_id, epoch, timer, max(0, round(seconds * 1000)), self.recheck_ms]
        reply = self._call(
            "run_sleep", [k.run, k.pending, k.steps], [*args, len(history), *history]
        )
        kind = _text(reply[0])
        if kind == "go":
            return Slept("go")
        if kind != "sleep":
            return Slept("fenced")
        return Slept("sleep", int(reply[1]), int(reply[2]), _resume(run_id, reply[3:7]))

    def arrive(
        self, run_id: str, batch: int, key: str, outcome: bytes | str, *, at_once: bool = False
    ) -> Resume | None:
        """``key`` committed: the resume to send if this arrival completes the batch
        (``at_once``: the caller cannot send it, so the run is due for the reconciler now)."""
        arrived = self._arrive(run_id, batch, key, outcome, 0 if at_once else self.recheck_ms)
        assert not isinstance(arrived, Taken)  # nothing to carry: never taken
        return arrived

    def arrive_or_take(
        self, run_id: str, batch: int, key: str, outcome: bytes | str, carry: Carry
    ) -> Resume | Taken | None:
        """``arrive``, except that a run whose task and queue are among ``carry``'s is taken
        for the caller (as ``begin`` would for the resume's delivery) instead of resumed."""
        return self._arrive(run_id, batch, key, outcome, self.recheck_ms, carry)

    def _arrive(
        self,
        run_id: str,
        batch: int,
        key: str,
        outcome: bytes | str,
        recheck_ms: int,
        carry: Carry | None = None,
    ) -> Resume | Taken | None:
        k = self.keys(run_id)
        tasks, queues = (carry.tasks, carry.queues) if carry else ((), ())
        reply = self._call(
            "run_arrive",
            [k.run, k.pending, k.given, k.steps],
            [run_id, batch, key, outcome, recheck_ms, self.lease_ms, len(tasks), *tasks, *queues],
        )
        kind = _text(reply[0])
        if kind == "carry":
            return Taken(_resume(run_id, reply[1]), _begun(reply[2]))
        if kind != "resume":
            return None
        return _resume(run_id, reply[1:5])

    def deadline_passed(self, run_id: str, deadline: str) -> bool:
        """Whether the deadline named ``deadline`` (set by ``arm``) has passed."""
        client = self.flight.client
        run = self.keys(run_id).run

        def read() -> list[Any]:
            pipe = client.pipeline(transaction=False)
            pipe.hget(run, f"deadline:{deadline}")
            pipe.time()
            return pipe.execute()

        raw, (now_s, now_us) = self.flight.claims.call(read)
        now = int(now_s) * 1000 + int(now_us) // 1000
        return raw is not None and int(raw) <= now

    def given(self, run_id: str) -> dict[str, bytes]:
        raw = self.flight.claims.call(lambda: self.flight.client.hgetall(self.keys(run_id).given))
        return {_text(k): _bytes(v) for k, v in raw.items()}

    def finish(self, run_id: str, epoch: int, outcome: str) -> bool:
        """The delivery holding ``epoch`` ends the run with ``outcome``, stored and announced
        under ``run:<id>``; False (nothing written) when that delivery is fenced."""
        k = self.keys(run_id)
        args = [run_id, epoch, outcome, self.retention_ms, self.recheck_ms]
        if not self._call("run_finish", [k.run, k.pending, k.steps, k.given], args):
            return False
        self.publish(run_id, outcome)
        return True

    def cancel(self, run_id: str, outcome: str) -> bool:
        """End a live run with ``outcome`` (cancelled); False for a finished or unknown run."""
        k = self.keys(run_id)
        args = [run_id, outcome, self.retention_ms]
        if not self._call("run_cancel", [k.run, k.pending, k.steps, k.given], args):
            return False
        self.publish(run_id, outcome)
        return True

    def publish(self, run_id: str, outcome: bytes | str) -> None:
        """Write the finished run's outcome under ``run:<id>`` and announce it to waiters."""
        k = self.keys(run_id)
        client = self.flight.client
        data = _bytes(outcome)

        def write() -> list[Any]:
            pipe = client.pipeline(transaction=False)
            pipe.set(k.out, data, px=self.retention_ms)
            pipe.publish(k.channel, b"o" + data)
            return pipe.execute()

        self.flight.claims.call(write)

    def publish_missing(self, run_id: str, outcome: bytes | str) -> bool:
        """Write and announce a finished run's outcome unless ``run:<id>`` holds one: for a
        finisher that died between ``finish`` and its write. True if it was missing."""
        k = self.keys(run_id)
        client = self.flight.client
        data = _bytes(outcome)
        if not self.flight.claims.call(
            lambda: client.set(k.out, data, px=self.retention_ms, nx=True)
        ):
            return False
        self.flight.claims.call(lambda: client.publish(k.channel, b"o" + data))
        return True

    def now_ms(self) -> int:
        """Redis's clock, in ms: the one every lease and due time is written in."""
        now_s, now_us = self.flight.claims.call(self.flight.client.time)
        return int(now_s) * 1000 + int(now_us) // 1000

    def due(self, limit: int) -> list[str]:
        """Ids of up to ``limit`` runs whose due time has come (oldest first)."""
        now = self.now_ms()
        client = self.flight.client
        raw: list[Any] = self.flight.claims.call(
            lambda: client.zrangebyscore(self.due_key, "-inf", now, start=0, num=limit)
        )
        return [_text(r) for r in raw]

    def look(self, run_id: str) -> Due:
        """The reconciler's look at a due run (it is then due again later, or forgotten)."""
        k = self.keys(run_id)
        reply = self._call("run_due", [k.run, k.pending], [run_id, self.recheck_ms, MAX_RECHECK_MS])
        state = _text(reply[0])
        if state in ("forget", "wait"):
            return Due(state)
        if state == "done":
            return Due(state, outcome=_bytes(reply[1]))
        return Due(
            state,
            lease_lapsed=bool(int(reply[1])),
            batch=int(reply[2]),
            resume=_resume(run_id, reply[3:7]),
            pending=tuple(sorted(_text(p) for p in reply[7] if _text(p))),
        )

    def look_again_within(self, run_id: str, ms: int) -> bool:
        """Make a due run due again at most ``ms`` from now (a claim or a queued marker it
        waits on ends then); False when it was due sooner or is not due at all."""
        return bool(self._call("run_soon", [], [run_id, max(0, ms)]))

    def restarted(self, server_run_id: str, uptime_ms: int) -> tuple[int, int]:
        """Compare the server's ``run_id`` with the one last seen: (suspended runs made due
        now because it changed, 0 if it did not; when the server last started, in ms, at
        the latest it can be: INFO counts whole seconds)."""
        reply = self._call("run_restarted", [self.server_key], [server_run_id, max(0, uptime_ms)])
        return int(reply[0]), int(reply[1])

    def since(self, run_id: str) -> int:
        """When (ms of Redis time) the run entered its state; 0 if unknown."""
        run = self.keys(run_id).run
        raw = self.flight.claims.call(lambda: self.flight.client.hget(run, "since"))
        return _int(_text(raw)) if raw is not None else 0

    def forget_finished(self, before_ms: int, *, batch: int = FORGET_BATCH) -> int:
        """Drop finished and cancelled runs that left their retention from the indexes.

        Their ids and tasks are read, then one script drops those still finished before
        ``before_ms`` from every index (the task's set named by ``task_of``), a batch at a
        time.
        """
        forgotten = 0
        while True:
            ids, dropped = self._forget_some(before_ms, batch)
            forgotten += dropped
            if ids < batch:
                return forgotten

    def _forget_some(self, before_ms: int, batch: int) -> tuple[int, int]:
        client = self.flight.client
        finished = (self.state_key("done"), self.state_key("cancelled"))

        def read() -> list[Any]:
            pipe = client.pipeline(transaction=False)
            for key in finished:
                pipe.zrangebyscore(key, "-inf", before_ms, start=0, num=batch)
            return pipe.execute()

        ids = sorted({_text(r) for rows in self.flight.claims.call(read) for r in rows})
        if not ids:
            return 0, 0
        tasks = self.flight.claims.call(lambda: client.hmget(self.task_of_key, ids))
        keys = [*finished, self.started_key, self.task_of_key]
        for run_id, task in zip(ids, tasks, strict=True):
            keys += [self.keys(run_id).run, self.task_key(_text(task) if task else "")]
        args: list[str | int] = [before_ms, *ids]
        return len(ids), int(self.flight.claims.call(lambda: self._forget(keys=keys, args=args)))

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
        lease = fields.get("lease")
        state = fields.get("state", "?")
        return RunInfo(
            run_id=run_id,
            state=state,
            batch=_int(fields.get("batch")),
            replays=_int(fields.get("replays")),
            steps=tuple(_text(s) for s in steps),
            waiting_on=tuple(sorted(_text(p) for p in pending if _text(p))),
            epoch=_int(fields.get("epoch")),
            lease_ms=_int(lease) if lease is not None else None,
            wake_ms=_int(fields.get("wake")) if state == "sleeping" else None,
        )


def _begun(reply: Sequence[Any]) -> Begun:
    kind = _text(reply[0])
    if kind == "done":
        return Begun("done", outcome=_bytes(reply[1]))
    if kind in ("stale", "busy"):
        return Begun("stale" if kind == "stale" else "busy", batch=int(reply[1]))
    flat = reply[4]
    given = {_text(flat[i]): _bytes(flat[i + 1]) for i in range(0, len(flat) - 1, 2)}
    return Begun(
        "run",
        batch=int(reply[1]),
        replays=int(reply[2]),
        steps=tuple(_text(s) for s in reply[3]),
        given=given,
        epoch=int(reply[5]),
    )


def _resume(run_id: str, raw: Sequence[Any]) -> Resume:
    args = json.loads(raw[1])
    kwargs = json.loads(raw[2])
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        raise ValueError(f"run {run_id}: stored arguments are not a list and a dict")
    return Resume(_text(raw[0]), args, kwargs, _text(raw[3]))


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def _int(value: str | None) -> int:
    return int(value) if value is not None and value.isdigit() else 0


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()
