"""Crash takeover: how soon a waiter holds a key whose holder was killed with ``kill -9``.

    python benchmarks/bench_takeover.py [--redis-url URL] [--n 10] [--baseline-n 3]

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
"""

from __future__ import annotations

import argparse
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
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
