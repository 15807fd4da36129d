"""Retries, backoff, jitter and timeouts of local steps, sync and async, alone and under a claim."""

from __future__ import annotations

import asyncio
import itertools
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import redis

from tests.waiting import wait_until, wait_until_async
from workflow_cache import RedisCache, UnexpectedError, create_workflow, err
from workflow_cache.retries import RetryPolicy

ROOT = Path(__file__).resolve().parent.parent


def run(workflow, fn, is_async: bool):  # type: ignore[no-untyped-def]
    if not is_async:
        return workflow(lambda step: fn(step))

    async def body(step):  # type: ignore[no-untyped-def]
        return await fn(step)

    return asyncio.run(workflow(body))


def failing(times: int, value: object = "done"):  # type: ignore[no-untyped-def]
    calls: list[float] = []

    def thunk():  # type: ignore[no-untyped-def]
        calls.append(time.monotonic())
        if len(calls) <= times:
            raise ConnectionError(f"attempt {len(calls)}")
        return value

    return thunk, calls


def failing_async(times: int, value: object = "done"):  # type: ignore[no-untyped-def]
    sync, calls = failing(times, value)

    async def thunk():  # type: ignore[no-untyped-def]
        await asyncio.sleep(0)
        return sync()

    return thunk, calls


THUNKS = {"sync": failing, "async": failing_async}


@pytest.mark.parametrize("is_async", [False, True], ids=["sync-workflow", "async-workflow"])
@pytest.mark.parametrize("kind", ["sync", "async"], ids=["sync-thunk", "async-thunk"])
def test_exceptions_are_retried_until_an_attempt_succeeds(is_async, kind) -> None:  # type: ignore[no-untyped-def]
    if kind == "async" and not is_async:
        pass  # an async thunk in a sync workflow runs on a private loop: covered too
    thunk, calls = THUNKS[kind](2)
    workflow = create_workflow(cache={})
    result = run(workflow, lambda step: step(thunk, key="k", retries=2), is_async)
    assert result.value == "done" and len(calls) == 3


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_the_last_failure_is_the_outcome_and_is_not_cached(is_async) -> None:  # type: ignore[no-untyped-def]
    thunk, calls = failing(5)
    cache: dict = {}
    workflow = create_workflow(cache=cache)
    result = run(workflow, lambda step: step(thunk, key="k", retries=2), is_async)
    assert isinstance(result.error, UnexpectedError)
    assert result.error.type == "ConnectionError" and result.error.message == "attempt 3"
    assert len(calls) == 3 and "k" not in cache


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_a_returned_err_is_an_answer_not_a_failure(is_async) -> None:  # type: ignore[no-untyped-def]
    calls = []

    def thunk():  # type: ignore[no-untyped-def]
        calls.append(1)
        return err("NOT_FOUND")

    workflow = create_workflow(cache={})
    result = run(workflow, lambda step: step(thunk, key="k", retries=3), is_async)
    assert result.error == "NOT_FOUND" and calls == [1]


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_delays_grow_with_backoff(is_async) -> None:  # type: ignore[no-untyped-def]
    thunk, calls = failing(3)
    workflow = create_workflow(cache={}, retries=3, retry_delay=0.05, retry_backoff=2)
    assert run(workflow, lambda step: step(thunk, key="k"), is_async).value == "done"
    gaps = [b - a for a, b in itertools.pairwise(calls)]
    assert gaps[0] >= 0.05 and gaps[1] >= 0.1 and gaps[2] >= 0.2


def test_jitter_stays_within_its_band_and_varies() -> None:
    policy = RetryPolicy(retries=3, retry_delay=1.0, retry_backoff=2.0, retry_jitter=0.25)
    seen = {policy.delay(2) for _ in range(50)}
    assert all(1.5 <= d <= 2.5 for d in seen) and len(seen) > 1
    assert RetryPolicy(retries=1, retry_delay=1.0).delay(1) == 1.0


def test_step_options_override_workflow_defaults() -> None:
    thunk, calls = failing(1)
    workflow = create_workflow(cache={}, retries=5)
    result = workflow(lambda step: step(thunk, key="k", retries=0))
    assert not result.ok and len(calls) == 1


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"retries": -1}, "retries"),
        ({"retries": 1.5}, "retries"),
        ({"retry_delay": "P1X"}, "retry_delay"),
        ({"retry_backoff": 0.5}, "retry_backoff"),
        ({"retry_jitter": 2}, "retry_jitter"),
        ({"timeout": 0}, "timeout"),
    ],
)
def test_bad_retry_options_name_the_option(options, message) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises((TypeError, ValueError), match=message):
        create_workflow(cache={}, **options)
    with pytest.raises((TypeError, ValueError), match=message):
        create_workflow(cache={})(lambda step: step(lambda: 1, key="k", **options))


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("kind", ["sync", "async"], ids=["sync-thunk", "async-thunk"])
def test_a_timeout_ends_the_attempt_with_a_timeout_error(is_async, kind) -> None:  # type: ignore[no-untyped-def]
    release = threading.Event()
    returned: list[str] = []

    def slow():  # type: ignore[no-untyped-def]
        release.wait(60)
        returned.append("sync")

    async def slow_async():  # type: ignore[no-untyped-def]
        await asyncio.sleep(60)
        returned.append("async")

    thunk = slow if kind == "sync" else slow_async
    cache: dict = {}
    workflow = create_workflow(cache=cache)
    try:
        result = run(
            workflow, lambda step: step(thunk, key="slow", timeout=0.2, retries=1), is_async
        )
        assert returned == []  # both attempts gave up while their thunks still ran
    finally:
        release.set()
    assert isinstance(result.error, UnexpectedError) and result.error.type == "TimeoutError"
    assert "'slow'" in result.error.message and "0.2 s" in result.error.message
    assert "attempt 2 of 2" in result.error.message
    assert "slow" not in cache


def test_a_timed_out_async_thunk_is_cancelled() -> None:
    finished = []

    async def slow():  # type: ignore[no-untyped-def]
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            finished.append("cancelled")
            raise

    async def main():  # type: ignore[no-untyped-def]
        async def body(step):  # type: ignore[no-untyped-def]
            return await step(slow, key="k", timeout=0.1)

        result = await create_workflow(cache={})(body)
        await wait_until_async(lambda: finished, "the thunk to see its cancellation")
        return result

    assert asyncio.run(main()).error.type == "TimeoutError"
    assert finished == ["cancelled"]


def test_a_loop_stays_responsive_while_a_sync_thunk_runs_under_a_timeout() -> None:
    ticked = threading.Event()  # set by the loop: the thunk waits for it

    async def main():  # type: ignore[no-untyped-def]
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1
                if ticks == 5:
                    ticked.set()

        tick = asyncio.ensure_future(ticker())

        def thunk() -> str:  # blocks until the loop has ticked 5 times
            return "ticked" if ticked.wait(30) else "the loop was blocked"

        async def body(step):  # type: ignore[no-untyped-def]
            return await step(thunk, key="k", timeout=60)

        result = await create_workflow(cache={})(body)
        tick.cancel()
        return result

    assert asyncio.run(main()).value == "ticked"  # the thunk ran in a thread


# ------------------------------------------------------------------ under a Redis claim

WAITER = r"""
import json, sys
from tests.waiting import wait_until, wait_until_async
from workflow_cache import RedisCache, create_workflow
url, namespace = sys.argv[1], sys.argv[2]
cache = RedisCache(url, namespace=namespace, lease=float(sys.argv[3]))
def mine():
    cache.client.incr(namespace + ":waiter-ran")
    return "from the waiter"
result = create_workflow(cache=cache)(lambda step: step(mine, key="retried"))
print("RESULT", json.dumps([result.ok, result.value]), flush=True)
"""


def test_retries_happen_inside_one_claim_while_waiters_wait(
    redis_url: str, namespace: str, redis_client: redis.Redis
) -> None:
    lease = 0.6
    cache = RedisCache(redis_url, namespace=namespace, lease=lease)
    channel = cache.keyspace.for_step("retried").channel
    attempts: list[int] = []

    def thunk():  # type: ignore[no-untyped-def]
        attempts.append(1)
        if len(attempts) == 1:  # wait until the other process is waiting on our claim
            wait_until(
                lambda: redis_client.pubsub_numsub(channel)[0][1],
                "the waiter process to subscribe to the key's channel",
            )
            raise ConnectionError("first")
        if len(attempts) == 2:
            time.sleep(lease * 1.5)  # longer than the lease: only renewal keeps the claim
            raise ConnectionError("second")
        return "from the holder"

    box: list[object] = []
    holder = threading.Thread(
        target=lambda: box.append(
            create_workflow(cache=cache)(
                lambda step: step(thunk, key="retried", retries=2, retry_delay=lease)
            )
        )
    )
    holder.start()
    wait_until(lambda: attempts, "the holder's first attempt")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    waiter = subprocess.run(
        [sys.executable, "-c", WAITER, redis_url, namespace, str(lease)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    holder.join(60)
    assert waiter.returncode == 0, waiter.stderr
    assert 'RESULT [true, "from the holder"]' in waiter.stdout
    assert box[0].value == "from the holder"  # type: ignore[attr-defined]
    assert len(attempts) == 3
    assert redis_client.get(namespace + ":waiter-ran") is None
    cache.clear()
    cache.close()


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_a_timeout_under_a_claim_reaches_waiters_and_frees_the_key(
    redis_url: str, namespace: str, redis_client: redis.Redis, is_async: bool
) -> None:
    holder_cache = RedisCache(redis_url, namespace=namespace, lease=1.0)
    waiter_cache = RedisCache(redis_url, namespace=namespace, lease=1.0)
    keys = holder_cache.keyspace.for_step("slow")
    started = threading.Event()

    def slow():  # type: ignore[no-untyped-def]
        started.set()
        time.sleep(3)

    waited: list[object] = []

    def waiter() -> None:
        started.wait(30)
        waited.append(create_workflow(cache=waiter_cache)(lambda step: step(lambda: 1, key="slow")))

    thread = threading.Thread(target=waiter)
    thread.start()
    result = run(
        create_workflow(cache=holder_cache),
        lambda step: step(slow, key="slow", timeout=0.5),
        is_async,
    )
    thread.join(30)
    assert result.error.type == "TimeoutError"
    assert redis_client.exists(keys.lock) == 0 and redis_client.exists(keys.out) == 0
    outcome = waited[0]
    # the waiter either received the holder's timeout or claimed after it and ran
    assert outcome.error == result.error or outcome.value == 1  # type: ignore[attr-defined]
    again = create_workflow(cache=holder_cache)(lambda step: step(lambda: "ran", key="slow"))
    assert again.value == "ran"  # not remembered: the next run executes
    for cache in (holder_cache, waiter_cache):
        cache.clear()
        cache.close()


def test_retry_options_on_a_celery_signature_are_refused(redis_url: str, namespace: str) -> None:
    from celery import Celery

    from workflow_cache.distributed import CeleryDispatcher

    app = Celery("retry-options", broker=redis_url)

    @app.task(name="retry_options.add")
    def add(a: int, b: int) -> int:
        return a + b

    cache = RedisCache(redis_url, namespace=namespace)
    workflow = create_workflow(cache=cache, dispatcher=CeleryDispatcher(app, cache), retries=2)

    def send(step, **options):  # type: ignore[no-untyped-def]
        return step(add.s(1, 2), key="sum", **options)

    with pytest.raises(TypeError, match="Celery task keeps its own"):
        workflow(lambda step: send(step, retries=1))
    with pytest.raises(TypeError, match="Celery task keeps its own"):
        workflow(lambda step: send(step, timeout=5))
    cache.close()
