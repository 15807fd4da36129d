"""Steps and workflows on real ``celery worker`` processes sharing one real Redis."""

from __future__ import annotations

import importlib
import json
import multiprocessing
import os
import signal
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import ModuleType

import pytest
import redis
from celery.signals import before_task_publish

from tests.servers import free_port
from tests.waiting import wait_until
from tests.workers import CeleryWorker, configured_test_app, stop_all, wait_ready
from workflow_cache import (
    CacheUnavailable,
    RedisCache,
    UnexpectedError,
    create_workflow,
)
from workflow_cache.distributed import CeleryDispatcher, result_of

LEASE = 1.5


@dataclass
class Fleet:
    app_module: ModuleType
    env: dict[str, str]
    logs: object
    steps: list[CeleryWorker] = field(default_factory=list)
    flows: list[CeleryWorker] = field(default_factory=list)

    @property
    def cache(self) -> RedisCache:
        return self.app_module.cache

    def workflow(self, **options):
        dispatcher = CeleryDispatcher(self.app_module.app, self.cache, timeout=60)
        return create_workflow({}, cache=self.cache, dispatcher=dispatcher, **options)

    def count(self, name: str) -> int:
        return self.app_module.count(name)

    def replace(self, dead: CeleryWorker) -> None:
        """Start a fresh step worker in place of one a test killed."""
        self.steps.remove(dead)
        worker = CeleryWorker(
            "tests.celery_app",
            f"step-{uuid.uuid4().hex[:6]}",
            "steps",
            self.env,
            log=self.logs / "steps.log",
        )
        self.steps.append(worker)
        wait_ready(self.app_module.app, [worker])


@pytest.fixture(scope="module")
def fleet(redis_url, tmp_path_factory) -> Iterator[Fleet]:
    namespace = f"dist-{uuid.uuid4().hex[:8]}"
    env = {
        "WORKFLOW_CACHE_BROKER": redis_url,
        "WORKFLOW_CACHE_NAMESPACE": namespace,
        "WORKFLOW_CACHE_LEASE": str(LEASE),
    }
    with configured_test_app(env) as module:
        logs = tmp_path_factory.mktemp("celery-logs")
        fleet = Fleet(module, env, logs)
        fleet.steps = [
            CeleryWorker("tests.celery_app", f"step{i}", "steps", env, log=logs / "steps.log")
            for i in range(3)
        ]
        fleet.flows = [
            CeleryWorker(
                "tests.celery_app", "flow", "workflows", env, pool="prefork", log=logs / "flows.log"
            )
        ]
        try:
            wait_ready(module.app, fleet.steps + fleet.flows)
            yield fleet
        finally:
            stop_all(fleet.steps + fleet.flows)


@pytest.fixture
def tag() -> str:
    return uuid.uuid4().hex[:10]


def pids(fleet: Fleet, name: str, list_name: str = "pids") -> list[int]:
    client: redis.Redis = fleet.cache.client
    return [int(p) for p in client.lrange(f"{list_name}:{name}", 0, -1)]


# -- dispatch -------------------------------------------------------------------------


def test_a_signature_step_runs_on_a_worker_once(fleet: Fleet, tag: str) -> None:
    work = fleet.app_module.work
    workflow = fleet.workflow()
    first = workflow(lambda step: step(work.s(tag), key=tag))
    second = workflow(lambda step: step(work.s(tag), key=tag))
    assert first.ok and first.value == second.value
    assert first.value["count"] == 1 and fleet.count(tag) == 1
    assert first.value["pid"] in {w.pid for w in fleet.steps}


def test_an_unkeyed_signature_runs_every_time(fleet: Fleet, tag: str) -> None:
    work = fleet.app_module.work
    workflow = fleet.workflow()
    assert workflow(lambda step: step(work.s(tag))).value["count"] == 1
    assert workflow(lambda step: step(work.s(tag))).value["count"] == 2


def test_a_task_exception_is_an_unexpected_error_and_not_kept(fleet: Fleet, tag: str) -> None:
    fails = fleet.app_module.fails
    workflow = fleet.workflow()
    for _ in range(2):
        result = workflow(lambda step: step(fails.s(tag), key=tag))
        assert isinstance(result.error, UnexpectedError)
        assert result.error.type == "ValueError" and "always fails" in result.error.message
    assert fleet.count(tag) == 2


def test_an_err_from_a_task_ends_the_workflow_and_is_kept(fleet: Fleet, tag: str) -> None:
    not_found = fleet.app_module.not_found
    after: list[int] = []
    workflow = fleet.workflow()

    def run(step):
        step(not_found.s(tag), key=tag)
        after.append(1)

    assert workflow(run).error == "NOT_FOUND"
    assert workflow(run).error == "NOT_FOUND"
    assert fleet.count(tag) == 1 and after == []


def test_fan_out_reads_once_and_dispatches_only_misses(fleet: Fleet, tag: str) -> None:
    work = fleet.app_module.work
    workflow = fleet.workflow()
    workflow(lambda step: step(work.s(f"{tag}:0"), key=f"{tag}:0"))
    sent: list[str] = []

    def record(sender=None, headers=None, **_):
        if sender == "tests.work" and "wfc_step" in (headers or {}):
            sent.append(headers["wfc_step"]["key"])

    before_task_publish.connect(record, weak=False)
    try:
        keys = [f"{tag}:{i}" for i in range(4)]
        result = workflow(lambda step: step.all([work.s(k, 0.3) for k in keys], keys=keys))
    finally:
        before_task_publish.disconnect(record)
    assert result.ok and [v["count"] for v in result.value] == [1, 1, 1, 1]
    assert sorted(sent) == keys[1:]  # the hit was never sent
    assert len({v["pid"] for v in result.value[1:]}) >= 2  # misses ran side by side


# -- single flight across processes ---------------------------------------------------


def _producer(key: str, seconds: float, queue) -> None:
    module = importlib.import_module("tests.celery_app")
    dispatcher = CeleryDispatcher(module.app, module.cache, timeout=60)
    workflow = create_workflow({}, cache=module.cache, dispatcher=dispatcher)
    result = workflow(lambda step: step(module.work.s(key, seconds), key=key))
    queue.put(json.dumps(result.value))


def test_16_producers_and_3_workers_run_a_key_exactly_once(fleet: Fleet, tag: str) -> None:
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    producers = [ctx.Process(target=_producer, args=(tag, 1.0, queue)) for _ in range(16)]
    for p in producers:
        p.start()
    outcomes = [json.loads(queue.get(timeout=120)) for _ in producers]
    for p in producers:
        p.join(timeout=30)
    assert fleet.count(tag) == 1
    assert len({json.dumps(o, sort_keys=True) for o in outcomes}) == 1
    assert outcomes[0]["count"] == 1


def test_kill_9_of_the_executing_worker_is_taken_over(fleet: Fleet, tag: str) -> None:
    slow_first = fleet.app_module.slow_first
    workflow = fleet.workflow()
    box: dict = {}
    runner = threading.Thread(
        target=lambda: box.update(
            result=workflow(lambda step: step(slow_first.s(tag, 60), key=tag))
        )
    )
    runner.start()
    victim_pid = wait_until(lambda: pids(fleet, tag), "the task to start")[0]
    victim = next(w for w in fleet.steps if w.pid == victim_pid)
    os.kill(victim_pid, signal.SIGKILL)
    runner.join(timeout=60)
    victim.proc.wait(timeout=10)
    fleet.replace(victim)
    result = box["result"]
    assert result.ok and result.value["count"] == 2 and result.value["pid"] != victim_pid
    assert fleet.cache.get(tag) == result  # exactly one outcome committed: the successor's


def test_a_stopped_holder_cannot_overwrite_its_successor(fleet: Fleet, tag: str) -> None:
    slow_first = fleet.app_module.slow_first
    workflow = fleet.workflow()
    box: dict = {}
    runner = threading.Thread(
        target=lambda: box.update(
            result=workflow(lambda step: step(slow_first.s(tag, 2 * LEASE), key=tag))
        )
    )
    runner.start()
    stopped_pid = wait_until(lambda: pids(fleet, tag), "the task to start")[0]
    os.kill(stopped_pid, signal.SIGSTOP)
    try:
        runner.join(timeout=60)
    finally:
        os.kill(stopped_pid, signal.SIGCONT)
    successor = box["result"]
    assert successor.ok and successor.value["pid"] != stopped_pid
    # the stopped worker wakes, finishes its body and tries to commit: refused
    wait_until(lambda: stopped_pid in pids(fleet, tag, "finished"), "the stopped body to end")
    log = fleet.logs / "steps.log"
    wait_until(
        lambda: f"step '{tag}': lease lost before commit" in log.read_text(),
        "the worker to log its refused commit",
    )
    assert fleet.cache.get(tag) == successor


# -- workflows enqueued by producers ----------------------------------------------------


def test_a_workflow_task_runs_on_a_worker(fleet: Fleet, tag: str) -> None:
    outcome = result_of(fleet.app_module.two_steps.delay(tag), timeout=60)
    assert outcome.ok and outcome.value == {"first": 1, "second": 1, "third": 1}
    again = result_of(fleet.app_module.two_steps.delay(tag), timeout=60)
    assert again.value == outcome.value
    assert fleet.count(f"{tag}:first") == 1 and fleet.count(f"{tag}:third") == 1


def test_a_killed_workflow_is_redelivered_and_skips_finished_steps(fleet: Fleet, tag: str):
    async_result = fleet.app_module.two_steps.delay(tag, 60)
    child_pid = wait_until(lambda: pids(fleet, tag), "step two to start")[0]
    assert child_pid not in {w.pid for w in fleet.flows}  # a pool process, not the worker
    os.kill(child_pid, signal.SIGKILL)
    outcome = result_of(async_result, timeout=90)
    assert outcome.ok, outcome
    assert outcome.value == {"first": 1, "second": 2, "third": 1}
    assert fleet.count(f"{tag}:first") == 1  # finished before the crash: a cache hit
    assert fleet.count(f"{tag}:second") == 2  # at least once: it was running when killed


def test_unreachable_redis_is_a_clear_error(fleet: Fleet) -> None:
    dead = RedisCache(
        f"redis://127.0.0.1:{free_port()}/0",
        namespace="dead",
        connect_timeout=0.3,
        socket_timeout=0.3,
    )
    workflow = create_workflow(
        {}, cache=dead, dispatcher=CeleryDispatcher(fleet.app_module.app, dead)
    )
    try:
        with pytest.raises(CacheUnavailable, match=r"127\.0\.0\.1"):
            workflow(lambda step: step(fleet.app_module.work.s("never"), key="never"))
    finally:
        dead.close()
