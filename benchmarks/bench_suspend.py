"""Suspending workflows against blocking ones, on the same real workers.

    python benchmarks/bench_suspend.py [--workflows 200] [--steps 3] [--seconds 0.05]
                                       [--step-slots 4]

Starts its own redis-server and two ``celery -A benchmarks._suspend_app worker``
subprocesses: one solo worker (1 slot) on the ``workflows`` queue, one prefork worker
(--step-slots) on the ``steps`` queue: the layout blocking mode needs. Each workflow
runs --steps dispatched steps one after another, each sleeping --seconds.

1. slots held while suspended: 20 suspending workflows whose first step sleeps 2 s are
   enqueued; once all 20 are suspended (their run records say so), the number of
   workflow deliveries holding a slot is read (``task_prerun``/``task_postrun``
   counters). Target: 0.
2. end-to-end time of --workflows workflows, blocking (the baseline) then suspending,
   on the same workers; and the workflow slot-seconds per workflow (seconds its
   deliveries held a slot; a blocking workflow holds one for its whole life).
3. replay overhead: round trips to the cache's Redis made by each workflow delivery
   (counted on the worker's cache client: one packed send is one round trip), by how
   many finished steps the delivery replayed. Target: constant, i.e. one batched
   read per replay whatever the number of hits.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.servers import RedisServer  # noqa: E402
from tests.workers import CeleryWorker, wait_ready  # noqa: E402

APP_MODULE = "benchmarks._suspend_app"


def load_app(env: dict[str, str]) -> ModuleType:
    os.environ.update(env)
    return importlib.import_module(APP_MODULE)


def slot_rows(module: ModuleType, task: str) -> list[tuple[str, int, float, int]]:
    rows = []
    for raw in module._redis.lrange(f"slot:{task}", 0, -1):
        task_id, batch, held, trips = raw.decode().split()
        rows.append((task_id, int(batch), float(held), int(trips)))
    return rows


def run_batch(module: ModuleType, task, n: int, steps: int, seconds: float) -> float:
    tag = uuid.uuid4().hex[:8]
    started = time.perf_counter()
    ids = [task.delay(f"{tag}:{i}", seconds, steps).id for i in range(n)]
    wait_done(module, ids)
    return time.perf_counter() - started


def wait_done(module: ModuleType, ids: list[str], timeout: float = 600.0) -> None:
    """Until every task's result is stored (read from Redis: no result consumer involved)."""
    keys = [f"celery-task-meta-{i}" for i in ids]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = module._redis.mget(keys)
        if all(rows):
            for task_id, raw in zip(ids, rows, strict=True):
                meta = json.loads(raw)
                if meta.get("status") != "SUCCESS" or meta["result"].get("status") != "ok":
                    raise RuntimeError(f"workflow {task_id} failed: {meta}")
            return
        time.sleep(0.01)
    raise RuntimeError(f"workflows not done after {timeout} s")


def suspended_slots(module: ModuleType, n: int = 20) -> tuple[int, int]:
    """(runs suspended, workflow deliveries holding a slot) once all n have suspended."""
    from workflow_cache.distributed import run_info

    tag = uuid.uuid4().hex[:8]
    sent = [module.suspending.delay(f"{tag}:{i}", 2.0, 1) for i in range(n)]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        states = [getattr(run_info(module.cache, r.id), "state", None) for r in sent]
        if all(s == "suspended" for s in states):
            break
        time.sleep(0.01)
    held = int(module._redis.get("active:bench.suspending") or 0)
    suspended = sum(
        getattr(run_info(module.cache, r.id), "state", None) == "suspended" for r in sent
    )
    wait_done(module, [r.id for r in sent])
    return suspended, held


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workflows", type=int, default=200)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=0.05)
    parser.add_argument("--step-slots", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp))
        env = {
            "WORKFLOW_CACHE_BROKER": server.url,
            "WORKFLOW_CACHE_NAMESPACE": "bench-suspend",
            "WORKFLOW_CACHE_LEASE": "5",
        }
        module = load_app(env)
        workers = [
            CeleryWorker(APP_MODULE, "flows", "workflows", env, log=Path(tmp) / "flows.log"),
            CeleryWorker(
                APP_MODULE,
                "steps",
                "steps",
                env,
                pool="prefork",
                concurrency=args.step_slots,
                log=Path(tmp) / "steps.log",
            ),
        ]
        try:
            wait_ready(module.app, workers)
            run_batch(module, module.suspending, 4, args.steps, 0.0)  # warm both workers
            run_batch(module, module.blocking, 4, args.steps, 0.0)
            module._redis.delete("slot:bench.suspending", "slot:bench.blocking")

            suspended, held = suspended_slots(module)
            print("1. workflow slots held while suspended")
            print(
                f"   {suspended} runs suspended, workflow deliveries in a slot: {held} (target 0)"
            )
            module._redis.delete("slot:bench.suspending")

            n, s, sec = args.workflows, args.steps, args.seconds
            print(
                f"2. {n} workflows x {s} steps of {sec:g} s; workflows worker: 1 slot, "
                f"steps worker: {args.step_slots} slots"
            )
            blocking = run_batch(module, module.blocking, n, s, sec)
            suspending = run_batch(module, module.suspending, n, s, sec)
            rows_b = slot_rows(module, "bench.blocking")
            rows_s = slot_rows(module, "bench.suspending")
            held_b = sum(r[2] for r in rows_b) / n
            held_s = sum(r[2] for r in rows_s) / n
            print(
                f"   blocking (baseline): {blocking:7.2f} s end to end, "
                f"{held_b * 1000:7.1f} ms of workflow slot per workflow"
            )
            print(
                f"   suspending:          {suspending:7.2f} s end to end, "
                f"{held_s * 1000:7.1f} ms of workflow slot per workflow"
            )
            print(
                f"   ratio suspending/blocking: time {suspending / blocking:.2f}x, "
                f"slot time {held_s / held_b:.3f}x; deliveries per suspending "
                f"workflow: {len(rows_s) / n:.2f}"
            )

            print("3. replay overhead: cache round trips per workflow delivery")
            by_batch: dict[int, list[int]] = defaultdict(list)
            for _, batch, _, trips in rows_s:
                by_batch[batch].append(trips)
            for batch in sorted(by_batch):
                values = by_batch[batch]
                what = "first delivery" if batch == 0 else f"replay with {batch} hit(s)"
                ending = "suspends" if batch < s else "finishes"
                print(
                    f"   {what:22} ({ending}): median {statistics.median(values):.0f}, "
                    f"max {max(values)} round trips  [{len(values)} deliveries]"
                )
        finally:
            for w in workers:
                w.stop()
            server.stop()


if __name__ == "__main__":
    main()
