"""Faults of the Redis under a running fleet: real workers, a real redis-server that goes away.

The server keeps an append-only file synced on every write, as the deployment
runs it, so a restart loses no acknowledged write. Every test asserts the
same three things: no committed outcome lost, no key executed twice, every
worker process still alive (no supervisor restarts anything here).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import pytest
import redis

from tests.proxy import LinkProxy
from tests.servers import RedisServer
from tests.waiting import wait_until
from tests.workers import CeleryWorker, configured_test_app, stop_all, wait_ready
from workflow_cache import CacheUnavailable, RedisCache, Result, create_workflow
from workflow_cache.cache.claims import Holder
from workflow_cache.distributed import CeleryDispatcher
from workflow_cache.distributed.header import HEADER, StepHeader
from workflow_cache.options import StepOptions

LEASE = 2.0


@dataclass
class FaultFleet:
    server: RedisServer
    link: LinkProxy
    app_module: ModuleType
    workers: list[CeleryWorker]

    def workflow(self) -> Callable[..., Result[Any, Any]]:
        dispatcher = CeleryDispatcher(self.app_module.app, self.app_module.cache, timeout=60)
        return create_workflow({}, cache=self.app_module.cache, dispatcher=dispatcher)

    def count(self, name: str) -> int:
        return self.app_module.count(name)

    def started(self, name: str) -> bool:
        return self.app_module.cache.client.llen(f"pids:{name}") > 0

    def dead_workers(self) -> list[str]:
        return [w.name for w in self.workers if not w.alive()]


@pytest.fixture(scope="module")
def fault_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultFleet]:
    server = RedisServer(tmp_path_factory.mktemp("redis-aof"), appendonly=True)
    link = LinkProxy(server.port)  # workers and producer reach Redis only through it
    env = {
        "WORKFLOW_CACHE_BROKER": link.url,
        "WORKFLOW_CACHE_NAMESPACE": f"faults-{uuid.uuid4().hex[:8]}",
        "WORKFLOW_CACHE_LEASE": str(LEASE),
    }
    with configured_test_app(env) as module:
        logs = tmp_path_factory.mktemp("fault-logs")
        workers = [
            CeleryWorker(
                "tests.celery_app",
                f"fault{i}",
                "steps",
                env,
                pool="prefork",
                concurrency=2,
                log=logs / f"fault{i}.log",
            )
            for i in range(2)
        ]
        try:
            wait_ready(module.app, workers)
            yield FaultFleet(server, link, module, workers)
        finally:
            stop_all(workers)
            link.close()
            server.stop()


def run_through_outages(fleet: FaultFleet, flow: Callable[..., Any], deadline: float = 60.0):
    """What a producer does with ``CacheUnavailable``: run the workflow again.

    Re-running is safe by construction: finished steps are hits and a running
    step is waited on, never started twice.
    """
    workflow = fleet.workflow()
    refused: list[CacheUnavailable] = []

    def attempt() -> list[Result[Any, Any]]:
        try:
            return [workflow(flow)]
        except CacheUnavailable as exc:
            refused.append(exc)
            return []

    return wait_until(
        attempt,
        lambda: f"the workflow to run through the outage; last error: {refused[-1]}",
        timeout=deadline,
        interval=0.2,
    )[0]


def in_background(fn: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    """Run ``fn`` in a thread; the list gets its result, then the monotonic time it returned."""
    box: list[Any] = []

    def run() -> None:
        result = fn()
        box.extend([result, time.monotonic()])

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, box


def report_recovery(what: str, back_at: float, box: list[Any]) -> None:
    """Print how long after Redis came back the waiting producer had its outcome (``-s``)."""
    print(f"\n{what}: producer had its outcome {box[1] - back_at:.2f} s after Redis was back")


def test_a_worker_with_a_task_in_flight_outlives_a_redis_restart(fault_fleet: FaultFleet) -> None:
    """The crash that bounds celery/kombu below 5.7: a late-acked message in flight at the restart.

    kombu 5.7.0 ends the worker with ``AttributeError: 'NoneType' object has no
    attribute 'hostname'`` while restoring that message; 5.5 and 5.6 reconnect.
    """
    tag = uuid.uuid4().hex[:10]
    fault_fleet.app_module.slow_first.apply_async((tag, 4.0), queue="steps")
    wait_until(lambda: fault_fleet.started(tag), "the step to start")
    fault_fleet.server.restart(down_for=3.0)
    back_at = time.monotonic()

    work = fault_fleet.app_module.work
    after = run_through_outages(
        fault_fleet, lambda step: step(work.s(f"{tag}:after"), key=f"{tag}:after")
    )
    report_recovery("restart 3 s, new step sent", back_at, [after, time.monotonic()])
    assert after.ok and fault_fleet.count(f"{tag}:after") == 1
    assert fault_fleet.dead_workers() == []


def test_a_short_restart_mid_step_loses_nothing_and_runs_nothing_twice(
    fault_fleet: FaultFleet,
) -> None:
    """Down for less than the lease: the holder renews after the gap and commits its outcome."""
    tag = uuid.uuid4().hex[:10]
    slow_first = fault_fleet.app_module.slow_first
    thread, box = in_background(
        lambda: run_through_outages(fault_fleet, lambda step: step(slow_first.s(tag, 3.0), key=tag))
    )
    wait_until(lambda: fault_fleet.started(tag), "the step to start")
    fault_fleet.server.restart(down_for=0.3)
    back_at = time.monotonic()

    thread.join(90)
    report_recovery("restart 0.3 s", back_at, box)
    assert box and box[0].ok, box
    assert box[0].value["count"] == 1
    assert fault_fleet.count(tag) == 1
    again = run_through_outages(fault_fleet, lambda step: step(slow_first.s(tag, 3.0), key=tag))
    assert again.value == box[0].value  # committed before the restart's gap closed: kept
    assert fault_fleet.dead_workers() == []


def test_a_restart_longer_than_the_lease_keeps_one_outcome(fault_fleet: FaultFleet) -> None:
    """Down past the lease: the claim is gone, so a successor may take the key over.

    Whichever commits first is the outcome; the other's commit is refused by
    its epoch, so every reader, then and later, sees the same one.
    """
    tag = uuid.uuid4().hex[:10]
    slow_first = fault_fleet.app_module.slow_first
    thread, box = in_background(
        lambda: run_through_outages(fault_fleet, lambda step: step(slow_first.s(tag, 5.0), key=tag))
    )
    wait_until(lambda: fault_fleet.started(tag), "the step to start")
    fault_fleet.server.restart(down_for=LEASE + 1.0)
    back_at = time.monotonic()

    thread.join(90)
    report_recovery(f"restart {LEASE + 1.0:g} s", back_at, box)
    assert box and box[0].ok, box
    runs = fault_fleet.count(tag)
    # Wait until every execution has ended, then read the key again.
    wait_until(
        lambda: fault_fleet.app_module.cache.client.llen(f"finished:{tag}") == runs,
        "every execution to end",
    )
    again = run_through_outages(fault_fleet, lambda step: step(slow_first.s(tag, 5.0), key=tag))
    assert again.value == box[0].value
    assert fault_fleet.count(tag) == runs <= 2
    assert fault_fleet.dead_workers() == []


def test_a_hung_redis_past_the_lease_hangs_nobody(fault_fleet: FaultFleet) -> None:
    """SIGSTOP: connections stay open and nothing answers; every call has a read timeout."""
    tag = uuid.uuid4().hex[:10]
    slow_first = fault_fleet.app_module.slow_first
    thread, box = in_background(
        lambda: run_through_outages(fault_fleet, lambda step: step(slow_first.s(tag, 3.0), key=tag))
    )
    wait_until(lambda: fault_fleet.started(tag), "the step to start")
    fault_fleet.server.pause()
    try:
        time.sleep(LEASE + 1.0)  # the fault itself: hung for longer than the lease
    finally:
        fault_fleet.server.resume()
    back_at = time.monotonic()

    thread.join(90)
    report_recovery(f"SIGSTOP {LEASE + 1.0:g} s", back_at, box)
    assert box and box[0].ok, box
    runs = fault_fleet.count(tag)
    wait_until(
        lambda: fault_fleet.app_module.cache.client.llen(f"finished:{tag}") == runs,
        "every execution to end",
    )
    again = run_through_outages(fault_fleet, lambda step: step(slow_first.s(tag, 3.0), key=tag))
    assert again.value == box[0].value
    assert runs <= 2
    assert fault_fleet.dead_workers() == []


def test_a_dropped_link_mid_step_loses_nothing_and_runs_nothing_twice(
    fault_fleet: FaultFleet,
) -> None:
    """Every connection reset, new ones refused for a moment shorter than the lease."""
    tag = uuid.uuid4().hex[:10]
    slow_first = fault_fleet.app_module.slow_first
    work = fault_fleet.app_module.work
    thread, box = in_background(
        lambda: run_through_outages(fault_fleet, lambda step: step(slow_first.s(tag, 3.0), key=tag))
    )
    wait_until(lambda: fault_fleet.started(tag), "the step to start")
    fault_fleet.link.cut()
    time.sleep(0.5)  # the fault itself: the link down for half a second
    fault_fleet.link.restore()
    back_at = time.monotonic()

    thread.join(90)
    report_recovery("link cut 0.5 s", back_at, box)
    assert box and box[0].ok, box
    assert fault_fleet.count(tag) == 1
    after = run_through_outages(
        fault_fleet, lambda step: step(work.s(f"{tag}:after"), key=f"{tag}:after")
    )
    assert after.ok and fault_fleet.count(f"{tag}:after") == 1
    assert fault_fleet.dead_workers() == []


@pytest.fixture(scope="module")
def split_fleet(
    redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[RedisServer, ModuleType, CeleryWorker]]:
    """One worker whose broker stays up while its step cache's Redis (AOF) goes away."""
    cache_server = RedisServer(tmp_path_factory.mktemp("redis-cache-aof"), appendonly=True)
    env = {
        "WORKFLOW_CACHE_BROKER": redis_url,
        "WORKFLOW_CACHE_CACHE_URL": cache_server.url,
        "WORKFLOW_CACHE_NAMESPACE": f"split-{uuid.uuid4().hex[:8]}",
        "WORKFLOW_CACHE_LEASE": str(LEASE),
    }
    queue = f"split-{uuid.uuid4().hex[:6]}"
    with configured_test_app(env) as module:
        log = tmp_path_factory.mktemp("split-logs") / "split.log"
        worker = CeleryWorker(
            "tests.celery_app", "split", queue, env, pool="prefork", concurrency=1, log=log
        )
        try:
            wait_ready(module.app, [worker])
            worker.queue = queue  # type: ignore[attr-defined]
            yield cache_server, module, worker
        finally:
            worker.stop()
            cache_server.stop()


def test_a_step_delivered_while_its_redis_is_down_is_retried_not_acknowledged(
    split_fleet: tuple[RedisServer, ModuleType, CeleryWorker],
) -> None:
    """The step's message arrives while the cache's Redis is down: taking the claim is
    refused, so the delivery tries again, then gives its message back to the queue; it
    is never acknowledged as done. Once Redis is back the step runs, exactly once."""
    cache_server, module, worker = split_fleet
    tag = uuid.uuid4().hex[:10]
    header = StepHeader.of(StepOptions(key=tag), module.cache.namespace, once=False)
    cache_server.stop()
    module.work.apply_async(
        (tag,),
        queue=worker.queue,  # type: ignore[attr-defined]
        headers={HEADER: header.dump()},
        ignore_result=True,
    )
    assert worker.log is not None
    text = worker.log.read_text
    wait_until(lambda: f"step {tag!r}: Redis unreachable taking its claim" in text(), "a try")
    wait_until(lambda: "message requeued" in text(), "the message to go back to its queue")
    cache_server.restart()
    outcome = wait_until(
        lambda: module.cache.get(tag), "the step's outcome", ignoring=(CacheUnavailable,)
    )
    assert outcome.ok and outcome.value["count"] == 1
    assert module.count(tag) == 1
    assert worker.alive()


# -- memory pressure ------------------------------------------------------------------


@pytest.fixture
def small_redis(tmp_path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    yield server
    server.stop()


def fill_until_refused(client: Any, prefix: str) -> str:
    """Write until Redis refuses, in ever smaller values so that almost no room is left.

    Returns a 20 kB value: writing it anywhere needs more room than is left.
    """
    n = 0
    for size in (10_000, 1_000, 64):
        while True:
            try:
                client.set(f"{prefix}:{n}", b"x" * size)
            except redis.OutOfMemoryError:
                break
            n += 1
    return "y" * 20_000


def test_a_commit_refused_under_noeviction_is_an_err_and_frees_the_claim(
    small_redis: RedisServer,
) -> None:
    client = small_redis.client()
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", client.info("memory")["used_memory"] + 2_000_000)
    cache = RedisCache(small_redis.url, namespace="oom", lease=30)
    workflow = create_workflow({}, cache=cache)

    # The step fills the memory while it runs, so its commit is the write refused.
    result = workflow(lambda step: step(lambda: fill_until_refused(client, "junk"), key="k"))

    assert not result.ok
    assert result.error.type == "workflow_cache.store.CacheUnavailable"
    assert "out of memory" in result.error.message
    keys = cache.keyspace.for_step("k")
    # Nothing half-written: no outcome, and no claim left for waiters to sit out.
    assert client.exists(keys.out, keys.lock, keys.last) == 0
    # Every later write is refused the same way, as an error, not a hang or a raw traceback.
    with pytest.raises(CacheUnavailable, match="out of memory"):
        workflow(lambda step: step(lambda: 1, key="other"))
    client.flushdb()
    assert workflow(lambda step: step(lambda: 7, key="k")).value == 7


def test_an_evicted_claim_cannot_let_two_holders_commit(small_redis: RedisServer) -> None:
    """allkeys-lru may evict a running step's claim; the epoch still fences the old holder."""
    client = small_redis.client()
    client.config_set("maxmemory-policy", "allkeys-lru")
    cache = RedisCache(small_redis.url, namespace="lru", lease=60)
    flight = cache.flight
    first = flight.acquire("k", timeout=0)
    assert isinstance(first, Holder)

    # Fill memory with newer keys until eviction has taken the claim.
    client.config_set("maxmemory", client.info("memory")["used_memory"] + 1_000_000)
    n = 0
    while client.exists(first.keys.lock):
        client.set(f"junk:{n}", b"x" * 10_000)
        n += 1
    client.config_set("maxmemory", 0)
    client.flushdb()  # and the epoch, the worst case: a successor starts from nothing

    second = flight.acquire("k", timeout=0)
    assert isinstance(second, Holder)
    assert second.commit(b'"second"') is True
    assert first.commit(b'"first"') is False
    assert client.get(first.keys.out) == b'"second"'
