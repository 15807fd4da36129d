"""A dead step holder is taken over through its presence; a paused one only at lease end.

Real ``celery worker`` processes at the default lease (5 s) share one real Redis. A
holder killed with ``kill -9`` closes its presence connection with its process, so the
waiting producer ends its claim and sends the step again without waiting out the lease
(how soon is a figure of ``benchmarks/bench_takeover.py``). A SIGSTOPped holder keeps
its connection open: it is taken over when its lease runs out, and its late commit is
refused by the epoch.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import redis

from tests.waiting import wait_until
from tests.workers import CeleryWorker, configured_test_app, stop_all, wait_ready
from workflow_cache import RedisCache, create_workflow
from workflow_cache.distributed import CeleryDispatcher

QUEUE = "takeover"
GONE = "the process running it is gone"


@dataclass
class Fleet:
    module: ModuleType
    env: dict[str, str]
    logs: Path
    workers: list[CeleryWorker] = field(default_factory=list)

    @property
    def cache(self) -> RedisCache:
        return self.module.cache  # type: ignore[no-any-return]

    @property
    def client(self) -> redis.Redis:
        return self.cache.client

    def start_worker(self) -> CeleryWorker:
        name = f"takeover{len(self.workers)}"
        worker = CeleryWorker(
            "tests.celery_app", name, QUEUE, self.env, log=self.logs / f"{name}.log"
        )
        self.workers.append(worker)
        wait_ready(self.module.app, [worker])
        return worker

    def live_workers(self) -> list[CeleryWorker]:
        return [w for w in self.workers if w.alive()]

    def run_in_background(
        self, flow: Callable[[Any], Any]
    ) -> tuple[threading.Thread, dict[str, Any]]:
        dispatcher = CeleryDispatcher(self.module.app, self.cache, timeout=120)
        workflow = create_workflow({}, cache=self.cache, dispatcher=dispatcher)
        box: dict[str, Any] = {}
        thread = threading.Thread(target=lambda: box.update(result=workflow(flow)), daemon=True)
        thread.start()
        return thread, box

    def pids(self, name: str) -> list[int]:
        return [int(p) for p in self.client.lrange(f"pids:{name}", 0, -1)]


@pytest.fixture(scope="module")
def fleet(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    env = {  # the default lease: what a user gets
        "WORKFLOW_CACHE_BROKER": redis_url,
        "WORKFLOW_CACHE_NAMESPACE": f"takeover-{uuid.uuid4().hex[:8]}",
    }
    with configured_test_app(env) as module:
        assert module.cache.lease == 5.0
        fleet = Fleet(module, env, tmp_path_factory.mktemp("takeover-logs"))
        try:
            for _ in range(2):
                fleet.start_worker()
            yield fleet
        finally:
            stop_all(fleet.workers)


@pytest.fixture
def tag() -> str:
    return uuid.uuid4().hex[:10]


def two_live_workers(fleet: Fleet) -> None:
    while len(fleet.live_workers()) < 2:
        fleet.start_worker()


def start_held(
    fleet: Fleet, tag: str, seconds: float
) -> tuple[threading.Thread, dict[str, Any], CeleryWorker]:
    """A producer waiting on a step that sleeps ``seconds`` the first time, once a
    (solo) worker runs it: the thread, its result box, and that worker."""
    two_live_workers(fleet)
    slow = fleet.module.slow_first.s(tag, seconds).set(queue=QUEUE)
    thread, box = fleet.run_in_background(lambda step: step(slow, key=tag))
    first = wait_until(lambda: fleet.pids(tag), "the step to start")[0]
    (holder,) = [w for w in fleet.workers if w.pid == first]
    return thread, box, holder


def test_a_killed_holder_is_taken_over_through_its_presence(
    fleet: Fleet, tag: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="workflow_cache.distributed.dispatcher"):
        thread, box, holder = start_held(fleet, tag, 120)
        holder.kill()  # kill -9: its presence connection closes with the process
        thread.join(timeout=60)
    result = box["result"]
    assert result.ok and result.value["count"] == 2 and result.value["pid"] != holder.pid
    assert int(fleet.client.get(f"count:{tag}") or 0) == 2
    # The producer saw the holder's process gone: it did not wait for the lease.
    assert any(GONE in r.getMessage() for r in caplog.records), caplog.text
    assert fleet.cache.get(tag) == result


def test_a_paused_holder_is_taken_over_at_lease_end_and_its_commit_refused(
    fleet: Fleet, tag: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="workflow_cache.distributed.dispatcher"):
        thread, box, paused = start_held(fleet, tag, 1.0)
        os.kill(paused.pid, signal.SIGSTOP)  # alive, connections open, nothing renewed
        try:
            thread.join(timeout=60)
        finally:
            os.kill(paused.pid, signal.SIGCONT)
    result = box["result"]
    assert result.ok and result.value["count"] == 2 and result.value["pid"] != paused.pid
    # Resumed, the paused holder ends its body and commits: refused, its epoch is old.
    wait_until(lambda: fleet.client.llen(f"finished:{tag}") == 2, "the paused holder to end")
    assert fleet.cache.get(tag) == result
    assert int(fleet.client.get(f"count:{tag}") or 0) == 2
    assert not any(GONE in r.getMessage() for r in caplog.records), caplog.text
    assert paused.alive()


def test_a_marker_whose_message_was_never_sent_does_not_strand_the_key(
    fleet: Fleet, tag: str
) -> None:
    """A producer killed between setting the queued marker and publishing: the marker
    lives two leases, then the next waiter sends the step."""
    two_live_workers(fleet)
    dispatcher = CeleryDispatcher(fleet.module.app, fleet.cache, timeout=120)
    marked = dispatcher.messages.enqueue_many([tag], ["never-sent"], 2 * fleet.cache.lease)
    assert [type(m).__name__ for m in marked] == ["Send"]  # ... and then it died
    workflow = create_workflow({}, cache=fleet.cache, dispatcher=dispatcher)
    work = fleet.module.work.s(tag).set(queue=QUEUE)
    result = workflow(lambda step: step(work, key=tag))
    assert result.ok and result.value["count"] == 1
    assert int(fleet.client.get(f"count:{tag}") or 0) == 1
