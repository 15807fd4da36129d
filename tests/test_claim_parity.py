"""The blocking and the asyncio driver of the claim protocol do the same thing.

Each scenario runs once through ``SingleFlight`` and once through ``AsyncFlight``
against a real redis-server, each in a namespace of its own. The plan is sans-IO, so a
recording driver sees every effect it yields (script, KEYS, ARGV; subscription and
confirmation wait; notice wait) and what performing it gave. Both runs must record the
same effects with the namespace blanked, wait the same computed times, and reach the
same outcome; each scenario also asserts the behaviour it is named for.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import pytest
import redis
import redis.asyncio

from workflow_cache.cache.aio import AsyncFlight
from workflow_cache.cache.claims import Claims, SingleFlight
from workflow_cache.cache.keys import KeySpace
from workflow_cache.cache.protocol import (
    Call,
    Claimed,
    ClaimTimeout,
    Done,
    Effect,
    Hold,
    Listen,
    Present,
    Rules,
    Running,
    Subscribe,
)

OWNER = "parity-owner"
LEASE = 5.0


@dataclass
class Log:
    """What one driver performed: each effect with its reply."""

    entries: list[tuple[Effect, Any]] = field(default_factory=list)
    listening: threading.Event = field(default_factory=threading.Event)

    def start(self, effect: Effect) -> None:
        if isinstance(effect, Listen):
            self.listening.set()  # the waiter is about to wait on the notice
        self.entries.append((effect, None))

    def done(self, reply: Any) -> Any:
        effect, _ = self.entries[-1]
        self.entries[-1] = (effect, reply)
        return reply


class RecordingFlight(SingleFlight):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.log = Log()

    def perform(self, effect: Effect, watching: Any = None) -> Any:
        self.log.start(effect)
        return self.log.done(super().perform(effect, watching))


class RecordingAsyncFlight(AsyncFlight):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.log = Log()

    async def perform(self, effect: Effect, watching: Any = None) -> Any:
        self.log.start(effect)
        return self.log.done(await super().perform(effect, watching))


class Driver(Protocol):
    """One driver, seen from a scenario (which runs on an event loop either way)."""

    keyspace: KeySpace
    rules: Rules
    log: Log

    async def acquire(self, key: str, timeout: float | None = None) -> Done | Hold: ...
    async def commit(self, holder: Any, outcome: bytes) -> bool: ...
    async def renew(self, holder: Any) -> None: ...
    async def release(self, holder: Any) -> bool: ...
    def pause(self, holder: Any) -> None: ...
    async def close(self) -> None: ...


class Blocking:
    """``SingleFlight``, its blocking calls made from a thread so waits can overlap."""

    def __init__(self, url: str, namespace: str, lease: float) -> None:
        self.flight = RecordingFlight(
            redis.Redis.from_url(url), namespace, lease=lease, owner=OWNER
        )
        self.keyspace, self.rules, self.log = (
            self.flight.keyspace,
            self.flight.rules,
            self.flight.log,
        )

    async def acquire(self, key: str, timeout: float | None = None) -> Done | Hold:
        return await asyncio.to_thread(self.flight.acquire, key, timeout=timeout)

    async def commit(self, holder: Any, outcome: bytes) -> bool:
        return await asyncio.to_thread(holder.commit, outcome)

    async def renew(self, holder: Any) -> None:
        holder.renew()

    async def release(self, holder: Any) -> bool:
        return bool(holder.release())

    def pause(self, holder: Any) -> None:
        self.flight.renewer().discard(holder)

    async def close(self) -> None:
        self.flight.close()
        self.flight.client.close()


class Async:
    """``AsyncFlight`` on the scenario's own loop."""

    def __init__(self, url: str, namespace: str, lease: float) -> None:
        client = redis.asyncio.Redis.from_url(url)
        self.flight = RecordingAsyncFlight(
            client, KeySpace(namespace), lease=lease, where=url, owner=OWNER
        )
        self.keyspace, self.rules, self.log = (
            self.flight.keyspace,
            self.flight.rules,
            self.flight.log,
        )

    async def acquire(self, key: str, timeout: float | None = None) -> Done | Hold:
        return await self.flight.acquire(key, timeout=timeout)

    async def commit(self, holder: Any, outcome: bytes) -> bool:
        return bool(await holder.commit(outcome))

    async def renew(self, holder: Any) -> None:
        await holder.renew()

    async def release(self, holder: Any) -> bool:
        return bool(await holder.release())

    def pause(self, holder: Any) -> None:
        self.flight.holders.discard(holder)

    async def close(self) -> None:
        await self.flight.aclose()
        await self.flight.client.aclose()


DRIVERS: dict[str, Callable[[str, str, float], Driver]] = {"sync": Blocking, "async": Async}


class Ticks:
    """A clock that advances 0.1 s each time it is read: deadlines become exact."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 0.1
        return self.now


async def listening(driver: Driver) -> None:
    """Until the waiter has subscribed, re-claimed and started waiting on the notice."""
    assert await asyncio.to_thread(driver.log.listening.wait, 10)


async def until(check: Callable[[], bool]) -> None:
    for _ in range(1000):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the state never came")


# ----------------------------------------------------------------------------- scenarios
# Each returns what it observed (compared between the drivers) and asserts its behaviour.


async def cold_claim_and_commit(d: Driver, r: redis.Redis) -> object:
    holder = await d.acquire("k")
    assert isinstance(holder, Hold) and holder.epoch == 1
    assert await d.commit(holder, b"v")
    assert r.get(d.keyspace.for_step("k").out) == b"v"
    return holder.token, holder.lost


async def hit(d: Driver, r: redis.Redis) -> object:
    r.set(d.keyspace.for_step("k").out, b"stored")
    got = await d.acquire("k")
    assert got == Done(b"stored")
    return got


async def waiter_woken_by_commit(d: Driver, r: redis.Redis) -> object:
    keys = d.keyspace.for_step("k")
    other = Claims(r).claim(keys, "other", 60_000)
    assert isinstance(other, Claimed)
    waiting = asyncio.ensure_future(d.acquire("k"))
    await listening(d)
    assert Claims(r).commit(keys, other, b"theirs")
    got = await waiting
    assert got == Done(b"theirs")  # from the notice: the lease has a minute left
    return got


async def holder_connection_killed(d: Driver, r: redis.Redis) -> object:
    keys = d.keyspace.for_step("k")
    gone = redis.Redis.from_url(_url(r))
    assert isinstance(Claims(gone).claim(keys, "gone", 500), Claimed)  # never renewed
    waiting = asyncio.ensure_future(d.acquire("k"))
    await listening(d)
    assert r.client_kill_filter(_id=str(gone.client_id())) == 1  # as when its process dies
    successor = await waiting
    assert isinstance(successor, Hold) and successor.epoch == 2  # took over at lease end
    assert await d.release(successor)
    return successor.token


async def dead_holder_is_taken_over_before_its_lease_ends(d: Driver, r: redis.Redis) -> object:
    keys = d.keyspace.for_step("k")
    gone = redis.Redis.from_url(_url(r))
    presence = gone.client_id()
    other = Claims(gone).claim(keys, "gone", 60_000, presence)
    assert isinstance(other, Claimed)
    waiting = asyncio.ensure_future(d.acquire("k"))
    await listening(d)
    assert r.client_kill_filter(_id=str(presence)) == 1  # as when its process dies
    successor = await waiting  # its lease has a minute left: only its presence tells
    assert isinstance(successor, Hold) and successor.epoch == 2
    assert r.pttl(keys.lock) > 0 and not Claims(r).commit(keys, other, b"stale")
    assert any(isinstance(e, Call) and e.script == "take_over" for e, _ in d.log.entries)
    assert await d.release(successor)
    return successor.token


async def reconnected_holder_is_not_taken_over(d: Driver, r: redis.Redis) -> object:
    keys = d.keyspace.for_step("k")
    first = redis.Redis.from_url(_url(r))
    again = redis.Redis.from_url(_url(r))
    other = Claims(first).claim(keys, "blip", 60_000, first.client_id())
    assert isinstance(other, Claimed)
    waiting = asyncio.ensure_future(d.acquire("k"))
    await listening(d)
    # Its connection drops while the process lives: it renews with its new presence id.
    assert r.client_kill_filter(_id=str(first.client_id())) == 1
    assert Claims(again).run(Rules.renew(keys, other, 60_000, again.client_id()))

    def refused_takeover() -> bool:
        return any(
            isinstance(e, Call) and e.script == "take_over" and reply == 0
            for e, reply in list(d.log.entries)
        )

    await until(refused_takeover)  # the old id stayed gone past the grace: refused
    assert r.get(keys.lock) == other.token.encode()
    assert Claims(r).commit(keys, other, b"theirs")
    got = await waiting
    assert got == Done(b"theirs")  # it waited for the live holder's outcome
    return got


async def paused_holder_is_fenced(d: Driver, r: redis.Redis) -> object:
    keys = d.keyspace.for_step("k")
    holder = await d.acquire("k")
    assert isinstance(holder, Hold)
    d.pause(holder)  # no renewal, as if the process were stopped
    r.pexpire(keys.lock, 1)
    await until(lambda: not r.exists(keys.lock))
    successor = Claims(r).claim(keys, "successor", 60_000)
    assert isinstance(successor, Claimed) and successor.epoch > holder.epoch
    assert not await d.commit(holder, b"stale")
    assert holder.lost and r.get(keys.out) is None
    assert Claims(r).commit(keys, successor, b"fresh")
    return holder.lost


async def renew(d: Driver, r: redis.Redis) -> object:
    keys = d.keyspace.for_step("k")
    holder = await d.acquire("k")
    assert isinstance(holder, Hold)
    r.pexpire(keys.lock, 1000)
    await d.renew(holder)
    assert r.pttl(keys.lock) > 1000 and not holder.lost
    assert await d.release(holder)
    return holder.lost


async def release(d: Driver, r: redis.Redis) -> object:
    keys = d.keyspace.for_step("k")
    holder = await d.acquire("k")
    assert isinstance(holder, Hold)
    assert await d.release(holder)
    assert not r.exists(keys.lock)
    again = await d.acquire("k")
    assert isinstance(again, Hold) and again.epoch == holder.epoch + 1
    assert await d.release(again)
    return again.epoch


async def timeout_zero_against_a_running_holder(d: Driver, r: redis.Redis) -> object:
    keys = d.keyspace.for_step("k")
    assert isinstance(Claims(r).claim(keys, "other", 60_000), Claimed)
    with pytest.raises(ClaimTimeout, match="still running under 'other'") as info:
        await d.acquire("k", timeout=0)
    assert not any(isinstance(effect, Subscribe) for effect, _ in d.log.entries)
    return str(info.value).replace(d.keyspace.namespace, "NS")


async def deadline(d: Driver, r: redis.Redis) -> object:
    keys = d.keyspace.for_step("k")
    assert isinstance(Claims(r).claim(keys, "other", 60_000), Claimed)
    d.rules.clock = Ticks()
    with pytest.raises(ClaimTimeout):
        await d.acquire("k", timeout=0.3)
    waits = [
        e.confirm_s if isinstance(e, Subscribe) else e.seconds
        for e, _ in d.log.entries
        if isinstance(e, Subscribe | Listen)
    ]
    assert waits == pytest.approx([0.2, 0.1])  # what is left of the deadline, never more
    return waits


async def commit_hands_over_waiting_runs(d: Driver, r: redis.Redis) -> object:
    keys = d.keyspace.for_step("k")
    holder = await d.acquire("k")
    assert isinstance(holder, Hold)
    r.sadd(keys.waiters, "run-1|1", "run-2|3")
    assert await d.commit(holder, b"v")
    assert holder.handed_over
    assert not r.exists(keys.waiters)
    assert r.smembers(keys.handoff) == {b"run-1|1", b"run-2|3"}
    (commit,) = [e for e, _ in d.log.entries if isinstance(e, Call) and e.script == "commit"]
    assert commit.keys[4:6] == (keys.waiters, keys.handoff)
    return sorted(r.smembers(keys.handoff))


SCENARIOS: list[Callable[[Driver, redis.Redis], Awaitable[object]]] = [
    cold_claim_and_commit,
    hit,
    waiter_woken_by_commit,
    holder_connection_killed,
    dead_holder_is_taken_over_before_its_lease_ends,
    reconnected_holder_is_not_taken_over,
    paused_holder_is_fenced,
    renew,
    release,
    timeout_zero_against_a_running_holder,
    deadline,
    commit_hands_over_waiting_runs,
]


def _url(r: redis.Redis) -> str:
    kwargs = r.connection_pool.connection_kwargs
    return f"redis://{kwargs['host']}:{kwargs['port']}/{kwargs.get('db', 0)}"


def comparable(log: Log, rules: Rules, namespace: str) -> list[str]:
    """The effects and replies with what may differ between two runs taken out: the
    namespace, and a holder's remaining lease (the wait computed from it is checked)."""
    rows = []
    remaining: int | None = None
    for effect, reply in log.entries:
        if isinstance(effect, Call) and effect.script == "claim" and reply[0] == b"running":
            remaining = int(reply[2])
            reply = [reply[0], reply[1], "<remaining lease>", "<presence>" if reply[3] else ""]
        if isinstance(effect, Call) and effect.script in PRESENCE_ARG:
            at = PRESENCE_ARG[effect.script]
            args = (
                *effect.args[:at],
                "<presence>" if effect.args[at] else "",
                *effect.args[at + 1 :],
            )
            effect = Call(effect.script, effect.keys, args)
        if isinstance(effect, Present):
            effect = Present(-1)
        if isinstance(effect, Listen) and not isinstance(rules.clock, Ticks):
            assert remaining is not None
            assert 0 <= effect.seconds <= rules.wait_for(Running("", remaining), None) + 1e-6
            effect = Listen(-1.0)
        rows.append(repr((effect, reply)).replace(namespace, "NS"))
    return rows


PRESENCE_ARG = {"claim": 3, "renew": 2, "take_over": 1}
"""Where each script takes a presence id: ids differ between two runs, not their use."""


def run(kind: str, scenario: Any, url: str, r: redis.Redis) -> tuple[list[str], object]:
    namespace = f"parity-{kind}-{uuid.uuid4().hex[:8]}"

    async def main() -> tuple[list[str], object]:
        driver = DRIVERS[kind](url, namespace, LEASE)
        try:
            observed = await scenario(driver, r)
        finally:
            await driver.close()
        return comparable(driver.log, driver.rules, namespace), observed

    return asyncio.run(main())


@pytest.fixture
def url(redis_client: redis.Redis) -> Iterator[str]:
    yield _url(redis_client)


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.__name__)
def test_both_drivers_perform_the_same_effects_with_the_same_outcome(
    scenario: Any, url: str, redis_client: redis.Redis
) -> None:
    blocking, blocking_saw = run("sync", scenario, url, redis_client)
    asyncio_, asyncio_saw = run("async", scenario, url, redis_client)
    assert blocking == asyncio_
    assert blocking_saw == asyncio_saw
    assert blocking  # something was performed
