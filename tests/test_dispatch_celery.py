"""A step is the user's own Celery task: options, retries, limits, signals and canvas,
on real ``celery worker`` processes sharing one real Redis."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import signal
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import redis
from celery import group
from celery.signals import before_task_publish

from tests.waiting import wait_until
from tests.workers import CeleryWorker, configured_test_app, stop_all, wait_ready
from workflow_cache import (
    LocalCache,
    NotStorableError,
    RedisCache,
    UnexpectedError,
    create_workflow,
)
from workflow_cache.distributed import CeleryDispatcher, install, signature_key

LEASE = 1.5


@dataclass
class Fleet:
    module: ModuleType
    env: dict[str, str]
    logs: Path
    workers: dict[str, CeleryWorker] = field(default_factory=dict)

    @property
    def app(self) -> Any:
        return self.module.app

    @property
    def cache(self) -> RedisCache:
        return self.module.cache

    @property
    def client(self) -> redis.Redis:
        return self.cache.client

    def workflow(self, **options: Any) -> Any:
        dispatcher = CeleryDispatcher(self.app, self.cache, timeout=60)
        return create_workflow({}, cache=self.cache, dispatcher=dispatcher, **options)

    def count(self, name: str) -> int:
        return self.module.count(name)

    def signals(self, task_id: str) -> list[str]:
        return [s.decode() for s in self.client.lrange(f"signals:{task_id}", 0, -1)]

    def step_pids(self) -> set[int]:
        return {w.pid for name, w in self.workers.items() if name.startswith("step")}


@pytest.fixture(scope="module")
def fleet(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    namespace = f"canvas-{uuid.uuid4().hex[:8]}"
    env = {
        "WORKFLOW_CACHE_BROKER": redis_url,
        "WORKFLOW_CACHE_NAMESPACE": namespace,
        "WORKFLOW_CACHE_LEASE": str(LEASE),
    }
    with configured_test_app(env) as module:
        logs = tmp_path_factory.mktemp("celery-logs")
        fleet = Fleet(module, env, logs)

        def start(name: str, queues: str, **kw: Any) -> CeleryWorker:
            worker = CeleryWorker(
                "tests.celery_app", name, queues, env, log=logs / f"{name}.log", **kw
            )
            fleet.workers[name] = worker
            return worker

        for i in range(3):
            start(f"step{i}", "steps")
        start("second", module.SECOND_QUEUE)
        start("limits", module.LIMITS_QUEUE, pool="prefork", concurrency=2)
        try:
            wait_ready(module.app, list(fleet.workers.values()))
            yield fleet
        finally:
            stop_all(fleet.workers.values())


@pytest.fixture
def tag() -> str:
    return uuid.uuid4().hex[:10]


class Published:
    """Step messages this process publishes, as (task name, task id, step key)."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, str, str | None]] = []
        self._lock = threading.Lock()

    def __call__(self, sender: Any = None, headers: Any = None, **_: Any) -> None:
        headers = headers or {}
        step = headers.get("wfc_step") or {}
        with self._lock:
            self.messages.append((sender, headers.get("id"), step.get("key")))

    def for_key(self, key: str) -> list[str]:
        return [task_id for _, task_id, k in self.messages if k == key]

    def __enter__(self) -> Published:
        before_task_publish.connect(self, weak=False)
        return self

    def __exit__(self, *exc: object) -> None:
        before_task_publish.disconnect(self)


def in_threads(count: int, call: Any) -> list[Any]:
    barrier = threading.Barrier(count)
    results: list[Any] = [None] * count

    def run(i: int) -> None:
        barrier.wait()
        results[i] = call()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return results


# -- the task runs as itself -------------------------------------------------------------


def test_a_bound_task_sees_celerys_real_request(fleet: Fleet, tag: str) -> None:
    with Published() as published:
        result = fleet.workflow()(lambda step: step(fleet.module.whoami.s(tag), key=tag))
    assert result.ok, result
    seen = result.value
    (task_id,) = published.for_key(tag)
    assert seen["id"] == task_id and seen["called_directly"] is False
    assert seen["retries"] == 0 and seen["routing_key"] == "steps"
    assert seen["hostname"] in {w.name for w in fleet.workers.values()}
    assert seen["pid"] in fleet.step_pids()


def test_signals_fire_for_the_users_task(fleet: Fleet, tag: str) -> None:
    with Published() as published:
        fleet.workflow()(lambda step: step(fleet.module.work.s(tag), key=tag))
    (task_id,) = published.for_key(tag)
    # task_success fires after the task returned, so maybe after the producer woke
    wait_until(lambda: len(fleet.signals(task_id)) >= 2, "task_prerun and task_success")
    assert fleet.signals(task_id) == ["prerun:tests.work", "success:tests.work"]


def test_task_routes_send_a_step_to_its_own_queue(fleet: Fleet, tag: str) -> None:
    workflow = fleet.workflow()
    routed = workflow(lambda step: step(fleet.module.routed.s(tag), key=tag)).value
    assert routed == {"pid": fleet.workers["second"].pid, "routing_key": "second"}
    by_option = fleet.module.work.s(f"{tag}:o").set(queue="second")
    assert workflow(lambda step: step(by_option, key=f"{tag}:o")).value["pid"] == (
        fleet.workers["second"].pid
    )


def test_priority_and_countdown_reach_the_task(fleet: Fleet, tag: str) -> None:
    sig = fleet.module.whoami.s(tag).set(priority=3, countdown=1.5)
    sent = dt.datetime.now(dt.UTC)
    seen = fleet.workflow()(lambda step: step(sig, key=tag)).value
    assert seen["priority"] == 3
    eta = dt.datetime.fromisoformat(seen["eta"])
    assert (eta - sent).total_seconds() >= 1.4


def test_an_expired_message_ends_the_step_with_that_error(fleet: Fleet, tag: str) -> None:
    sig = fleet.module.work.s(tag).set(countdown=1.0, expires=0.3)
    result = fleet.workflow()(lambda step: step(sig, key=tag))
    assert isinstance(result.error, UnexpectedError)
    assert result.error.type.endswith("TaskRevokedError") and "expired" in result.error.message
    assert fleet.count(tag) == 0


def test_inspect_shows_the_users_task_name(fleet: Fleet, tag: str) -> None:
    # on the prefork worker: a solo worker cannot answer control commands while busy
    sig = fleet.module.work.s(tag, 2.0).set(queue=fleet.module.LIMITS_QUEUE)
    box: dict[str, Any] = {}
    runner = threading.Thread(
        target=lambda: box.update(r=fleet.workflow()(lambda step: step(sig, key=tag)))
    )
    runner.start()
    wait_until(lambda: fleet.count(tag), "the task to start")

    def active_names() -> set[str]:
        active = fleet.app.control.inspect(timeout=1.0).active() or {}
        return {task["name"] for tasks in active.values() for task in tasks}

    names = wait_until(lambda: active_names() & {"tests.work"}, "inspect().active() to list it")
    runner.join(timeout=60)
    assert "tests.work" in names and box["r"].ok


# -- retries and limits --------------------------------------------------------------------


def test_retries_with_countdown_are_one_execution_while_8_producers_wait(
    fleet: Fleet, tag: str
) -> None:
    sig = fleet.module.retry_twice.s(tag, 1.0)
    with Published() as published:
        results = in_threads(8, lambda: fleet.workflow()(lambda step: step(sig, key=tag)))
    assert all(r.ok for r in results), results
    assert {r.value["attempts"] for r in results} == {3}
    assert fleet.count(tag) == 3  # one execution of the body per attempt
    sent = published.for_key(tag)
    assert len(sent) == 1 and results[0].value["id"] == sent[0]  # nobody re-sent meanwhile
    wait_until(lambda: len(fleet.signals(sent[0])) >= 6, "six signals of three attempts")
    assert fleet.signals(sent[0]) == [
        "prerun:tests.retry_twice",
        "retry:tests.retry_twice",
        "prerun:tests.retry_twice",
        "retry:tests.retry_twice",
        "prerun:tests.retry_twice",
        "success:tests.retry_twice",
    ]
    assert fleet.cache.get(tag).value["retries"] == 2


def test_autoretry_exhausted_is_the_final_error_kept_by_policy(fleet: Fleet, tag: str) -> None:
    sig = fleet.module.always_retry.s(tag)
    with Published() as published:
        result = fleet.workflow()(lambda step: step(sig, key=tag))
    assert isinstance(result.error, UnexpectedError) and result.error.type == "ValueError"
    assert fleet.count(tag) == 3 and fleet.cache.get(tag) is None  # exceptions not kept
    (task_id,) = published.for_key(tag)
    wait_until(lambda: len(fleet.signals(task_id)) >= 6, "six signals of three attempts")
    assert fleet.signals(task_id) == [
        *["prerun:tests.always_retry", "retry:tests.always_retry"] * 2,
        "prerun:tests.always_retry",
        "failure:tests.always_retry",
    ]
    kept = f"{tag}:kept"
    sig = fleet.module.always_retry.s(kept)
    fleet.workflow(cache_exceptions=True)(lambda step: step(sig, key=kept))
    assert fleet.count(kept) == 3 and fleet.cache.get(kept).error.type == "ValueError"


def test_hard_time_limit_is_enforced_and_is_the_outcome(fleet: Fleet, tag: str) -> None:
    sig = fleet.module.hard_limited.s(tag, 30)
    result = fleet.workflow()(lambda step: step(sig, key=tag))
    assert isinstance(result.error, UnexpectedError)
    assert result.error.type.endswith("TimeLimitExceeded")
    assert fleet.count(tag) == 1


def test_soft_time_limit_is_raised_in_the_task(fleet: Fleet, tag: str) -> None:
    result = fleet.workflow()(lambda step: step(fleet.module.soft_limited.s(tag, 5), key=tag))
    assert isinstance(result.error, UnexpectedError)
    assert result.error.type.endswith("SoftTimeLimitExceeded")


def test_a_killed_pool_child_is_taken_over(fleet: Fleet, tag: str) -> None:
    sig = fleet.module.slow_first.s(tag, 60).set(queue=fleet.module.LIMITS_QUEUE)
    box: dict[str, Any] = {}
    runner = threading.Thread(
        target=lambda: box.update(r=fleet.workflow()(lambda step: step(sig, key=tag)))
    )
    runner.start()
    child = wait_until(
        lambda: [int(p) for p in fleet.client.lrange(f"pids:{tag}", 0, -1)], "the task to start"
    )[0]
    assert child != fleet.workers["limits"].pid  # a pool process, not the worker
    os.kill(child, signal.SIGKILL)
    runner.join(timeout=60)
    result = box["r"]
    assert result.ok and result.value["count"] == 2 and result.value["pid"] != child
    assert fleet.cache.get(tag) == result


# -- one message per key ---------------------------------------------------------------------


def test_a_stampede_sends_one_message_and_duplicates_never_hold_a_slot(
    fleet: Fleet, tag: str
) -> None:
    work = fleet.module.work
    cold, other = f"{tag}:K", f"{tag}:J"
    finished: list[str] = []

    def one(key: str, seconds: float) -> Any:
        result = fleet.workflow()(lambda step: step(work.s(key, seconds), key=key))
        finished.append(key)
        return result

    with Published() as published:
        box: dict[str, Any] = {}
        stampede = threading.Thread(
            target=lambda: box.update(k=in_threads(32, lambda: one(cold, 3.0)))
        )
        stampede.start()
        # the other key is sent once the cold key's one execution holds a slot
        wait_until(lambda: fleet.count(cold), "the cold key's task to start")
        box.update(j=one(other, 0.01))
        stampede.join(timeout=60)
        results = box["k"]
    assert len(published.for_key(cold)) == 1 and fleet.count(cold) == 1
    assert len({r.value["pid"] for r in results}) == 1
    assert box["j"].ok and finished.index(other) < finished.index(cold)


def test_a_message_for_a_running_key_is_acknowledged_at_once(fleet: Fleet, tag: str) -> None:
    work = fleet.module.work
    box: dict[str, Any] = {}
    runner = threading.Thread(
        target=lambda: box.update(r=fleet.workflow()(lambda step: step(work.s(tag, 8.0), key=tag)))
    )
    runner.start()
    wait_until(lambda: fleet.count(tag), "the holder's task to start")
    header = {"key": tag, "ns": fleet.cache.namespace}
    duplicates = [work.apply_async((tag, 3.0), headers={"wfc_step": header}) for _ in range(4)]
    # every duplicate is started and acknowledged (no success: its body never ran) while
    # the holder still runs
    wait_until(
        lambda: all(fleet.signals(d.id) == ["prerun:tests.work"] for d in duplicates),
        "every duplicate started and acknowledged",
    )
    assert fleet.cache.get(tag) is None  # still running
    runner.join(timeout=60)
    assert box["r"].ok and fleet.count(tag) == 1
    assert all(fleet.signals(d.id) == ["prerun:tests.work"] for d in duplicates)
    # a redelivered message of a committed key is acknowledged without running
    again = work.apply_async((tag, 3.0), headers={"wfc_step": header})
    wait_until(
        lambda: fleet.signals(again.id) == ["prerun:tests.work"], "the redelivery acknowledged"
    )
    # none of these messages stays unacknowledged (the broker's "unacked" hash is shared by
    # every test on this Redis, so look for these task ids only)
    ids = [d.id for d in duplicates] + [again.id]
    wait_until(
        lambda: not any(i in unacked_text(fleet) for i in ids), "no message left unacknowledged"
    )
    assert fleet.count(tag) == 1


def unacked_text(fleet: Fleet) -> str:
    """Every message the broker still holds as delivered but unacknowledged, as one text."""
    return b"".join(fleet.client.hvals("unacked")).decode(errors="replace")


def test_a_lost_message_is_sent_again_once_its_marker_expires(fleet: Fleet, tag: str) -> None:
    queued = fleet.cache.keyspace.for_step(tag).queued
    fleet.client.set(queued, "lost-message", px=1000)  # a producer died before sending
    dispatcher = CeleryDispatcher(fleet.app, fleet.cache, timeout=60, queued_ttl=5)
    workflow = create_workflow({}, cache=fleet.cache, dispatcher=dispatcher)
    with Published() as published:
        results = in_threads(
            4, lambda: workflow(lambda step: step(fleet.module.work.s(tag), key=tag))
        )
    assert all(r.ok for r in results) and fleet.count(tag) == 1
    assert len(published.for_key(tag)) == 1


# -- canvas and wrong inputs -------------------------------------------------------------------


def test_a_group_is_one_step_per_member(fleet: Fleet, tag: str) -> None:
    work = fleet.module.work
    workflow = fleet.workflow()
    members = group(work.s(f"{tag}:a"), work.s(f"{tag}:b"))
    first = workflow(lambda step: step(members, key=tag))
    assert first.ok and [v["count"] for v in first.value] == [1, 1]
    again = workflow(lambda step: step(members, key=tag))
    assert again.value == first.value and fleet.count(f"{tag}:a") == 1
    assert fleet.cache.get(f"{tag}[1]").value == first.value[1]


@pytest.mark.parametrize("kind", ["chain", "chord", "group in step.all"])
def test_chains_and_chords_are_refused_before_anything_is_sent(
    fleet: Fleet, tag: str, kind: str
) -> None:
    work = fleet.module.work
    a, b = work.s(f"{tag}:a"), work.s(f"{tag}:b")
    calls = {
        "chain": lambda step: step(a | b, key=tag),
        "chord": lambda step: step(group(a, b) | b, key=tag),
        "group in step.all": lambda step: step.all([a, group(a, b)], keys=[tag, f"{tag}:g"]),
    }
    expected = {"chain": "own step", "chord": "step.all", "group in step.all": "its tasks"}
    with Published() as published, pytest.raises(TypeError, match=expected[kind]):
        fleet.workflow()(calls[kind])
    assert published.messages == []


def test_a_signature_without_a_dispatcher_is_refused_unless_run_locally(
    fleet: Fleet, tag: str
) -> None:
    workflow = create_workflow({}, cache=fleet.cache)
    sig = fleet.module.work.s(tag)
    with pytest.raises(TypeError, match="CeleryDispatcher"):
        workflow(lambda step: step(sig, key=tag))
    assert fleet.count(tag) == 0
    here = workflow(lambda step: step(sig, key=tag, run_locally=True))
    assert here.value["pid"] == os.getpid()


def test_caches_that_cannot_do_single_flight_are_refused(fleet: Fleet, tmp_path: Path) -> None:
    with pytest.raises(TypeError, match=r"got dict.*single flight|single flight.*got dict"):
        install(fleet.app, {})
    with pytest.raises(TypeError, match="LocalCache"):
        CeleryDispatcher(fleet.app, LocalCache(tmp_path))


def test_a_signature_key_names_the_task_inputs_and_version(fleet: Fleet, tag: str) -> None:
    work = fleet.module.work
    key = signature_key(work.s(tag, value={"b": 1, "a": 2}), version="1")
    assert key.startswith("sig:tests.work@1:")
    assert key == signature_key(work.s(tag, value={"a": 2, "b": 1}), version="1")
    assert key != signature_key(work.s(tag, value={"a": 2, "b": 1}), version="2")
    assert key != signature_key(work.s(f"{tag}!", value={"a": 2, "b": 1}), version="1")
    assert key == signature_key(work.s(tag, value={"a": 2, "b": 1}).set(queue="x"), version="1")
    workflow = fleet.workflow()
    sig = work.s(tag, 0.0, 7)
    assert workflow(lambda step: step(sig, key=signature_key(sig))).value == 7
    assert workflow(lambda step: step(sig, key=signature_key(sig))).value == 7
    assert fleet.count(tag) == 1
    with pytest.raises(TypeError, match="JSON"):
        signature_key(work.s(object()))


def test_async_workflows_send_signatures_and_groups(fleet: Fleet, tag: str) -> None:
    work = fleet.module.work

    async def flow(step: Any) -> list[int]:
        one = await step(work.s(f"{tag}:1"), key=f"{tag}:1")
        many = await step(group(work.s(f"{tag}:2"), work.s(f"{tag}:3")), key=tag)
        return [one["count"], *(m["count"] for m in many)]

    assert asyncio.run(fleet.workflow()(flow)).value == [1, 1, 1]
    assert asyncio.run(fleet.workflow()(flow)).value == [1, 1, 1]  # all hits
    assert fleet.count(f"{tag}:2") == 1


def test_a_countdown_longer_than_the_queued_ttl_is_not_a_lost_message(
    fleet: Fleet, tag: str
) -> None:
    dispatcher = CeleryDispatcher(fleet.app, fleet.cache, timeout=60, queued_ttl=0.5)
    workflow = create_workflow({}, cache=fleet.cache, dispatcher=dispatcher)
    sig = fleet.module.work.s(tag).set(countdown=2.0)
    with Published() as published:
        assert workflow(lambda step: step(sig, key=tag)).ok
    assert len(published.for_key(tag)) == 1 and fleet.count(tag) == 1


def test_revoking_a_running_step_ends_it_with_that_error(fleet: Fleet, tag: str) -> None:
    sig = fleet.module.work.s(tag, 30).set(queue=fleet.module.LIMITS_QUEUE)
    box: dict[str, Any] = {}
    with Published() as published:
        runner = threading.Thread(
            target=lambda: box.update(r=fleet.workflow()(lambda step: step(sig, key=tag)))
        )
        runner.start()
        wait_until(lambda: fleet.count(tag), "the task to start")
    (task_id,) = published.for_key(tag)
    fleet.app.control.revoke(task_id, terminate=True)
    runner.join(timeout=60)
    result = box["r"]
    assert isinstance(result.error, UnexpectedError)
    assert result.error.type.endswith("TaskRevokedError") and "revoked" in result.error.message
    assert fleet.count(tag) == 1


def test_a_value_json_cannot_hold_is_refused_as_it_is_locally(fleet: Fleet, tag: str) -> None:
    """Local or dispatched, the same step code raises ``NotStorableError`` naming key and type."""
    workflow = fleet.workflow()
    with pytest.raises(NotStorableError, match=rf"'{tag}'.*set"):
        workflow(lambda step: step(fleet.module.unstorable.s(tag), key=tag))
    with pytest.raises(NotStorableError, match=rf"'{tag}:local'.*set"):
        workflow(lambda step: step(lambda: {tag}, key=f"{tag}:local"))
    assert not fleet.cache.has(tag) and not fleet.cache.has(f"{tag}:local")
    assert fleet.module.count(tag) == 1
