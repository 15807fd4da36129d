"""A stampede on one slow cold key must not starve unrelated steps, on real workers.

    python benchmarks/bench_starvation.py [--rounds 3] [--producers 32] [--slow 3.0]

Starts its own redis-server and three solo-pool ``celery -A benchmarks._bench_app
worker`` subprocesses on the steps queue. Per round:

- baseline: an unrelated step J (body --fast seconds) alone on idle workers: its latency;
- stampede: --producers threads (each its own workflow run, one shared RedisCache and
  CeleryDispatcher) ask for a cold key K whose body sleeps --slow seconds; J is asked
  for 200 ms later, right after --duplicates extra messages for K are published by
  hand (as a broker redelivery or a buggy producer would). Measured: messages the
  producers published for K (``before_task_publish`` in this process), J's latency,
  and the worker-seconds spent by messages for K that did not run K's body (the
  duplicates), from ``task_prerun``/``task_postrun`` on the workers.

Targets: messages for K = 1, J under the stampede <= 1.5x J alone (median of rounds).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _fleet import APP_MODULE, drain, load_app  # noqa: E402
from _stampede import stampede  # noqa: E402

from tests.servers import RedisServer  # noqa: E402
from tests.workers import CeleryWorker, wait_ready  # noqa: E402

LEASE = 5.0


class Published:
    """Counts step messages published by this process, per step key."""

    def __init__(self) -> None:
        self.keys: list[str] = []
        self._lock = threading.Lock()

    def __call__(self, headers: Any = None, **_: Any) -> None:
        step = (headers or {}).get("wfc_step")
        if step:
            with self._lock:
                self.keys.append(step["key"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--producers", type=int, default=32)
    parser.add_argument("--slow", type=float, default=3.0, help="body of K, seconds")
    parser.add_argument("--fast", type=float, default=0.01, help="body of J, seconds")
    parser.add_argument("--delay", type=float, default=0.2, help="J is asked this much later")
    parser.add_argument("--duplicates", type=int, default=3, help="extra messages for K")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-starvation-"))
    server = RedisServer(tmp)
    env = {
        "WORKFLOW_CACHE_BROKER": server.url,
        "WORKFLOW_CACHE_NAMESPACE": f"starve-{uuid.uuid4().hex[:8]}",
        "WORKFLOW_CACHE_LEASE": str(LEASE),
    }
    bench = load_app(env)
    from celery.signals import before_task_publish

    from workflow_cache import create_workflow
    from workflow_cache.distributed import CeleryDispatcher

    log = tmp / "workers.log"
    workers = [CeleryWorker(APP_MODULE, f"starve-{i}", "steps", env, log=log) for i in range(3)]
    published = Published()
    before_task_publish.connect(published, weak=False)
    try:
        wait_ready(bench.app, workers)
        load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
        print(f"redis: {server.url}  workers log: {log}")
        print(
            f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs (load {load}), "
            f"3 solo workers, {args.producers} producers, K body {args.slow:g} s, "
            f"J body {args.fast * 1000:g} ms asked {args.delay * 1000:g} ms later"
        )
        dispatcher = CeleryDispatcher(bench.app, bench.cache, timeout=120)
        queue = bench.settings.step_queue
        client = bench.cache.client

        def ask(key: str, seconds: float) -> float:
            workflow = create_workflow({}, cache=bench.cache, dispatcher=dispatcher)
            started = time.perf_counter()
            result = workflow(lambda step: step(bench.timed.s(key, seconds), key=key))
            assert result.ok, result
            return time.perf_counter() - started

        ask(f"warm:{uuid.uuid4().hex}", 0.0)
        alone, under, messages, dup_seconds, dup_count, k_walls = [], [], [], [], [], []
        for _ in range(args.rounds):
            drain(client, queue)
            alone.append(ask(f"J-alone:{uuid.uuid4().hex}", args.fast))

            drain(client, queue)
            k, j = f"K:{uuid.uuid4().hex}", f"J:{uuid.uuid4().hex}"
            box: dict[str, float] = {}

            def later(j: str = j, k: str = k, box: dict[str, float] = box) -> None:
                time.sleep(args.delay)
                header = {"wfc_step": {"key": k, "ns": bench.cache.namespace}}
                for _ in range(args.duplicates):
                    bench.timed.apply_async((k, args.slow), headers=header, ignore_result=True)
                box["j"] = ask(j, args.fast)

            side = threading.Thread(target=later)
            side.start()
            wall, _ = stampede(args.producers, lambda k=k: ask(k, args.slow))
            side.join()
            drain(client, queue)
            time.sleep(0.2)  # postrun records of the last messages
            under.append(box["j"])
            k_walls.append(wall)
            messages.append(published.keys.count(k) - args.duplicates)
            dups = [s for _, s, ran in bench.slots(k) if not ran]
            dup_count.append(len(dups))
            dup_seconds.append(sum(dups))
            runs = sum(1 for *_, ran in bench.slots(k) if ran)
            if runs != 1:
                raise SystemExit(f"single flight broken: K ran {runs} times")

        j_alone, j_under = statistics.median(alone), statistics.median(under)
        ratio = j_under / j_alone
        print()
        print(f"   {'messages published for K per round':48}{messages!s:>24}  (target 1 each)")
        print(f"   {'J alone, median':48}{j_alone * 1000:12.1f} ms")
        print(f"   {'J during the stampede, median':48}{j_under * 1000:12.1f} ms   {ratio:.2f}x")
        print(
            f"   {'J during the stampede, min-max':48}"
            f"{min(under) * 1000:12.1f} - {max(under) * 1000:.1f} ms"
        )
        print(
            f"   {'duplicate K messages handled per round':48}{dup_count!s:>24}  "
            f"worker-seconds they used: {', '.join(f'{s:.4f}' for s in dup_seconds)}"
        )
        k_wall = statistics.median(k_walls)
        print(f"   {'K: all producers hold the outcome, median':48}{k_wall:12.3f} s")
        verdict = "met" if ratio <= 1.5 and all(m == 1 for m in messages) else "MISSED"
        print(f"   target: messages for K = 1 and J <= 1.5x alone: {verdict}")
    finally:
        before_task_publish.disconnect(published)
        for worker in workers:
            worker.stop()
        server.stop()


if __name__ == "__main__":
    main()
