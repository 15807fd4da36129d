"""1,000 concurrent async workflows against Redis behind a 1 ms-each-way proxy, same run.

    python benchmarks/bench_async_redis.py [--n 1000] [--rounds 3] [--compare-rev REV]

Starts its own redis-server on a free loopback port and, in a separate process, a
TCP proxy written here that delays every chunk by 1 ms in each direction (a LAN-like
round trip of 2 ms). Each scenario runs in a fresh process, one event loop, N
concurrent workflows:

  bare GET        N concurrent ``redis.asyncio`` GETs of stored envelopes (baseline)
  bare MGET       the same reads as MGETs of 128 keys, all sent at once (the floor of
                  reads gathered the way async workflows gather them, ``coalesce.py``)
  hit             N async workflows, each one step whose key is stored
  cold miss       N async workflows, each one step on a fresh key (claim, run, commit)

and prints the wall time (median over rounds) against the bare GET baseline
(target for hits: <= 1.3x), the requests per workflow (writes from clients to Redis
that the proxy forwarded, each answered after a round trip; pipelined commands that
arrive together count once) and the event-loop lag: the worst delay of a 1 ms ticker
running alongside, median over rounds (target: < 10 ms), as "worst / second-worst",
then the worst tick's range over the rounds and the CPU time the loop's thread ran
during it (median): a worst tick much longer than its CPU time waited for a CPU,
which only a quieter machine shortens.
asyncio runs the first step of all N coroutines in one loop iteration, so the bare
baseline's worst tick grows with N; workflows pace their starts (``pacing.py``).
Each run begins after a ``gc.collect()``, so no scenario pays for another's set-up
garbage; a full collection that still happens during a run stops the loop for tens of
milliseconds whatever the code, so the last column counts them and their longest
pause. On a busy machine compare with the baseline's own lag, which scheduling
inflates too. With ``--compare-rev REV`` the same scenarios also run on the code of
that git revision (``git archive``), for comparison, interleaved round by round with
this code's so that a change in the machine's load reaches both alike.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DELAY_S = 0.001


# --------------------------------------------------------------------------- the proxy


_forwarded = [0]
"""Chunks the proxy read from clients (requests to Redis)."""


async def _pipe(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, upstream: bool = False
) -> None:
    """Forward bytes, each chunk DELAY_S after it arrived, in order, without batching up."""
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
    loop = asyncio.get_running_loop()

    async def send() -> None:
        while True:
            due, data = await queue.get()
            if not data:
                break
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            writer.write(data)
            await writer.drain()
        writer.close()

    sender = asyncio.ensure_future(send())
    try:
        while True:
            data = await reader.read(65536)
            if upstream and data:
                _forwarded[0] += 1
            queue.put_nowait((loop.time() + DELAY_S, data))
            if not data:
                break
    except ConnectionError:
        queue.put_nowait((0.0, b""))
    await sender


async def _proxy(listen_port: int, target_port: int) -> None:
    async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection("127.0.0.1", target_port)
        await asyncio.gather(
            _pipe(client_r, server_w, True), _pipe(server_r, client_w), return_exceptions=True
        )

    async def tell(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(f"{_forwarded[0]}\n".encode())
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", listen_port, backlog=4096)
    counter = await asyncio.start_server(tell, "127.0.0.1", 0)
    print("LISTENING", counter.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


async def _requests(counter_port: int) -> int:
    """Requests the proxy has forwarded so far (its counter answers on its own port)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", counter_port)
    line = await reader.readline()
    writer.close()
    return int(line)


def start_proxy(target_port: int) -> tuple[subprocess.Popen[str], int, int]:
    """The proxy process, its port and the port of its request counter."""
    from tests.servers import free_port

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, __file__, "--proxy", str(port), str(target_port)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    word, counter_port = proc.stdout.readline().split()
    assert word == "LISTENING"
    return proc, port, int(counter_port)


# --------------------------------------------------------------------------- one scenario


async def _ticker(ticks: list[tuple[float, float, float]], stop: asyncio.Event) -> None:
    """Each tick's end, its delay past its 1 ms, and the CPU time the loop's thread ran
    during the tick (the rest of a long tick is time the thread waited for a CPU)."""
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        before, cpu = loop.time(), time.thread_time()
        await asyncio.sleep(0.001)
        now = loop.time()
        ticks.append((now, now - before - 0.001, time.thread_time() - cpu))


async def _measure(
    url: str, counter_port: int, scenario: str, n: int, namespace: str
) -> dict[str, float]:
    import redis.asyncio

    from workflow_cache import RedisCache, create_workflow

    cache = RedisCache(url, namespace=namespace)
    workflow = create_workflow(cache=cache)
    stored_as = "bare" if scenario.startswith("bare") else scenario  # same envelopes
    keys = [f"{stored_as}:{i}" for i in range(n)]
    timeouts = {  # RedisCache's defaults: every read has a deadline, which costs a timer
        "socket_timeout": 5.0,
        "socket_connect_timeout": 2.0,
    }
    bare = redis.asyncio.Redis.from_pool(  # the pool size workflow-cache uses per loop
        redis.asyncio.BlockingConnectionPool.from_url(
            url, max_connections=100, **(timeouts if scenario == "bare_timeouts" else {})
        )
    )
    outs = [cache.keyspace.out(k) for k in keys]

    async def warm() -> None:  # open connections (and the async pool) before timing
        await asyncio.gather(*(bare.ping() for _ in range(min(n, 200))))

        def one(i: int):  # type: ignore[no-untyped-def]
            async def body(step):  # type: ignore[no-untyped-def]
                return await step(lambda: 0, key=f"warm:{scenario}:{i}")

            return body

        await asyncio.gather(*(workflow(one(i)) for i in range(min(n, 200))))

    await warm()

    async def run_hit(i: int) -> object:
        async def body(step):  # type: ignore[no-untyped-def]
            return await step(lambda: {"i": i}, key=keys[i])

        return (await workflow(body)).value

    async def run_bare(i: int) -> object:
        raw = await bare.get(outs[i])
        return json.loads(raw)

    async def run_mget(i: int) -> object:
        if i % 128:
            return True  # read by the MGET of its batch's first key
        rows = await bare.mget(outs[i : i + 128])
        return [json.loads(raw) for raw in rows]

    run = {
        "hit": run_hit,
        "miss": run_hit,
        "bare": run_bare,
        "bare_timeouts": run_bare,
        "bare_mget": run_mget,
    }[scenario]
    gc.collect()  # every scenario starts from the same heap: no garbage left from set-up
    pauses: list[float] = []  # full collections during the run, which stop the loop too
    gc.callbacks.append(_full_collections(pauses))
    ticks: list[tuple[float, float, float]] = []
    stop = asyncio.Event()
    ticker = asyncio.ensure_future(_ticker(ticks, stop))
    await asyncio.sleep(0.01)
    ticks.clear()
    before = await _requests(counter_port)
    launched = asyncio.get_running_loop().time()
    started = time.perf_counter()
    values = await asyncio.gather(*(run(i) for i in range(n)))
    wall = time.perf_counter() - started
    requests = await _requests(counter_port) - before
    stop.set()
    await ticker
    gc.callbacks.clear()
    assert len(values) == n and all(v is not None for v in values)
    await bare.aclose()
    aclose = getattr(cache, "aclose", None)
    if aclose is not None:
        await aclose()
    # One tick spans the first steps of all N coroutines, which asyncio runs in a single
    # loop iteration; the second-worst tick shows whether anything else blocks the loop.
    lags = sorted((lag, cpu) for end, lag, cpu in ticks if end >= launched)
    lags = [(0.0, 0.0), (0.0, 0.0), *lags]
    return {
        "wall": wall,
        "lag": lags[-1][0],
        "after": lags[-2][0],
        "cpu": lags[-1][1],
        "gc": max(pauses, default=0.0),
        "requests": requests / n,
    }


def _full_collections(pauses: list[float]) -> Any:
    """A ``gc.callbacks`` entry recording how long each full (generation 2) collection took."""
    began: list[float] = []

    def callback(phase: str, info: dict[str, int]) -> None:
        if info["generation"] != 2:
            return
        if phase == "start":
            began.append(time.perf_counter())
        elif began:
            pauses.append(time.perf_counter() - began.pop())

    return callback


def _prepare(direct_url: str, namespace: str, n: int) -> None:
    """Store the envelopes the hit and bare scenarios read (through the current code)."""
    sys.path.insert(0, str(ROOT))
    from workflow_cache import RedisCache, create_workflow

    cache = RedisCache(direct_url, namespace=namespace)
    workflow = create_workflow(cache=cache)
    for name in ("hit", "bare"):
        keys = [f"{name}:{i}" for i in range(n)]
        thunks = [lambda i=i: {"i": i} for i in range(n)]

        def store_all(step, keys=keys, thunks=thunks):  # type: ignore[no-untyped-def]
            return step.all(thunks, keys=keys)

        workflow(lambda step: store_all(step))
    cache.close()


def scenario(
    src: Path, url: str, counter_port: int, name: str, n: int, namespace: str
) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(src)}
    done = subprocess.run(
        [sys.executable, __file__, "--measure", url, str(counter_port), name, str(n), namespace],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{name} on {src} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- main

_ROWS = (
    ("bare", "bare redis.asyncio GET", ""),
    ("bare_timeouts", "bare GET, same socket timeouts", ""),
    ("bare_mget", "bare MGETs of 128 keys", ""),
    ("hit", "workflows, each one hit", "  (target <= 1.3x, lag < 10 ms)"),
    ("miss", "workflows, each a cold miss", ""),
)


def _report(label: str, n: int, results: dict[str, list[dict[str, float]]]) -> None:
    """Medians over rounds; full collections are counted apart, since they stop any loop."""
    print(f"-- {label}, {n} concurrent each")
    print(
        f"{'':32s} {'wall':>8s} {'ratio':>6s} {'req/wf':>6s}   {'loop lag worst / 2nd':>20s}"
        f"   {'worst: range':>12s} {'CPU':>6s}   full GC in run"
    )
    bare = statistics.median(x["wall"] for x in results["bare"])
    for name, text, target in _ROWS:
        rounds = results[name]
        wall = statistics.median(x["wall"] for x in rounds)
        lag = statistics.median(x["lag"] for x in rounds)
        low, high = min(x["lag"] for x in rounds), max(x["lag"] for x in rounds)
        cpu = statistics.median(x["cpu"] for x in rounds)
        after = statistics.median(x["after"] for x in rounds)
        requests = statistics.median(x["requests"] for x in rounds)
        collected = [x["gc"] for x in rounds if x["gc"] > 0]
        gc_text = (
            f"{len(collected)} of {len(rounds)} rounds, up to {max(collected) * 1e3:.1f} ms"
            if collected
            else f"0 of {len(rounds)} rounds"
        )
        print(
            f"{text:32s} {wall * 1e3:6.1f}ms {wall / bare:5.2f}x {requests:6.3f}   "
            f"{lag * 1e3:8.1f} / {after * 1e3:4.1f} ms   {low * 1e3:5.1f}-{high * 1e3:<5.1f}"
            f" {cpu * 1e3:4.1f}ms   {gc_text}{target}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--compare-rev", help="also measure this git revision's code")
    parser.add_argument("--proxy", nargs=2, type=int, help=argparse.SUPPRESS)
    parser.add_argument("--measure", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.proxy:
        asyncio.run(_proxy(*args.proxy))
        return
    if args.measure:
        url, counter_port, name, n, namespace = args.measure
        measured = _measure(url, int(counter_port), name, int(n), namespace)
        print(json.dumps(asyncio.run(measured)))
        return

    sys.path.insert(0, str(ROOT))
    from tests.servers import RedisServer

    workdir = Path(tempfile.mkdtemp(prefix="bench-async-"))
    (workdir / "redis").mkdir()
    server = RedisServer(workdir / "redis")
    proxy, port, counter_port = start_proxy(server.port)
    sources = {"this code": ROOT}
    if args.compare_rev:
        old = workdir / "old"
        old.mkdir()
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", args.compare_rev], capture_output=True, check=True
        )
        subprocess.run(["tar", "-x", "-C", str(old)], input=archive.stdout, check=True)
        sources[f"code at {args.compare_rev}"] = old
    try:
        proxied = f"redis://127.0.0.1:{port}/0"
        delay = f"{DELAY_S * 1e3:g} ms"
        print(f"redis behind a {delay}-each-way proxy; n={args.n}, rounds={args.rounds}")
        names = ("bare", "bare_timeouts", "bare_mget", "hit", "miss")
        results: dict[str, dict[str, list[dict[str, float]]]] = {
            label: {name: [] for name in names} for label in sources
        }
        for r in range(args.rounds):  # each round measures every source: load hits them alike
            for label, src in sources.items():
                namespace = f"bench{r}{len(label)}"
                _prepare(server.url, namespace, args.n)
                for name in names:
                    measured = scenario(src, proxied, counter_port, name, args.n, namespace)
                    results[label][name].append(measured)
        for label in sources:
            _report(label, args.n, results[label])
    finally:
        proxy.kill()
        proxy.wait()
        server.stop()


if __name__ == "__main__":
    main()
