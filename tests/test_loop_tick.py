"""No single loop iteration does a whole burst's work: answered reads and scripts wake their
callers a slice at a time, one iteration's scripts travel as bounded pipelines, and a
renewal round starts a bounded chunk of renewals per iteration."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence
from typing import Any

import pytest
import redis
import redis.asyncio

from tests.loops import Iterations, busy
from workflow_cache import RedisCache, create_workflow
from workflow_cache.cache.aio import AsyncFlight, AsyncHolder
from workflow_cache.cache.coalesce import Coalesced
from workflow_cache.cache.keys import KeySpace
from workflow_cache.cache.protocol import Call


def test_answered_rows_wake_their_callers_a_slice_per_iteration_in_order() -> None:
    slice_s, work_s, n = 0.002, 0.0005, 150  # more than the first batch, sized on a guess

    async def fetch(names: Sequence[Any]) -> list[Any]:
        await asyncio.sleep(0)
        return [f"row {name}" for name in names]

    async def main() -> tuple[list[Any], Counter[int]]:
        reads = Coalesced(fetch, slice_s)
        iterations = Iterations()
        woken: Counter[int] = Counter()
        order: list[Any] = []

        async def caller(i: int) -> None:
            row = await reads.get(i)
            woken[iterations.count] += 1
            order.append(row)
            busy(work_s)

        await asyncio.gather(*(caller(i) for i in range(n)))
        iterations.stop()
        await reads.aclose()
        return order, woken

    order, woken = asyncio.run(main())
    assert order == [f"row {i}" for i in range(n)]  # each its own row, in the order asked
    assert len(woken) > 1  # not all in one iteration
    # After the first batch (sized on a guess), each batch is sized on the cost measured:
    # every woken caller holds the loop work_s, so a slice fits at most slice/work_s.
    later = [count for _, count in sorted(woken.items())[1:]]
    assert max(later) <= slice_s / work_s, woken


def test_without_a_slice_every_caller_is_woken_at_once() -> None:
    async def fetch(names: Sequence[Any]) -> list[Any]:
        return list(names)

    async def main() -> Counter[int]:
        reads = Coalesced(fetch)
        iterations = Iterations()
        woken: Counter[int] = Counter()

        async def caller(i: int) -> None:
            assert await reads.get(i) == i
            woken[iterations.count] += 1

        await asyncio.gather(*(caller(i) for i in range(300)))
        iterations.stop()
        return woken

    woken = asyncio.run(main())
    # Three MGETs answered in one iteration (the fetch waits for nothing): all go on at
    # the next one.
    assert list(woken.values()) == [300]


def test_a_row_that_is_an_exception_is_raised_to_its_caller_alone() -> None:
    async def fetch(names: Sequence[Any]) -> list[Any]:
        return [ValueError(name) if name == "bad" else name for name in names]

    async def main() -> list[Any]:
        reads = Coalesced(fetch, 0.001)
        return await asyncio.gather(
            reads.get("a"), reads.get("bad"), reads.get("b"), return_exceptions=True
        )

    a, bad, b = asyncio.run(main())
    assert (a, b) == ("a", "b")
    assert isinstance(bad, ValueError) and str(bad) == "bad"


def test_a_caller_cancelled_before_the_send_is_left_out_of_the_batch() -> None:
    sent: list[list[Any]] = []

    async def fetch(names: Sequence[Any]) -> list[Any]:
        sent.append(list(names))
        return list(names)

    async def main() -> Any:
        reads = Coalesced(fetch, 0.001)
        gone = reads.get("gone")
        kept = reads.get("kept")
        gone.cancel()
        return await kept

    assert asyncio.run(main()) == "kept"
    assert sent == [["kept"]]


class _Counting(AsyncFlight):
    """Records the size of each pipeline of scripts the flight sends."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.batches: list[Counter[str]] = []

    async def _pipelined(self, calls: Sequence[Call], load: bool = True) -> list[Any]:
        if load:  # a batch as sent; load=False is its calls again after SCRIPT LOAD
            self.batches.append(Counter(call.script for call in calls))
        return await super()._pipelined(calls, load)


def test_the_scripts_of_one_iteration_go_as_pipelines_of_at_most_128(
    redis_url: str, namespace: str
) -> None:
    n = 300

    async def main() -> tuple[list[Counter[str]], int]:
        client = redis.asyncio.Redis.from_url(redis_url)
        flight = _Counting(client, KeySpace(namespace), lease=30, where=redis_url)
        warm = await flight.acquire("warm")  # scripts loaded before counting
        assert isinstance(warm, AsyncHolder)
        await warm.commit(b"warm")
        flight.batches.clear()
        holders = await asyncio.gather(*(flight.acquire(f"k{i}") for i in range(n)))
        assert all(isinstance(h, AsyncHolder) for h in holders)
        committed = await asyncio.gather(
            *(h.commit(b"done") for h in holders if isinstance(h, AsyncHolder))
        )
        await flight.aclose()
        await client.aclose()
        return flight.batches, sum(committed)

    batches, committed = asyncio.run(main())
    assert committed == n
    assert sum(b["claim"] for b in batches) == n and sum(b["commit"] for b in batches) == n
    assert max(sum(b.values()) for b in batches) <= Coalesced.BATCH
    steps = [b for b in batches if b["claim"] or b["commit"]]  # not a renewal round
    assert len(steps) <= 2 * -(-n // Coalesced.BATCH)  # 3 pipelines to claim, 3 to commit


def test_async_misses_after_script_flush_load_the_scripts_and_run_each_step_once(
    redis_url: str, namespace: str, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WORKFLOW_CACHE_ASYNC_SLICE", "0")  # every claim in one iteration
    cache = RedisCache(redis_url, namespace=namespace)
    workflow = create_workflow(cache=cache)
    ran: Counter[int] = Counter()

    def one(i: int) -> Any:
        def work() -> int:
            ran[i] += 1
            return i

        async def body(step: Any) -> Any:
            return await step(work, key=f"k{i}")

        return body

    async def main() -> list[Any]:
        await workflow(one(-1))  # the scripts are known, then forgotten
        redis_client.script_flush()
        results = await asyncio.gather(*(workflow(one(i)) for i in range(50)))
        await cache.aclose()
        return [r.value for r in results]

    assert asyncio.run(main()) == list(range(50))
    assert all(ran[i] == 1 for i in range(50))
    assert cache.get("k7") is not None
    cache.clear()
    cache.close()


def test_a_renewal_round_starts_a_chunk_of_renewals_per_iteration(
    redis_url: str, namespace: str
) -> None:
    n = 150

    async def main() -> tuple[Counter[int], int]:
        client = redis.asyncio.Redis.from_url(redis_url)
        flight = AsyncFlight(client, KeySpace(namespace), lease=600, where=redis_url)
        holders = [await flight.acquire(f"k{i}") for i in range(n)]
        assert all(isinstance(h, AsyncHolder) for h in holders)
        iterations = Iterations()
        started: Counter[int] = Counter()
        renewed = asyncio.Event()
        plain = AsyncHolder.renew

        async def renew(holder: AsyncHolder) -> None:
            started[iterations.count] += 1
            await plain(holder)
            if sum(started.values()) == n:
                renewed.set()

        AsyncHolder.renew = renew  # type: ignore[method-assign]
        try:
            flight._renew_now.set()  # a renewal round now, as a new presence id asks
            await asyncio.wait_for(renewed.wait(), 30)
        finally:
            AsyncHolder.renew = plain  # type: ignore[method-assign]
        iterations.stop()
        alive = sum(not h.lost for h in holders if isinstance(h, AsyncHolder))
        for holder in holders:
            if isinstance(holder, AsyncHolder):
                await holder.release()
        await flight.aclose()
        await client.aclose()
        return started, alive

    started, alive = asyncio.run(main())
    assert alive == n
    assert sum(started.values()) == n
    assert max(started.values()) <= AsyncFlight.RENEW_CHUNK
    assert len(started) == -(-n // AsyncFlight.RENEW_CHUNK)
