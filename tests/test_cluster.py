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
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from tests.round_trips import counted_nodes
from tests.servers import free_port
from tests.waiting import wait_until
from workflow_cache import RedisCache, create_workflow
from workflow_cache.cache.claims import Done, SingleFlight
from workflow_cache.cache.clients import BadRedisURL, client_from_url
from workflow_cache.cache.handoffs import handoff_channel, read_handoff_notice
from workflow_cache.cache.messages import Busy, Send, StepMessages
from workflow_cache.distributed.waiters import Joined, Waiters


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


def nodes_of(url: str) -> dict[str, redis.Redis]:
    """Each primary by its ``host:port``, as a plain client of that node alone."""
    ports = [int(item.rpartition(":")[2]) for item in url.split("://")[1].split(",")]
    return {f"127.0.0.1:{p}": redis.Redis(host="127.0.0.1", port=p) for p in ports}


def command_calls(node: redis.Redis, name: str) -> int:
    return int(node.info("commandstats").get(f"cmdstat_{name}", {}).get("calls", 0))


def redirections(node: redis.Redis, kind: str) -> int:
    return int(node.info("errorstats").get(f"errorstat_{kind}", {}).get("count", 0))


def messages_on(url: str) -> StepMessages:
    return StepMessages(SingleFlight(client_from_url(url), f"cl-{uuid.uuid4().hex[:8]}", lease=5))


def test_a_batch_over_every_shard_reloads_flushed_scripts(cluster_url: str) -> None:
    for node in nodes_of(cluster_url).values():
        node.script_flush()
    messages = messages_on(cluster_url)
    keys = [f"flushed:{i}" for i in range(30)]
    ids = [f"t{i}" for i in range(30)]
    assert messages.enqueue_many(keys, ids, 10.0) == [Send(i, since=1) for i in ids]
    messages.sent_many(keys, ids, [10.0] * len(keys))
    client = messages.flight.client
    assert [client.get(messages.keys(k).queued) for k in keys] == [i.encode() for i in ids]
    for node in nodes_of(cluster_url).values():
        node.script_flush()
    single = [messages.enqueue(k, f"u{k}", 10.0, since=1) for k in keys]  # one call each
    assert single == [Busy(i, since=1) for i in ids]


def test_a_batch_over_every_shard_is_one_round_trip_per_node(cluster_url: str) -> None:
    nodes = nodes_of(cluster_url)
    messages = messages_on(cluster_url)
    client: Any = messages.flight.client
    sends = counted_nodes(client)
    warm = [f"warm:{i}" for i in range(30)]  # connections open, scripts loaded, on every node
    messages.enqueue_many(warm, warm, 10.0)
    messages.sent_many(warm, warm, [10.0] * len(warm))
    keys = [f"shard:{i}" for i in range(90)]
    ids = [f"t{i}" for i in range(90)]
    owners = Counter(client.get_node_from_key(messages.keys(k).queued).name for k in keys)
    assert set(owners) == set(nodes)  # the batch really spans every primary
    for node in nodes.values():
        node.config_resetstat()

    before = sends.sends
    assert messages.enqueue_many(keys, ids, 10.0) == [Send(i, since=1) for i in ids]
    assert sends.sends - before == len(nodes)
    messages.sent_many(keys, ids, [10.0] * len(keys))
    again = messages.enqueue_many(keys, [f"late{i}" for i in range(90)], 10.0)
    assert again == [Busy(i, since=1) for i in ids]

    for name, node in nodes.items():
        assert command_calls(node, "evalsha") == 3 * owners[name]
        assert command_calls(node, "script|exists") == 0
        assert command_calls(node, "script|load") == 0
        for key, task_id in zip(keys, ids, strict=True):
            queued = messages.keys(key).queued
            if client.get_node_from_key(queued).name == name:
                assert node.get(queued) == task_id.encode()


def node_id(node: redis.Redis) -> str:
    return str(node.execute_command("CLUSTER MYID"), "ascii")


def key_in_slot(client: Any, messages: StepMessages, slot: int, prefix: str) -> str:
    """A step key whose keys hash to ``slot``."""
    for i in range(1_000_000):
        if client.keyslot(messages.keys(f"{prefix}{i}").queued) == slot:
            return f"{prefix}{i}"
    raise AssertionError(f"no key found for slot {slot}")


def finish_moving(nodes: dict[str, redis.Redis], slot: int, source: str, target: str) -> None:
    """Every key of ``slot`` migrated from ``source`` to ``target``, which then owns it."""
    port = int(target.rpartition(":")[2])
    while stranded := nodes[source].execute_command("CLUSTER GETKEYSINSLOT", slot, 100):
        nodes[source].execute_command("MIGRATE", "127.0.0.1", port, "", 0, 5000, "KEYS", *stranded)
    others = [name for name in nodes if name not in (source, target)]
    for name in (target, source, *others):
        nodes[name].execute_command("CLUSTER SETSLOT", slot, "NODE", node_id(nodes[target]))


def test_single_calls_follow_a_slot_moved_behind_the_clients_back(cluster_url: str) -> None:
    """A script and a GET sent straight to the node the client believes owns the key
    still reach the new owner once the slot has moved."""
    nodes = nodes_of(cluster_url)
    messages = messages_on(cluster_url)
    client: Any = messages.flight.client
    key = "moving-alone"
    queued = messages.keys(key).queued
    slot = client.keyslot(queued)
    source_name = client.get_node_from_key(queued).name
    target_name = next(name for name in nodes if name != source_name)
    assert messages.enqueue(key, "t1", 60.0, since=1) == Send("t1", since=1)

    nodes[target_name].execute_command(
        "CLUSTER SETSLOT", slot, "IMPORTING", node_id(nodes[source_name])
    )
    nodes[source_name].execute_command(
        "CLUSTER SETSLOT", slot, "MIGRATING", node_id(nodes[target_name])
    )
    finish_moving(nodes, slot, source_name, target_name)
    assert client.get_node_from_key(queued).name == source_name  # the client's map is stale
    moved = redirections(nodes[source_name], "MOVED")

    assert client.get(queued) == b"t1"
    assert messages.enqueue(key, "t2", 60.0, since=1) == Busy("t1", since=1)
    assert redirections(nodes[source_name], "MOVED") > moved
    assert client.get_node_from_key(queued).name == target_name


def test_a_batch_follows_a_slot_resharded_behind_the_clients_back(cluster_url: str) -> None:
    """A slot migrates (CLUSTER SETSLOT, MIGRATE) while the client holds the old slot
    map: its node pipeline gets ASK while the slot migrates and MOVED once it has
    moved, and the batch still lands every call once, on the node that owns the key."""
    nodes = nodes_of(cluster_url)
    messages = messages_on(cluster_url)
    client: Any = messages.flight.client
    first = "resharded"
    slot = client.keyslot(messages.keys(first).queued)
    source_name = client.get_node_from_key(messages.keys(first).queued).name
    target_name = next(name for name in nodes if name != source_name)
    source, target = nodes[source_name], nodes[target_name]
    target_port = int(target_name.rpartition(":")[2])
    batch = [first, *(f"other:{i}" for i in range(30))]
    ids = [f"a{i}" for i in range(len(batch))]
    assert messages.enqueue_many(batch, ids, 10.0) == [Send(i, 1) for i in ids]

    target.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", node_id(source))
    source.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", node_id(target))
    queued = messages.keys(first).queued
    source.execute_command("MIGRATE", "127.0.0.1", target_port, queued, 0, 5000)
    asked = redirections(source, "ASK")
    messages.sent_many(batch, ids, [60.0] * len(batch))
    assert redirections(source, "ASK") > asked  # the node pipeline really was redirected

    finish_moving(nodes, slot, source_name, target_name)
    assert target.pttl(queued) > 10_000  # confirmed on the node the marker had moved to
    second = key_in_slot(client, messages, slot, "moved:")
    assert client.get_node_from_key(messages.keys(second).queued).name == source_name  # stale

    moved = redirections(source, "MOVED")
    batch = [second, *(f"more:{i}" for i in range(30))]
    ids = [f"b{i}" for i in range(len(batch))]
    assert messages.enqueue_many(batch, ids, 10.0) == [Send(i, 1) for i in ids]
    assert redirections(source, "MOVED") > moved
    assert target.get(messages.keys(second).queued) == b"b0"
    assert client.get_node_from_key(messages.keys(second).queued).name == target_name
    assert messages.enqueue_many(batch, ids, 10.0) == [Busy(i, 1) for i in ids]


def test_a_run_waits_on_keys_of_every_shard(cluster_url: str) -> None:
    """A suspending run joins the waiter sets of keys on every node in one batch; each
    commit hands the run over, and a key already done is given back instead."""
    flight = SingleFlight(client_from_url(cluster_url), f"cl-{uuid.uuid4().hex[:8]}", lease=5)
    waiters = Waiters(flight)
    keys = [f"wait:{i}" for i in range(30)]
    holder = flight.acquire(keys[0])
    assert not isinstance(holder, Done) and holder.commit(b'{"v":0}')
    joined = waiters.join_many(keys, [f"t{i}" for i in range(30)], [10.0] * 30, "run-1", 1)
    assert joined[0] == Done(b'{"v":0}')
    assert joined[1:] == [Joined(f"t{i}") for i in range(1, 30)]
    assert {key for key in keys[1:] if waiters.waiting_on(key) == ["run-1"]} == set(keys[1:])
    for key in keys[1:]:
        holder = flight.acquire(key)
        assert not isinstance(holder, Done) and holder.commit(b'{"v":1}')
        assert waiters.take_handoff(key) == [("run-1", 1)]


def shard_subscribers(node: redis.Redis, channel: str) -> int:
    """Clients subscribed to ``channel`` with SSUBSCRIBE on ``node``."""
    ((name, count),) = node.pubsub_shardnumsub(channel)
    assert name in (channel, channel.encode())
    return int(count)


def bus_publishes(node: redis.Redis) -> int:
    """Classic PUBLISH messages ``node`` forwarded to other nodes over the cluster bus."""
    info = node.execute_command("CLUSTER INFO")
    return int(info.get("cluster_stats_messages_publish_sent", 0))


def step_on_each_node(
    flight: SingleFlight, nodes: dict[str, redis.Redis], prefix: str
) -> dict[str, str]:
    """One step key whose slot each node owns, by node name."""
    found: dict[str, str] = {}
    for i in range(10_000):
        key = f"{prefix}{i}"
        owner = flight.client.get_node_from_key(flight.keyspace.for_step(key).channel).name  # type: ignore[attr-defined]
        found.setdefault(owner, key)
        if len(found) == len(nodes):
            return found
    raise AssertionError("no key found for some node")


def test_notices_on_a_cluster_stay_on_the_shard_of_their_step(cluster_url: str) -> None:
    """A commit's notice is an SPUBLISH on the node owning the step; each waiter hears
    it there through SSUBSCRIBE, whichever node it is (not only the client's default
    node), and no notice crosses the cluster bus."""
    nodes = nodes_of(cluster_url)
    namespace = f"cl-{uuid.uuid4().hex[:8]}"
    waiter = SingleFlight(client_from_url(cluster_url), namespace, lease=30)
    holder = SingleFlight(client_from_url(cluster_url), namespace, lease=30)
    keys = step_on_each_node(waiter, nodes, "sharded:")
    default = waiter.client.get_default_node().name  # type: ignore[attr-defined]
    assert set(keys) == set(nodes) and any(name != default for name in keys)
    holders = {name: holder.acquire(key) for name, key in keys.items()}
    for node in nodes.values():
        node.config_resetstat()
    bus = {name: bus_publishes(node) for name, node in nodes.items()}

    with waiter.watch_many(keys.values()) as notices:
        for name, key in keys.items():  # each subscribed on its own node, and only there
            channel = waiter.keyspace.for_step(key).channel
            assert [shard_subscribers(node, channel) for node in nodes.values()] == [
                int(other == name) for other in nodes
            ]
        assert sorted(waiter.notifier().nodes()) == sorted(nodes)
        for name, key in keys.items():
            claim = holders[name]
            assert not isinstance(claim, Done) and claim.commit(f'"{name}"'.encode())
            assert notices.outcome(key, timeout=30) == f'"{name}"'.encode()

    for name, node in nodes.items():
        assert command_calls(node, "spublish") == 1
        assert command_calls(node, "publish") == 0
        assert command_calls(node, "ssubscribe") == 1
        assert command_calls(node, "subscribe") == 0
        assert bus_publishes(node) == bus[name]


def test_a_waiter_on_a_step_of_another_node_wakes_on_its_commit(cluster_url: str) -> None:
    """A thread blocked in ``acquire`` on a key another node serves wakes when the
    holder commits, and the commit announces the runs it hands over on the
    namespace's handoff channel, sharded too."""
    nodes = nodes_of(cluster_url)
    namespace = f"cl-{uuid.uuid4().hex[:8]}"
    waiter = SingleFlight(client_from_url(cluster_url), namespace, lease=30)
    holder = SingleFlight(client_from_url(cluster_url), namespace, lease=30)
    default = waiter.client.get_default_node().name  # type: ignore[attr-defined]
    name, key = next(
        (n, k) for n, k in step_on_each_node(waiter, nodes, "far:").items() if n != default
    )
    channel = waiter.keyspace.for_step(key).channel
    claim = holder.acquire(key)
    assert not isinstance(claim, Done)
    got: list[object] = []
    thread = threading.Thread(target=lambda: got.append(waiter.acquire(key, timeout=60)))
    thread.start()
    wait_until(lambda: shard_subscribers(nodes[name], channel) == 1, "the waiter to subscribe")
    assert claim.commit(b'"far"')
    thread.join(60)
    assert got == [Done(b'"far"')]

    listener = waiter.notifier()
    watch = listener.watch(handoff_channel(waiter.keyspace))
    try:
        assert listener.wait_live(watch, 30)
        holder.announce_handoff(key)
        notice = watch.get(30)
        assert notice is not None and read_handoff_notice(notice) == (key, b"")
    finally:
        listener.unwatch(watch)


def test_a_watch_follows_its_slot_to_another_node(cluster_url: str) -> None:
    """The node a waiter subscribed on gives the step's slot away: the node ends the
    subscription, the listener subscribes again on the new owner and still hears the
    commit made there."""
    nodes = nodes_of(cluster_url)
    namespace = f"cl-{uuid.uuid4().hex[:8]}"
    waiter = SingleFlight(client_from_url(cluster_url), namespace, lease=30)
    holder = SingleFlight(client_from_url(cluster_url), namespace, lease=30)
    key = "follows"
    channel = waiter.keyspace.for_step(key).channel
    slot = waiter.client.keyslot(channel)  # type: ignore[attr-defined]
    source_name = waiter.client.get_node_from_key(channel).name  # type: ignore[attr-defined]
    target_name = next(name for name in nodes if name != source_name)
    source, target = nodes[source_name], nodes[target_name]

    with waiter.watch_many([key]) as notices:
        assert shard_subscribers(source, channel) == 1
        target.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", node_id(source))
        source.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", node_id(target))
        finish_moving(nodes, slot, source_name, target_name)
        wait_until(
            lambda: shard_subscribers(target, channel) == 1,
            "the listener to subscribe on the slot's new owner",
        )
        assert shard_subscribers(source, channel) == 0
        claim = holder.acquire(key)
        assert not isinstance(claim, Done) and claim.commit(b'"moved"')
        assert notices.outcome(key, timeout=30) == b'"moved"'
    wait_until(lambda: shard_subscribers(target, channel) == 0, "the listener to unsubscribe")
