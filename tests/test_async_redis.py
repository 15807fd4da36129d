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
    threads_before = threading.active_count()
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

        results = await asyncio.gather(*(workflow(body) for _ in range(20)))
        during = threading.active_count()
        await cache.aclose()
        return results, during

    results, threads_during = asyncio.run(main())
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
