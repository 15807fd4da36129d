"""Async workflows on redis.asyncio: no blocking client, no thread, one execution per key
across sync and async callers and processes."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio

from workflow_cache import RedisCache, create_workflow

ROOT = Path(__file__).resolve().parent.parent

HOLDER = r"""
import sys, time
from workflow_cache import RedisCache, create_workflow
url, namespace, key, seconds = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
cache = RedisCache(url, namespace=namespace, lease=float(sys.argv[5]))
def work():
    print("RUNNING", flush=True)
    time.sleep(seconds)
    return "from the sync process"
print(create_workflow(cache=cache)(lambda step: step(work, key=key)), flush=True)
"""


@pytest.fixture
def cache(redis_url: str, namespace: str) -> Iterator[RedisCache]:
    made = RedisCache(redis_url, namespace=namespace, lease=1.0)
    yield made
    made.clear()
    made.close()


def holder_process(
    redis_url: str, namespace: str, key: str, seconds: float, lease: float = 1.0
) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, redis_url, namespace, key, str(seconds), str(lease)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "RUNNING"
    return proc


def test_async_hits_misses_and_waits_use_no_blocking_connection_and_no_thread(
    cache: RedisCache, redis_url: str, namespace: str
) -> None:
    workflow = create_workflow(cache=cache)
    proc = holder_process(redis_url, namespace, "held", 1.0)
    calls: list[int] = []

    async def work(i: int) -> int:
        calls.append(i)
        await asyncio.sleep(0.05)
        return i

    async def main() -> Any:
        async def body(step: Any) -> Any:
            miss = await step(lambda: work(1), key="fresh")
            waited = await step(lambda: work(2), key="held")  # another process runs it
            many = await step.all([lambda: work(3), lambda: work(4)], keys=["fresh", "other"])
            return miss, waited, many

        async def warm(step: Any) -> Any:  # the process's one presence thread starts here
            return await step(lambda: 0, key="warm")

        await workflow(warm)
        before = threading.active_count()
        results = await asyncio.gather(*(workflow(body) for _ in range(20)))
        during = threading.active_count()
        await cache.aclose()
        return results, before, during

    results, threads_before, threads_during = asyncio.run(main())
    proc.wait(30)
    assert {(r.value[0], r.value[1]) for r in results} == {(1, "from the sync process")}
    assert all(r.value[2] == [1, 4] for r in results)
    assert sorted(calls) == [1, 4]  # one execution per key for twenty workflows
    assert cache.client.connection_pool._created_connections == 0
    assert threads_during <= threads_before  # no thread hop for waits


def test_a_sync_waiter_gets_the_outcome_of_an_async_holder(
    cache: RedisCache, redis_client: redis.Redis
) -> None:
    calls: list[str] = []
    started = threading.Event()
    channel = cache.keyspace.for_step("shared").channel

    async def work() -> str:
        calls.append("async")
        started.set()
        while redis_client.pubsub_numsub(channel)[0][1] == 0:  # until the sync caller waits
            await asyncio.sleep(0.01)  # polling pace
        return "from async"

    async def holder() -> Any:
        async def body(step: Any) -> Any:
            return await step(work, key="shared")

        result = await create_workflow(cache=cache)(body)
        await cache.aclose()
        return result

    box: list[object] = []

    def waiter() -> None:
        started.wait(30)
        workflow = create_workflow(cache=cache)
        box.append(workflow(lambda step: step(lambda: "sync ran", key="shared")))

    thread = threading.Thread(target=waiter)
    thread.start()
    held = asyncio.run(holder())
    thread.join(30)
    assert held.value == box[0].value == "from async"  # type: ignore[attr-defined]
    assert calls == ["async"]


def test_an_async_waiter_takes_over_from_a_killed_holder(
    cache: RedisCache, redis_url: str, namespace: str, redis_client: redis.Redis
) -> None:
    proc = holder_process(redis_url, namespace, "crash", 60.0, lease=1.0)
    channel = cache.keyspace.for_step("crash").channel

    async def main() -> Any:
        async def body(step: Any) -> Any:
            return await step(lambda: "taken over", key="crash")

        waiting = asyncio.ensure_future(create_workflow(cache=cache)(body))
        while redis_client.pubsub_numsub(channel)[0][1] == 0:  # not yet waiting on it
            assert not waiting.done()
            await asyncio.sleep(0.01)  # polling pace: lets the waiter run
        assert not waiting.done()
        proc.send_signal(signal.SIGKILL)
        result = await asyncio.wait_for(waiting, 30)
        await cache.aclose()
        return result

    try:
        assert asyncio.run(main()).value == "taken over"
    finally:
        proc.kill()
        proc.wait()


def test_an_async_holder_renews_its_lease_past_it(
    cache: RedisCache, redis_client: redis.Redis
) -> None:
    keys = cache.keyspace.for_step("long")
    seen: list[int] = []

    async def work() -> str:
        for _ in range(6):  # 1.8 s under a 1 s lease
            await asyncio.sleep(0.3)
            seen.append(redis_client.exists(keys.lock))
        return "done"

    async def main() -> Any:
        async def body(step: Any) -> Any:
            return await step(work, key="long")

        result = await create_workflow(cache=cache)(body)
        await cache.aclose()
        return result

    assert asyncio.run(main()).value == "done"
    assert seen == [1] * 6 and redis_client.exists(keys.lock) == 0


def test_each_event_loop_gets_its_own_pool(cache: RedisCache) -> None:
    views = []

    async def once() -> Any:
        view = cache.for_async()
        views.append(view)
        assert cache.for_async() is view

        async def body(step: Any) -> Any:
            return await step(lambda: 7, key="seven")

        result = await create_workflow(cache=cache)(body)
        await cache.aclose()
        return result.value

    assert asyncio.run(once()) == asyncio.run(once()) == 7
    first, second = views
    assert first is not None and second is not None
    assert first is not second and first.client is not second.client


def test_an_unreachable_server_is_cache_unavailable_in_async_workflows() -> None:
    from workflow_cache import CacheUnavailable

    cache = RedisCache("redis://127.0.0.1:1/0", namespace="down", connect_timeout=0.5)

    async def main() -> Any:
        async def body(step: Any) -> Any:
            return await step(lambda: 1, key="k")

        try:
            return await create_workflow(cache=cache)(body)
        finally:
            await cache.aclose()

    with pytest.raises(CacheUnavailable, match=r"127\.0\.0\.1:1"):
        asyncio.run(main())


def test_a_cancelled_async_holder_releases_the_key_at_once(
    cache: RedisCache, redis_client: redis.Redis
) -> None:
    keys = cache.keyspace.for_step("cancelled")

    async def main() -> Any:
        started = asyncio.Event()

        async def work() -> str:
            started.set()
            await asyncio.sleep(30)
            return "never"

        async def body(step: Any) -> Any:
            return await step(work, key="cancelled")

        running = asyncio.ensure_future(create_workflow(cache=cache)(body))
        await started.wait()
        assert redis_client.exists(keys.lock) == 1
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
        for _ in range(200):  # the release is a task of its own on this loop
            if not redis_client.exists(keys.lock):
                break
            await asyncio.sleep(0.01)
        await cache.aclose()

    asyncio.run(main())
    assert redis_client.exists(keys.lock) == 0  # released, not left to its lease


def test_async_waiters_survive_a_dropped_pubsub_connection(
    redis_url: str, namespace: str, redis_client: redis.Redis
) -> None:
    from workflow_cache.cache.aio import AsyncFlight
    from workflow_cache.cache.claims import Claims
    from workflow_cache.cache.keys import KeySpace
    from workflow_cache.cache.protocol import Claimed, Done

    keys = KeySpace(namespace).for_step("k")
    other = Claims(redis_client).claim(keys, "other", 600_000)  # only a notice ends the wait
    assert isinstance(other, Claimed)

    def subscribers() -> int:
        return int(redis_client.pubsub_numsub(keys.channel)[0][1])

    async def main() -> object:
        client = redis.asyncio.Redis.from_url(redis_url)
        flight = AsyncFlight(client, KeySpace(namespace), lease=600, where=redis_url)
        waiting = asyncio.ensure_future(flight.acquire("k"))
        while subscribers() == 0:
            await asyncio.sleep(0.01)  # polling pace: lets the waiter subscribe
        assert redis_client.client_kill_filter(_type="pubsub") >= 1
        assert subscribers() == 0
        while subscribers() == 0:
            await asyncio.sleep(0.01)  # polling pace: lets the listener resubscribe
        assert Claims(redis_client).commit(keys, other, b"after reconnect")
        got = await asyncio.wait_for(waiting, 30)
        await flight.aclose()
        await client.aclose()
        return got

    assert asyncio.run(main()) == Done(b"after reconnect")


def _calls(client: redis.Redis) -> dict[str, int]:
    """Commands the server ran since its last CONFIG RESETSTAT, by name."""
    stats = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(row["calls"]) for name, row in stats.items()}


def test_hits_asked_for_in_one_iteration_are_read_in_mgets_of_at_most_128_keys(
    redis_url: str, namespace: str, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WORKFLOW_CACHE_ASYNC_SLICE", "0")  # no pacing: all start at once
    cache = RedisCache(redis_url, namespace=namespace)  # reads the settings first
    workflow = create_workflow(cache=cache)
    n = 300
    keys = [f"k{i}" for i in range(n)]
    workflow(lambda step: step.all([lambda i=i: i for i in range(n)], keys=keys))

    def one(i: int) -> Any:
        async def body(step: Any) -> Any:
            return await step(lambda: -1, key=keys[i])

        return body

    async def main() -> list[Any]:
        await workflow(one(0))  # connections and scripts made before counting
        redis_client.config_resetstat()
        results = await asyncio.gather(*(workflow(one(i)) for i in range(n)))
        await cache.aclose()
        return [r.value for r in results]

    assert asyncio.run(main()) == list(range(n))
    calls = _calls(redis_client)
    assert calls.get("get", 0) == 0
    assert calls["mget"] == 3, calls  # 128 + 128 + 44 keys
    cache.clear()
    cache.close()


def test_a_cancelled_reader_leaves_the_others_of_its_batch_their_rows(cache: RedisCache) -> None:
    workflow = create_workflow(cache=cache)
    workflow(lambda step: step.all([lambda: "a", lambda: "b"], keys=["a", "b"]))

    async def main() -> Any:
        view = cache.for_async()
        assert view is not None
        first = asyncio.ensure_future(view.load("a"))
        second = asyncio.ensure_future(view.load("b"))
        await asyncio.sleep(0)  # both asked in one iteration: one batch
        first.cancel()
        got = await second
        await asyncio.gather(first, return_exceptions=True)
        await cache.aclose()
        return first.cancelled(), got

    cancelled, got = asyncio.run(main())
    assert cancelled
    assert got is not None and got.to_result("b", None).value == "b"


class _Monitor:
    """The commands clients send (not those scripts run), as ``MONITOR`` shows them."""

    def __init__(self, client: redis.Redis, end: str) -> None:
        self.end = end
        self.commands: list[str] = []
        monitor = client.monitor()  # takes a connection of the client's pool
        client.ping()  # and the ECHO that ends it gets its own before monitoring starts
        self._monitor = monitor.__enter__()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        for entry in self._monitor.listen():
            if entry["command"] == f"ECHO {self.end}":
                return
            if entry.get("client_type") != "lua":
                self.commands.append(entry["command"].split(" ", 1)[0].upper())

    def stop(self, client: redis.Redis) -> list[str]:
        client.echo(self.end)
        self._thread.join(10)
        self._monitor.__exit__(None, None, None)
        return self.commands


def test_a_cold_miss_is_three_round_trips(cache: RedisCache, redis_client: redis.Redis) -> None:
    """Read, claim, commit: each command waits for the one before, so three commands are
    three round trips (a cold miss subscribes to nothing: only waiters do)."""
    workflow = create_workflow(cache=cache)

    async def main() -> tuple[Any, list[str]]:
        async def body(step: Any) -> Any:
            return await step(lambda: "made", key="cold")

        async def warm(step: Any) -> Any:
            return await step(lambda: "warm", key="warm")

        await workflow(warm)  # connections, presence and scripts made before counting
        monitor = _Monitor(redis_client, f"end-{cache.namespace}")
        result = await workflow(body)
        sent = monitor.stop(redis_client)
        await cache.aclose()
        return result.value, sent

    value, sent = asyncio.run(main())
    assert value == "made"
    assert sent == ["MGET", "EVALSHA", "EVALSHA"], sent
