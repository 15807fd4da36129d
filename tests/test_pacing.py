"""A burst of async workflow starts is spread over loop iterations, in order, and none is lost."""

from __future__ import annotations

import asyncio
import gc
import os
import subprocess
import sys
import weakref
from collections import Counter
from collections.abc import Callable

import pytest
import redis

from tests.loops import Iterations, busy
from tests.waiting import wait_until_async
from workflow_cache import RedisCache, create_workflow, pacing
from workflow_cache.pacing import Pacer


async def _through(pacer: Pacer) -> None:
    turn = pacer.enter()
    if turn is not None:
        await turn


def test_a_burst_takes_at_most_one_slice_per_iteration_and_keeps_its_order() -> None:
    async def main() -> tuple[list[int], list[int]]:
        pacer = Pacer(0.002)
        iterations = Iterations()
        order: list[int] = []
        seen: list[int] = []

        async def start(i: int) -> None:
            await _through(pacer)
            order.append(i)
            seen.append(iterations.count)
            busy(0.0005)  # 4 starts fill the 2 ms slice

        await asyncio.gather(*(start(i) for i in range(200)))
        iterations.stop()
        return order, seen

    order, seen = asyncio.run(main())
    assert order == list(range(200))  # first come, first through
    per_iteration = Counter(seen)
    assert max(per_iteration.values()) <= 4
    assert len(per_iteration) >= 50


def test_without_pressure_every_start_goes_through_at_once() -> None:
    async def main() -> list[bool]:
        pacer = Pacer(0.002)
        waited = []
        for _ in range(50):  # one start per iteration: never over the slice
            waited.append(pacer.enter() is not None)
            await asyncio.sleep(0)
        return waited

    assert asyncio.run(main()) == [False] * 50


def test_a_cancelled_waiter_gives_its_place_up() -> None:
    async def main() -> list[int]:
        pacer = Pacer(0.001)
        done: list[int] = []
        turns: dict[int, asyncio.Future[None] | None] = {}

        async def start(i: int) -> None:
            turn = turns[i] = pacer.enter()
            if turn is not None:
                await turn
            done.append(i)
            busy(0.001)

        tasks = [asyncio.ensure_future(start(i)) for i in range(20)]
        await wait_until_async(
            lambda: all((t := turns.get(i)) is not None and not t.done() for i in (5, 6)),
            "tasks 5 and 6 to wait at the gate",
        )
        tasks[5].cancel()
        tasks[6].cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert [type(r) for r in results[5:7]] == [asyncio.CancelledError] * 2
        return done

    assert asyncio.run(main()) == [i for i in range(20) if i not in (5, 6)]


def test_async_workflows_started_together_are_paced(redis_url: str, namespace: str) -> None:
    cache = RedisCache(redis_url, namespace=namespace)
    workflow = create_workflow(cache=cache)

    async def main() -> tuple[list[object], list[int]]:
        iterations = Iterations()
        began: list[int] = []

        def flow(i: int) -> Callable[..., object]:
            async def body(step):  # type: ignore[no-untyped-def]
                began.append(iterations.count)
                busy(0.0002)
                return await step(lambda: i * 2, key=f"paced:{i}")

            return body

        results = await asyncio.gather(*(workflow(flow(i)) for i in range(300)))
        iterations.stop()
        await cache.aclose()
        return [r.value for r in results], began

    values, began = asyncio.run(main())
    assert values == [i * 2 for i in range(300)]
    per_iteration = Counter(began)
    assert max(per_iteration.values()) <= 1 + int(pacing.DEFAULT_SLICE / 0.0002)
    assert len(per_iteration) >= 300 * 0.0002 / pacing.DEFAULT_SLICE


def test_misses_of_one_step_all_are_paced_and_run_once(redis_url: str, namespace: str) -> None:
    cache = RedisCache(redis_url, namespace=namespace)
    workflow = create_workflow(cache=cache)
    runs: Counter[int] = Counter()

    async def main() -> tuple[list[int], list[int]]:
        iterations = Iterations()
        ran_in: list[int] = []

        def thunk(i: int) -> Callable[[], int]:
            def run() -> int:
                runs[i] += 1
                ran_in.append(iterations.count)
                busy(0.0002)
                return i

            return run

        async def body(step):  # type: ignore[no-untyped-def]
            return await step.all(
                [thunk(i) for i in range(200)], keys=[f"m:{i}" for i in range(200)]
            )

        result = await workflow(body)
        iterations.stop()
        await cache.aclose()
        return result.value, ran_in

    values, ran_in = asyncio.run(main())
    assert values == list(range(200))
    assert set(runs.values()) == {1}
    # Cheap passages (sending a claim) and dear ones (running a thunk) share the queue:
    # one batch sized on cheap ones may overrun, then batches fit the slice again.
    per_iteration = sorted(Counter(ran_in).values())
    assert per_iteration[-2] <= 1 + int(pacing.DEFAULT_SLICE / 0.0002)
    assert per_iteration[-1] <= 50


@pytest.mark.parametrize(("setting", "expected"), [("0", "None"), ("0.004", "0.004")])
def test_the_slice_comes_from_the_settings(setting: str, expected: str) -> None:
    code = (
        "import asyncio\n"
        "from workflow_cache import pacing\n"
        "async def main():\n"
        "    found = pacing.pacer()\n"
        "    print(None if found is None else found._slice)\n"
        "asyncio.run(main())\n"
    )
    env = {**os.environ, "WORKFLOW_CACHE_ASYNC_SLICE": setting}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    assert done.stdout.strip() == expected


def test_a_workflow_cancelled_while_paced_after_its_claim_releases_it(
    redis_url: str, namespace: str, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pacer's wait after a claim is inside the claim's clean-up: cancelling it there
    releases the claim at once instead of leaving the key held until the lease ends."""
    cache = RedisCache(redis_url, namespace=namespace, lease=30)
    workflow = create_workflow(cache=cache)
    lock = cache.keyspace.for_step("held").lock
    ran: list[int] = []

    class HeldAfterClaim(Pacer):
        """Lets the start and the miss through; the third passage (after the claim) waits."""

        passages = 0

        def enter(self) -> asyncio.Future[None] | None:
            self.passages += 1
            if self.passages < 3:
                return None
            held = asyncio.get_running_loop().create_future()
            at_gate.set_result(None)
            return held

    async def main() -> None:
        nonlocal at_gate
        at_gate = asyncio.get_running_loop().create_future()
        gate = HeldAfterClaim()
        monkeypatch.setattr(pacing, "pacer", lambda: gate)

        async def body(step):  # type: ignore[no-untyped-def]
            return await step(lambda: ran.append(1), key="held")

        run = asyncio.ensure_future(workflow(body))
        await at_gate
        assert redis_client.exists(lock)
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run
        await wait_until_async(  # the release runs on the loop
            lambda: not redis_client.exists(lock), "the cancelled claim's lock to go", interval=0.01
        )
        await cache.aclose()

    at_gate: asyncio.Future[None]
    asyncio.run(main())
    assert ran == []
    assert not redis_client.exists(lock)


def test_a_finished_loop_is_not_kept_alive_by_its_pacer() -> None:
    loops: list[weakref.ref[asyncio.AbstractEventLoop]] = []

    async def body(step):  # type: ignore[no-untyped-def]
        return await step(lambda: 1)

    async def main() -> None:
        loops.append(weakref.ref(asyncio.get_running_loop()))
        workflow = create_workflow()
        await asyncio.gather(*(workflow(body) for _ in range(50)))
        assert pacing.pacer() is not None

    asyncio.run(main())
    gc.collect()
    assert loops[0]() is None
