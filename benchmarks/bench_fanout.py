"""Throughput of many distinct steps sent at once vs a plain Celery group, same workers.

    python benchmarks/bench_fanout.py [--n 2000] [--rounds 5] [--workers 2]

Starts its own redis-server (broker, result backend and step cache in one) and
--workers solo-pool ``celery -A benchmarks._bench_app worker`` subprocesses. Each
round runs, in alternating order:

- plain: ``group(noop.s(i) for i in range(n))().get()``;
- steps: one workflow run of ``step.all([noop.s(i) ...], keys=[<n fresh keys>])``:
  one MGET, n subscriptions, one pipelined enqueue, n messages, n commit notices.

Prints tasks per second of each and the median over rounds of each round's
steps/plain throughput ratio. Target: >= 0.9x.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _fleet import APP_MODULE, drain, load_app  # noqa: E402

from tests.servers import RedisServer  # noqa: E402
from tests.workers import CeleryWorker, wait_ready  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="tasks per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-fanout-"))
    server = RedisServer(tmp)
    env = {
        "WORKFLOW_CACHE_BROKER": server.url,
        "WORKFLOW_CACHE_NAMESPACE": f"fan-{uuid.uuid4().hex[:8]}",
    }
    bench = load_app(env)
    from celery import group

    from workflow_cache import create_workflow
    from workflow_cache.distributed import CeleryDispatcher

    log = tmp / "workers.log"
    workers = [
        CeleryWorker(APP_MODULE, f"fan-{i}", "steps", env, log=log) for i in range(args.workers)
    ]
    try:
        wait_ready(bench.app, workers)
        load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
        print(f"redis: {server.url}  workers log: {log}")
        print(
            f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs (load {load}), "
            f"{args.workers} solo workers, n={args.n}, rounds={args.rounds}"
        )
        noop = bench.noop
        dispatcher = CeleryDispatcher(bench.app, bench.cache, timeout=300)
        workflow = create_workflow({}, cache=bench.cache, dispatcher=dispatcher)
        client = bench.cache.client
        queue = bench.settings.step_queue

        def plain(n: int) -> float:
            started = time.perf_counter()
            values = group(noop.s(i) for i in range(n))().get(timeout=300)
            took = time.perf_counter() - started
            assert values == list(range(n))
            return took

        def steps(n: int) -> float:
            tag = uuid.uuid4().hex[:8]
            sigs = [noop.s(i) for i in range(n)]
            keys = [f"fan:{tag}:{i}" for i in range(n)]
            started = time.perf_counter()
            result = workflow(lambda step: step.all(sigs, keys=keys))
            took = time.perf_counter() - started
            assert result.ok and result.value == list(range(n)), result
            return took

        plain(200)  # warm-up: connections, scripts, listeners
        steps(200)
        walls: dict[str, list[float]] = {"plain": [], "steps": []}
        for r in range(args.rounds):
            order = [("plain", plain), ("steps", steps)]
            for name, run in order if r % 2 == 0 else order[::-1]:
                drain(client, queue)
                walls[name].append(run(args.n))
        ratios = [p / s for p, s in zip(walls["plain"], walls["steps"], strict=True)]
        ratio = statistics.median(ratios)
        print(f"\n   {'path':52}{'wall':>10}{'tasks/s':>10}")
        for name, label in (
            ("plain", f"group(noop.s(i) for i in range({args.n}))().get()"),
            ("steps", f"step.all([noop.s(i) ...], keys=[{args.n} keys])"),
        ):
            wall = statistics.median(walls[name])
            print(f"   {label:52}{wall:9.3f}s{args.n / wall:10.0f}")
        verdict = "met" if ratio >= 0.9 else "MISSED"
        print(
            f"   step.all / group throughput: {ratio:.2f}x "
            f"(rounds {min(ratios):.2f}-{max(ratios):.2f}x; target >= 0.9x: {verdict})"
        )
    finally:
        for worker in workers:
            worker.stop()
        server.stop()


if __name__ == "__main__":
    main()
