"""Crash takeover: how soon a waiter holds a key whose holder was killed with ``kill -9``.

    python benchmarks/bench_takeover.py [--redis-url URL] [--n 10] [--baseline-n 3]
                                        [--dispatched 3]

Starts its own redis-server on a free loopback port unless --redis-url is given.

A holder process claims a key with the default lease (5 s) and sleeps; this process
waits on the key with ``SingleFlight.acquire``; the holder is killed with SIGKILL and
we time from the kill to the waiter holding the claim.

- presence: the holder's claim records its presence id (what a user gets).
  Target: under 1 s.
- lease only: the same holder with its presence switched off, as every claim was
  before: the waiter takes over when the lease runs out (about 5 s).
- paused: the holder is SIGSTOPped instead (alive, connections open): it must still
  be taken over only at lease end, never through its presence.
- dispatched: a step sent to real solo ``celery worker`` processes; the worker running
  it is killed with SIGKILL. From the kill to the step starting on another worker (the
  waiting producer saw the holder's presence gone and sent it again), and to the
  producer holding the outcome.
"""

from __future__ import annotations

import argparse
import functools
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.servers import RedisServer
from workflow_cache.cache.claims import Holder, SingleFlight

LEASE = 5.0

HOLDER = """
import sys, time
from workflow_cache.cache.claims import SingleFlight, Holder
url, namespace, key, presence = sys.argv[1:5]
flight = SingleFlight.from_url(url, namespace, lease={lease})
if presence == "off":
    flight.rules.presence = lambda: None
held = flight.acquire(key)
assert isinstance(held, Holder), held
print("held", flush=True)
time.sleep(3600)
"""


def one(url: str, namespace: str, presence: str, how: int) -> float:
    """Seconds from signalling the holder (``how``) to the waiter holding the key."""
    key = f"k-{uuid.uuid4().hex[:8]}"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER.format(lease=LEASE), url, namespace, key, presence],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        waiter = SingleFlight.from_url(url, namespace, lease=LEASE)
        got: list[float] = []

        def wait() -> None:
            held = waiter.acquire(key)
            got.append(time.monotonic())
            assert isinstance(held, Holder)
            held.release()

        thread = threading.Thread(target=wait)
        thread.start()
        while waiter.subscriptions() == 0:  # until the waiter is subscribed and waiting
            time.sleep(0.005)
        t0 = time.monotonic()
        os.kill(holder.pid, how)
        thread.join(60)
        waiter.close()
        return got[0] - t0
    finally:
        if holder.poll() is None:
            os.kill(holder.pid, signal.SIGCONT)
            holder.kill()
        holder.wait()


def _run(sig: Any, key: str, step: Any) -> Any:
    return step(sig, key=key)


def dispatched(url: str, runs: int) -> tuple[list[float], list[float]]:
    """A dispatched step on real solo workers, the worker running it killed with SIGKILL:
    seconds from the kill to its successor starting, and to the producer's outcome."""
    from tests.workers import CeleryWorker, configured_test_app, wait_ready
    from workflow_cache import create_workflow
    from workflow_cache.distributed import CeleryDispatcher

    env = {
        "WORKFLOW_CACHE_BROKER": url,
        "WORKFLOW_CACHE_NAMESPACE": f"bench-takeover-{uuid.uuid4().hex[:6]}",
    }
    started: list[float] = []
    done: list[float] = []
    with configured_test_app(env) as module:
        workers: list[CeleryWorker] = []
        client = module.cache.client
        try:
            for _ in range(runs):
                while len([w for w in workers if w.alive()]) < 2:
                    workers.append(
                        CeleryWorker("tests.celery_app", f"bench{len(workers)}", "bench", env)
                    )
                wait_ready(module.app, [w for w in workers if w.alive()])
                tag = uuid.uuid4().hex[:10]
                sig = module.slow_first.s(tag, 120).set(queue="bench")
                dispatcher = CeleryDispatcher(module.app, module.cache, timeout=120)
                flow = create_workflow({}, cache=module.cache, dispatcher=dispatcher)
                thread = threading.Thread(target=flow, args=(functools.partial(_run, sig, tag),))
                thread.start()
                while client.llen(f"pids:{tag}") == 0:
                    time.sleep(0.005)
                first = int(client.lindex(f"pids:{tag}", 0))
                (holder,) = [w for w in workers if w.pid == first]
                t0 = time.monotonic()
                holder.kill()
                while client.llen(f"pids:{tag}") < 2:
                    time.sleep(0.005)
                started.append(time.monotonic() - t0)
                thread.join(120)
                done.append(time.monotonic() - t0)
        finally:
            for w in workers:
                w.stop()
    return started, done


def report(name: str, seconds: list[float]) -> None:
    print(
        f"{name:<28} n={len(seconds):<3} median {statistics.median(seconds):.3f} s"
        f"   max {max(seconds):.3f} s   (lease {LEASE:g} s)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--redis-url")
    parser.add_argument("--n", type=int, default=10)
    parser.add_argument("--baseline-n", type=int, default=3)
    parser.add_argument(
        "--dispatched", type=int, default=3, help="kills of a worker running a step (0: none)"
    )
    args = parser.parse_args()
    server = None
    url = args.redis_url
    if url is None:
        server = RedisServer(Path(tempfile.mkdtemp(prefix="bench-takeover-")))
        url = server.url
    namespace = f"bench-takeover-{uuid.uuid4().hex[:6]}"
    try:
        kill = [one(url, namespace, "on", signal.SIGKILL) for _ in range(args.n)]
        report("kill -9, presence", kill)
        lease_only = [one(url, namespace, "off", signal.SIGKILL) for _ in range(args.baseline_n)]
        report("kill -9, lease only (before)", lease_only)
        paused = [one(url, namespace, "on", signal.SIGSTOP) for _ in range(args.baseline_n)]
        report("SIGSTOP, presence", paused)
        ratio = statistics.median(lease_only) / statistics.median(kill)
        print(f"takeover after kill -9: {ratio:.1f}x sooner than waiting out the lease")
        if args.dispatched:
            successor, outcome = dispatched(url, args.dispatched)
            report("dispatched: successor starts", successor)
            report("dispatched: producer's outcome", outcome)
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
