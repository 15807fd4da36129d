"""The dashboard's ``/runs`` at 1,000 and 10,000 runs in the index, against the bare read model.

    python benchmarks/bench_ui.py [--redis-url URL] [--runs 1000,10000] [--rounds 100]

Starts its own redis-server on a free loopback port unless --redis-url is given, fills
one namespace per size with the real run scripts (``bench_runs.fill``: a third finished,
a third suspended, the rest running), and serves the dashboard with uvicorn on a free
loopback port. Each round asks, interleaved so a load change on the machine reaches
all alike:

- baseline: ``list_runs(cache, limit=50)`` called in process (the read model alone);
- ``GET /api/runs?limit=50`` and ``GET /runs?limit=50`` (the page) over one keep-alive
  connection.

Server time is the app's own ``Server-Timing: app`` figure (request in to response
start: the read, JSON or template, headers); wall time is the client's, on loopback.
Target: ``/runs`` under 50 ms server time, flat from 1,000 to 10,000 runs.

The machine may be shared with other work: figures are medians (and 90th
percentiles), ratios are taken within one run.
"""

from __future__ import annotations

import argparse
import http.client
import re
import socket
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import uvicorn
from bench_runs import fill

from tests.servers import RedisServer
from workflow_cache import RedisCache
from workflow_cache.admin.runs import list_runs
from workflow_cache.ui.app import create_app
from workflow_cache.ui.config import UiConfig

TIMING = re.compile(r"app;dur=([0-9.]+)")


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


class Served:
    """One namespace's dashboard on a free loopback port, with a keep-alive client."""

    def __init__(self, url: str, namespace: str, storage: str) -> None:
        config = UiConfig(redis_url=url, namespace=namespace, storage=storage)
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.server = uvicorn.Server(
            uvicorn.Config(create_app(config), log_level="warning", access_log=False)
        )
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )
        self.thread.start()
        while not self.server.started:
            time.sleep(0.01)
        self.client = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)

    def get(self, path: str) -> tuple[float, float]:
        """(server ms, wall ms) of one GET."""
        start = time.perf_counter()
        self.client.request("GET", path)
        response = self.client.getresponse()
        body = response.read()
        wall = (time.perf_counter() - start) * 1000
        if response.status != 200 or not body:
            raise RuntimeError(f"GET {path}: {response.status}")
        match = TIMING.search(response.getheader("server-timing") or "")
        if match is None:
            raise RuntimeError("no Server-Timing header")
        return float(match.group(1)), wall

    def close(self) -> None:
        self.client.close()
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--redis-url")
    parser.add_argument("--runs", default="1000,10000")
    parser.add_argument("--rounds", type=int, default=100)
    args = parser.parse_args()
    sizes = [int(n) for n in args.runs.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "redis").mkdir()
        server = None if args.redis_url else RedisServer(Path(tmp) / "redis")
        url = args.redis_url or server.url  # type: ignore[union-attr]
        try:
            run(url, sizes, args.rounds, tmp)
        finally:
            if server is not None:
                server.stop()


def run(url: str, sizes: list[int], rounds: int, tmp: str) -> None:
    caches: dict[int, RedisCache] = {}
    served: dict[int, Served] = {}
    for n in sizes:
        namespace = f"bench-ui-{n}-{uuid.uuid4().hex[:6]}"
        caches[n] = RedisCache(url, namespace=namespace)
        started = time.perf_counter()
        fill(caches[n], n)
        print(f"filled {n} runs in {time.perf_counter() - started:.1f} s", flush=True)
        served[n] = Served(url, namespace, str(Path(tmp) / "files"))
    samples: dict[tuple[int, str], list[tuple[float, float]]] = {}
    for n in sizes:  # warm-up: scripts loaded, templates compiled, connections open
        list_runs(caches[n], limit=50)
        served[n].get("/api/runs?limit=50")
        served[n].get("/runs?limit=50")
    for _ in range(rounds):
        for n in sizes:
            start = time.perf_counter()
            page = list_runs(caches[n], limit=50)
            spent = (time.perf_counter() - start) * 1000
            assert len(page.runs) == 50
            samples.setdefault((n, "list_runs"), []).append((spent, spent))
            samples.setdefault((n, "/api/runs"), []).append(served[n].get("/api/runs?limit=50"))
            samples.setdefault((n, "/runs"), []).append(served[n].get("/runs?limit=50"))
    print(f"\n{rounds} interleaved rounds, medians (p90) in ms; the machine may be busy")
    print(f"{'runs':>6} {'what':<32} {'server':>16} {'wall':>16} {'vs list_runs':>13}")
    for n in sizes:
        base = statistics.median(s for s, _ in samples[(n, "list_runs")])
        for what in ("list_runs", "/api/runs", "/runs"):
            server_ms = [s for s, _ in samples[(n, what)]]
            wall_ms = [w for _, w in samples[(n, what)]]
            label = "list_runs(limit=50) in process" if what == "list_runs" else f"GET {what}"
            med = statistics.median(server_ms)
            print(
                f"{n:>6} {label:<32} {med:>7.2f} ({pct(server_ms, 90):>6.2f}) "
                f"{statistics.median(wall_ms):>7.2f} ({pct(wall_ms, 90):>6.2f}) "
                f"{med / base:>12.2f}x"
            )
    if len(sizes) > 1:
        small, large = sizes[0], sizes[-1]
        flat = statistics.median(s for s, _ in samples[(large, "/runs")]) / statistics.median(
            s for s, _ in samples[(small, "/runs")]
        )
        print(f"\n/runs server time at {large} runs / at {small} runs: {flat:.2f}x")
    for n in sizes:
        served[n].close()
        caches[n].close()


if __name__ == "__main__":
    main()
