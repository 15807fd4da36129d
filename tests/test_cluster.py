"""The step cache on a real Redis Cluster of three primaries on loopback.

Every key one step's scripts touch shares a hash tag, so each script runs on
one node; steps of one workflow spread over every node.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
import redis

from tests.servers import free_port
from tests.waiting import wait_until
from workflow_cache import RedisCache, create_workflow
from workflow_cache.cache.clients import BadRedisURL, client_from_url


@pytest.fixture(scope="module")
def cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    assert server and cli, "redis-server and redis-cli are needed"
    root = tmp_path_factory.mktemp("cluster")
    ports = [cluster_port() for _ in range(3)]
    procs = []
    for port in ports:
        folder = root / str(port)
        folder.mkdir()
        procs.append(
            subprocess.Popen(
                [server, "--port", str(port), "--bind", "127.0.0.1",
                 "--cluster-enabled", "yes", "--cluster-config-file", str(folder / "nodes.conf"),
                 "--save", "", "--appendonly", "no", "--dir", str(folder)],
                cwd=folder,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )  # fmt: skip
    try:
        for port in ports:
            wait_ping(port)
        subprocess.run(
            [cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports),
             "--cluster-replicas", "0", "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=60,
        )  # fmt: skip
        for port in ports:
            wait_cluster_ok(port)
        yield "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in ports)
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(timeout=10)


def cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free and valid too."""
    while True:
        port = free_port()
        if port + 10_000 > 65_535:
            continue
        with socket.socket() as bus:
            try:
                bus.bind(("127.0.0.1", port + 10_000))
            except OSError:
                continue
        return port


def wait_ping(port: int, timeout: float = 10.0) -> None:
    node = redis.Redis(host="127.0.0.1", port=port)
    wait_until(
        node.ping,
        f"cluster node {port} to answer PING",
        timeout=timeout,
        ignoring=(redis.ConnectionError,),
    )


def wait_cluster_ok(port: int, timeout: float = 30.0) -> None:
    node = redis.Redis(host="127.0.0.1", port=port)
    wait_until(
        lambda: node.execute_command("CLUSTER INFO").get("cluster_state") == "ok",
        f"cluster node {port} to report cluster_state:ok",
        timeout=timeout,
    )


def test_steps_spread_over_every_node_run_once_and_read_back(cluster_url: str) -> None:
    cache = RedisCache(cluster_url, namespace=f"cl-{uuid.uuid4().hex[:8]}")
    workflow = create_workflow({}, cache=cache)
    runs: list[int] = []
    keys = [f"item:{i}" for i in range(60)]

    def job(step):
        return step.all([(lambda i=i: runs.append(i) or i * i) for i in range(60)], keys=keys)

    assert workflow(job).value == [i * i for i in range(60)]
    assert workflow(job).value == [i * i for i in range(60)]  # all hits, read across slots
    assert sorted(runs) == list(range(60))

    nodes = {
        cache.client.get_node_from_key(cache.keyspace.out(k)).port  # type: ignore[attr-defined]
        for k in keys
    }
    assert len(nodes) == 3  # the steps really live on every primary
    assert cache.clear() == 60
    assert not any(cache.has(k) for k in keys)


def test_racing_threads_run_a_cluster_key_once(cluster_url: str) -> None:
    cache = RedisCache(cluster_url, namespace=f"cl-{uuid.uuid4().hex[:8]}", lease=2.0)
    workflow = create_workflow({}, cache=cache)
    runs: list[int] = []
    results: list[object] = []

    def slow() -> str:
        runs.append(1)
        time.sleep(0.3)
        return "once"

    def producer() -> None:
        results.append(workflow(lambda step: step(slow, key="contested")).value)

    threads = [threading.Thread(target=producer) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert results == ["once"] * 8
    assert len(runs) == 1


def test_a_cluster_url_names_what_is_wrong() -> None:
    with pytest.raises(BadRedisURL, match="only database 0"):
        client_from_url("redis+cluster://127.0.0.1:7000/3")
    with pytest.raises(BadRedisURL, match="cluster nodes"):
        client_from_url("redis+cluster://nohost/")
