"""The single-flight claim protocol against a real redis-server: scripts, threads, processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.crc import key_slot

from tests.servers import RedisServer, free_port
from workflow_cache.cache.claims import (
    EPOCH_TTL_MS,
    CacheUnavailable,
    Claimed,
    Claims,
    ClaimTimeout,
    Done,
    Holder,
    Running,
    SingleFlight,
    claim_state,
    connect,
)
from workflow_cache.cache.keys import Keys, KeySpace
from workflow_cache.cache.protocol import Call, Effect, Listen

ROOT = Path(__file__).resolve().parent.parent
LEASE = 1.0

# A separate Python process using the protocol; driven through stdin/stdout.
#   race <threads>: wait for "go", then every thread acquires; the holder INCRs the
#                   counter key, sleeps, commits "by-<pid>"; prints "OUT <outcome>" per thread.
#   hold:           acquire, print "CLAIMED <epoch>", then on "commit" print "COMMIT <bool>".
#   fork-hold:      as hold, after forking a child that sleeps (its pid: "CHILD <pid>").
CHILD = r"""
import os, sys, threading, time
import redis
from workflow_cache.cache.claims import Done, SingleFlight, connect

url, namespace, key, mode, lease, arg = sys.argv[1:7]
flight = SingleFlight(connect(url), namespace, lease=float(lease))
counter = redis.Redis.from_url(url)

def body():
    got = flight.acquire(key, timeout=20)
    if isinstance(got, Done):
        return got.outcome.decode()
    with got:
        counter.incr(namespace + ":executions")
        time.sleep(0.3)
        outcome = f"by-{os.getpid()}"
        assert got.commit(outcome)
        return outcome

if mode == "race":
    print("READY", flush=True)
    sys.stdin.readline()
    outs = [None] * int(arg)
    def run(i):
        outs[i] = body()
    threads = [threading.Thread(target=run, args=(i,)) for i in range(int(arg))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for out in outs:
        print("OUT", out, flush=True)
elif mode in ("hold", "fork-hold"):
    holder = flight.acquire(key)
    if mode == "fork-hold":
        child = os.fork()
        if child == 0:  # a child that outlives its parent
            time.sleep(3600)
        print("CHILD", child, flush=True)
    print("CLAIMED", holder.epoch, flush=True)
    sys.stdin.readline()
    ok = holder.commit("stale")
    print("COMMIT", ok, holder.lost, flush=True)
"""


def spawn(
    redis_url: str, namespace: str, key: str, mode: str, *, lease: float = LEASE, arg: str = "0"
) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, redis_url, namespace, key, mode, str(lease), arg],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )


def expect_line(proc: subprocess.Popen[str], prefix: str) -> str:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith(prefix), f"expected {prefix!r} from the child, got {line!r}"
    return line.strip()


@pytest.fixture
def keyspace(namespace: str) -> KeySpace:
    return KeySpace(namespace)


@pytest.fixture
def claims(redis_client: redis.Redis) -> Claims:
    return Claims(redis_client)


class ListeningFlight(SingleFlight):
    """A ``SingleFlight`` that counts the waits it starts on a notice, so a test knows when
    its waiters have subscribed, claimed again and are blocked (no sleeping to guess)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.listens = 0
        self._counted = threading.Condition()

    def perform(self, effect: Effect, watching: Any = None) -> Any:
        if isinstance(effect, Listen):
            with self._counted:
                self.listens += 1
                self._counted.notify_all()
        return super().perform(effect, watching)

    def listening(self, waits: int) -> None:
        """Until ``waits`` waits on a notice have started."""
        with self._counted:
            assert self._counted.wait_for(lambda: self.listens >= waits, 30)


def eventually(check: Callable[[], object], what: str) -> None:
    """Until ``check()`` is true: observable state, polled (a guard, not a time bound)."""
    deadline = time.monotonic() + 30
    while not check():
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.005)


def lease_over(client: redis.Redis, keys: Keys) -> None:
    eventually(lambda: not client.exists(keys.lock), "the lease ran out")


@pytest.fixture
def flight(redis_url: str, namespace: str) -> Iterator[ListeningFlight]:
    with ListeningFlight(connect(redis_url), namespace, lease=LEASE) as sf:
        yield sf


@pytest.fixture
def patient(redis_url: str, namespace: str) -> Iterator[ListeningFlight]:
    """A flight whose lease is far longer than any test: a waiter that wakes can only have
    been woken by a notice, never by a lease running out."""
    with ListeningFlight(connect(redis_url), namespace, lease=600) as sf:
        yield sf


def in_thread(fn: Callable[..., object], *args: object) -> tuple[threading.Thread, list[object]]:
    """Run ``fn`` in a thread; returns (thread, box) where box[0] is its result or exception."""
    box: list[object] = []

    def run() -> None:
        try:
            box.append(fn(*args))
        except BaseException as exc:
            box.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, box


# ----------------------------------------------------------------------------- keys


def test_keys_share_one_hash_slot_and_name_the_namespace() -> None:
    keys = KeySpace("prod").for_step("user:1")
    assert keys == Keys(
        out="wfc:prod:{user:1}:out",
        lock="wfc:prod:{user:1}:lock",
        epoch="wfc:prod:{user:1}:epoch",
        channel="wfc:prod:{user:1}:done",
        queued="wfc:prod:{user:1}:queued",
        last="wfc:prod:{user:1}:last",
        waiters="wfc:prod:{user:1}:waiters",
        handoff="wfc:prod:{user:1}:handoff",
    )
    for step in ("user:1", "a{b}c", "x}y", "{weird", "ü*?"):
        k = KeySpace("prod").for_step(step)
        names = (k.out, k.lock, k.epoch, k.channel, k.queued, k.last)
        assert len({key_slot(name.encode()) for name in names}) == 1


@pytest.mark.parametrize("namespace", ["", "a:b", "a{b", "a}b"])
def test_bad_namespaces_are_refused(namespace: str) -> None:
    with pytest.raises(ValueError, match="namespace"):
        KeySpace(namespace)


def test_bad_step_keys_are_refused() -> None:
    with pytest.raises(ValueError, match="empty"):
        KeySpace("ns").for_step("")
    with pytest.raises(ValueError, match="start with"):
        KeySpace("ns").for_step("}x")


def test_pattern_matches_exactly_one_namespace(redis_client: redis.Redis, namespace: str) -> None:
    mine, other = KeySpace(namespace), KeySpace(namespace + "x")
    redis_client.set(mine.for_step("a").out, 1)
    redis_client.set(other.for_step("a").out, 1)
    assert set(redis_client.scan_iter(match=mine.pattern)) == {mine.for_step("a").out.encode()}
    assert KeySpace("a*b").pattern == r"wfc:a\*b:*"


# ----------------------------------------------------------------------------- scripts


def test_claim_commit_then_done(
    claims: Claims, keyspace: KeySpace, redis_client: redis.Redis
) -> None:
    keys = keyspace.for_step("k")
    first = claims.claim(keys, "alice", 1000)
    assert isinstance(first, Claimed)
    assert first.token == f"alice|{first.epoch}" and first.owner == "alice"
    running = claims.claim(keys, "bob", 1000)
    assert isinstance(running, Running)
    assert running.owner == "alice" and 0 < running.remaining_ms <= 1000
    assert 0 < redis_client.pttl(keys.epoch) <= EPOCH_TTL_MS
    assert claims.commit(keys, first, b"\x00binary\xff", ttl_ms=60_000)
    assert claims.claim(keys, "bob", 1000) == Done(b"\x00binary\xff")
    assert redis_client.exists(keys.lock) == 0
    assert 0 < redis_client.pttl(keys.out) <= 60_000
    assert not claims.commit(keys, first, b"again")  # a second commit is refused


def test_renew_is_owner_checked(
    claims: Claims, keyspace: KeySpace, redis_client: redis.Redis
) -> None:
    keys = keyspace.for_step("k")
    mine = claims.claim(keys, "alice", 200)
    assert isinstance(mine, Claimed)
    assert claims.renew(keys, mine, 5000)
    assert redis_client.pttl(keys.lock) > 1000
    forged = Claimed(token=f"mallory|{mine.epoch}", epoch=mine.epoch)
    assert not claims.renew(keys, forged, 5000)
    assert not claims.release(keys, forged)
    assert claims.release(keys, mine)
    assert not claims.renew(keys, mine, 5000)


def test_epoch_only_grows(claims: Claims, keyspace: KeySpace) -> None:
    keys = keyspace.for_step("k")
    epochs = []
    for _ in range(5):
        c = claims.claim(keys, "alice", 1000)
        assert isinstance(c, Claimed)
        epochs.append(c.epoch)
        assert claims.release(keys, c)
    assert epochs == sorted(set(epochs)) and len(epochs) == 5


def test_stale_holder_cannot_commit_over_successor(
    claims: Claims, keyspace: KeySpace, redis_client: redis.Redis
) -> None:
    keys = keyspace.for_step("k")
    stale = claims.claim(keys, "alice", 50)
    assert isinstance(stale, Claimed)
    lease_over(redis_client, keys)
    successor = claims.claim(keys, "bob", 1000)
    assert isinstance(successor, Claimed) and successor.epoch > stale.epoch
    assert not claims.commit(keys, stale, b"stale")  # successor still running
    assert claims.commit(keys, successor, b"fresh")
    assert not claims.commit(keys, stale, b"stale")  # successor done
    assert claims.claim(keys, "carol", 1000) == Done(b"fresh")


def test_stale_holder_cannot_commit_after_successor_released(
    claims: Claims, keyspace: KeySpace, redis_client: redis.Redis
) -> None:
    keys = keyspace.for_step("k")
    stale = claims.claim(keys, "alice", 50)
    lease_over(redis_client, keys)
    successor = claims.claim(keys, "bob", 1000)
    assert isinstance(stale, Claimed) and isinstance(successor, Claimed)
    assert claims.release(keys, successor)
    assert not claims.commit(keys, stale, b"stale")
    assert redis_client.exists(keys.out) == 0


def test_expired_holder_without_successor_may_commit(
    claims: Claims, keyspace: KeySpace, redis_client: redis.Redis
) -> None:
    """Documented choice: nobody claimed since (same epoch, no outcome), so the work is kept."""
    keys = keyspace.for_step("k")
    late = claims.claim(keys, "alice", 50)
    assert isinstance(late, Claimed)
    lease_over(redis_client, keys)
    assert claims.commit(keys, late, b"late but alone")
    assert claims.claim(keys, "bob", 1000) == Done(b"late but alone")


def test_refused_commit_stores_and_announces_nothing(
    claims: Claims, keyspace: KeySpace, redis_client: redis.Redis
) -> None:
    keys = keyspace.for_step("k")
    pubsub = redis_client.pubsub()  # type: ignore[no-untyped-call]
    pubsub.subscribe(keys.channel)
    assert pubsub.get_message(timeout=1)["type"] == "subscribe"
    claim = claims.claim(keys, "alice", 1000)
    assert isinstance(claim, Claimed)
    forged = Claimed(token=f"alice|{claim.epoch + 1}", epoch=claim.epoch + 1)
    assert not claims.commit(keys, forged, b"nope")
    assert redis_client.exists(keys.out) == 0
    assert pubsub.get_message(timeout=0.1) is None
    assert claims.commit(keys, claim, b"yes", keep=False)
    assert pubsub.get_message(timeout=1)["data"] == b"oyes"
    assert redis_client.exists(keys.out) == 0 and redis_client.exists(keys.lock) == 0
    pubsub.close()


# ----------------------------------------------------------------------------- SingleFlight


def test_acquire_commit_read(flight: SingleFlight) -> None:
    holder = flight.acquire("a")
    assert isinstance(holder, Holder)
    assert flight.read("a") is None
    assert holder.commit("A")
    assert flight.acquire("a") == Done(b"A")
    assert flight.read_many(["a", "b", "a"]) == [b"A", None, b"A"]
    assert flight.read_many([]) == []
    with pytest.raises(RuntimeError, match="already"):
        holder.commit("again")


def test_holder_renews_past_its_lease(
    redis_url: str, namespace: str, redis_client: redis.Redis
) -> None:
    with SingleFlight.from_url(redis_url, namespace, lease=0.3) as sf:
        holder = sf.acquire("k")
        assert isinstance(holder, Holder)
        lock = sf.keyspace.for_step("k").lock
        renewals, last = 0, redis_client.pttl(lock)
        while renewals < 6:  # two whole leases' worth of renewals, none missed
            left = redis_client.pttl(lock)
            assert left > 0, "the lock expired: a renewal was missed"
            renewals, last = renewals + (left > last), left
            time.sleep(0.01)  # polling pace
        assert not holder.lost
        with pytest.raises(ClaimTimeout):  # still held: nobody else gets it
            sf.acquire("k", timeout=0)
        assert holder.commit("ok")


def test_holder_notices_lost_lease(
    redis_url: str, namespace: str, redis_client: redis.Redis
) -> None:
    with SingleFlight.from_url(redis_url, namespace, lease=0.3) as sf:
        holder = sf.acquire("k")
        assert isinstance(holder, Holder)
        keys = sf.keyspace.for_step("k")
        redis_client.delete(keys.lock)
        successor = Claims(redis_client).claim(keys, "bob", 5000)
        assert isinstance(successor, Claimed)
        eventually(lambda: holder.lost, "the renewer noticed the lost lease")
        assert not holder.commit("stale")


def test_leaving_the_block_releases_and_wakes_a_waiter(patient: ListeningFlight) -> None:
    holder = patient.acquire("k")
    assert isinstance(holder, Holder)
    thread, box = in_thread(patient.acquire, "k")
    patient.listening(1)
    with pytest.raises(KeyError), holder:
        raise KeyError("the step failed without an outcome")
    thread.join(30)  # the lease is ten minutes: only the release notice wakes it
    successor = box[0]
    assert isinstance(successor, Holder) and successor.epoch > holder.epoch
    successor.commit("second try")


def test_err_outcome_not_kept_still_reaches_waiters(flight: ListeningFlight) -> None:
    holder = flight.acquire("k")
    assert isinstance(holder, Holder)
    waiters = [in_thread(flight.acquire, "k") for _ in range(4)]
    flight.listening(4)
    assert holder.commit(b'{"status":"err"}', keep=False)
    for thread, box in waiters:
        thread.join(30)
        assert box == [Done(b'{"status":"err"}')]
    assert flight.read("k") is None
    retry = flight.acquire("k")  # not kept: the next caller runs the step again
    assert isinstance(retry, Holder)
    retry.release()


def test_acquire_timeout(flight: SingleFlight) -> None:
    holder = flight.acquire("k")
    assert isinstance(holder, Holder)
    with pytest.raises(ClaimTimeout, match="still running"):
        flight.acquire("k", timeout=0)
    start = time.monotonic()
    with pytest.raises(ClaimTimeout):
        flight.acquire("k", timeout=0.2)
    assert time.monotonic() - start >= 0.2  # it did wait the whole timeout
    holder.commit("done")


def test_many_waiters_share_one_subscription(
    flight: ListeningFlight, redis_client: redis.Redis
) -> None:
    holder = flight.acquire("k")
    assert isinstance(holder, Holder)
    waiters = [in_thread(flight.acquire, "k") for _ in range(64)]
    channel = flight.keyspace.for_step("k").channel
    flight.listening(64)
    assert redis_client.pubsub_numsub(channel) == [(channel.encode(), 1)]
    assert flight.subscriptions() == 1
    holder.commit("shared")
    for thread, box in waiters:
        thread.join(30)
        assert box == [Done(b"shared")]
    eventually(lambda: flight.subscriptions() == 0, "the last waiter unsubscribed")
    eventually(
        lambda: redis_client.pubsub_numsub(channel) == [(channel.encode(), 0)],
        "the server dropped the subscription",
    )


def test_waiters_survive_a_dropped_pubsub_connection(
    patient: ListeningFlight, redis_client: redis.Redis
) -> None:
    holder = patient.acquire("k")
    assert isinstance(holder, Holder)
    channel = patient.keyspace.for_step("k").channel

    def subscribers() -> int:
        return int(redis_client.pubsub_numsub(channel)[0][1])

    thread, box = in_thread(patient.acquire, "k")
    patient.listening(1)
    assert redis_client.client_kill_filter(_type="pubsub") >= 1
    assert subscribers() == 0
    eventually(lambda: subscribers() == 1, "the listener resubscribed")
    holder.commit("after reconnect")
    thread.join(30)  # the lease is ten minutes: only the notice wakes it
    assert box == [Done(b"after reconnect")]


def run_once(flight: SingleFlight, key: str, counter: redis.Redis, counter_key: str) -> bytes:
    got = flight.acquire(key, timeout=20)
    if isinstance(got, Done):
        return got.outcome
    with got:
        counter.incr(counter_key)
        time.sleep(0.3)
        assert got.commit(f"by-thread-{threading.get_ident()}")
    return f"by-thread-{threading.get_ident()}".encode()


def test_threads_and_processes_race_one_key_and_it_runs_once(
    redis_url: str, namespace: str, redis_client: redis.Redis
) -> None:
    counter_key = namespace + ":executions"
    procs = [spawn(redis_url, namespace, "hot", "race", arg="4") for _ in range(4)]
    try:
        for proc in procs:
            expect_line(proc, "READY")
        with SingleFlight.from_url(redis_url, namespace, lease=LEASE) as sf:
            barrier = threading.Barrier(16)

            def contender() -> bytes:
                barrier.wait()
                return run_once(sf, "hot", redis_client, counter_key)

            for proc in procs:
                assert proc.stdin is not None
                proc.stdin.write("go\n")
                proc.stdin.flush()
            threads = [in_thread(contender) for _ in range(16)]
            outcomes = set()
            for thread, box in threads:
                thread.join(20)
                assert isinstance(box[0], bytes), box
                outcomes.add(box[0].decode())
        for proc in procs:
            out, _ = proc.communicate(timeout=20)
            assert proc.returncode == 0
            lines = out.split()
            outcomes.update(lines[i + 1] for i, word in enumerate(lines) if word == "OUT")
            assert lines.count("OUT") == 4
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert redis_client.get(counter_key) == b"1"
    assert len(outcomes) == 1, outcomes


def test_killed_holder_is_taken_over_at_the_end_of_its_lease(
    redis_url: str, namespace: str, flight: ListeningFlight
) -> None:
    child = spawn(redis_url, namespace, "k", "hold")
    try:
        expect_line(child, "CLAIMED")
        thread, box = in_thread(flight.acquire, "k")
        flight.listening(1)
        assert not box  # waiting on the live holder
        child.send_signal(signal.SIGKILL)
        child.wait(5)
        thread.join(30)
        successor = box[0]
        assert isinstance(successor, Holder), box
        assert successor.commit("after crash")
        assert flight.read("k") == b"after crash"
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def test_paused_holder_cannot_overwrite_successor(
    redis_url: str, namespace: str, flight: SingleFlight
) -> None:
    child = spawn(redis_url, namespace, "k", "hold", lease=0.5)
    try:
        epoch = int(expect_line(child, "CLAIMED").split()[1])
        child.send_signal(signal.SIGSTOP)
        successor = flight.acquire("k", timeout=3)  # waits out the paused holder's lease
        assert isinstance(successor, Holder) and successor.epoch > epoch
        assert successor.commit("fresh")
        child.send_signal(signal.SIGCONT)
        assert child.stdin is not None
        child.stdin.write("commit\n")
        child.stdin.flush()
        assert expect_line(child, "COMMIT") == "COMMIT False True"
        assert flight.read("k") == b"fresh"
    finally:
        if child.poll() is None:
            child.send_signal(signal.SIGCONT)
            child.kill()
            child.wait()


# ----------------------------------------------------------------------------- failures


def test_unreachable_redis_fails_fast_and_names_the_server() -> None:
    port = free_port()
    sf = SingleFlight.from_url(f"redis://127.0.0.1:{port}/0", "ns")
    given = sf.client.connection_pool.connection_kwargs
    assert given["socket_connect_timeout"] == given["socket_timeout"] == 2.0  # not redis-py's 5
    assert given["retry"].get_retries() == 1  # one quick retry, not three with backoff
    with pytest.raises(CacheUnavailable, match=f"127.0.0.1:{port}") as info:
        sf.acquire("k")
    assert isinstance(info.value, ConnectionError)
    with pytest.raises(CacheUnavailable):
        sf.read_many(["k"])
    sf.close()


def test_server_going_away_gives_cache_unavailable(tmp_path: Path) -> None:
    server = RedisServer(tmp_path)
    sf = SingleFlight(connect(server.url, timeout=0.5), "ns", lease=LEASE)
    holder = sf.acquire("k")
    assert isinstance(holder, Holder)
    server.stop()
    with pytest.raises(CacheUnavailable, match=str(server.port)):
        holder.commit("x")
    sf.close()


# -- presence: a dead holder is taken over at once, a paused one at lease end -----------


class TakeoverFlight(ListeningFlight):
    """Records the scripts it runs, so a test sees whether it took a claim over."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.scripts: list[tuple[str, Any]] = []

    def perform(self, effect: Effect, watching: Any = None) -> Any:
        reply = super().perform(effect, watching)
        if isinstance(effect, Call):
            self.scripts.append((effect.script, reply))
        return reply


@pytest.mark.parametrize("mode", ["hold", "fork-hold"])
def test_a_holder_killed_by_sigkill_is_taken_over_before_its_lease_ends(
    redis_url: str, redis_client: redis.Redis, namespace: str, mode: str
) -> None:
    """Also when the holder forked a child that lives on: the child closes its copy of
    the presence socket, so the connection ends with the holder."""
    child = spawn(redis_url, namespace, "k", mode, lease=60.0)
    forked: int | None = None
    try:
        if mode == "fork-hold":
            forked = int(expect_line(child, "CHILD").split()[1])
        assert expect_line(child, "CLAIMED") == "CLAIMED 1"
        keys = KeySpace(namespace).for_step("k")
        assert redis_client.get(f"{keys.lock}:by") is not None  # its presence, beside the lock
        waiter = TakeoverFlight(redis_client, namespace, lease=60.0)
        got: list[Any] = []
        thread = threading.Thread(target=lambda: got.append(waiter.acquire("k")))
        thread.start()
        waiter.listening(1)
        child.kill()  # kill -9: the lease has a minute left, only its presence tells
        thread.join(60)
        (successor,) = got
        assert isinstance(successor, Holder) and successor.epoch == 2
        assert ("take_over", 1) in waiter.scripts
        assert redis_client.get(f"{keys.lock}:by") == str(waiter.presence_id()).encode()
        assert successor.commit(b"mine")
        assert not redis_client.exists(f"{keys.lock}:by")
        waiter.close()
    finally:
        child.kill()
        child.wait()
        if forked is not None:
            os.kill(forked, signal.SIGKILL)


def test_a_paused_holder_keeps_its_claim_until_its_lease_ends_and_is_fenced(
    redis_url: str, redis_client: redis.Redis, namespace: str
) -> None:
    child = spawn(redis_url, namespace, "k", "hold")
    try:
        assert expect_line(child, "CLAIMED") == "CLAIMED 1"
        child.send_signal(signal.SIGSTOP)  # alive: its connections stay open, no renewal
        waiter = TakeoverFlight(redis_client, namespace, lease=LEASE)
        successor = waiter.acquire("k")
        assert isinstance(successor, Holder) and successor.epoch == 2
        assert not any(script == "take_over" for script, _ in waiter.scripts)  # lease end
        assert successor.commit(b"fresh")
        child.send_signal(signal.SIGCONT)
        assert child.stdin is not None
        child.stdin.write("commit\n")
        child.stdin.flush()
        assert expect_line(child, "COMMIT") == "COMMIT False True"  # refused: fenced
        assert redis_client.get(KeySpace(namespace).for_step("k").out) == b"fresh"
        waiter.close()
    finally:
        child.send_signal(signal.SIGCONT)
        child.kill()
        child.wait()


def test_a_holder_whose_presence_drops_renews_with_its_new_id(
    redis_client: redis.Redis, namespace: str
) -> None:
    """A network blip, not a death: the holder reconnects and writes its new presence id
    beside the lock, so a waiter's takeover (fenced on the old id) is refused."""
    flight = SingleFlight(redis_client, namespace, lease=LEASE)
    holder = flight.acquire("k")
    assert isinstance(holder, Holder)
    by = f"{holder.keys.lock}:by"
    old = flight.presence_id()
    assert old is not None and redis_client.get(by) == str(old).encode()
    running = claim_state([b"running", holder.token, 1000, str(old)])
    assert isinstance(running, Running)
    assert redis_client.client_kill_filter(_id=str(old)) == 1
    eventually(lambda: redis_client.get(by) not in (None, str(old).encode()), "a new id")
    assert redis_client.get(by) == str(flight.presence_id()).encode()
    assert not flight.claims.take_over(holder.keys, running)  # the old id: refused
    assert holder.commit(b"v")
    flight.close()
