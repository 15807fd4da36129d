"""The step cache behind Redis Sentinel: one primary, one replica, three sentinels, a failover.

Real servers on loopback. The primary is killed (SIGKILL), the sentinels
promote the replica, and the same ``RedisCache`` (built from a
``redis+sentinel://`` URL) follows it: outcomes that reached the replica are
kept, and the fencing check still refuses a holder whose claim was taken over.
"""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from tests.servers import RedisServer, free_port
from tests.waiting import wait_until
from workflow_cache import CacheUnavailable, RedisCache, create_workflow
from workflow_cache.cache.claims import Holder, SingleFlight
from workflow_cache.cache.clients import BadRedisURL, client_from_url

SERVICE = "wfc-primary"
ERRORS = (CacheUnavailable, redis.RedisError)  # what a failover in progress raises


@dataclass
class SentinelSet:
    primary: RedisServer
    replica: RedisServer
    sentinel_ports: list[int]
    procs: list[subprocess.Popen[bytes]]

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports)
        return f"redis+sentinel://{hosts}/{SERVICE}/0"

    def primary_port(self) -> int | None:
        """The primary's port as the sentinels report it (raw reply: no client-side parsing)."""
        for port in self.sentinel_ports:
            try:
                addr = redis.Redis(host="127.0.0.1", port=port, socket_timeout=1).execute_command(
                    "SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE
                )
            except redis.RedisError:
                continue
            if addr:
                return int(addr[1])
        return None

    def replica_in_sync(self) -> bool:
        """The replica has loaded the primary's data and follows its stream."""
        info = self.replica.client().info("replication")
        return info.get("master_link_status") == "up" and not info.get("master_sync_in_progress")

    def sees_replica(self) -> bool:
        for port in self.sentinel_ports:
            replicas = redis.Redis(host="127.0.0.1", port=port, socket_timeout=1).sentinel_slaves(
                SERVICE
            )
            if not any(r.get("port") == self.replica.port for r in replicas):
                return False
        return True


def start_sentinel(workdir: Path, primary_port: int) -> tuple[int, subprocess.Popen[bytes]]:
    port = free_port()
    conf = workdir / f"sentinel-{port}.conf"
    conf.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {workdir}\n"
        f"sentinel monitor {SERVICE} 127.0.0.1 {primary_port} 2\n"
        f"sentinel down-after-milliseconds {SERVICE} 1000\n"
        f"sentinel failover-timeout {SERVICE} 5000\n"
        f"sentinel parallel-syncs {SERVICE} 1\n"
    )
    binary = shutil.which("redis-server")
    assert binary is not None
    proc = subprocess.Popen(
        [binary, str(conf), "--sentinel"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    return port, proc


@pytest.fixture
def sentinels(tmp_path: Path) -> Iterator[SentinelSet]:
    for name in ("primary", "replica"):
        (tmp_path / name).mkdir()
    primary = RedisServer(tmp_path / "primary")
    replica = RedisServer(tmp_path / "replica")
    replica.client().replicaof("127.0.0.1", primary.port)
    ports, procs = [], []
    for _ in range(3):
        port, proc = start_sentinel(tmp_path, primary.port)
        ports.append(port)
        procs.append(proc)
    group = SentinelSet(primary, replica, ports, procs)
    try:
        wait_until(group.replica_in_sync, "the replica's link to the primary", ignoring=ERRORS)
        wait_until(group.sees_replica, "every sentinel to list the replica", ignoring=ERRORS)
        yield group
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(timeout=10)
        replica.stop()
        primary.stop()


def test_a_failover_keeps_replicated_outcomes_and_fences_the_old_holder(
    sentinels: SentinelSet,
) -> None:
    namespace = f"sentinel-{uuid.uuid4().hex[:8]}"
    cache = RedisCache(sentinels.url, namespace=namespace, lease=1.0)
    workflow = create_workflow({}, cache=cache)
    runs: list[str] = []

    def run(name: str) -> Callable[[], str]:
        return lambda: runs.append(name) or name

    assert workflow(lambda step: step(run("kept"), key="kept")).value == "kept"
    old_holder = cache.flight.acquire("contested", timeout=0)
    assert isinstance(old_holder, Holder)
    primary = sentinels.primary.client()
    wait_until(  # both writes reached the replica (WAIT answers within 1 s, with a count)
        lambda: primary.execute_command("WAIT", 1, 1000) == 1, "the replica to acknowledge"
    )

    sentinels.primary.kill()  # the primary dies without a word
    killed_at = time.monotonic()
    wait_until(
        lambda: sentinels.primary_port() == sentinels.replica.port,
        "the sentinels to promote the replica",
        ignoring=ERRORS,
    )

    # The same cache follows the new primary: the replicated outcome is a hit.
    again = wait_until(
        lambda: workflow(lambda step: step(run("kept again"), key="kept")),
        "the cache to read from the new primary",
        ignoring=ERRORS,
    )
    took = time.monotonic() - killed_at
    print(f"\nfailover: the cache read the new primary {took:.2f} s after the kill")
    assert again.value == "kept" and runs == ["kept"]

    # The old holder's lease ran out during the failover; a new process takes the key over.
    other = SingleFlight(client_from_url(sentinels.url), cache.keyspace, lease=1.0)
    successor = wait_until(
        lambda: other.acquire("contested", timeout=10),
        "a new process to take the contested key over",
        ignoring=ERRORS,
    )
    assert isinstance(successor, Holder)
    assert successor.commit(b'"successor"') is True
    assert old_holder.commit(b'"old"') is False  # fenced: one outcome per key
    assert cache.client.get(cache.keyspace.out("contested")) == b'"successor"'
    other.close()


def test_a_sentinel_url_names_what_is_wrong() -> None:
    with pytest.raises(BadRedisURL, match="host:port"):
        client_from_url("redis+sentinel://nohost/svc")
    with pytest.raises(BadRedisURL, match="service name"):
        client_from_url("redis+sentinel://127.0.0.1:26379/")
