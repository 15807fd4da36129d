"""The fleet's reconciler: runs are resumed from state, not only from one message.

A resume message can be lost (a broker restarted without fsync, a committer killed
after it took a key's handoff set) and a delivery can die with its machine. The run
record says what should happen next, so each worker's main process runs a
``Reconciler`` thread; once per ``reconcile_interval`` one of them (a lock in Redis,
never released, expiring with the interval) looks at the runs whose due time has come
(``ZRANGEBYSCORE`` with ``LIMIT`` on the due index: never a scan) and does what
``run_states.due_action`` says:

- a delivery whose lease lapsed, and a run resumed but not yet begun: its task is sent
  again for its current batch (``begin`` fences the old delivery, and a duplicate of a
  live one is dropped as busy or stale); a run resumed whose message still waits in its
  broker queue (``broker_queue.py``) is left to it;
- a suspended run: its pending keys are read, and those already committed arrive as
  their commit would have made them, which resumes the run when it empties the batch;
  a key that nothing will commit (no claim, no queued marker: the worker running it
  was killed whole, and its message only comes back after the broker's visibility
  timeout) has the run sent again, and the replay sends the step again.

A restart of the Redis server (the broker too) can lose a step message on its way to a
worker: a ``BRPOP`` whose pop was written to the append-only file but whose reply died
with the connection, or a message a worker had received but not started (its consumer
reconnects without it; the broker's ``unacked`` hash gives it back only after the
visibility timeout). Its queued marker says "queued" for ``queued_ttl`` meanwhile. So
each tick compares the server's ``run_id`` (``INFO server``) with the one the fleet last
saw (``run_restarted``); when it changed, every suspended run is due at once (one
script on the runs' slot: it costs the number of suspended runs, once per restart), and
a look at a run that suspended before the restart (or within two leases and two
intervals after it: its messages may have been sent before) drops the markers of its
keys that no claim holds, received or not, and sends the run again. A message that was
not lost makes a duplicate, which finds its key running or done.

Each look pushes the run's due time further (doubling up to a minute while it stays
suspended), but never past the end of the claim or queued marker its keys wait on: a
worker killed mid-step is noticed a lease after its last renewal. A tick costs what the
due runs cost, whatever the number of runs.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis
from celery import Celery
from celery.signals import worker_ready, worker_shutdown

from workflow_cache import settings
from workflow_cache.cache.clients import is_cluster
from workflow_cache.cache.redis import RedisCache
from workflow_cache.distributed.broker_queue import BrokerQueues
from workflow_cache.distributed.enqueues import record_enqueues
from workflow_cache.distributed.handoffs import HandoffListener
from workflow_cache.distributed.receipts import drop_lost, holder_of, note_receipts, receipt_key
from workflow_cache.distributed.resume import send_resume
from workflow_cache.distributed.run_states import due_action
from workflow_cache.distributed.runs import Runs

log = logging.getLogger(__name__)

TICK_LIMIT = 500
"""The most due runs one tick looks at; the rest stay due for the next tick."""


@dataclass(frozen=True, slots=True)
class Tick:
    """What one tick did: runs looked at, tasks sent again, runs resumed from state."""

    looked: int = 0
    resent: int = 0
    resumed: int = 0


@dataclass(frozen=True, slots=True)
class StepState:
    """A pending key as the reconciler sees it: committed, the ``PTTL`` of its claim and of
    its queued marker (-2: none, -1: no expiry), the marker's task id and the presence id
    of the worker that received that message, when one did (``receipts.py``)."""

    done: bool
    claim_ms: int
    queued_ms: int
    queued: bytes | None = None
    holder: int | None = None

    @property
    def orphaned(self) -> bool:
        """Nothing will commit it: no outcome, no claim, no message known to be queued."""
        return not self.done and self.claim_ms == -2 and self.queued_ms == -2

    @property
    def ends_ms(self) -> int | None:
        """When what holds the key (its claim, else its queued marker) ends at the latest."""
        live = [ms for ms in (self.claim_ms, self.queued_ms) if ms >= 0]
        return max(live) if live and not self.done else None


class Reconciler:
    """Looks at the due runs of one cache's namespace, once per ``interval`` per fleet."""

    def __init__(
        self, app: Celery, cache: RedisCache, *, interval: float, limit: int = TICK_LIMIT
    ) -> None:
        if interval <= 0:
            raise ValueError(f"reconcile interval must be positive, got {interval}")
        self.app = app
        self.cache = cache
        self.interval = interval
        self.limit = limit
        self.runs = Runs(cache.flight)
        self.margin_ms = max(1, round(interval * 1000))
        self.token = uuid.uuid4().hex
        self.server: tuple[str, int] | None = None
        """The server's ``run_id`` this process last saw, and when it last restarted (ms;
        0: no restart the fleet saw)."""
        self.blind = False
        """Whether ``INFO`` is refused (restarts are then not noticed)."""
        self.queues = BrokerQueues(app)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def tick(self) -> Tick | None:
        """One look at the due runs, or None when another process had this interval."""
        flight = self.cache.flight
        interval_ms = max(1, round(self.interval * 1000))
        took = flight.claims.call(
            lambda: flight.client.set(self.runs.lock_key, self.token, nx=True, px=interval_ms)
        )
        if not took:
            return None
        return self.settle_due()

    def settle_due(self) -> Tick:
        """Settle every due run now (what a tick does once it holds the interval)."""
        looked = resent = resumed = 0
        self.queues.new_tick()
        try:
            self.notice_restart()
        except Exception as exc:  # the runs are still looked at, as before any restart
            log.warning("run reconciler could not read the server's run id: %s", exc)
        for run_id in self.runs.due(self.limit):
            looked += 1
            try:
                sent, woke = self.settle(run_id)
            except Exception as exc:  # one odd record must not stop the others
                log.warning("run %s: reconciler could not settle it: %s", run_id, exc)
                continue
            resent += sent
            resumed += woke
        self.runs.forget_finished(self.runs.now_ms() - self.runs.retention_ms)
        return Tick(looked, resent, resumed)

    def notice_restart(self) -> int:
        """Whether the server restarted since the fleet last looked (then every suspended
        run is due now); returns when it last restarted (ms of Redis time, 0: never seen).
        A cluster's nodes restart one by one: not followed (their markers expire)."""
        client = self.cache.flight.client
        if self.blind or is_cluster(client):
            return 0
        try:
            info = self.cache.flight.claims.call(lambda: client.info("server"))
        except redis.ResponseError as exc:  # INFO renamed or denied: markers expire instead
            self.blind = True
            log.warning("run reconciler cannot read INFO, so restarts go unnoticed: %s", exc)
            return 0
        run_id = info.get("run_id") if isinstance(info, dict) else None
        uptime = info.get("uptime_in_seconds") if isinstance(info, dict) else None
        if not isinstance(run_id, str) or not isinstance(uptime, int):
            return 0
        if self.server is not None and self.server[0] == run_id:
            return self.server[1]
        woke, restarted = self.runs.restarted(run_id, uptime * 1000)
        if woke:
            log.warning(
                "Redis restarted (run id %s): %d suspended runs are looked at now, for step "
                "messages lost with it",
                run_id,
                woke,
            )
        self.server = (run_id, restarted)
        return restarted

    def settle(self, run_id: str) -> tuple[int, int]:
        """Do what the run's state asks for; returns (tasks re-sent, runs resumed)."""
        due = self.runs.look(run_id)
        action = due_action(due.state, due.lease_lapsed)
        if due.state == "done" and due.outcome:
            if self.runs.publish_missing(run_id, due.outcome):
                log.info("run %s: finished, its outcome written from its record", run_id)
            return 0, 0
        if action == "resend" and due.resume is not None:
            if due.state == "resuming" and self.queues.holds(due.resume.queue, run_id):
                return 0, 0  # its message waits behind others: looked at after a recheck
            log.info("run %s: %s; its task is sent again", run_id, _why(due.state))
            send_resume(self.app, run_id, due.batch, due.resume)
            return 1, 0
        if action != "check" or not due.pending:
            return 0, 0
        steps = self.step_states(due.pending)
        for key, step in zip(due.pending, steps, strict=True):
            if not step.done:
                continue
            resume = self.runs.arrive(run_id, due.batch, key, b"")
            if resume is not None:
                log.info("run %s: its keys are all committed; resumed from state", run_id)
                send_resume(self.app, run_id, due.batch, resume)
                return 0, 1
        if due.state != "suspended" or due.resume is None:
            return 0, 0  # an event is sent by someone outside the fleet: nothing to send
        orphans = [k for k, step in zip(due.pending, steps, strict=True) if step.orphaned]
        orphans += self.lost_messages(due.pending, steps)
        if self.suspended_before_restart(run_id):
            orphans += self.lost_in_restart(due.pending, steps, set(orphans))
        if orphans:
            log.info(
                "run %s: step %r is neither committed, running nor queued (its worker died "
                "with it, or with its message); the run is sent again to send it again",
                run_id,
                orphans[0],
            )
            send_resume(self.app, run_id, due.batch, due.resume)
            return 1, 0
        # a message a worker received should start soon: if that worker dies, notice it
        # within a lease, not when the marker expires
        lease = self.runs.lease_ms
        ends = [
            min(end, lease) if step.holder is not None else end
            for step in steps
            if (end := step.ends_ms) is not None
        ]
        if ends:
            self.runs.look_again_within(run_id, min(ends) + self.margin_ms)
        return 0, 0

    def step_states(self, keys: Sequence[str]) -> list[StepState]:
        """Whether each key is committed, how long its claim or queued marker lives, and
        who received its queued message (one pipelined round trip; a race with a commit
        only costs a harmless re-send)."""
        flight = self.cache.flight
        client = flight.client

        def read() -> list[Any]:
            pipe = client.pipeline(transaction=False)
            for key in keys:
                k = flight.keyspace.for_step(key)
                pipe.exists(k.out)
                pipe.pttl(k.lock)
                pipe.pttl(k.queued)
                pipe.get(k.queued)
                pipe.get(receipt_key(k))
            return pipe.execute()

        raw = flight.claims.call(read)
        rows = [raw[i : i + 5] for i in range(0, len(raw), 5)]
        return [
            StepState(bool(out), int(lock), int(queued), task, holder_of(receipt, task))
            for out, lock, queued, task, receipt in rows
        ]

    def lost_messages(self, keys: Sequence[str], steps: Sequence[StepState]) -> list[str]:
        """Keys whose queued message was received by a worker that is gone (killed whole):
        their markers are dropped, so the replay sends those steps again."""
        flight = self.cache.flight
        lost = []
        for key, step in zip(keys, steps, strict=True):
            if step.done or step.claim_ms != -2 or step.queued is None or step.holder is None:
                continue
            if not flight.claims.present(step.holder) and drop_lost(flight, key, step.queued):
                lost.append(key)
        return lost

    def suspended_before_restart(self, run_id: str) -> bool:
        """Whether the run suspended before the server's last restart, or soon after it:
        within two leases and two intervals, as a delivery that held the run across the
        restart does (it suspends then, or lapses and is sent again, and its replay
        finds the markers set before the restart)."""
        restarted = self.server[1] if self.server is not None else 0
        soon = 2 * (self.runs.lease_ms + self.margin_ms)
        return restarted > 0 and self.runs.since(run_id) < restarted + soon

    def lost_in_restart(
        self, keys: Sequence[str], steps: Sequence[StepState], known: set[str]
    ) -> list[str]:
        """Keys queued before the server restarted that no claim holds: their message may
        be lost with it (receipts too: the consumer that received it reconnected without
        it, and presence ids start again after a restart). Their markers are dropped."""
        flight = self.cache.flight
        lost = []
        for key, step in zip(keys, steps, strict=True):
            if key in known or step.done or step.claim_ms != -2 or step.queued is None:
                continue
            if drop_lost(flight, key, step.queued):
                lost.append(key)
        return lost

    def start(self) -> None:
        """Tick every ``interval`` in a daemon thread until :meth:`stop`."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="wfc-reconciler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout=self.interval + 5)
        self.queues.close()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception as exc:  # Redis away for a while: try again next interval
                log.warning("run reconciler tick failed: %s", exc)
            self._stop.wait(self.interval)


def reconcile_in_workers(app: Celery, cache: RedisCache) -> None:
    """Run a :class:`Reconciler`, and a :class:`HandoffListener` for commits made outside
    the fleet, in the main process of every worker of ``app``; and, in every process,
    record runs as their first message is sent, so the reconciler knows them from then."""
    record_enqueues(app, cache)
    note_receipts(app)
    running: dict[str, Reconciler] = {}
    listening: dict[str, HandoffListener] = {}

    def on_ready(sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", None) is not app or "it" in running:
            return
        interval = settings.current().reconcile_interval
        running["it"] = reconciler = Reconciler(app, cache, interval=interval)
        listening["it"] = listener = HandoffListener(app, cache)
        reconciler.start()
        listener.start()

    def on_shutdown(sender: Any = None, **_: Any) -> None:
        reconciler = running.pop("it", None)
        if reconciler is not None:
            reconciler.stop()
        listener = listening.pop("it", None)
        if listener is not None:
            listener.stop()

    worker_ready.connect(on_ready, weak=False)
    worker_shutdown.connect(on_shutdown, weak=False)


def _why(state: str) -> str:
    if state == "cancelled":
        return "cancelled (a last delivery reports its outcome)"
    if state == "resuming":
        return "resumed but not begun (its resume may be lost)"
    return "the lease of its delivery lapsed (the worker died or stalled)"
