"""A mixed chaos soak: 120 durable runs finish, each with its one right value, whatever
is killed, paused or restarted under them.

Real ``redis-server`` (append-only file synced on every write) as broker and cache, real
prefork ``celery worker`` processes (``tests/chaos_app.py``), and nothing restarts them
but the test. For ``CHAOS_SECONDS`` the test kills pool children and whole workers with
``kill -9`` (respawning a worker for each one killed), pauses whole workers past the
lease with ``SIGSTOP`` before ``SIGCONT``, and kills and restarts Redis twice, while it
enqueues the runs. Then every run must finish with its expected value, every key must
have one outcome that every run read, a key may run more than once only in processes
the test killed or paused, and no worker may have exited on its own.

``WFC_CHAOS_SECONDS`` (read by this test only) lengthens or shortens the chaos for a
longer soak by hand. The faults the soak found are tested one at a time at the end.
"""

from __future__ import annotations

import collections
import contextlib
import os
import random
import signal
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from celery import Celery

from tests.servers import RedisServer
from tests.waiting import wait_until
from tests.workers import CeleryWorker, configured_test_app, stop_all, wait_ready
from workflow_cache import RedisCache
from workflow_cache.cache.claims import Done
from workflow_cache.cache.keys import KeySpace
from workflow_cache.cache.lua import script
from workflow_cache.distributed import install, run_info, workflow_task
from workflow_cache.distributed.receipts import receipt_key
from workflow_cache.distributed.reconciler import Reconciler
from workflow_cache.distributed.runs import Resume, Runs, outcome_key
from workflow_cache.distributed.waiters import Waiters
from workflow_cache.envelope import Envelope

CHAOS_SECONDS = 40.0
"""How long the faults go on (``WFC_CHAOS_SECONDS`` overrides it for this test)."""
RUNS = 120
LEASE = 2.0
INTERVAL = 0.5
RECHECK = 1.0
STEP_SECONDS = 0.15
STEP_WORKERS = 2
FLOW_WORKERS = 2
POOL = 2
RECOVERY_TIMEOUT = 90.0
"""How long the runs may take to finish once the chaos ends before the test fails."""


def chaos_seconds() -> float:
    return float(os.environ.get("WFC_CHAOS_SECONDS", CHAOS_SECONDS))


@dataclass
class Fleet:
    """The workers of the soak, and every process the test killed or paused."""

    module: ModuleType
    env: dict[str, str]
    logs: Path
    workers: dict[str, list[CeleryWorker]] = field(default_factory=dict)
    killed_workers: list[CeleryWorker] = field(default_factory=list)
    killed: set[int] = field(default_factory=set)
    paused: set[int] = field(default_factory=set)
    stopped_now: dict[int, list[int]] = field(default_factory=dict)
    actions: collections.Counter[str] = field(default_factory=collections.Counter)
    timeline: list[tuple[float, str]] = field(default_factory=list)
    ready: set[int] = field(default_factory=set)
    made: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def spawn(self, role: str) -> CeleryWorker:
        self.made += 1
        queue = "steps" if role == "steps" else self.module.settings.workflow_queue
        worker = CeleryWorker(
            "tests.chaos_app",
            f"{role}-{self.made}",
            queue,
            self.env,
            pool="prefork",
            concurrency=POOL,
            log=self.logs / f"{role}-{self.made}.log",
        )
        self.workers.setdefault(role, []).append(worker)
        watcher = threading.Thread(target=self.watch_start, args=(worker,), daemon=True)
        watcher.start()
        return worker

    def watch_start(self, worker: CeleryWorker) -> None:
        """Note the worker ready once it answers a ping: a pool process killed before
        then makes Celery give up starting (``Could not start worker processes``)."""
        while worker.alive():
            with contextlib.suppress(Exception):  # Redis restarting: ask again
                if self.module.app.control.ping(destination=[worker.name], timeout=0.5):
                    with self.lock:
                        self.ready.add(worker.pid)
                    return

    def all(self) -> list[CeleryWorker]:
        return [w for ws in self.workers.values() for w in ws]

    def running(self) -> list[CeleryWorker]:
        with self.lock:
            return [w for w in self.all() if w.alive() and w.pid not in self.stopped_now]

    def kill_child(self, rng: random.Random) -> None:
        with self.lock:
            ready = set(self.ready)
        choices = [(w, c) for w in self.running() if w.pid in ready for c in w.children()]
        if not choices:
            return
        _, child = rng.choice(choices)
        self.killed.add(child)
        _signal(child, signal.SIGKILL)
        self.actions["pool child killed"] += 1
        self.timeline.append((time.time(), f"child {child} killed"))

    def kill_worker(self, rng: random.Random) -> None:
        choices = self.running()
        if not choices:
            return
        worker = rng.choice(choices)
        role = next(r for r, ws in self.workers.items() if worker in ws)
        children = worker.children()
        self.killed.update([worker.pid, *children])
        _signal(worker.pid, signal.SIGKILL)
        for child in children:
            _signal(child, signal.SIGKILL)
        worker.proc.wait(timeout=10)
        self.workers[role].remove(worker)
        self.killed_workers.append(worker)
        self.spawn(role)
        self.actions["whole worker killed and respawned"] += 1
        self.timeline.append((time.time(), f"{worker.name} killed"))

    def pause_worker(self, rng: random.Random) -> None:
        choices = self.running()
        if not choices:
            return
        worker = rng.choice(choices)
        pids = [worker.pid, *worker.children()]
        with self.lock:
            self.stopped_now[worker.pid] = pids
        self.paused.update(pids)
        for pid in pids:
            _signal(pid, signal.SIGSTOP)
        self.actions["whole worker paused past the lease"] += 1
        self.timeline.append((time.time(), f"{worker.name} paused"))
        timer = threading.Timer(LEASE + 1.0, self.resume, args=(worker.pid,))
        timer.daemon = True
        timer.start()

    def resume(self, pid: int) -> None:
        with self.lock:
            pids = self.stopped_now.pop(pid, [])
        for p in pids:
            _signal(p, signal.SIGCONT)

    def resume_all(self) -> None:
        with self.lock:
            stopped = list(self.stopped_now)
        for pid in stopped:
            self.resume(pid)

    def stop(self) -> None:
        self.resume_all()
        stop_all(self.all())


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _enqueue(module: ModuleType, waiting: list[tuple[int, str]], args: dict[str, Any]) -> None:
    """Send what can be sent now; what Redis refused stays for the next round (same task
    id: a message that did get through starts one run however often it is sent)."""
    sent = []
    for run, run_id in waiting[:6]:
        try:
            module.flow.apply_async(
                (run, args["tag"], STEP_SECONDS, args["log"]), task_id=run_id, retry=False
            )
        except Exception:  # Redis is down for a moment: try again next round
            break
        sent.append((run, run_id))
    for item in sent:
        waiting.remove(item)


def _finished(module: ModuleType, run_ids: list[str], done: dict[str, float]) -> bool:
    left = [r for r in run_ids if r not in done]
    try:
        raw = module.cache.flight.read_many([outcome_key(r) for r in left])
    except Exception:
        return False
    now = time.monotonic()
    for run_id, value in zip(left, raw, strict=True):
        if value is not None:
            done[run_id] = now
    return len(done) == len(run_ids)


def _stranded(module: ModuleType, run_ids: list[str], done: dict[str, float]) -> str:
    """What the unfinished runs' records and their keys show, for the failure message."""
    client = module.cache.flight.client
    space = KeySpace(module.settings.namespace)
    lines = []
    for run_id in [r for r in run_ids if r not in done][:10]:
        info = run_info(module.cache, run_id)
        record = module.cache.flight.client.hgetall(Runs(module.cache.flight).keys(run_id).run)
        due = client.zscore(Runs(module.cache.flight).due_key, run_id)
        lines.append(
            f"run {run_id}: {info}; checks={record.get(b'checks')!r} "
            f"due in {(due or 0) / 1000 - time.time():.1f} s"
        )
        for key in info.waiting_on if info else ():
            k = space.for_step(key)
            lines.append(
                f"  {key}: out={client.exists(k.out)} lock={client.get(k.lock)!r} "
                f"lock_ttl={client.pttl(k.lock)} queued={client.get(k.queued)!r} "
                f"queued_ttl={client.pttl(k.queued)} waiters={client.smembers(k.waiters)!r} "
                f"handoff={client.smembers(k.handoff)!r} "
                f"received_by={client.get(receipt_key(k))!r} {_where(client, client.get(k.queued))}"
            )
    return "\n".join(lines)


def _where(client: Any, task_id: bytes | None) -> str:
    """Where the broker holds the message of ``task_id``: queued, unacknowledged, nowhere."""
    if task_id is None:
        return ""
    queued = any(task_id in m for m in client.lrange("steps", 0, -1))
    tags = [t for t, m in client.hgetall("unacked").items() if task_id in m]
    since = [time.time() - (client.zscore("unacked_index", t) or 0) for t in tags]
    return f"message in queue={queued} unacked={bool(tags)} (delivered {since} s ago)"


def _executions(log: Path) -> dict[str, list[tuple[str, int, bool]]]:
    """Per key: (execution id, process id, finished) of each execution, from the step log."""
    started: dict[str, list[tuple[str, int]]] = collections.defaultdict(list)
    ended: set[str] = set()
    for line in log.read_text().splitlines():
        what, key, execution, pid = line.split()
        if what == "start":
            started[key].append((execution, int(pid)))
        else:
            ended.add(execution)
    return {k: [(e, p, e in ended) for e, p in v] for k, v in started.items()}


@pytest.mark.timeout(600)
def test_runs_finish_once_whatever_is_killed_paused_or_restarted(tmp_path: Path) -> None:
    seconds = chaos_seconds()
    (tmp_path / "redis").mkdir()
    server = RedisServer(tmp_path / "redis", appendonly=True)
    log = tmp_path / "steps.log"
    log.touch()
    tag = uuid.uuid4().hex[:8]
    env = {
        "WORKFLOW_CACHE_BROKER": server.url,
        "WORKFLOW_CACHE_NAMESPACE": f"chaos-{tag}",
        "WORKFLOW_CACHE_LEASE": str(LEASE),
        "WORKFLOW_CACHE_RECONCILE_INTERVAL": str(INTERVAL),
        "WORKFLOW_CACHE_RUN_RECHECK": str(RECHECK),
    }
    rng = random.Random(os.environ.get("WFC_CHAOS_SEED") or None)
    try:
        with configured_test_app(env, "tests.chaos_app") as module:
            fleet = Fleet(module, env, tmp_path)
            for _ in range(STEP_WORKERS):
                fleet.spawn("steps")
            for _ in range(FLOW_WORKERS):
                fleet.spawn("flows")
            try:
                wait_ready(module.app, fleet.all())
                _soak(module, fleet, server, rng, seconds, tag, log)
            finally:
                fleet.stop()
    finally:
        server.stop()


def _soak(
    module: ModuleType,
    fleet: Fleet,
    server: RedisServer,
    rng: random.Random,
    seconds: float,
    tag: str,
    log: Path,
) -> None:
    runs = {f"chaos-{tag}-{n}": n for n in range(RUNS)}
    run_ids = list(runs)
    waiting = [(n, run_id) for run_id, n in runs.items()]
    args = {"tag": tag, "log": str(log)}
    restarts = [seconds / 3, 2 * seconds / 3]
    faults = (fleet.kill_child, fleet.kill_worker, fleet.pause_worker)
    begun = time.monotonic()
    while (elapsed := time.monotonic() - begun) < seconds:
        _enqueue(module, waiting, args)
        if restarts and elapsed >= restarts[0]:
            restarts.pop(0)
            server.kill()
            server.restart(down_for=0.5)
            fleet.actions["redis killed and restarted"] += 1
            fleet.timeline.append((time.time(), "redis restarted"))
        else:
            rng.choice(faults)(rng)
        time.sleep(rng.uniform(0.4, 1.2))
    fleet.resume_all()
    calm = time.monotonic()
    while waiting:
        _enqueue(module, waiting, args)
    done: dict[str, float] = {}
    deadline = calm + RECOVERY_TIMEOUT
    late = LEASE + 10.0  # past this, say what the runs still left wait for (not a failure)
    while not _finished(module, run_ids, done):
        assert time.monotonic() < deadline, (
            f"{len(run_ids) - len(done)} of {RUNS} runs stranded {RECOVERY_TIMEOUT:g} s after "
            f"the chaos ({dict(fleet.actions)}):\n{_stranded(module, run_ids, done)}"
        )
        if time.monotonic() - calm > late:
            print(f"\n{late:g} s after the chaos:\n{_stranded(module, run_ids, done)}")
            now = time.time()
            print(
                "faults, s ago: " + ", ".join(f"{now - t:.1f} {what}" for t, what in fleet.timeline)
            )
            late = RECOVERY_TIMEOUT
        time.sleep(0.1)
    last = max(done.values()) - calm
    print(
        f"\nchaos {seconds:g} s: {dict(fleet.actions)}; the last of {RUNS} runs finished "
        f"{max(last, 0.0):.1f} s after the chaos ended (lease {LEASE:g} s, "
        f"reconciler every {INTERVAL:g} s; busy machine)"
    )

    # every run finished with its value; every key has one outcome, the one runs read
    readers: dict[str, set[str]] = collections.defaultdict(set)
    for run_id, n in runs.items():
        raw = module.cache.flight.read(outcome_key(run_id))
        assert raw is not None
        result = Envelope.loads(outcome_key(run_id), raw).to_result(outcome_key(run_id))
        assert result.ok, f"run {run_id}: {result.error}"
        assert result.value["values"] == module.expected(n), run_id
        for key, by in result.value["by"].items():
            readers[key].add(by)
    executions = _executions(log)
    for key, seen in readers.items():
        assert len(seen) == 1, f"{key}: runs read different outcomes {seen}"
        stored = module.cache.flight.read(key)
        assert stored is not None, key
        by = Envelope.loads(key, stored).to_result(key).value["by"]
        assert seen == {by}, f"{key}: stored {by}, runs read {seen}"
        finished = {e for e, _, ended in executions[key] if ended}
        assert by in finished, f"{key}: its outcome names an execution that never finished"

    # a key ran more than once only in processes the test killed or paused
    spared = fleet.killed | fleet.paused
    extra = {
        key: runs_of
        for key, runs_of in executions.items()
        if sum(1 for _, pid, _ in runs_of if pid not in spared) > 1
    }
    assert not extra, f"keys run more than once by processes nobody disturbed: {extra}"
    repeated = sum(len(v) - 1 for v in executions.values())
    print(f"{len(executions)} keys, {repeated} extra executions (all in killed/paused processes)")
    noticed = [
        line.split("WARNING/MainProcess] ", 1)[-1]
        for worker in fleet.all() + fleet.killed_workers
        if worker.log is not None and worker.log.exists()
        for line in worker.log.read_text(errors="replace").splitlines()
        if "Redis restarted" in line
    ]
    print("reconciler: " + ("; ".join(noticed) or "no restart noticed"))

    # no worker exited on its own
    gone = [w.name for w in fleet.all() if not w.alive()]
    assert not gone, f"workers exited on their own: {gone}"


# -- what the soak found, one fault at a time (no workers: the records and the reconciler)


def _reconciler(redis_url: str, cache: RedisCache, runs: Runs) -> Reconciler:
    reconciler = Reconciler(Celery("chaos-tests", broker=redis_url), cache, interval=0.05)
    reconciler.runs = runs
    return reconciler


def test_a_first_message_lost_with_its_worker_is_sent_again(
    redis_url, namespace, monkeypatch
) -> None:
    monkeypatch.setenv("WORKFLOW_CACHE_RUN_RECHECK", "0.05")
    queue = f"wq-{uuid.uuid4().hex[:8]}"
    app = Celery("chaos-enqueue", broker=redis_url, set_as_current=False)
    cache = RedisCache(redis_url, namespace=namespace)
    install(app, cache)

    @workflow_task(app, name=f"chaos.first.{namespace}", queue=queue)
    def first(step: Any, n: int) -> int:
        return n

    run_id = f"first-{namespace}"
    first.apply_async((7,), task_id=run_id)
    info = run_info(cache, run_id)  # recorded as it was sent, before any worker has it
    assert info is not None and info.state == "resuming" and info.batch == 0
    client = cache.flight.client
    assert client.delete(queue) == 1  # prefetched by a worker killed whole: gone for an hour
    runs = Runs(cache.flight)
    wait_until(lambda: run_id in runs.due(10), "the run to be due")
    assert _reconciler(redis_url, cache, runs).settle_due().resent == 1
    assert client.llen(queue) == 1  # sent again
    begun = runs.begin(run_id, 0, Resume(first.name, [7], {}, queue))
    assert begun.kind == "run"  # the copy that arrives first runs it
    assert run_info(cache, run_id).state == "running"
    first.apply_async((7,), task_id=run_id)  # the same id again: the record is left alone
    assert run_info(cache, run_id).epoch == begun.epoch
    cache.close()


def test_a_finished_runs_outcome_never_written_is_written_by_the_reconciler(
    redis_url, namespace
) -> None:
    cache = RedisCache(redis_url, namespace=namespace)
    runs = Runs(cache.flight, recheck=0.05)
    begun = runs.begin("fin", 0, Resume("t.flow", [], {}, "wq-fin"))
    assert runs.finish("fin", begun.epoch, '{"v":1,"status":"ok","value":3}')
    client = cache.flight.client
    client.delete(runs.keys("fin").out)  # its finisher died between the record and this
    wait_until(lambda: "fin" in runs.due(10), "the finished run to be due once more")
    _reconciler(redis_url, cache, runs).settle_due()
    assert cache.get(outcome_key("fin")).value == 3
    assert "fin" not in runs.due(10)  # and only once
    cache.close()


def test_a_suspended_run_whose_step_nothing_will_commit_is_sent_again(redis_url, namespace) -> None:
    cache = RedisCache(redis_url, namespace=namespace)
    runs = Runs(cache.flight, recheck=0.05)
    flow = Resume("t.flow", [], {}, f"wq-{uuid.uuid4().hex[:8]}")
    begun = runs.begin("orphan", 0, flow)
    batch = runs.prepare("orphan", begun.epoch, ["t.step|k"], ["k"])
    Waiters(cache.flight).join_many(["k"], ["msg-1"], [30.0], "orphan", batch)
    assert runs.arm("orphan", begun.epoch, batch, []) == "wait"
    reconciler = _reconciler(redis_url, cache, runs)
    client = cache.flight.client
    keys = cache.flight.keyspace.for_step("k")
    wait_until(lambda: "orphan" in runs.due(10), "the suspended run to be due")
    assert reconciler.settle_due().resent == 0  # its message is queued: nothing to do
    holder = cache.flight.acquire("k")  # a worker starts the step ...
    assert not isinstance(holder, Done)
    client.delete(keys.queued)
    wait_until(lambda: "orphan" in runs.due(10), "the suspended run to be due again")
    assert reconciler.settle_due().resent == 0  # ... and holds its claim
    holder.abandon()  # ... then dies with its whole worker: the lease runs out
    client.delete(keys.lock)
    wait_until(lambda: "orphan" in runs.due(10), "the suspended run to be due again")
    assert reconciler.settle_due().resent == 1
    assert client.llen(flow.queue) == 1  # the replay will send the step again
    cache.close()


def test_a_queued_message_received_by_a_worker_that_died_is_known_lost(
    redis_url, namespace
) -> None:
    cache = RedisCache(redis_url, namespace=namespace)
    runs = Runs(cache.flight, recheck=0.05)
    flow = Resume("t.flow", [], {}, f"wq-{uuid.uuid4().hex[:8]}")
    begun = runs.begin("held", 0, flow)
    batch = runs.prepare("held", begun.epoch, ["t.step|k"], ["k"])
    Waiters(cache.flight).join_many(["k"], ["msg-1"], [60.0], "held", batch)
    assert runs.arm("held", begun.epoch, batch, []) == "wait"
    client = cache.flight.client
    keys = cache.flight.keyspace.for_step("k")
    received = client.register_script(script("received"))
    reconciler = _reconciler(redis_url, cache, runs)

    alive = cache.flight.presence_id()  # received by a worker that lives: still queued
    assert received(keys=[keys.queued, receipt_key(keys)], args=["msg-1", alive, 1000]) == 1
    wait_until(lambda: "held" in runs.due(10), "the suspended run to be due")
    assert reconciler.settle_due().resent == 0 and client.get(keys.queued) == b"msg-1"

    gone = int(client.client_id()) + 10_000  # received by a worker killed whole since
    assert received(keys=[keys.queued, receipt_key(keys)], args=["msg-1", gone, 1000]) == 1
    wait_until(lambda: "held" in runs.due(10), "the suspended run to be due again")
    assert reconciler.settle_due().resent == 1  # its marker dropped, the run sent again
    assert client.get(keys.queued) is None and client.llen(flow.queue) == 1
    cache.close()


def test_step_messages_queued_before_a_redis_restart_are_sent_again(tmp_path: Path) -> None:
    server = RedisServer(tmp_path, appendonly=True)
    try:
        cache = RedisCache(server.url, namespace=f"restart-{uuid.uuid4().hex[:8]}")
        runs = Runs(cache.flight, recheck=600.0, lease=0.2)  # due only when the restart says
        flow = Resume("t.flow", [], {}, f"wq-{uuid.uuid4().hex[:8]}")
        client = cache.flight.client
        reconciler = _reconciler(server.url, cache, runs)
        assert reconciler.settle_due().looked == 0  # the first look: the server is remembered

        def suspend(on: Runs, run_id: str, key: str) -> None:
            begun = on.begin(run_id, 0, flow)
            batch = on.prepare(run_id, begun.epoch, [f"t.step|{key}"], [key])
            Waiters(cache.flight).join_many([key], [f"msg-{key}"], [60.0], run_id, batch)
            assert on.arm(run_id, begun.epoch, batch, []) == "wait"

        space = cache.flight.keyspace
        suspend(runs, "popped", "k1")  # its message popped by a BRPOP whose reply is lost
        suspend(runs, "held", "k2")  # received by a consumer that reconnects without it
        received = client.register_script(script("received"))
        k2 = space.for_step("k2")
        presence = cache.flight.presence_id()
        assert presence is not None
        assert received(keys=[k2.queued, receipt_key(k2)], args=["msg-k2", presence, 60_000]) == 1
        suspend(runs, "running", "k3")  # started by a pool process that lives on
        holder = cache.flight.acquire("k3")
        assert not isinstance(holder, Done)
        client.delete(space.for_step("k3").queued)
        wait_until(lambda: runs.now_ms() > runs.since("running"), "Redis's clock to move on")

        server.kill()
        server.restart()
        wait_until(
            lambda: cache.flight.client.ping(), "the cache to reconnect", ignoring=(Exception,)
        )
        tick = reconciler.settle_due()
        assert tick.looked == 3 and tick.resent == 2  # the restart made them all due at once
        assert client.get(space.for_step("k1").queued) is None
        assert client.get(k2.queued) is None
        assert client.llen(flow.queue) == 2  # their replays send k1 and k2 again
        assert client.pttl(space.for_step("k3").lock) > 0  # k3 is left to its claim

        assert reconciler.server is not None
        restarted = reconciler.server[1]  # (uptime is in whole seconds: one more)
        soon = 1000 + 2 * (200 + 50)  # two leases and two intervals
        wait_until(lambda: runs.now_ms() > restarted + soon, "that long to pass since the restart")
        after = Runs(cache.flight, recheck=0.05, lease=0.2)  # a run suspended since
        suspend(after, "after", "k4")
        wait_until(lambda: "after" in runs.due(10), "the run suspended since to be due")
        assert reconciler.settle_due().resent == 0  # its message is queued: left alone
        assert client.get(space.for_step("k4").queued) == b"msg-k4"
        holder.abandon()
        cache.close()
    finally:
        server.stop()
