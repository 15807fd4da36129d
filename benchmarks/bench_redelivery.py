"""How long work of a worker killed with ``kill -9`` waits before it runs again.

    python benchmarks/bench_redelivery.py [--visibility 10] [--lease 2] [--later 12]

Each scenario starts its own redis-server (broker and step cache) and solo-pool
``celery -A tests.celery_app worker`` subprocesses with the fleet's settings (late
acks, prefetch 1), sends ``tests.slow_first`` (a body that sleeps only on its first
execution), waits until a worker runs it, kills that worker with SIGKILL (a lost
machine: no parent is left to requeue the message) and times, from the kill, when
the body starts again (its execution counter in Redis reaches 2):

1. a plain late-acknowledged task, replacement worker started at once: the broker
   redelivers the message only when a worker's sweep finds it older than the
   visibility timeout, and kombu sweeps once at start-up, then every tenth 10-second
   tick;
2. the same, replacement worker started ``--later`` seconds after the kill (past
   the visibility timeout): its start-up sweep redelivers the message;
3. a dispatched step (a producer waits on it) with a second worker already running:
   the producer sends the step again once the dead holder's lease has run out, and
   has its outcome when that execution commits.

Figures are printed against what bounds them in the same run: the visibility timeout
for 1 and 2, the lease for 3. About two minutes with the defaults (scenario 1 waits
for the sweep).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.servers import RedisServer  # noqa: E402
from tests.waiting import wait_until  # noqa: E402
from tests.workers import CeleryWorker, configured_test_app, wait_ready  # noqa: E402
from workflow_cache import create_workflow  # noqa: E402
from workflow_cache.distributed import CeleryDispatcher  # noqa: E402

APP_MODULE = "tests.celery_app"
POLL = 0.01  # how often the execution counter is read: the figures' resolution


@dataclass
class Rig:
    """One scenario's redis-server, test app and workers."""

    module: ModuleType
    env: dict[str, str]
    logs: Path
    workers: list[CeleryWorker]

    def start(self, name: str) -> CeleryWorker:
        worker = CeleryWorker(APP_MODULE, name, "steps", self.env, log=self.logs / f"{name}.log")
        self.workers.append(worker)
        wait_ready(self.module.app, [worker])
        return worker

    def executions(self, name: str) -> int:
        return int(self.module.count(name))

    def runner(self, name: str) -> CeleryWorker:
        """The worker whose process started the first execution of ``name``."""
        pid = int(wait_until(lambda: self.module._redis.lindex(f"pids:{name}", 0), "a start"))
        return next(w for w in self.workers if w.pid == pid)

    def kill(self, worker: CeleryWorker) -> float:
        os.kill(worker.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        worker.proc.wait(timeout=10)
        return killed_at

    def started_again(self, name: str, killed_at: float, timeout: float) -> float:
        wait_until(
            lambda: self.executions(name) >= 2,
            f"the second execution of {name}",
            timeout=timeout,
            interval=POLL,
        )
        return time.monotonic() - killed_at


@contextmanager
def rig(workdir: Path, args: argparse.Namespace, label: str) -> Iterator[Rig]:
    folder = workdir / label
    folder.mkdir()
    server = RedisServer(folder)
    env = {
        "WORKFLOW_CACHE_BROKER": server.url,
        "WORKFLOW_CACHE_NAMESPACE": f"redeliver-{uuid.uuid4().hex[:8]}",
        "WORKFLOW_CACHE_LEASE": str(args.lease),
        "WORKFLOW_CACHE_VISIBILITY_TIMEOUT": str(args.visibility),
    }
    with ExitStack() as stack:
        stack.callback(server.stop)
        module = stack.enter_context(configured_test_app(env))
        made = Rig(module, env, folder, [])

        @stack.callback
        def kill_workers() -> None:
            for worker in made.workers:
                worker.kill()

        yield made


def plain_task(workdir: Path, args: argparse.Namespace, later: float | None) -> float:
    """Seconds from the kill to the redelivered message's start (scenarios 1 and 2)."""
    label = "at-once" if later is None else "later"
    with rig(workdir, args, label) as r:
        first = r.start("first")
        name = uuid.uuid4().hex[:10]
        r.module.slow_first.apply_async((name, 3600.0), queue="steps")
        assert r.runner(name) is first
        killed_at = r.kill(first)
        if later is not None:
            time.sleep(later)  # the machine stays gone: the scenario itself
        r.start("replacement")
        return r.started_again(name, killed_at, timeout=args.visibility + 300)


def dispatched_step(workdir: Path, args: argparse.Namespace) -> tuple[float, float]:
    """Seconds from the kill to the step's second start and to the producer's outcome."""
    with rig(workdir, args, "step") as r:
        for i in range(2):
            r.start(f"step{i}")
        name = uuid.uuid4().hex[:10]
        cache = r.module.cache
        workflow = create_workflow(
            {}, cache=cache, dispatcher=CeleryDispatcher(r.module.app, cache, timeout=120)
        )
        box: dict[str, Any] = {}

        def produce() -> None:
            box["result"] = workflow(
                lambda step: step(r.module.slow_first.s(name, 3600.0), key=name)
            )
            box["at"] = time.monotonic()

        producer = threading.Thread(target=produce, daemon=True)
        producer.start()
        killed_at = r.kill(r.runner(name))
        again = r.started_again(name, killed_at, timeout=120)
        producer.join(120)
        assert box["result"].ok, box["result"]
        return again, box["at"] - killed_at


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--visibility", type=float, default=10.0, help="visibility_timeout, s")
    parser.add_argument("--lease", type=float, default=2.0, help="WORKFLOW_CACHE_LEASE, s")
    parser.add_argument(
        "--later", type=float, default=12.0, help="scenario 2: replacement starts this late, s"
    )
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-redelivery-"))
    print(
        f"celery {version('celery')}, kombu {version('kombu')}, redis-py {version('redis')}; "
        f"visibility_timeout {args.visibility:g} s, lease {args.lease:g} s; "
        "the worker running the body killed with kill -9"
    )
    print(f"{'scenario':<58} {'after the kill':>14}")

    def row(text: str, seconds: float, bound: float, what: str) -> None:
        print(f"{text:<58} {seconds:12.1f} s   {seconds / bound:5.2f}x {what}", flush=True)

    visibility, lease = args.visibility, args.lease
    at_once = plain_task(workdir, args, later=None)
    row("late-acked task, replacement started at once", at_once, visibility, "visibility")
    later = plain_task(workdir, args, later=args.later)
    row(
        f"late-acked task, replacement started {args.later:g} s later",
        later,
        visibility,
        "visibility",
    )
    again, outcome = dispatched_step(workdir, args)
    row("dispatched step, second worker up: sent again, started", again, lease, "lease")
    row("dispatched step, second worker up: producer's outcome", outcome, lease, "lease")
    print(f"worker logs: {workdir}")


if __name__ == "__main__":
    main()
