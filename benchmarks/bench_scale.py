"""What one step costs Redis, and whether a Redis Cluster adds throughput, on real workers.

    python benchmarks/bench_scale.py [--quick] [--n 200] [--runs 100] [--burst 300]
                                     [--rounds 5] [--workers 2] [--idle 5]

Every figure is counted by the servers themselves: ``CONFIG RESETSTAT`` before each
phase, then ``INFO stats cpu commandstats`` after it (the benchmark's own INFO, CONFIG
and result polls are left out). The broker (Celery's queues and result backend) and
the step cache are two redis-servers, so each one's share is seen. Commands include
those a Lua script runs (Redis counts them in ``commandstats``); pub/sub messages are
PUBLISH (SPUBLISH on a Cluster) calls, each delivered to every subscriber of its
channel.

1. Idle workers: commands and bytes per second and per worker on each server (Celery's
   BRPOP loop, the run reconciler), with the benchmark's workers
   (``--without-gossip --without-heartbeat --without-mingle``) and with Celery's
   defaults (what ``celery worker`` does unless told otherwise).
2. Per operation, one solo worker on ``steps`` and one on ``workflows``:
   a. a dispatched step with a fresh key, ``step(noop.s(k), key=k)`` in one workflow;
   b. a cached hit of a dispatched step (the same keys again);
   c. a cached hit of a local step, ``step(fn, key=k)``;
   d. a suspended and resumed run: ``flow.delay(tag)``, a workflow task whose one
      dispatched step suspends it until the step commits (--runs at once);
   then the connections each worker process holds on each server.
3. Throughput of --burst distinct-key dispatched steps (one ``step.all``) against a
   step cache on one plain server and on Redis Clusters of 1, 2 and 3 primaries, each
   with its own --workers solo workers, setups interleaved round by round; the
   server CPU per step (``used_cpu_sys + used_cpu_user``) and the commands each
   primary served (target: even within 20 % of the mean).
4. The model: what one core of Redis carries at the CPU per step measured here, what
   each Cluster size carries at its busiest primary, and what 1,000 workers hold
   (connections) and send while idle, with and without Celery's gossip and heartbeat.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.servers import RedisServer, free_port  # noqa: E402
from tests.waiting import wait_until  # noqa: E402
from tests.workers import CeleryWorker, wait_ready  # noqa: E402

APP_MODULE = "benchmarks._scale_app"
DEFAULT_WORKERS = 3
"""Default-configured workers whose idle traffic is measured (gossip fans out to all)."""
FLEET = 1000
OWN = ("cmdstat_info", "cmdstat_config|resetstat", "cmdstat_cluster|info")
"""The benchmark's own commands: not counted."""


# --------------------------------------------------------------------------- counting


@dataclass
class Counts:
    """What one server (or several, summed) did during a phase."""

    calls: Counter[str] = field(default_factory=Counter)
    net_in: int = 0
    net_out: int = 0
    cpu: float = 0.0
    bus_publish: int = 0
    """Pub/sub messages a Cluster node forwarded to other nodes over the bus (a classic
    PUBLISH goes to every node, an SPUBLISH to the replicas of its shard only)."""
    redirects: int = 0
    """MOVED and ASK replies: commands sent to a node that does not serve their slot."""

    @property
    def commands(self) -> int:
        return sum(self.calls.values())

    def __add__(self, other: Counts) -> Counts:
        return Counts(
            self.calls + other.calls,
            self.net_in + other.net_in,
            self.net_out + other.net_out,
            self.cpu + other.cpu,
            self.bus_publish + other.bus_publish,
            self.redirects + other.redirects,
        )

    def pubsub(self) -> tuple[int, int]:
        """(messages published, (un)subscribe commands)."""
        sent = self.calls["publish"] + self.calls["spublish"]
        subs = sum(
            n for name, n in self.calls.items() if "subscribe" in name
        )  # subscribe, unsubscribe, psubscribe, ssubscribe...
        return sent, subs


class Node:
    """One redis-server whose statistics a phase reads (a plain server or a primary)."""

    def __init__(self, port: int, *, cluster: bool = False) -> None:
        self.port = port
        self.cluster = cluster
        self.client = redis.Redis(port=port, protocol=2)
        self._cpu = 0.0
        self._bus = 0

    def _cpu_now(self) -> float:
        info = self.client.info("cpu")
        return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])

    def _bus_now(self) -> int:
        if not self.cluster:
            return 0
        info = self.client.execute_command("CLUSTER INFO")
        return int(info.get("cluster_stats_messages_publish_sent", 0)) + int(
            info.get("cluster_stats_messages_publishshard_sent", 0)
        )

    def reset(self) -> None:
        self._cpu = self._cpu_now()
        self._bus = self._bus_now()
        self.client.config_resetstat()

    def read(self) -> Counts:
        info = self.client.execute_command("INFO", "stats", "cpu", "commandstats", "errorstats")
        calls: Counter[str] = Counter()
        for name, row in info.items():
            if name.startswith("cmdstat_") and name not in OWN:
                calls[name.removeprefix("cmdstat_")] = int(row["calls"])
        cpu = float(info["used_cpu_sys"]) + float(info["used_cpu_user"]) - self._cpu
        return Counts(
            calls,
            int(info["total_net_input_bytes"]),
            int(info["total_net_output_bytes"]),
            cpu,
            self._bus_now() - self._bus,
            sum(
                int(info.get(f"errorstat_{kind}", {}).get("count", 0)) for kind in ("MOVED", "ASK")
            ),
        )


@contextmanager
def phase(nodes: dict[str, list[Node]]) -> Iterator[dict[str, Counts]]:
    """Counts per group of nodes ('broker', 'cache'), filled in when the block ends."""
    out: dict[str, Counts] = {}
    for group in nodes.values():
        for node in group:
            node.reset()
    yield out
    for name, group in nodes.items():
        total = Counts()
        for node in group:
            total = total + node.read()
        out[name] = total


class Poller:
    """Waits until Celery results exist by polling MGET on the broker, keeping what it
    sent and received so that it can be taken out of the broker's counts."""

    def __init__(self, port: int) -> None:
        self.client = redis.Redis(port=port, protocol=2)
        self.conn = redis.Connection(port=port, protocol=2)
        self.calls = 0
        self.sent = 0
        self.received = 0

    def wait(self, ids: list[str], timeout: float = 300.0) -> list[bytes]:
        keys = [f"celery-task-meta-{i}" for i in ids]
        request = sum(len(part) for part in self.conn.pack_command("MGET", *keys))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            rows = self.client.mget(keys)
            self.calls += 1
            self.sent += request
            self.received += len(f"*{len(rows)}\r\n") + sum(
                5 if r is None else len(f"${len(r)}\r\n") + len(r) + 2 for r in rows
            )
            if all(rows):
                return rows
            time.sleep(0.05)
        raise RuntimeError(f"{len(ids)} workflow runs not done after {timeout} s")

    def remove_from(self, counts: Counts) -> None:
        counts.calls["mget"] -= self.calls
        counts.net_in -= self.sent
        counts.net_out -= self.received
        self.calls = self.sent = self.received = 0


# --------------------------------------------------------------------------- servers


def cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free and valid too."""
    while True:
        port = free_port()
        if port + 10_000 > 65_535:
            continue
        with socket.socket() as bus:
            try:
                bus.bind(("127.0.0.1", port + 10_000))
            except OSError:
                continue
        return port


class Cluster:
    """A Redis Cluster of ``size`` primaries (no replicas), the slots split evenly.

    Made by hand (ADDSLOTSRANGE, SET-CONFIG-EPOCH, MEET): ``redis-cli --cluster create``
    wants at least three primaries."""

    def __init__(self, root: Path, size: int) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed")
        self.ports = [cluster_port() for _ in range(size)]
        self.procs = []
        for port in self.ports:
            folder = root / f"cluster-{port}"
            folder.mkdir()
            self.procs.append(
                subprocess.Popen(
                    [binary, "--port", str(port), "--bind", "127.0.0.1",
                     "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                     "--save", "", "--appendonly", "no", "--dir", str(folder),
                     "--loglevel", "warning"],
                    cwd=folder,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )  # fmt: skip
        self.nodes = [Node(port, cluster=True) for port in self.ports]
        for node in self.nodes:
            wait_until(node.client.ping, f"node {node.port}", ignoring=(redis.ConnectionError,))
        bounds = [round(i * 16384 / size) for i in range(size + 1)]
        for i, node in enumerate(self.nodes):
            node.client.execute_command("CLUSTER SET-CONFIG-EPOCH", i + 1)
            node.client.execute_command("CLUSTER ADDSLOTSRANGE", bounds[i], bounds[i + 1] - 1)
        for node in self.nodes[1:]:
            self.nodes[0].client.execute_command("CLUSTER MEET", "127.0.0.1", node.port)

        def ready() -> bool:
            for node in self.nodes:
                info = node.client.execute_command("CLUSTER INFO")
                if info.get("cluster_state") != "ok" or int(info["cluster_known_nodes"]) != size:
                    return False
            return True

        wait_until(ready, f"a cluster of {size} to agree", timeout=60)
        self.url = "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports)

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            proc.wait(timeout=10)


# --------------------------------------------------------------------------- helpers


def load_app(env: dict[str, str]) -> ModuleType:
    """Import the app only once ``WORKFLOW_CACHE_*`` are set: it reads them at import."""
    import importlib

    from workflow_cache import settings

    os.environ.update(env)
    settings.reload()
    if APP_MODULE in sys.modules:
        return importlib.reload(sys.modules[APP_MODULE])
    return importlib.import_module(APP_MODULE)


def connections(servers: dict[str, int], pids: dict[str, int]) -> dict[str, dict[str, Counter]]:
    """Per worker process and server: its connections, by what they do (from CLIENT LIST
    flags and last command, matched to the process through ``ss``)."""
    owner: dict[tuple[int, int], int] = {}  # (server port, client port) -> pid
    listing = subprocess.run(
        ["ss", "-tnpH", "state", "established"], capture_output=True, text=True, check=True
    )
    for line in listing.stdout.splitlines():
        parts = line.split()
        if len(parts) < 5 or "pid=" not in line:
            continue
        local, peer = parts[2], parts[3]
        pid = int(line.split("pid=")[1].split(",")[0])
        owner[(int(peer.rpartition(":")[2]), int(local.rpartition(":")[2]))] = pid
    out: dict[str, dict[str, Counter]] = {w: {} for w in pids}
    by_pid = {pid: name for name, pid in pids.items()}
    for server, port in servers.items():
        for row in redis.Redis(port=port, protocol=2).client_list():
            pid = owner.get((port, int(row["addr"].rpartition(":")[2])))
            if pid not in by_pid:
                continue
            cmd = row.get("cmd", "")
            if int(row.get("sub", 0)) or int(row.get("psub", 0)) or int(row.get("ssub", 0)):
                kind = "pub/sub"
            elif cmd == "client|id":
                kind = "presence"
            elif cmd == "brpop":
                kind = "BRPOP (consumer)"
            else:
                kind = "commands (pool)"
            out[by_pid[pid]].setdefault(server, Counter())[kind] += 1
    return out


def per(counts: Counts, ops: int) -> str:
    sent, subs = counts.pubsub()
    scripts = counts.calls["evalsha"] + counts.calls["eval"]
    return (
        f"{counts.commands / ops:7.1f} cmds ({scripts / ops:4.1f} scripts) "
        f"{counts.net_in / ops:8.0f} B in {counts.net_out / ops:8.0f} B out "
        f"{sent / ops:5.2f} pub {subs / ops:5.2f} (un)sub"
    )


def top(counts: Counts, ops: int, n: int = 8) -> str:
    return ", ".join(f"{name} {calls / ops:.2f}" for name, calls in counts.calls.most_common(n))


def report(label: str, out: dict[str, Counts], ops: int, seconds: float) -> dict[str, Any]:
    print(f"   {label}  ({ops} in {seconds:.2f} s)")
    for name in ("broker", "cache"):
        counts = out[name]
        print(f"     {name:7} {per(counts, ops)}  cpu {counts.cpu / ops * 1e6:6.0f} us")
        print(f"             per op: {top(counts, ops)}")
    total = out["broker"] + out["cache"]
    print(f"     both    {per(total, ops)}  cpu {total.cpu / ops * 1e6:6.0f} us")
    return {
        name: {
            "commands": c.commands / ops,
            "in": c.net_in / ops,
            "out": c.net_out / ops,
            "publish": c.pubsub()[0] / ops,
            "cpu_us": c.cpu / ops * 1e6,
        }
        for name, c in out.items()
    }


# --------------------------------------------------------------------------- part 1


def idle_rates(
    nodes: dict[str, list[Node]], seconds: float, workers: int
) -> dict[str, dict[str, float]]:
    """Per server: commands, bytes (in + out, and out alone) and PUBLISH calls, per
    second and per worker."""
    with phase(nodes) as out:
        time.sleep(seconds)  # the phase *is* a stretch of time with nothing to do
    rate = seconds * workers
    return {
        name: {
            "commands": c.commands / rate,
            "bytes": (c.net_in + c.net_out) / rate,
            "out": c.net_out / rate,
            "publish": c.pubsub()[0] / rate,
        }
        for name, c in out.items()
    }


def print_idle(label: str, rates: dict[str, dict[str, float]]) -> None:
    for name, r in rates.items():
        print(
            f"   {label:34} {name:7} {r['commands']:6.2f} cmds/s  {r['bytes']:8.0f} B/s  "
            f"{r['publish']:5.2f} PUBLISH/s  per worker"
        )
        label = ""


class DefaultWorker:
    """``celery worker`` started as it is by default (gossip, heartbeat, mingle), on a
    queue nobody sends to: what an unconfigured fleet's idle workers cost."""

    def __init__(self, env: dict[str, str], index: int, log: Any) -> None:
        self.name = f"default{index}@{os.uname().nodename}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", APP_MODULE, "worker", "-Q",
             "idle-defaults", "-P", "solo", "-n", self.name, "-l", "warning"],
            cwd=ROOT,
            env={**os.environ, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=20)


def celery_defaults_idle(
    app: ModuleType,
    env: dict[str, str],
    nodes: dict[str, list[Node]],
    seconds: float,
    count: int,
    log: Path,
) -> dict[str, dict[str, float]]:
    with open(log, "ab") as out:
        workers = [DefaultWorker(env, i, out) for i in range(count)]
        try:
            wait_ready(app.app, workers)  # type: ignore[arg-type]
            return idle_rates(nodes, seconds, count)
        finally:
            for worker in workers:
                worker.stop()


def part_costs(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    broker, cache_server = RedisServer(tmp), RedisServer(tmp)
    env = {
        "WORKFLOW_CACHE_BROKER": broker.url,
        "WORKFLOW_CACHE_CACHE_URL": cache_server.url,
        "WORKFLOW_CACHE_NAMESPACE": f"scale-{uuid.uuid4().hex[:8]}",
        "WORKFLOW_CACHE_LEASE": "5",
    }
    app = load_app(env)
    log = tmp / "workers.log"
    workers = [
        CeleryWorker(APP_MODULE, "scale-steps", "steps", env, log=log),
        CeleryWorker(APP_MODULE, "scale-flows", "workflows", env, log=log),
    ]
    nodes = {"broker": [Node(broker.port)], "cache": [Node(cache_server.port)]}
    results: dict[str, Any] = {}
    try:
        wait_ready(app.app, workers)
        from workflow_cache import create_workflow
        from workflow_cache.distributed import CeleryDispatcher

        dispatcher = CeleryDispatcher(app.app, app.cache, timeout=60)
        workflow = create_workflow({}, cache=app.cache, dispatcher=dispatcher)
        poller = Poller(broker.port)

        def runs(count: int) -> float:
            tag = uuid.uuid4().hex[:8]
            started = time.perf_counter()
            ids = [app.flow.delay(f"run:{tag}:{i}").id for i in range(count)]
            for raw in poller.wait(ids):
                meta = json.loads(raw)
                if meta.get("status") != "SUCCESS" or meta["result"].get("status") != "ok":
                    raise RuntimeError(f"a workflow run failed: {meta}")
            return time.perf_counter() - started

        def steps(keys: list[str]) -> float:
            started = time.perf_counter()

            def body(step: Any) -> None:
                for key in keys:
                    assert step(app.noop.s(key), key=key) == key

            assert workflow(body).ok
            return time.perf_counter() - started

        def local(keys: list[str]) -> float:
            started = time.perf_counter()

            def body(step: Any) -> None:
                for key in keys:
                    assert step(lambda k=key: k, key=key) == key

            assert workflow(body).ok
            return time.perf_counter() - started

        # warm-up: connections, scripts, pub/sub listeners, both workers' imports
        warm = [f"warm:{uuid.uuid4().hex}" for _ in range(20)]
        steps(warm)
        steps(warm)
        local([f"warm-local:{uuid.uuid4().hex}" for _ in range(20)])
        runs(10)
        poller.calls = poller.sent = poller.received = 0

        print(f"\n1. idle workers (--idle {args.idle:g} s), per worker")
        rates = idle_rates(nodes, args.idle, len(workers))
        print_idle("bench flags (no gossip/heartbeat)", rates)
        results["idle"] = rates

        n = args.n
        print(f"\n2. per operation (solo worker on steps + one on workflows; n={n})")
        keys = [f"scale:{uuid.uuid4().hex}" for _ in range(n)]
        with phase(nodes) as out:
            took = steps(keys)
        results["step"] = report("a. dispatched step, fresh key", out, n, took)
        with phase(nodes) as out:
            took = steps(keys)
        results["hit"] = report("b. cached hit of a dispatched step", out, n, took)
        local_keys = [f"local:{uuid.uuid4().hex}" for _ in range(n)]
        local(local_keys)
        with phase(nodes) as out:
            took = local(local_keys)
        results["local_hit"] = report("c. cached hit of a local step", out, n, took)
        with phase(nodes) as out:
            took = runs(args.runs)
        polls = poller.calls
        poller.remove_from(out["broker"])
        results["run"] = report(
            f"d. suspended + resumed run, one dispatched step ({args.runs} at once; "
            f"{polls} result polls left out)",
            out,
            args.runs,
            took,
        )

        print("\n   connections per worker process (solo pool), by use:")
        servers = {"broker": broker.port, "cache": cache_server.port}
        held = connections(servers, {w.name.split("@")[0]: w.pid for w in workers})
        for name, by_server in held.items():
            for server, kinds in by_server.items():
                what = ", ".join(f"{k} {v}" for k, v in sorted(kinds.items()))
                print(f"     {name:12} {server:7} {sum(kinds.values())}: {what}")
        results["connections"] = {k: {s: dict(c) for s, c in v.items()} for k, v in held.items()}

        if not args.quick:
            for worker in workers:  # the idle rate of the default-configured ones alone
                worker.stop()
            print("\n   idle, workers with Celery's defaults (gossip, heartbeat, mingle):")
            rates = celery_defaults_idle(app, env, nodes, args.idle, DEFAULT_WORKERS, log)
            print_idle("3 default workers", rates)
            results["idle_defaults"] = rates
    finally:
        for worker in workers:
            worker.stop()
        broker.stop()
        cache_server.stop()
    return results


# --------------------------------------------------------------------------- part 2


@dataclass
class Setup:
    """One step cache (a plain server or a Cluster) with its own queue and workers."""

    name: str
    nodes: list[Node]
    url: str
    queue: str
    namespace: str
    stop: Callable[[], None]
    workers: list[CeleryWorker] = field(default_factory=list)
    rates: list[float] = field(default_factory=list)
    per_node: Counter[int] = field(default_factory=Counter)
    per_node_cpu: Counter[int] = field(default_factory=Counter)  # CPU seconds, not counts
    per_node_subs: Counter[int] = field(default_factory=Counter)
    cpu: float = 0.0
    broker_cpu: float = 0.0
    steps: int = 0
    bus: int = 0
    redirects: int = 0
    calls: Counter[str] = field(default_factory=Counter)
    producer_cpu: float = 0.0
    batches: list[float] = field(default_factory=list)
    worker_cpu: float = 0.0
    idle_cpu: float = 0.0  # CPU seconds per second of the cache's nodes with nothing to do
    busy_s: float = 0.0  # seconds the bursts took


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def part_throughput(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    from workflow_cache import RedisCache, create_workflow
    from workflow_cache.cache.messages import StepMessages
    from workflow_cache.distributed import CeleryDispatcher

    broker = RedisServer(tmp)
    setups: list[Setup] = []
    try:
        plain = RedisServer(tmp)
        setups.append(
            Setup("one server", [Node(plain.port)], plain.url, "q-plain", "tp-plain", plain.stop)
        )
        for size in (1, 2, 3):
            cluster = Cluster(tmp, size)
            setups.append(
                Setup(
                    f"Cluster x{size}",
                    cluster.nodes,
                    cluster.url,
                    f"q-c{size}",
                    f"tp-c{size}",
                    cluster.stop,
                )
            )
        base_env = {"WORKFLOW_CACHE_BROKER": broker.url, "WORKFLOW_CACHE_LEASE": "5"}
        app = load_app({**base_env, "WORKFLOW_CACHE_CACHE_URL": setups[0].url})
        log = tmp / "throughput-workers.log"
        broker_node = Node(broker.port)
        for s in setups:
            env = {
                **base_env,
                "WORKFLOW_CACHE_CACHE_URL": s.url,
                "WORKFLOW_CACHE_STEP_QUEUE": s.queue,
                "WORKFLOW_CACHE_NAMESPACE": s.namespace,
                "WORKFLOW_CACHE_WORKFLOW_QUEUE": f"{s.queue}-flows",
            }
            s.workers = [
                CeleryWorker(APP_MODULE, f"{s.queue}-{i}", s.queue, env, log=log)
                for i in range(args.workers)
            ]
        wait_ready(app.app, [w for s in setups for w in s.workers], timeout=120)

        flows, markers = {}, {}
        for s in setups:
            cache = RedisCache(s.url, namespace=s.namespace, lease=5.0)
            dispatcher = CeleryDispatcher(app.app, cache, timeout=120)
            flows[s.name] = create_workflow({}, cache=cache, dispatcher=dispatcher)
            markers[s.name] = StepMessages(cache.flight)

        def batch(s: Setup, count: int) -> float:
            """The producer's two batched calls of a burst alone: queued markers set for
            ``count`` fresh keys, then confirmed sent (they expire in ten seconds)."""
            keys = [f"batch:{uuid.uuid4().hex}" for _ in range(count)]
            ids = [str(uuid.uuid4()) for _ in keys]
            started = time.perf_counter()
            markers[s.name].enqueue_many(keys, ids, 10.0)
            markers[s.name].sent_many(keys, ids, [10.0] * count)
            return time.perf_counter() - started

        def burst(s: Setup, count: int) -> float:
            tag = uuid.uuid4().hex[:8]
            keys = [f"tp:{tag}:{i}" for i in range(count)]
            sigs = [app.noop.s(i).set(queue=s.queue) for i in range(count)]
            started = time.perf_counter()
            result = flows[s.name](lambda step: step.all(sigs, keys=keys))
            took = time.perf_counter() - started
            assert result.value == list(range(count)), result
            return took

        for s in setups:  # warm-up
            burst(s, max(20, args.burst // 5))
        for s in setups:  # what the cache's nodes use with no step to serve (cron, bus)
            for node in s.nodes:
                node.reset()
        started = time.monotonic()
        time.sleep(args.idle)
        quiet = time.monotonic() - started
        for s in setups:
            s.idle_cpu = sum(node.read().cpu for node in s.nodes) / quiet

        print(
            f"\n3. throughput: {args.burst} distinct-key dispatched steps in one step.all, "
            f"{args.workers} solo workers per setup, {args.rounds} interleaved rounds"
        )
        for r in range(args.rounds):
            order = setups[r % len(setups) :] + setups[: r % len(setups)]
            for s in order:
                broker_node.reset()
                for node in s.nodes:
                    node.reset()
                workers_before = sum(process_cpu(w.pid) for w in s.workers)
                producer_before = time.process_time()
                took = burst(s, args.burst)
                s.producer_cpu += time.process_time() - producer_before
                s.worker_cpu += sum(process_cpu(w.pid) for w in s.workers) - workers_before
                s.rates.append(args.burst / took)
                s.busy_s += took
                s.steps += args.burst
                s.broker_cpu += broker_node.read().cpu
                for node in s.nodes:
                    counts = node.read()
                    s.per_node[node.port] += counts.commands
                    s.per_node_cpu[node.port] += counts.cpu  # type: ignore[assignment]
                    s.per_node_subs[node.port] += counts.pubsub()[1]
                    s.cpu += counts.cpu
                    s.bus += counts.bus_publish
                    s.redirects += counts.redirects
                    s.calls += counts.calls
                s.batches.append(batch(s, args.burst))  # after the counts: not in them

        base = setups[0]
        print(
            f"   {'cache':12}{'steps/s':>9}{'vs one':>8}{'rounds (steps/s)':>24}"
            f"{'cmds/step':>10}{'bus pub/step':>13}{'MOVED+ASK':>10}"
        )
        results: dict[str, Any] = {}
        for s in setups:
            rate = statistics.median(s.rates)
            ratios = [a / b for a, b in zip(s.rates, base.rates, strict=True)]
            commands = sum(s.per_node.values())
            print(
                f"   {s.name:12}{rate:9.0f}{statistics.median(ratios):7.2f}x"
                f"{min(s.rates):12.0f} - {max(s.rates):<8.0f}"
                f"{commands / s.steps:10.1f}{s.bus / s.steps:13.2f}{s.redirects:10d}"
            )
            results[s.name] = {
                "steps_per_s": rate,
                "ratio": statistics.median(ratios),
                "cpu_us_per_step": s.cpu / s.steps * 1e6,
                "commands_per_step": commands / s.steps,
                "cpu_us_per_command": s.cpu / commands * 1e6,
                "broker_cpu_us_per_step": s.broker_cpu / s.steps * 1e6,
                "bus_per_step": s.bus / s.steps,
            }
        print(
            f"   CPU per step, us: {'cache (all nodes)':>18}{'broker':>8}{'producer':>10}"
            f"{'workers':>9}  (cache: us per command)"
        )
        for s in setups:
            commands = sum(s.per_node.values())
            print(
                f"     {s.name:14}{s.cpu / s.steps * 1e6:16.0f}{s.broker_cpu / s.steps * 1e6:8.0f}"
                f"{s.producer_cpu / s.steps * 1e6:10.0f}{s.worker_cpu / s.steps * 1e6:9.0f}"
                f"  ({s.cpu / commands * 1e6:.1f})"
            )
            results[s.name]["producer_cpu_us_per_step"] = s.producer_cpu / s.steps * 1e6
            results[s.name]["worker_cpu_us_per_step"] = s.worker_cpu / s.steps * 1e6
        print(
            f"   the cache's CPU with no step to serve ({args.idle:g} s idle), and per step "
            "without it:"
        )
        for s in setups:
            idle_per_step = s.idle_cpu * s.busy_s / s.steps * 1e6
            print(
                f"     {s.name:14}{s.idle_cpu * 1000:6.1f} ms/s over {len(s.nodes)} node(s)"
                f" = {idle_per_step:4.0f} us per step at this rate; per step without it "
                f"{s.cpu / s.steps * 1e6 - idle_per_step:4.0f} us"
            )
            results[s.name]["idle_cpu_ms_per_s"] = s.idle_cpu * 1000
            results[s.name]["net_cpu_us_per_step"] = s.cpu / s.steps * 1e6 - idle_per_step
        print(
            f"   the producer's batched calls of one burst ({args.burst} queued markers set, "
            "then confirmed; one pipeline on one server, one per primary on a Cluster):"
        )
        for s in setups:
            took = statistics.median(s.batches)
            ratio = statistics.median(a / b for a, b in zip(s.batches, base.batches, strict=True))
            print(f"     {s.name:14}{took * 1000:8.1f} ms{ratio:7.2f}x")
            results[s.name]["batch_ms"] = took * 1000
        print("   per-primary commands (share of the mean; target: every primary within 20 %):")
        for s in setups[1:]:
            mean = sum(s.per_node.values()) / len(s.nodes)
            shares = [s.per_node[node.port] / mean for node in s.nodes]
            spread = max(abs(x - 1) for x in shares)
            verdict = "met" if spread <= 0.2 else "MISSED"
            cells = "  ".join(f"{x:.2f}" for x in shares)
            cpu_mean = sum(s.per_node_cpu.values()) / len(s.nodes)
            cpu = "  ".join(f"{s.per_node_cpu[node.port] / cpu_mean:.2f}" for node in s.nodes)
            subs = "  ".join(f"{s.per_node_subs[node.port] / s.steps:.1f}" for node in s.nodes)
            print(
                f"     {s.name:12} {cells:24} largest gap {spread * 100:4.1f} % ({verdict}); "
                f"CPU shares {cpu}; (un)subscribe per step {subs}"
            )
            results[s.name]["largest_gap"] = spread
            results[s.name]["busiest_cpu_share"] = max(s.per_node_cpu.values()) / cpu_mean
        print("   commands per step by name, one server vs Cluster x3:")
        for s in (setups[0], setups[-1]):
            print(f"     {s.name:12} {top(Counts(s.calls), s.steps, 10)}")
        slower = [s.name for s in setups[1:] if results[s.name]["ratio"] < 1.0]
        print(
            "   target: a Cluster not slower than one server: "
            + ("met" if not slower else f"MISSED by {', '.join(slower)}")
        )
        return results
    finally:
        for s in setups:
            for worker in s.workers:
                worker.stop()
            s.stop()
        broker.stop()


# --------------------------------------------------------------------------- model


def model(costs: dict[str, Any], speed: dict[str, Any]) -> None:
    """What the constants above say one Redis, a Cluster and a fleet of FLEET workers
    need: each server's command execution uses one core, so a server saturates when
    its CPU per second reaches one second."""

    def per_core(us: float) -> str:
        return f"{1e6 / us:8,.0f}/s"

    one = speed["one server"]
    step, hit, run = costs["step"], costs["hit"], costs["run"]
    print("\n4. the model: what one core of Redis per server carries, at the CPU measured above")
    print(
        f"   dispatched steps, in bursts (3.):     cache {per_core(one['cpu_us_per_step'])}"
        f"   broker {per_core(one['broker_cpu_us_per_step'])}"
    )
    print(
        f"   dispatched steps, one at a time (2a.): cache {per_core(step['cache']['cpu_us'])}"
        f"   broker {per_core(step['broker']['cpu_us'])}"
    )
    print(f"   cached hits (2b.):                     cache {per_core(hit['cache']['cpu_us'])}")
    print(
        f"   suspended runs of one step (2d.):      cache {per_core(run['cache']['cpu_us'])}"
        f"   broker {per_core(run['broker']['cpu_us'])}"
    )
    both = one["cpu_us_per_step"] + one["broker_cpu_us_per_step"]
    print(
        f"   one server as broker and cache:        steps {per_core(both)} in bursts, "
        f"{per_core(step['cache']['cpu_us'] + step['broker']['cpu_us'])} one at a time; "
        f"runs {per_core(run['cache']['cpu_us'] + run['broker']['cpu_us'])}"
    )
    print(f"   cache CPU per command (one server, 3.): {one['cpu_us_per_command']:.1f} us")
    for size in (1, 2, 3):
        row = speed[f"Cluster x{size}"]
        busiest = row["cpu_us_per_step"] * row["busiest_cpu_share"] / size
        print(
            f"   Cluster x{size}: busiest primary {busiest:5.0f} us per step -> "
            f"{1e6 / busiest:8,.0f} steps/s"
        )
    net = {size: speed[f"Cluster x{size}"]["net_cpu_us_per_step"] for size in (1, 3)}
    extra = (net[3] - net[1]) / 2
    bus = speed["Cluster x3"]["bus_per_step"]
    idle = speed["Cluster x3"]["idle_cpu_ms_per_s"] / 3
    crossing = f"{bus:.2f} notices per step cross the cluster bus on x3"
    print(
        f"   a Cluster node with nothing to do uses {idle:.1f} ms of CPU per second "
        "(its cron and the bus's pings), whatever the step rate"
    )
    if extra > 0:
        print(
            f"   without it, each primary past the first adds {extra:.0f} us of CPU per step "
            f"in all ({crossing}): that caps a Cluster near {1e6 / extra:,.0f} steps/s"
        )
    else:
        print(
            "   without it, the CPU per step summed over the primaries does not grow with "
            f"their number ({crossing})"
        )
    held = costs["connections"]
    steps_w = {k: sum(v.values()) for k, v in held["scale-steps"].items()}
    flows_w = {k: sum(v.values()) for k, v in held["scale-flows"].items()}
    print(
        f"   {FLEET:,} solo step workers hold {FLEET * steps_w.get('broker', 0):,} broker and "
        f"{FLEET * steps_w.get('cache', 0):,} cache connections; {FLEET:,} workflow workers "
        f"{FLEET * flows_w.get('broker', 0):,} and {FLEET * flows_w.get('cache', 0):,}"
    )
    idle = costs["idle"]
    cache_idle = FLEET * idle["cache"]["commands"]
    print(
        f"   {FLEET:,} idle workers: broker {FLEET * idle['broker']['commands']:,.0f} cmds/s, "
        f"cache {cache_idle:,.0f} cmds/s (= {cache_idle * one['cpu_us_per_command'] / 1e4:.1f} % "
        "of a core)"
    )
    gossip = costs.get("idle_defaults")
    if gossip:
        pubs = gossip["broker"]["publish"]
        size = gossip["broker"]["out"] / (pubs * DEFAULT_WORKERS) if pubs else 0.0
        print(
            f"   with Celery's gossip and heartbeat on: {FLEET * pubs:,.0f} PUBLISH/s, each to "
            f"{FLEET:,} workers: {FLEET * FLEET * pubs:,.0f} messages/s, "
            f"~{FLEET * FLEET * pubs * size / 1e6:,.0f} MB/s out of the broker "
            f"(~{size:.0f} B per message)"
        )


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer calls and rounds")
    parser.add_argument("--n", type=int, help="steps per operation phase (default 200)")
    parser.add_argument("--runs", type=int, help="workflow runs enqueued at once (default 100)")
    parser.add_argument("--burst", type=int, help="steps per throughput burst (default 300)")
    parser.add_argument("--rounds", type=int, help="throughput rounds (default 5)")
    parser.add_argument("--workers", type=int, default=2, help="solo workers per setup")
    parser.add_argument("--idle", type=float, default=5.0, help="seconds of each idle phase")
    parser.add_argument("--only", choices=["costs", "throughput"], help="one part only")
    args = parser.parse_args()
    args.n = args.n or (50 if args.quick else 200)
    args.runs = args.runs or (20 if args.quick else 100)
    args.burst = args.burst or (100 if args.quick else 300)
    args.rounds = args.rounds or (2 if args.quick else 5)
    if args.quick:
        args.idle = min(args.idle, 2.0)

    import celery

    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    server = subprocess.run(["redis-server", "--version"], capture_output=True, text=True)
    print(
        f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs (load {load}), "
        f"redis-server {server.stdout.split()[2].removeprefix('v=')}, "
        f"redis-py {redis.__version__}, celery {celery.__version__}"
    )
    print("the machine is shared with other jobs: rates are this run's, ratios are the figures")
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as name:
        tmp = Path(name)
        costs = part_costs(args, tmp) if args.only != "throughput" else None
        speed = part_throughput(args, tmp) if args.only != "costs" else None
        if costs and speed:
            model(costs, speed)


if __name__ == "__main__":
    main()
