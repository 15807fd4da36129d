"""Cached steps through RedisCache vs a bare redis-py GET + JSON decode, same run.

    python benchmarks/bench_step_cache.py [--redis-url URL] [--rounds 5] [--n 5000]

Starts its own redis-server on a free loopback port unless --redis-url is given.
Prints medians over interleaved rounds and the ratios the project targets:
  cached step / bare GET+decode      (target <= 1.3x)
  sequential hits / step.all batch   (target >= 10x at 1,000 keys)
  step.all of 1,000 hits / one MGET + 1,000 json.loads of the same envelopes (target <= 1.3x)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.servers import RedisServer
from workflow_cache import RedisCache, create_workflow


def per_call(fn: Callable[[], object], n: int) -> float:
    started = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - started) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--n", type=int, default=5000, help="single-key calls per round")
    parser.add_argument("--keys", type=int, default=1000, help="keys for the batch comparison")
    args = parser.parse_args()

    server = None
    url = args.redis_url
    if url is None:
        server = RedisServer(Path(tempfile.mkdtemp(prefix="bench-redis-")))
        url = server.url
    try:
        run(url, args)
    finally:
        if server is not None:
            server.stop()


def run(url: str, args: argparse.Namespace) -> None:
    cache = RedisCache(url, namespace="bench")
    cache.clear()
    workflow = create_workflow({}, cache=cache)
    value = {"id": 1, "name": "Ada Lovelace", "tags": ["math", "engines"], "score": 0.97}
    workflow(lambda step: step(lambda: value, key="user:1"))
    raw_key = cache.keyspace.for_step("user:1").out
    client = redis.Redis.from_url(url)
    # RedisCache's own client has socket timeouts (5 s, 2 s to connect): redis-py then
    # polls before each read, which a client without timeouts does not pay.
    timed = redis.Redis.from_url(url, socket_timeout=5.0, socket_connect_timeout=2.0)

    def bare() -> object:
        return json.loads(client.get(raw_key))

    def bare_timed() -> object:
        return json.loads(timed.get(raw_key))

    def cached_run() -> object:
        return workflow(lambda step: step(lambda: value, key="user:1")).value

    results: dict[str, list[float]] = {"bare": [], "timed": [], "run": [], "step": []}
    for _ in range(args.rounds):
        results["bare"].append(per_call(bare, args.n))
        results["timed"].append(per_call(bare_timed, args.n))
        results["run"].append(per_call(cached_run, args.n))

        def many_steps(step) -> None:
            thunk = lambda: value  # noqa: E731
            started = time.perf_counter()
            for _ in range(args.n):
                step(thunk, key="user:1")
            results["step"].append((time.perf_counter() - started) / args.n)

        workflow(many_steps)

    keys = [f"item:{i}" for i in range(args.keys)]
    thunks = [lambda i=i: {"i": i} for i in range(args.keys)]
    workflow(lambda step: step.all(thunks, keys=keys))
    outs = [cache.keyspace.out(k) for k in keys]
    seq: list[float] = []
    batch: list[float] = []
    floor: list[float] = []
    for _ in range(args.rounds * 4):
        started = time.perf_counter()
        workflow(lambda step: [step(t, key=k) for t, k in zip(thunks, keys, strict=True)])
        seq.append(time.perf_counter() - started)
        started = time.perf_counter()
        workflow(lambda step: step.all(thunks, keys=keys))
        batch.append(time.perf_counter() - started)
        started = time.perf_counter()
        [json.loads(raw) for raw in client.mget(outs)]
        floor.append(time.perf_counter() - started)

    med = {name: statistics.median(times) for name, times in results.items()}
    print(f"redis: {url}  rounds={args.rounds}  n={args.n}")
    print(f"bare GET + json.loads          {med['bare'] * 1e6:8.1f} us/call   (baseline)")
    print(
        f"cached step, whole workflow    {med['run'] * 1e6:8.1f} us/call   "
        f"{med['run'] / med['bare']:.2f}x  (target <= 1.3x)"
    )
    print(
        f"cached step inside a workflow  {med['step'] * 1e6:8.1f} us/call   "
        f"{med['step'] / med['bare']:.2f}x"
    )
    print(
        f"bare GET, same socket timeouts {med['timed'] * 1e6:8.1f} us/call   "
        f"whole workflow {med['run'] / med['timed']:.2f}x of it"
    )
    s, b, f = statistics.median(seq), statistics.median(batch), statistics.median(floor)
    print(f"{args.keys} sequential hits            {s * 1e3:8.1f} ms")
    print(
        f"{args.keys} hits with step.all         {b * 1e3:8.1f} ms   "
        f"speedup {s / b:.1f}x  (target >= 10x)"
    )
    print(f"MGET + {args.keys} json.loads          {f * 1e3:8.1f} ms   (floor)")
    print(f"step.all / floor                  {b / f:8.2f}x     (target <= 1.3x)")
    cache.clear()


if __name__ == "__main__":
    main()
