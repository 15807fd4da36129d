"""The workflow side of suspension: a pending dispatched step ends the delivery, not a wait.

Inside a workflow task that suspends, ``SuspendingDispatcher`` replaces the blocking
wait of ``CeleryDispatcher``. For the misses of one ``step`` (or of one ``step.all``, or
one group, all together):

1. ``prepare``: a new batch in the run record, pending on those keys;
2. ``join``: per key, one atomic script returns the outcome if it is stored, and
   otherwise adds the run to the key's waiter set and, when nothing is queued or
   running, sets the queued marker; this process sends the messages it was told to;
3. ``arm``: the keys found done are dropped from the batch. If every key committed
   meanwhile the workflow simply carries on; otherwise ``Suspended`` unwinds the
   workflow function and the task returns, holding no worker slot.

The commit of the last pending key resumes the run (``resume.py``): the workflow runs
again from the top and its finished steps are cache hits (``replay.py``).

Replay needs stable step identities. ``identify`` is called by ``step`` for every
dispatched step, hit or miss, in the order the workflow asks for them: it records
``"<task>|<key>"`` per position, gives an unkeyed step the key
``_run:<run id>:<position>``, and compares each position with the history the run
recorded before. A workflow must ask for its dispatched steps in the same order on every
replay; one that does not gets ``ReplayDiverged`` naming the position, what was recorded
and what was asked, instead of another step's outcome.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from celery import Celery, Signature

from workflow_cache.cache.claims import Done
from workflow_cache.cache.clients import in_one_trip
from workflow_cache.cache.notices import NOTICE_OUTCOME, Notices
from workflow_cache.cache.redis import RedisCache
from workflow_cache.distributed.canvas import require_task
from workflow_cache.distributed.dispatcher import CeleryDispatcher
from workflow_cache.distributed.events import EventTimeout, event_key
from workflow_cache.distributed.pending import PendingStep
from workflow_cache.distributed.resume import send_resume
from workflow_cache.distributed.run_lease import RunLease, Superseded
from workflow_cache.distributed.runs import RUN_STEP_PREFIX
from workflow_cache.distributed.waiters import Joined, Waiters, joined
from workflow_cache.envelope import Envelope, EnvelopeError
from workflow_cache.options import StepOptions
from workflow_cache.result import Result, UnexpectedError, err

EVENT_ENTRY = "event"
"""The task name a ``step.wait_event`` is recorded under in a run's history."""
SLEEP_ENTRY = "sleep"
"""The task name a ``step.sleep`` is recorded under in a run's history."""


class Suspended(BaseException):
    """Unwinds a workflow function whose step is pending; the task then returns.

    A ``BaseException`` so that the workflow's own ``except Exception`` cannot swallow it.
    """

    def __init__(self, run_id: str, batch: int, keys: Sequence[str]) -> None:
        super().__init__(f"run {run_id} suspended on {len(keys)} step(s)")
        self.run_id = run_id
        self.batch = batch
        self.keys = tuple(keys)


class ReplayDiverged(RuntimeError):
    """A replay asked for a different dispatched step than the run recorded at a position."""


class SuspendingDispatcher(CeleryDispatcher):
    """Sends missing steps, registers the run as their waiter and suspends it."""

    def __init__(
        self,
        app: Celery,
        cache: RedisCache,
        lease: RunLease,
        history: Sequence[str],
        *,
        queued_ttl: float | None = None,
        linger: float = 0.0,
        concurrent: bool = False,
        known: Collection[str] = (),
        batch: int | None = None,
    ) -> None:
        if queued_ttl is None:
            super().__init__(app, cache)
        else:
            super().__init__(app, cache, queued_ttl=queued_ttl)
        self.lease = lease
        self.run_id = lease.run_id
        self.history = tuple(history)
        self.asked: list[str] = []
        self.runs = lease.runs
        self.waiters = Waiters(cache.flight)
        self.linger = linger
        self.concurrent = concurrent
        self.known = frozenset(known)
        self.batch = batch
        """The run's batch as this delivery last saw it: the next ``prepare`` makes
        ``batch + 1``, so the keys are joined in the same trip (None: not known)."""
        self.fresh: set[str] = set()
        """Dispatched keys asked for past the known outcomes: ``join`` reads them itself."""
        self._lock = threading.RLock()
        self._identified: list[tuple[Signature, StepOptions]] = []
        self._settled: dict[str, Result[Any, Any] | Suspended | Superseded] = {}

    def identify(self, work: Signature, options: StepOptions) -> StepOptions:
        """A stable key for the step at this position; ``ReplayDiverged`` if history differs,
        ``Superseded`` if this delivery no longer holds the run."""
        position = self._record(require_task(work).task, options.key)
        if options.key is None:
            options = StepOptions(
                key=step_key(self.run_id, position),
                ttl=self.runs.retention_ms / 1000,
                cache_errors=True,
                cache_exceptions=True,
                returns=options.returns,
            )
        if _key_of(options) not in self.known:
            self.fresh.add(_key_of(options))
        if self.concurrent:  # sent together by the first of them that runs (see run)
            with self._lock:
                self._identified.append((work, options))
        return options

    def _record(self, task: str, key: str | None) -> int:
        """This delivery's next position in the run's history, checked against what earlier
        deliveries recorded there; ``Superseded`` if this delivery no longer holds the run."""
        self.lease.check()
        position = len(self.asked)
        entry = f"{task}|{key or ''}"
        if position < len(self.history) and self.history[position] != entry:
            was_task, _, was_key = self.history[position].partition("|")
            raise ReplayDiverged(
                f"workflow run {self.run_id} diverged from its history at dispatched step "
                f"#{position}: it recorded task {was_task} with key {was_key or '(none)'!s}, "
                f"this replay asked for task {task} with key {key or '(none)'!s}. "
                "A workflow must ask for its dispatched steps in the same order on every "
                "replay (no branching on the clock, randomness or data read outside steps)."
            )
        self.asked.append(entry)
        return position

    def sleep(self, seconds: float, key: str | None) -> None:
        """``step.sleep``: the run sleeps as a batch of its own, resumed by a message sent
        with a countdown (and by the reconciler if that message is lost); a replay past
        the wake time goes on."""
        with self._lock:
            self._sleep(seconds, key)

    def _sleep(self, seconds: float, key: str | None) -> None:
        position = self._record(SLEEP_ENTRY, key)
        timer = key or step_key(self.run_id, position)
        history = [*self.asked, *self.history[len(self.asked) :]]
        slept = self.runs.sleep(self.run_id, self.lease.epoch, history, timer, seconds)
        if slept.kind == "go":
            return
        if slept.kind == "fenced" or slept.resume is None:
            raise Superseded(f"run {self.run_id}: epoch {self.lease.epoch} no longer holds it")
        send_resume(self.app, self.run_id, slept.batch, slept.resume, slept.delay_ms / 1000)
        raise Suspended(self.run_id, slept.batch, [])

    def wait_event(self, name: str, timeout: float | None, key: str | None) -> Result[Any, Any]:
        """``step.wait_event``: the event's payload, or the run waits for it (suspended as
        ``waiting``, due at its deadline); past the deadline, an ``err`` saying so."""
        with self._lock:
            return self._wait_event(name, timeout, key)

    def _wait_event(self, name: str, timeout: float | None, key: str | None) -> Result[Any, Any]:
        event = event_key(name)
        position = self._record(EVENT_ENTRY, key or event)
        deadline = key or step_key(self.run_id, position)
        raw = self.cache.flight.read(event)
        if raw is not None:
            return Envelope.loads(event, raw).to_result(event)
        if timeout is not None and self.runs.deadline_passed(self.run_id, deadline):
            return err(
                UnexpectedError.from_exception(
                    EventTimeout(
                        f"workflow run {self.run_id}: event {name!r} did not arrive within "
                        f"{timeout:g} s"
                    )
                )
            )
        epoch = self.lease.epoch
        history = [*self.asked, *self.history[len(self.asked) :]]
        batch = self.runs.prepare(self.run_id, epoch, history, [event])
        if batch < 0:
            raise Superseded(f"run {self.run_id}: epoch {epoch} no longer holds the run")
        self.batch = batch
        (joined,) = self.waiters.join_many([event], [""], [1.0], self.run_id, batch, send=False)
        done = [event] if isinstance(joined, Done) else []
        verdict = self.runs.arm(
            self.run_id,
            epoch,
            batch,
            done,
            waiting=True,
            deadline=deadline if timeout is not None else "",
            timeout=timeout or 0.0,
        )
        if verdict == "fenced":
            raise Superseded(f"run {self.run_id}: epoch {epoch} no longer holds the run")
        if verdict != "go":
            raise Suspended(self.run_id, batch, [event])
        # sent while this run was joining: it carries on with the payload
        raw = joined.outcome if isinstance(joined, Done) else self.cache.flight.read(event)
        if raw is None:
            raise RuntimeError(
                f"event {name!r} was committed, then deleted, as run {self.run_id} read it"
            )
        return Envelope.loads(event, raw).to_result(event)

    def run(self, work: Signature, options: StepOptions) -> Result[Any, Any]:
        """One dispatched step; in an async workflow, the first of several steps asked for
        side by side sends them all as one batch (the others find their outcome here)."""
        if not self.concurrent:
            return self.run_many([(work, options)])[0]
        key = _key_of(options)
        with self._lock:
            if key not in self._settled:
                batch = [(w, o) for w, o in self._identified if o.key not in self.known]
                if all(o.key != key for _, o in batch):
                    batch.append((work, options))
                self._identified.clear()
                try:
                    results = self.run_many(batch)
                except (Suspended, Superseded) as stop:
                    for _, o in batch:
                        self._settled[_key_of(o)] = stop
                    raise
                for (_, o), result in zip(batch, results, strict=True):
                    self._settled[_key_of(o)] = result
            settled = self._settled.pop(key)
        if isinstance(settled, Suspended):
            raise Suspended(settled.run_id, settled.batch, settled.keys)
        if isinstance(settled, Superseded):
            raise Superseded(str(settled))
        return settled

    def run_many(self, works: Sequence[tuple[Signature, StepOptions]]) -> list[Result[Any, Any]]:
        for sig, _ in works:
            require_task(sig)
        keyed = [PendingStep(sig, _keyed(options)) for sig, options in works]
        unique = {p.key: p for p in reversed(keyed)}
        pending = list(unique.values())
        keys = [p.key for p in pending]
        with self._lock, self._watching(keys) as notices:
            history = [*self.asked, *self.history[len(self.asked) :]]
            epoch = self.lease.epoch
            ids = [str(uuid.uuid4()) for _ in pending]
            ttls = [self._unsent_ttl(p) for p in pending]
            batch, states = self._prepare_and_join(epoch, history, keys, ids, ttls)
            raws: dict[str, bytes] = {}
            to_send = []
            for p, state in zip(pending, states, strict=True):
                if isinstance(state, Done):
                    raws[p.key] = state.outcome
                elif isinstance(state, Joined) and state.send is not None:
                    to_send.append((p, state.send))
            sent = self._publish(to_send, confirm=False)
            if notices is not None:
                raws.update(self._linger(notices, [k for k in keys if k not in raws]))
            # the run may suspend: markers get their life, in the same trip as the arm
            along = sent.calls(self.messages) if len(raws) < len(keys) else []
            verdict = self.runs.arm(self.run_id, epoch, batch, list(raws), along=along)
        if verdict == "fenced":
            raise Superseded(f"run {self.run_id}: epoch {epoch} no longer holds the run")
        if verdict != "go":
            raise Suspended(self.run_id, batch, [k for k in keys if k not in raws])
        # every pending key committed meanwhile: read those no notice brought and carry on
        missing = [p for p in pending if p.key not in raws]
        if missing:
            given = self.runs.given(self.run_id)
            stored = self.cache.flight.read_many([p.key for p in missing])
            for p, raw in zip(missing, stored, strict=True):
                raw = raw if raw is not None else given.get(p.key)
                if raw is None:  # committed, then expired or deleted meanwhile: ask again
                    return self.run_many(works)
                raws[p.key] = raw
        outcomes = {p.key: p.decode(raws[p.key]) for p in pending}
        return [outcomes[p.key] for p in keyed]

    def _prepare_and_join(
        self,
        epoch: int,
        history: Sequence[str],
        keys: Sequence[str],
        ids: Sequence[str],
        ttls: Sequence[float],
    ) -> tuple[int, list[Done | Joined]]:
        """A new batch waiting on ``keys``, and each key's join (its outcome, or the run in
        its waiter set). One trip when the batch number is known ahead: ``prepare`` runs
        first and holds the run, so a commit between the two is seen by the join. A
        guess that missed (or a fenced delivery) leaves waiter entries for a batch the
        run does not have, which a commit's arrival finds stale, and markers that no
        message confirms, which expire as a crash's would."""
        predicted = None if self.batch is None else self.batch + 1
        if predicted is None:
            batch = self.runs.prepare(self.run_id, epoch, history, keys)
            states = None
        else:
            prepare = self.runs.prepare_call(self.run_id, epoch, history, keys)
            joins = self.waiters.join_calls(keys, ids, ttls, self.run_id, predicted)
            client = self.cache.flight.client
            replies = self.cache.flight.claims.call(lambda: in_one_trip(client, [prepare, *joins]))
            batch, states = int(replies[0]), joined(replies[1:])
        if batch < 0:
            raise Superseded(f"run {self.run_id}: epoch {epoch} no longer holds the run")
        self.batch = batch
        if states is None or batch != predicted:
            states = self.waiters.join_many(keys, ids, ttls, self.run_id, batch)
        return batch, states

    @contextmanager
    def _watching(self, keys: Sequence[str]) -> Iterator[Notices | None]:
        """The commit notices of ``keys`` when this delivery lingers for them, else None."""
        if self.linger <= 0:
            yield None
            return
        with self.cache.flight.watch_many(keys) as notices:
            yield notices

    def _linger(self, notices: Notices, keys: Sequence[str]) -> dict[str, bytes]:
        """The outcomes of ``keys`` committed within the linger (stops at the first key still
        missing when it ends): a fast step costs no suspension, resume and replay."""
        deadline = time.monotonic() + self.linger
        arrived: dict[str, bytes] = {}
        for key in keys:
            while True:
                left = deadline - time.monotonic()
                notice = notices.next(key, left) if left > 0 else None
                if notice is None:
                    return arrived
                if notice[:1] == NOTICE_OUTCOME:
                    arrived[key] = notice[1:]
                    break
        return arrived


def step_key(run_id: str, position: int) -> str:
    """The key of an unkeyed dispatched step: stable for one run and one position."""
    return f"{RUN_STEP_PREFIX}{run_id}:{position}"


def history_keys(run_id: str, history: Sequence[str]) -> list[str]:
    """The step keys a recorded history names, in order (derived ones included; timers
    and events left out)."""
    keys = []
    for position, entry in enumerate(history):
        task, _, key = entry.partition("|")
        if task not in (SLEEP_ENTRY, EVENT_ENTRY):  # timers and events are read apart
            keys.append(key or step_key(run_id, position))
    return keys


def decode_or_none(key: str, raw: bytes | None) -> Envelope | None:
    if raw is None:
        return None
    try:
        return Envelope.loads(key, raw)
    except EnvelopeError:
        return None


def _keyed(options: StepOptions) -> StepOptions:
    if options.key is None:  # identify() runs first for every dispatched step
        raise RuntimeError("a step reached SuspendingDispatcher without identify()")
    return options


def _key_of(options: StepOptions) -> str:
    key = _keyed(options).key
    assert key is not None
    return key
