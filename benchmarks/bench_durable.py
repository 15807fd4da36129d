"""What durability costs: the reconciler's tick, a step's overhead, a timer's lateness.

    python benchmarks/bench_durable.py [--suspended 10000] [--runs 200] [--naps 50] [--parts 123]

Starts its own redis-server (and, for parts 2 and 3, one ``celery -A benchmarks._durable_app
worker`` on the workflows and steps queues, prefork pool, 4 slots: with the threads
pool, Celery acknowledges an ignored message only at the event loop's next wake-up, so
suspended deliveries fill the prefetch window for seconds).

1. reconciler cost: Redis commands of one tick (``INFO`` total_commands_processed,
   before and after) with 10 runs due, beside --suspended runs that are suspended and
   not due, then 10 times as few. Target: the same count, whatever the number of runs
   not yet due.
2. durable overhead: --runs workflow runs of 5 trivial dispatched steps, end to end,
   against a plain Celery ``chain`` of the same 5 tasks on the same worker processes,
   in interleaved rounds (each round sends a batch of chains and a batch of runs, the
   side going first alternating). Target: at most 2x the chain's time. The worker
   runs with the default ``WORKFLOW_CACHE_SUSPEND_AFTER`` unless the environment sets it.
   Also prints the CPU each side spent per run in the worker's main process, in its
   pool processes and in redis-server (/proc and INFO cpu), steadier than wall time on
   a machine shared with others.
3. wake-up delay of ``step.sleep(1)``: for --naps runs, the time from the timer's wake
   time (in the run's record) to the replay that got past it. Target: p99 under 1 s.
4. backlog: --backlog runs of 5 dispatched steps enqueued at once, so that most wait in
   the queue longer than the reconciler's recheck; workflow messages begun per run
   (1.00: none sent twice) and the time to finish them all.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import os
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.servers import RedisServer  # noqa: E402
from tests.workers import CeleryWorker, wait_ready  # noqa: E402

APP_MODULE = "benchmarks._durable_app"  # trivial tasks, nothing counted per step
DUE = 10


def load_app(env: dict[str, str]) -> ModuleType:
    os.environ.update(env)
    return importlib.import_module(APP_MODULE)


def commands(client: Any) -> int:
    return int(client.info("stats")["total_commands_processed"])


def tick_cost(module: ModuleType, suspended: int) -> tuple[int, int]:
    """(runs looked at, Redis commands) of one reconciler tick beside ``suspended`` idle runs."""
    from workflow_cache import RedisCache
    from workflow_cache.distributed.reconciler import Reconciler
    from workflow_cache.distributed.runs import Resume, Runs

    cache = RedisCache(module.settings.cache, namespace=f"tick-{uuid.uuid4().hex[:6]}")
    flow = Resume("bench.flow", [], {}, "bench-nobody")
    idle = Runs(cache.flight, recheck=3600)
    pipe_size = 500
    for start in range(0, suspended, pipe_size):
        for i in range(start, min(suspended, start + pipe_size)):
            begun = idle.begin(f"idle-{i}", 0, flow)
            batch = idle.prepare(f"idle-{i}", begun.epoch, ["t|k"], [f"k{i}"])
            idle.arm(f"idle-{i}", begun.epoch, batch, [])
    quick = Runs(cache.flight, lease=0.001)
    for i in range(DUE):
        quick.begin(f"due-{i}", 0, flow)
    while len(quick.due(DUE + 1)) < DUE:
        time.sleep(0.01)
    reconciler = Reconciler(module.app, cache, interval=60)
    client = cache.flight.client
    before = commands(client)
    tick = reconciler.tick()
    after = commands(client)
    cache.close()
    assert tick is not None
    return tick.looked, after - before - 1  # the second INFO counts itself


def cpu_seconds(worker: CeleryWorker, client: Any) -> tuple[float, float, float]:
    """CPU time so far of the worker's main process, of its pool processes, and of
    redis-server."""
    ticks = os.sysconf("SC_CLK_TCK")

    def of(pid: int) -> float:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / ticks  # utime, stime

    cpu = client.info("cpu")
    redis_cpu = float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])
    return of(worker.pid), sum(of(pid) for pid in worker.children()), redis_cpu


@dataclass
class Side:
    """One side of the comparison: wall seconds, CPU seconds of the worker's main process,
    of its pool, and of Redis."""

    wall: float = 0.0
    main: float = 0.0
    pool: float = 0.0
    redis: float = 0.0

    @property
    def cpu(self) -> float:
        return self.main + self.pool + self.redis


def overhead(
    module: ModuleType, worker: CeleryWorker, runs: int, rounds: int = 4
) -> tuple[Side, Side, float]:
    """(durable, chain, workflow messages begun per run) over ``runs`` of each, in
    interleaved rounds."""
    from celery import chain

    from workflow_cache.distributed import result_of

    def timed(side: Side, body: Any) -> None:
        main, pool, redis = cpu_seconds(worker, module._redis)
        started = time.perf_counter()
        body()
        side.wall += time.perf_counter() - started
        after = cpu_seconds(worker, module._redis)
        side.main += after[0] - main
        side.pool += after[1] - pool
        side.redis += after[2] - redis

    def chains(tags: list[str], side: Side) -> None:
        def body() -> None:
            sent = [chain(*(module.noop.si(i) for i in range(5))).delay() for _ in tags]
            for s in sent:
                s.get(timeout=600)

        timed(side, body)

    def durables(tags: list[str], side: Side) -> None:
        flows: list[Any] = []

        def body() -> None:
            flows.extend(module.five_steps.delay(t) for t in tags)
            for f in flows:
                assert result_of(f, timeout=600).ok

        timed(side, body)
        begun.extend(module.begun(f.id) for f in flows)

    begun: list[int] = []

    warm = [uuid.uuid4().hex[:10] for _ in range(8)]  # each pool process loads its scripts
    chains(warm, Side())
    durables(warm, Side())
    begun.clear()
    durable, plain = Side(), Side()
    per_round = max(1, runs // rounds)
    for n in range(rounds):
        tags = [uuid.uuid4().hex[:10] for _ in range(per_round)]
        if n % 2:
            durables(tags, durable)
            chains(tags, plain)
        else:
            chains(tags, plain)
            durables(tags, durable)
    return durable, plain, sum(begun) / len(begun)


def backlog(module: ModuleType, runs: int) -> tuple[float, float, int]:
    """(seconds, workflow messages begun per run, most begun for one run)."""
    from workflow_cache.distributed import outcome_of

    started = time.perf_counter()
    sent = [module.five_steps.delay(uuid.uuid4().hex[:10]) for _ in range(runs)]
    for s in sent:
        assert outcome_of(module.cache, s.id, timeout=1800).ok
    spent = time.perf_counter() - started
    begun = [module.begun(s.id) for s in sent]
    return spent, sum(begun) / runs, max(begun)


def lateness(module: ModuleType, naps: int) -> list[float]:
    from workflow_cache.distributed import result_of
    from workflow_cache.distributed.runs import Runs
    from workflow_cache.distributed.suspend import step_key

    runs = Runs(module.cache.flight)
    tags = [uuid.uuid4().hex[:10] for _ in range(naps)]
    sent = [module.nap_only.delay(t, 1.0) for t in tags]
    late = []
    for tag, s in zip(tags, sent, strict=True):
        assert result_of(s, timeout=120).ok
        wake = module._redis.hget(runs.keys(s.id).run, f"timer:{step_key(s.id, 0)}")
        woke = float(module._redis.lindex(f"woke:{tag}", 0))
        late.append(woke - int(wake) / 1000)
    return sorted(late)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suspended", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--naps", type=int, default=50)
    parser.add_argument("--backlog", type=int, default=1000)
    parser.add_argument("--parts", default="123", help="which parts to run, e.g. 2")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp))
        env = {
            "WORKFLOW_CACHE_BROKER": server.url,
            "WORKFLOW_CACHE_NAMESPACE": "bench-durable",
        }
        module = load_app(env)
        worker = CeleryWorker(
            APP_MODULE,
            "fleet",
            f"{module.settings.workflow_queue},{module.settings.step_queue}",
            env,
            pool="prefork",
            concurrency=4,
            log=Path(tmp) / "worker.log",
        )
        try:
            if "1" in args.parts:
                print("1. reconciler: Redis commands of one tick with 10 runs due", flush=True)
                tick_cost(module, 0)  # loads the scripts
                for n in (args.suspended, args.suspended // 10):
                    looked, spent = tick_cost(module, n)
                    print(
                        f"   beside {n:6d} suspended runs not due: {looked} looked at, "
                        f"{spent} commands",
                        flush=True,
                    )
            wait_ready(module.app, [worker])
            if "2" in args.parts:
                durable, plain, begun = overhead(module, worker, args.runs)
                linger = os.environ.get("WORKFLOW_CACHE_SUSPEND_AFTER", "default")
                print(
                    f"2. {args.runs} runs of 5 dispatched steps, one worker (prefork, 4 slots), "
                    f"WORKFLOW_CACHE_SUSPEND_AFTER={linger}"
                )
                per = 1000 / args.runs
                for label, side in (("chain (baseline)", plain), ("durable runs", durable)):
                    print(
                        f"   {label:16s}: {side.wall:6.2f} s ({side.wall * per:5.1f} ms/run); "
                        f"CPU ms/run: worker main {side.main * per:4.1f}, pool "
                        f"{side.pool * per:4.1f}, Redis {side.redis * per:4.1f}"
                    )
                print(
                    f"   ratio durable/chain: {durable.wall / plain.wall:.2f}x in time (target at "
                    f"most 2x), {durable.cpu / plain.cpu:.2f}x in CPU; workflow messages begun "
                    f"per run: {begun:.2f} (1: every replay carried on by the step's slot)",
                    flush=True,
                )
            if "4" in args.parts:
                spent, per_run, most = backlog(module, args.backlog)
                print(
                    f"4. {args.backlog} runs enqueued at once: finished in {spent:.1f} s; "
                    f"workflow messages begun per run {per_run:.2f} (most {most}; 1.00: none "
                    "sent twice)",
                    flush=True,
                )
            if "3" not in args.parts:
                return
            late = lateness(module, args.naps)
            p99 = late[min(len(late) - 1, round(0.99 * (len(late) - 1)))]
            print(f"3. step.sleep(1) in {len(late)} runs: lateness after the wake time")
            print(
                f"   median {statistics.median(late) * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, "
                f"max {late[-1] * 1000:.0f} ms (target p99 under 1 s)"
            )
        finally:
            gc.collect()  # Celery results unsubscribe when collected: while Redis still answers
            worker.stop()
            server.stop()


if __name__ == "__main__":
    main()
