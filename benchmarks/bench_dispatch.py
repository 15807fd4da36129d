"""Dispatched steps vs plain Celery, and a 64-producer stampede, on real worker processes.

    python benchmarks/bench_dispatch.py [--quick] [--rounds 7] [--n 200] [--gap 0.002] [--profile]
                                        [--link]

Starts its own redis-server (broker, result backend and step cache in one) and
``celery -A benchmarks._bench_app worker`` subprocesses. Medians over interleaved
rounds, all figures from the same run:

a. Latency of one uncached dispatched step, ``step(noop.s(i))`` inside a workflow
   with ``CeleryDispatcher``, vs ``noop.delay(i).get()`` of the same task through the
   same broker and result backend, both served by one solo-pool worker on the steps
   queue.  Target: dispatched step / plain Celery <= 1.1x.
b. 64 producer threads (each its own workflow run, one shared RedisCache) on one
   cold key whose task sleeps --sleep seconds, three solo-pool workers: executions of
   the body (counted with INCR, must be 1), messages published for the key (one queued
   marker per key: must be 1) and wall time vs one uncontended call.

``--profile`` adds a cProfile of the producer side of the dispatched path (part a).
``--link`` puts Redis behind the 1 ms-each-way proxy of ``bench_async_redis.py`` for
producer and workers alike: each round trip then costs about 2 ms, so the figures
count the round trips of each path more than the CPU time the machine's load blurs.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _fleet import APP_MODULE, drain, load_app  # noqa: E402
from _stampede import stampede  # noqa: E402

from tests.servers import RedisServer  # noqa: E402
from tests.workers import CeleryWorker, wait_ready  # noqa: E402

LEASE = 5.0


def ms(seconds: float) -> str:
    return f"{seconds * 1000:9.3f} ms"


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


# --------------------------------------------------------------------------- part a


def bench_latency(bench: ModuleType, rounds: int, n: int, gap: float) -> dict[str, list[float]]:
    """Per-round medians (seconds per call) of each path.

    The paths take turns call by call (in rotating order) inside one long workflow
    run, so drift and noise from other processes on the machine hit all of them alike.
    ``gap`` seconds of idle between calls let each call's tail work (late ack, result
    consumer unsubscribe, lease renewer exit) finish before the next call is timed.
    """
    from workflow_cache import create_workflow
    from workflow_cache.distributed import CeleryDispatcher

    noop = bench.noop
    dispatcher = CeleryDispatcher(bench.app, bench.cache, timeout=30)
    workflow = create_workflow({}, cache=bench.cache, dispatcher=dispatcher)
    inner = create_workflow({}, cache=bench.cache, dispatcher=dispatcher)
    tag = uuid.uuid4().hex[:8]

    def one_step(sig: Any) -> Callable[[Any], Any]:
        # not ``lambda step, sig=sig``: a second parameter would receive the deps
        return lambda step: step(sig)

    def calls(step: Any, i: int) -> dict[str, Callable[[], Any]]:
        return {
            "plain": lambda: noop.delay(i).get(timeout=30),
            "step": lambda: step(noop.s(i)),
            "fresh": lambda: step(noop.s(i), key=f"fresh:{tag}:{uuid.uuid4().hex}"),
            "run": lambda: inner(one_step(noop.s(i))).value,
        }

    names = ["plain", "step", "fresh", "run"]

    def round_(count: int) -> dict[str, list[float]]:
        times: dict[str, list[float]] = {name: [] for name in names}

        def body(step: Any) -> None:
            for i in range(count):
                todo = calls(step, i)
                for name in names[i % 4 :] + names[: i % 4]:
                    started = time.perf_counter()
                    assert todo[name]() == i, name
                    times[name].append(time.perf_counter() - started)
                    time.sleep(gap)

        assert workflow(body).ok
        return times

    def blocks(count: int, first: int) -> dict[str, list[float]]:
        """``count`` calls of one path back to back, then of the other: each call's tail
        work overlaps the next call of the same path, as in a loop of dispatches."""
        times: dict[str, list[float]] = {"plain-seq": [], "step-seq": []}

        def body(step: Any) -> None:
            order = ["plain-seq", "step-seq"][first:] + ["plain-seq", "step-seq"][:first]
            for name in order:
                for i in range(count):
                    call = calls(step, i)[name.removesuffix("-seq")]
                    started = time.perf_counter()
                    assert call() == i, name
                    times[name].append(time.perf_counter() - started)

        assert workflow(body).ok
        return times

    round_(max(20, n // 5))  # warm-up: connections, scripts, pub/sub listeners, imports
    blocks(max(20, n // 5), 0)
    medians: dict[str, list[float]] = {name: [] for name in [*names, "plain-seq", "step-seq"]}
    for r in range(rounds):
        for name, samples in (round_(n) | blocks(n, r % 2)).items():
            medians[name].append(statistics.median(samples))
    return medians


def profile_step(bench: ModuleType, n: int) -> str:
    """cProfile (wall clock, main thread) of ``n`` unkeyed dispatched steps."""
    from workflow_cache import create_workflow
    from workflow_cache.distributed import CeleryDispatcher

    dispatcher = CeleryDispatcher(bench.app, bench.cache, timeout=30)
    workflow = create_workflow({}, cache=bench.cache, dispatcher=dispatcher)

    def body(step: Any) -> None:
        for i in range(n):
            step(bench.noop.s(i))

    profiler = cProfile.Profile()
    profiler.enable()
    workflow(body)
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(30)
    return out.getvalue()


# --------------------------------------------------------------------------- part b


def bench_stampede(
    bench: ModuleType, producers: int, sleep: float, rounds: int
) -> tuple[list[float], list[float], list[int], list[int]]:
    """Per round: wall of ``producers`` threads on one cold key, wall of one uncontended
    call of the same task, how many times the body ran and how many messages were
    published for the stampede key."""
    from celery.signals import before_task_publish

    from workflow_cache import create_workflow
    from workflow_cache.distributed import CeleryDispatcher

    counted = bench.counted
    dispatcher = CeleryDispatcher(bench.app, bench.cache, timeout=60)
    workflow = create_workflow({}, cache=bench.cache, dispatcher=dispatcher)
    queue = bench.settings.step_queue
    client = bench.cache.client

    def one(key: str) -> int:
        return workflow(lambda step: step(counted.s(key, sleep), key=key)).value

    sent: list[str] = []

    def record(headers: Any = None, **_: Any) -> None:
        step = (headers or {}).get("wfc_step")
        if step:
            sent.append(step["key"])  # list.append is atomic

    before_task_publish.connect(record, weak=False)
    one(f"warm:{uuid.uuid4().hex}")
    walls, singles, executions, messages = [], [], [], []
    for _ in range(rounds):
        drain(client, queue)
        key = f"single:{uuid.uuid4().hex}"
        started = time.perf_counter()
        assert one(key) == 1
        singles.append(time.perf_counter() - started)

        drain(client, queue)
        key = f"stampede:{uuid.uuid4().hex}"
        wall, values = stampede(producers, lambda k=key: one(k))
        walls.append(wall)
        assert values == [1] * producers, values
        drain(client, queue)  # every duplicate message handled: none may run the body
        executions.append(bench.executions(key))
        messages.append(sent.count(key))
    before_task_publish.disconnect(record)
    return walls, singles, executions, messages


# --------------------------------------------------------------------------- main


def report_ratio(label: str, step: list[float], plain: list[float]) -> float:
    """Print and return the median over rounds of step/plain (each round's own ratio)."""
    ratios = [s / p for s, p in zip(step, plain, strict=True)]
    ratio = statistics.median(ratios)
    verdict = "met" if ratio <= 1.1 else "MISSED"
    print(
        f"   dispatched step / plain Celery, {label}: {ratio:.2f}x "
        f"(rounds {min(ratios):.2f}-{max(ratios):.2f}x; target <= 1.1x: {verdict})"
    )
    return ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds and calls")
    parser.add_argument("--rounds", type=int, help="rounds per part (default 7, quick 3)")
    parser.add_argument("--n", type=int, help="calls per path per round (default 200, quick 50)")
    parser.add_argument("--producers", type=int, default=64)
    parser.add_argument("--sleep", type=float, default=0.1, help="stampede task body, seconds")
    parser.add_argument("--gap", type=float, default=0.002, help="idle between calls (a)")
    parser.add_argument("--profile", action="store_true", help="cProfile the dispatched path")
    parser.add_argument("--link", action="store_true", help="Redis behind a 1 ms-each-way proxy")
    args = parser.parse_args()
    rounds = args.rounds or (3 if args.quick else 7)
    n = args.n or (50 if args.quick else 200)

    tmp = Path(tempfile.mkdtemp(prefix="bench-dispatch-"))
    server = RedisServer(tmp)
    url, proxy = server.url, None
    if args.link:
        from bench_async_redis import start_proxy

        proxy, port, _ = start_proxy(server.port)
        url = f"redis://127.0.0.1:{port}/0"
    env = {
        "WORKFLOW_CACHE_BROKER": url,
        "WORKFLOW_CACHE_NAMESPACE": f"bench-{uuid.uuid4().hex[:8]}",
        "WORKFLOW_CACHE_LEASE": str(LEASE),
    }
    bench = load_app(env)
    log = tmp / "workers.log"
    workers = [CeleryWorker(APP_MODULE, "bench-a", "steps", env, log=log)]
    try:
        wait_ready(bench.app, workers)
        link = " behind a 1 ms-each-way proxy" if proxy else ""
        print(f"redis: {url}{link}  workers log: {log}")
        load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
        print(
            f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs (load {load}), "
            f"rounds={rounds}, n={n}, gap={args.gap * 1000:g} ms"
        )

        med = bench_latency(bench, rounds, n, args.gap)
        base = statistics.median(med["plain"])
        print("\na. one uncached call of a no-op task, 1 solo worker (median of round medians)")
        print("   interleaved: the four paths take turns call by call:")
        print(f"   {'path':52}{'latency':>13}{'vs plain':>10}")
        rows = [
            ("plain", "noop.delay(i).get()  (baseline)"),
            ("step", "step(noop.s(i))  no key, inside one workflow"),
            ("fresh", "step(noop.s(i), key=<fresh>)  inside one workflow"),
            ("run", "workflow(lambda step: step(noop.s(i)))  whole run"),
        ]
        for name, label in rows:
            value = statistics.median(med[name])
            print(f"   {label:52}{ms(value)}{value / base:9.2f}x")
        report_ratio("interleaved call by call", med["step"], med["plain"])
        print(f"   back to back, {n} calls of one path then {n} of the other:")
        seq_base = statistics.median(med["plain-seq"])
        for name, label in (("plain-seq", "noop.delay(i).get()"), ("step-seq", "step(noop.s(i))")):
            value = statistics.median(med[name])
            print(f"   {label:52}{ms(value)}{value / seq_base:9.2f}x")
        report_ratio("back to back", med["step-seq"], med["plain-seq"])

        if args.profile:
            print("\n   cProfile, producer main thread, unkeyed dispatched steps:")
            print(profile_step(bench, max(n, 200)))

        more = [CeleryWorker(APP_MODULE, f"bench-b{i}", "steps", env, log=log) for i in (1, 2)]
        workers += more
        wait_ready(bench.app, more)
        walls, singles, execs, sent = bench_stampede(bench, args.producers, args.sleep, rounds)
        wall, single = statistics.median(walls), statistics.median(singles)
        print(
            f"\nb. {args.producers} producer threads, one cold key, body sleeps "
            f"{args.sleep * 1000:.0f} ms, 3 solo workers ({rounds} rounds)"
        )
        print(f"   {'executions of the body per round':52}{execs!s:>22}  (must be 1 each)")
        print(f"   {'messages published for the key per round':52}{sent!s:>22}  (must be 1 each)")
        print(f"   {'one uncontended call (same task, cold key)':52}{ms(single)}")
        print(f"   {'all producers hold the outcome (wall)':52}{ms(wall)}{wall / single:9.2f}x")
        print(f"   {'stampede wall, min-max over rounds':52}{ms(min(walls))} -{ms(max(walls))}")
        if any(e != 1 for e in execs) or any(m != 1 for m in sent):
            raise SystemExit(f"single flight broken: executions {execs}, messages {sent}")
    finally:
        for worker in workers:
            worker.stop()
        if proxy is not None:
            proxy.kill()
            proxy.wait()
        server.stop()


if __name__ == "__main__":
    main()
