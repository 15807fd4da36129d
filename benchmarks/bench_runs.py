"""The runs index: a page of runs at 1,000 and 10,000 runs, and what the index costs a state change.

    python benchmarks/bench_runs.py [--redis-url URL] [--runs 1000,10000] [--rounds 200]

Starts its own redis-server on a free loopback port unless --redis-url is given. Runs are
written with the real run scripts (``Runs.begin``, ``finish``, ``prepare``/``arm``), one
namespace per size: a third finished, a third suspended, the rest running.

1. A page of 50 runs, newest first: ``list_runs(limit=50)``, the same filtered by task
   and by task and state, and ``workflow-cache runs list --limit 50`` (in process, output
   to /dev/null), against a bare baseline measured in the same rounds (interleaved): one
   ``ZREVRANGE`` of the started set and a pipeline of 50 ``HGETALL``. Server time is the
   ``usec`` Redis's ``INFO commandstats`` gives the commands the client sent (a script's
   inner commands are inside its ``evalsha`` time); wall time is the caller's, on
   loopback. Target: under 50 ms server time, flat from 1,000 to 10,000 runs.
2. A state change with the index and without it: the run scripts as shipped, then the
   same scripts with the index lines taken out (the per-state sets, the started and
   per-task sets; the reconciler's due set stays), over one lifecycle per run (start,
   prepare, suspend, arrive, replay, finish). Round trips (script calls) per change,
   Redis commands the scripts run per change, and server microseconds per change.

The machine may be shared with other work: figures are medians, and ratios are taken
within one run.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.servers import RedisServer
from workflow_cache import RedisCache
from workflow_cache.admin.runs import list_runs
from workflow_cache.cache.lua import script
from workflow_cache.cli import main as cli_main
from workflow_cache.distributed.runs import Resume, Runs
from workflow_cache.distributed.waiters import Waiters

OUTCOME = '{"v":1,"status":"ok","value":[1,2,3],"error":null,"created_at":1.0,"ttl":null}'
TASKS = ("bench.report", "bench.import", "bench.export", "bench.rare")


def fill(cache: RedisCache, n: int) -> None:
    """``n`` runs through the real scripts: finished, suspended or running by thirds."""
    runs = Runs(cache.flight, recheck=3600)
    waiters = Waiters(cache.flight)
    for i in range(n):
        run_id = f"run-{i:06d}"
        task = TASKS[3] if i % 100 == 0 else TASKS[i % 3]
        begun = runs.begin(run_id, 0, Resume(task, [i], {}, "workflows"))
        if i % 3 == 0:
            runs.finish(run_id, begun.epoch, OUTCOME)
        elif i % 3 == 1:
            key = f"step:{i}"
            batch = runs.prepare(run_id, begun.epoch, [f"bench.step|{key}"], [key])
            waiters.join_many([key], [""], [3600.0], run_id, batch, send=False)
            runs.arm(run_id, begun.epoch, batch, [])


def commandstats(client: redis.Redis) -> dict[str, tuple[int, int]]:
    """calls and usec per command since the last reset."""
    stats = client.info("commandstats")
    return {
        name.removeprefix("cmdstat_"): (int(v["calls"]), int(v["usec"]))
        for name, v in stats.items()
    }


def server_usec(client: redis.Redis, fn: Callable[[], Any], sent: set[str]) -> tuple[float, float]:
    """(server µs of the commands in ``sent``, wall seconds) of one call of ``fn``."""
    client.config_resetstat()
    started = time.perf_counter()
    fn()
    wall = time.perf_counter() - started
    stats = commandstats(client)
    return sum(usec for name, (_, usec) in stats.items() if name in sent), wall


def baseline(cache: RedisCache, started_key: str, base: str) -> Callable[[], Any]:
    client = cache.client

    def page() -> list[Any]:
        ids = client.zrevrange(started_key, 0, 49)
        pipe = client.pipeline(transaction=False)
        for run_id in ids:
            pipe.hgetall(f"{base}:run:{run_id.decode()}")
        return pipe.execute()

    return page


def bench_pages(url: str, sizes: list[int], rounds: int) -> None:
    admin = redis.Redis.from_url(url)
    print(f"\n1. a page of 50 runs, median of {rounds} rounds (interleaved with the baseline)")
    print(
        f"{'runs':>7}  {'what':44}{'server':>11}{'wall':>11}{'baseline srv':>14}{'ratio srv':>11}"
    )
    for n in sizes:
        namespace = f"bench-runs-{n}-{uuid.uuid4().hex[:6]}"
        cache = RedisCache(url, namespace=namespace)
        filled = time.perf_counter()
        fill(cache, n)
        filled = time.perf_counter() - filled
        runs = Runs(cache.flight)
        bare = baseline(cache, runs.started_key, runs.base)
        where = ["--redis", url, "--namespace", namespace, "--limit", "50"]

        def cli(*args: str, where: list[str] = where) -> None:
            with redirect_stdout(io.StringIO()):
                assert cli_main(["runs", "list", *where, *args]) == 0

        cases: list[tuple[str, Callable[[], Any]]] = [
            ("list_runs(limit=50)", lambda cache=cache: list_runs(cache, limit=50)),
            (
                "list_runs(task=..., limit=50)",
                lambda cache=cache: list_runs(cache, task=TASKS[0], limit=50),
            ),
            (
                "list_runs(task=..., state=done, limit=50)",
                lambda cache=cache: list_runs(cache, task=TASKS[0], state="done", limit=50),
            ),
            (
                "list_runs(state=suspended, limit=50)",
                lambda cache=cache: list_runs(cache, state="suspended", limit=50),
            ),
            ("runs list --limit 50", cli),
            ("runs list --limit 50 --json", lambda: cli("--json")),
        ]
        ours_sent = {"zrevrangebyscore", "evalsha", "getrange"}
        base_sent = {"zrevrange", "hgetall"}
        for label, fn in cases:
            samples: list[tuple[float, float]] = []
            base_samples: list[tuple[float, float]] = []
            for _ in range(rounds):
                samples.append(server_usec(admin, fn, ours_sent))
                base_samples.append(server_usec(admin, bare, base_sent))
            srv = statistics.median(s for s, _ in samples)
            wall = statistics.median(w for _, w in samples)
            base_srv = statistics.median(s for s, _ in base_samples)
            print(
                f"{n:>7,}  {label:44}{srv / 1000:>8.3f} ms{wall * 1000:>8.2f} ms"
                f"{base_srv / 1000:>11.3f} ms{srv / base_srv:>10.2f}x"
            )
        page = list_runs(cache, limit=50)
        assert len(page.runs) == 50 and page.next_cursor is not None
        print(f"{'':9}(filled with the run scripts in {filled:.1f} s)")
        cache.close()


def strip_index(source: str) -> str:
    """The run scripts without the runs index: ``enter`` keeps only the record."""
    out = source.replace(
        """  if from and INDEX[from] and from ~= to then
    redis.call('ZREM', INDEX[from], RUN_ID)
  end
  redis.call('ZADD', INDEX[to], now, RUN_ID)
""",
        "",
    )
    for line in (
        "  redis.call('ZADD', STARTED, now, RUN_ID)\n",
        "  redis.call('ZADD', KEYS[5], now, RUN_ID)\n",
        "  redis.call('HSET', TASK_OF, RUN_ID, ARGV[3])\n",
    ):
        out = out.replace(line, "")
    return out


def lifecycle(cache: RedisCache, runs: Runs, run_id: str) -> int:
    """Start, prepare, suspend, arrive, replay, finish: the state changes made."""
    flow = Resume("bench.flow", [1], {}, "workflows")
    begun = runs.begin(run_id, 0, flow)
    key = f"k:{run_id}"
    batch = runs.prepare(run_id, begun.epoch, [f"bench.step|{key}"], [key])
    assert runs.arm(run_id, begun.epoch, batch, []) == "wait"
    assert runs.arrive(run_id, batch, key, OUTCOME) is not None
    again = runs.begin(run_id, batch, flow)
    assert runs.finish(run_id, again.epoch, OUTCOME)
    return 6


def bench_state_changes(url: str, count: int) -> None:
    admin = redis.Redis.from_url(url)
    names = ("run_begin", "run_prepare", "run_arm", "run_arrive", "run_finish")
    print(f"\n2. the index per state change, {count} lifecycles of 6 changes each")
    print(f"{'':26}{'round trips':>12}{'commands run':>14}{'server µs':>11}")
    rows = {}
    for label in ("with the index", "without the index"):
        cache = RedisCache(url, namespace=f"bench-changes-{uuid.uuid4().hex[:6]}")
        runs = Runs(cache.flight)
        if label == "without the index":
            index = script("run_index")
            # the shipped scripts with the index lines taken out, same keys and arguments
            runs._scripts.update(
                {n: cache.client.register_script(strip_index(index + script(n))) for n in names}
            )
        lifecycle(cache, runs, "warm-up")  # scripts loaded before counting
        admin.config_resetstat()
        changes = sum(lifecycle(cache, runs, f"r{i}") for i in range(count))
        stats = commandstats(admin)
        trips = sum(calls for name, (calls, _) in stats.items() if name in ("evalsha", "eval"))
        inner = sum(
            calls
            for name, (calls, _) in stats.items()
            if name not in ("evalsha", "eval", "config|resetstat", "info", "publish", "set")
        )
        usec = stats.get("evalsha", (0, 0))[1]
        rows[label] = (trips / changes, inner / changes, usec / changes)
        print(
            f"  {label:24}{trips / changes:>12.2f}{inner / changes:>14.2f}{usec / changes:>11.1f}"
        )
        cache.close()
    (t1, c1, u1), (t0, c0, u0) = rows["with the index"], rows["without the index"]
    print(
        f"  extra per change: {t1 - t0:+.2f} round trips, {c1 - c0:+.2f} commands inside the "
        f"same script, server time {u1 / u0:.2f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url")
    parser.add_argument("--runs", default="1000,10000", help="index sizes, comma separated")
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--lifecycles", type=int, default=2000)
    args = parser.parse_args()
    sizes = [int(s) for s in args.runs.split(",")]
    server = None
    url = args.redis_url
    if url is None:
        server = RedisServer(Path(tempfile.mkdtemp(prefix="bench-runs-")))
        url = server.url
    try:
        print(f"redis: {url} (the machine may be busy with other work: medians, same-run ratios)")
        bench_pages(url, sizes, args.rounds)
        bench_state_changes(url, args.lifecycles)
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
