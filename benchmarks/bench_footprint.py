"""Redis bytes left per committed step, against the outcome key itself, same run.

    python benchmarks/bench_footprint.py [--redis-url URL] [--steps 100000]

Starts its own redis-server on a free loopback port unless --redis-url is given
(the namespace used is cleared at the end). Runs ``--steps`` distinct keyed steps
through ``create_workflow`` on a ``RedisCache`` (claim, run, commit: the path every
producer and worker takes), then compares what Redis holds afterwards with what the
outcomes alone need:

  keys left per step                             (target 1.0: the outcome only)
  used_memory growth per step / MEMORY USAGE of
      one outcome key (key + envelope + overhead) (target <= 1.1x)

and prints the raw key name + envelope bytes for reference (what sizing starts from).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.servers import RedisServer
from workflow_cache import RedisCache, create_workflow

BATCH = 500


def used_memory(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


def steps_of(batch: range) -> Callable[[Any], list[Any]]:
    """A workflow function running one keyed step per number in ``batch``."""

    def run(step: Any) -> list[Any]:
        return [step(lambda i=i: {"id": i, "name": f"user {i}"}, key=f"user:{i}") for i in batch]

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url")
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--sample", type=int, default=2000, help="keys measured by MEMORY USAGE")
    args = parser.parse_args()

    server = None
    url = args.redis_url
    if url is None:
        server = RedisServer(Path(tempfile.mkdtemp(prefix="bench-redis-")))
        url = server.url
    namespace = f"footprint-{uuid.uuid4().hex[:8]}"
    cache = RedisCache(url, namespace=namespace)
    client = cache.client
    try:
        workflow = create_workflow({}, cache=cache)
        keys_before, memory_before = client.dbsize(), used_memory(client)
        started = time.perf_counter()
        for first in range(0, args.steps, BATCH):
            assert workflow(steps_of(range(first, min(first + BATCH, args.steps)))).ok
        seconds = time.perf_counter() - started
        time.sleep(0.2)
        keys_after, memory_after = client.dbsize(), used_memory(client)

        outcome_keys = [
            cache.keyspace.out(f"user:{i}") for i in range(min(args.sample, args.steps))
        ]
        usage = [int(client.memory_usage(name, samples=0) or 0) for name in outcome_keys]
        raw = [len(name) + len(client.get(name) or b"") for name in outcome_keys]
        per_step = (memory_after - memory_before) / args.steps
        outcome = statistics.mean(usage)
        print(f"steps committed: {args.steps} in {seconds:.1f} s")
        print(f"keys left per step: {(keys_after - keys_before) / args.steps:.3f}  (target 1.0)")
        print(f"used_memory growth per step: {per_step:.1f} B")
        print(f"MEMORY USAGE of one outcome key: {outcome:.1f} B (baseline)")
        print(f"raw key name + envelope: {statistics.mean(raw):.1f} B")
        print(f"ratio growth / outcome key: {per_step / outcome:.3f}x  (target <= 1.1x)")
        print(f"projected per million distinct steps: {per_step:.0f} MB")
    finally:
        cache.clear()
        cache.close()
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
