"""Single flight: wake-up latency vs redis-py's polling Lock, and a 64-way stampede, same run.

    python benchmarks/bench_claims.py [--redis-url URL] [--n 1000] [--baseline-n 1000]

Starts its own redis-server on a free loopback port unless --redis-url is given.

1. Hand-off latency: a waiter blocks on a key another holder runs; we time from the
   holder's ``commit`` call to the waiter holding the outcome (p50/p99 over --n commits).
   Baseline: redis-py ``Lock`` with its default 0.1 s polling, time from ``release`` to
   the next blocked ``acquire`` returning (--baseline-n hand-offs, run as 25 parallel
   pairs so the polling sleeps overlap).  Target: our p99 under 5 ms on loopback.
2. Stampede: 64 threads acquire one cold key at once; the body must run exactly once.
   Wall time for all 64 to hold the outcome vs one uncontended acquire+commit, with the
   floor of 64 threads doing one plain GET each (GIL and connection pool) for scale.
"""

from __future__ import annotations

import argparse
import queue
import random
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _stampede import stampede

from tests.servers import RedisServer
from workflow_cache.cache.claims import Done, Holder, SingleFlight, connect


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:8.3f} ms"


def bench_handoff(url: str, n: int) -> list[float]:
    """Commit -> waiter holds the outcome, one waiter thread blocked in ``acquire``."""
    ns = f"bench-{uuid.uuid4().hex[:8]}"
    holder_side = SingleFlight(connect(url), ns, lease=5.0)
    waiter_side = SingleFlight(connect(url), ns, lease=5.0)
    keys: queue.SimpleQueue[str | None] = queue.SimpleQueue()
    got: queue.SimpleQueue[tuple[float, object]] = queue.SimpleQueue()

    def waiter() -> None:
        while (key := keys.get()) is not None:
            result = waiter_side.acquire(key)
            got.put((time.perf_counter(), result))

    thread = threading.Thread(target=waiter, daemon=True)
    thread.start()
    latencies = []
    for i in range(n):
        key = f"handoff:{i}"
        holder = holder_side.acquire(key)
        assert isinstance(holder, Holder)
        keys.put(key)
        while waiter_side.subscriptions() == 0:  # the waiter is subscribed ...
            time.sleep(0.0002)
        time.sleep(0.002)  # ... and has re-claimed (Running): it is blocked on the notice
        started = time.perf_counter()
        assert holder.commit(b"outcome-%d" % i)
        woke, result = got.get(timeout=10)
        assert result == Done(b"outcome-%d" % i), result
        latencies.append(woke - started)
        while waiter_side.subscriptions():  # unsubscribed before the next round
            time.sleep(0.0002)
    keys.put(None)
    thread.join()
    holder_side.close()
    waiter_side.close()
    return latencies


def bench_polling_lock(url: str, n: int, pairs: int = 25) -> list[float]:
    """release -> the next blocked ``redis.lock.Lock.acquire`` returns (default sleep=0.1)."""
    client = redis.Redis.from_url(url)
    latencies: list[float] = []
    guard = threading.Lock()

    def pair(p: int, rounds: int) -> None:
        rng = random.Random(p)
        for i in range(rounds):
            name = f"bench-lock:{uuid.uuid4().hex}:{p}:{i}"
            first = client.lock(name, timeout=5, thread_local=False)  # default sleep=0.1
            assert first.acquire(blocking=True)
            second = client.lock(name, timeout=5, thread_local=False)
            done: list[float] = []
            started_waiting = threading.Event()

            def wait(
                lock: redis.lock.Lock = second,
                out: list[float] = done,
                started: threading.Event = started_waiting,
            ) -> None:
                started.set()
                assert lock.acquire(blocking=True)
                out.append(time.perf_counter())

            t = threading.Thread(target=wait)
            t.start()
            started_waiting.wait()
            time.sleep(0.01 + rng.uniform(0, 0.1))  # release at a random polling phase
            released = time.perf_counter()
            first.release()
            t.join()
            second.release()
            with guard:
                latencies.append(done[0] - released)

    per_pair = max(1, n // pairs)
    threads = [threading.Thread(target=pair, args=(p, per_pair)) for p in range(pairs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    client.close()
    return latencies


def bench_stampede(url: str, acquirers: int, work: float, rounds: int) -> tuple[float, float, int]:
    """Median wall time of ``acquirers`` threads on one cold key, of one uncontended call,
    and the total number of executions over all rounds (must equal ``rounds``)."""
    ns = f"bench-{uuid.uuid4().hex[:8]}"
    counter = redis.Redis.from_url(url)
    flight = SingleFlight(connect(url), ns, lease=5.0)

    def run(key: str) -> bytes:
        result = flight.acquire(key)
        if isinstance(result, Done):
            return result.outcome
        counter.incr(f"{ns}:executions")
        if work:
            time.sleep(work)
        assert result.commit(b"value")
        return b"value"

    singles = []
    for i in range(max(rounds, 50)):
        started = time.perf_counter()
        run(f"single:{i}")
        singles.append(time.perf_counter() - started)

    walls = []
    for r in range(rounds):
        key = f"stampede:{r}"
        wall, outcomes = stampede(acquirers, lambda k=key: run(k))
        walls.append(wall)
        assert outcomes == [b"value"] * acquirers
    executions = int(counter.get(f"{ns}:executions") or 0) - max(rounds, 50)
    flight.close()
    counter.close()
    return statistics.median(walls), statistics.median(singles), executions


def bench_thread_floor(url: str, threads: int, rounds: int) -> float:
    """Median wall time of ``threads`` threads doing one plain GET each: the GIL/pool floor."""
    client = redis.Redis.from_url(url)
    walls = []
    for _ in range(rounds):
        walls.append(stampede(threads, lambda: client.get("bench-floor"))[0])
    client.close()
    return statistics.median(walls)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--baseline-n", type=int, default=1000)
    parser.add_argument("--acquirers", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()

    server = None
    url = args.redis_url
    if url is None:
        server = RedisServer(Path(tempfile.mkdtemp(prefix="bench-claims-")))
        url = server.url
    try:
        print(f"redis: {url}")
        ours = bench_handoff(url, args.n)
        base = bench_polling_lock(url, args.baseline_n)
        print(
            f"\nhand-off latency (commit/release -> next party holds it), {len(ours)} / {len(base)}"
        )
        print(f"{'':32}{'p50':>11}{'p99':>11}{'max':>11}")
        for label, s in (("SingleFlight (pub/sub)", ours), ("redis-py Lock (poll 0.1 s)", base)):
            print(f"{label:32}{ms(pct(s, 50))}{ms(pct(s, 99))}{ms(max(s))}")
        print(
            f"ratio Lock/SingleFlight: p50 {pct(base, 50) / pct(ours, 50):.0f}x, "
            f"p99 {pct(base, 99) / pct(ours, 99):.0f}x; "
            f"target p99 < 5 ms: {'met' if pct(ours, 99) < 0.005 else 'MISSED'}"
        )

        print(f"\nstampede: {args.acquirers} threads on one cold key, median of {args.rounds}")
        floor = bench_thread_floor(url, args.acquirers, args.rounds)
        print(f"  floor: {args.acquirers} threads doing one plain GET each: {ms(floor)}")
        for work in (0.0, 0.05):
            wall, single, execs = bench_stampede(url, args.acquirers, work, args.rounds)
            print(
                f"  body {work * 1000:3.0f} ms: executions/round {execs / args.rounds:g} "
                f"(must be 1), wall {ms(wall)} vs one uncontended acquire+commit {ms(single)}"
                f" = {wall / single:.1f}x"
            )
            if execs != args.rounds:
                raise SystemExit(f"single flight broken: {execs} executions in {args.rounds}")
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
