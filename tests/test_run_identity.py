"""A named run (``workflow(fn, run_id=...)``): its outcome is its identity, across processes."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from typing import Any

import pytest
import redis

from tests.waiting import wait_until
from workflow_cache import RedisCache, create_workflow, err
from workflow_cache.distributed import outcome_of


class CountingCache:
    """A dict cache that counts the reads and writes the workflow asks of it."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}
        self.reads = 0
        self.writes = 0

    def get(self, key: str) -> Any:
        self.reads += 1
        return self.data.get(key)

    def has(self, key: str) -> bool:
        self.reads += 1
        return key in self.data

    def set(self, key: str, value: Any, ttl: float | None = None) -> None:
        self.writes += 1
        self.data[key] = value

    def delete(self, key: str) -> None:
        self.data.pop(key, None)


def test_a_finished_run_id_returns_its_outcome_in_one_read_without_running() -> None:
    cache = CountingCache()
    bodies: list[int] = []

    def thousand_steps(step: Any) -> int:
        bodies.append(1)
        return sum(step(lambda i=i: i, key=f"n:{i}") for i in range(1000))

    workflow = create_workflow({}, cache=cache)
    first = workflow(thousand_steps, run_id="big")
    assert first.value == sum(range(1000)) and bodies == [1]
    cache.reads = cache.writes = 0
    again = workflow(thousand_steps, run_id="big")
    assert again == first
    assert bodies == [1]  # the body did not run again
    assert (cache.reads, cache.writes) == (1, 0)


def test_an_err_outcome_is_the_run_id_outcome_too() -> None:
    workflow = create_workflow({}, cache={})
    assert workflow(lambda step: err("card declined"), run_id="pay-1") == err("card declined")
    assert workflow(lambda step: "paid", run_id="pay-1") == err("card declined")
    assert workflow(lambda step: "paid", run_id="pay-2").value == "paid"


def test_an_async_named_run_runs_once() -> None:
    bodies: list[int] = []

    async def body(step: Any) -> int:
        bodies.append(1)
        return int(await step(lambda: 20, key="twenty")) + 1

    workflow = create_workflow({}, cache={})
    assert asyncio.run(workflow(body, run_id="a")).value == 21
    assert asyncio.run(workflow(body, run_id="a")).value == 21
    assert bodies == [1]


@pytest.mark.parametrize("run_id", ["", 42])
def test_a_run_id_must_be_a_non_empty_string(run_id: Any) -> None:
    with pytest.raises(TypeError, match="run id"):
        create_workflow({}, cache={})(lambda step: 1, run_id=run_id)


_RACER = textwrap.dedent(
    """
    import sys, time, redis
    from workflow_cache import RedisCache, create_workflow

    url, namespace, name = sys.argv[1:4]
    client = redis.Redis.from_url(url, socket_timeout=None)  # it blocks in BLPOP

    def body(step):
        client.rpush(f"{namespace}:bodies", name)
        # stay inside the body until the test lets go, so the other racer arrives meanwhile
        client.blpop([f"{namespace}:go"], timeout=60)
        return f"made by {name}"

    workflow = create_workflow({}, cache=RedisCache(url, namespace=namespace, lease=5))
    client.rpush(f"{namespace}:ready", name)
    print(workflow(body, run_id="order-42").value, flush=True)
    """
)


def test_processes_racing_on_one_run_id_run_the_body_once(
    redis_url: str, namespace: str, redis_client: redis.Redis
) -> None:
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", _RACER, redis_url, namespace, name],
            stdout=subprocess.PIPE,
            text=True,
        )
        for name in ("a", "b", "c")
    ]
    try:
        wait_until(lambda: redis_client.llen(f"{namespace}:ready") == 3, "every racer started")
        wait_until(lambda: redis_client.llen(f"{namespace}:bodies") >= 1, "one body running")
        cache = RedisCache(redis_url, namespace=namespace)
        # the others wait on the run's claim rather than running the body themselves
        wait_until(
            lambda: redis_client.pubsub_numsub(*_done_channels(redis_client, namespace))[0][1] >= 1,
            "a racer waiting on the run's outcome",
        )
        redis_client.rpush(f"{namespace}:go", "1")
        outputs = {racer.communicate(timeout=60)[0].strip() for racer in racers}
    finally:
        for racer in racers:
            racer.kill()
    assert redis_client.llen(f"{namespace}:bodies") == 1
    (winner,) = redis_client.lrange(f"{namespace}:bodies", 0, -1)
    assert outputs == {f"made by {winner.decode()}"}
    # a workflow task's outcome reader finds a named local run under the same id
    assert outcome_of(cache, "order-42", timeout=5).value == f"made by {winner.decode()}"


def _done_channels(client: redis.Redis, namespace: str) -> list[str]:
    channels = [c.decode() for c in client.pubsub_channels(f"*{namespace}*run:order-42*")]
    return channels or [f"wfc:{namespace}:{{run:order-42}}:done"]
