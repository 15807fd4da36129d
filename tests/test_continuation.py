"""A step's commit carries its run on in the same slot (``continuation.py``).

Real ``celery worker`` processes: a worker serving both the workflows and the steps
queue replays a run right after the commit that completes its batch, so a run of five
dispatched steps is one workflow message and five step messages, not eleven; every
other case still sends the resume as a message, and a worker killed while it carries a
run on loses nothing.
"""

from __future__ import annotations

import os
import signal
import uuid
from pathlib import Path
from types import ModuleType

import pytest

from tests.test_durable_workers import durable_app
from tests.test_workflows_suspend import workers as started
from tests.waiting import wait_until
from tests.workers import CeleryWorker
from workflow_cache.distributed import outcome_of, result_of, run_info


def deliveries(module: ModuleType, run_id: str) -> int:
    """How many Celery messages of the workflow task ``run_id`` a worker began."""
    return sum(
        1
        for s in module._redis.lrange(f"signals:{run_id}", 0, -1)
        if s.decode().startswith("prerun:tests.")
    )


def both_queues(module: ModuleType, env: dict[str, str], name: str, logs: Path) -> CeleryWorker:
    queues = f"{module.settings.workflow_queue},steps"
    return CeleryWorker(
        "tests.celery_app", name, queues, env, pool="prefork", concurrency=2, log=logs / "w.log"
    )


def test_a_worker_serving_both_queues_sends_no_resume(redis_url, tmp_path: Path) -> None:
    with (
        durable_app(redis_url) as (module, env),
        started(module, both_queues(module, env, "both", tmp_path)),
    ):
        tag = uuid.uuid4().hex[:10]
        r = module.five_steps.delay(tag)
        assert result_of(r, timeout=60).value == 5  # the Celery result backend has it too
        assert outcome_of(module.cache, r.id, timeout=5).value == 5
        info = run_info(module.cache, r.id)
        assert info is not None and info.state == "done" and info.replays == 5
        assert deliveries(module, r.id) == 1  # only the first message: five replays carried on
        assert [module.count(f"{tag}:{i}") for i in range(5)] == [1] * 5


def test_continue_inline_off_sends_every_resume(redis_url, tmp_path: Path) -> None:
    with durable_app(redis_url) as (module, env):
        env = {**env, "WORKFLOW_CACHE_CONTINUE_INLINE": "false"}
        with started(module, both_queues(module, env, "both", tmp_path)):
            r = module.five_steps.delay(uuid.uuid4().hex[:10])
            assert result_of(r, timeout=60).value == 5
            assert deliveries(module, r.id) == 6


def test_a_step_worker_without_the_workflow_queue_sends_the_resume(
    redis_url, tmp_path: Path
) -> None:
    with durable_app(redis_url) as (module, env):
        steps = CeleryWorker("tests.celery_app", "steps", "steps", env, log=tmp_path / "s.log")
        queue = module.settings.workflow_queue
        flows = CeleryWorker("tests.celery_app", "flows", queue, env, log=tmp_path / "f.log")
        with started(module, steps, flows):
            r = module.five_steps.delay(uuid.uuid4().hex[:10])
            assert result_of(r, timeout=60).value == 5
            assert deliveries(module, r.id) == 6


def test_a_time_limited_step_sends_the_resume(redis_url, tmp_path: Path) -> None:
    with (
        durable_app(redis_url) as (module, env),
        started(module, both_queues(module, env, "both", tmp_path)),
    ):
        r = module.limited_step.delay(uuid.uuid4().hex[:10])
        assert result_of(r, timeout=60).value == 1
        assert deliveries(module, r.id) == 2  # the limit would have covered the replay


def test_a_workflow_that_raises_while_carried_on_reports_its_error(
    redis_url, tmp_path: Path
) -> None:
    with (
        durable_app(redis_url) as (module, env),
        started(module, both_queues(module, env, "both", tmp_path)),
    ):
        tag = uuid.uuid4().hex[:10]
        r = module.fails_after_a.delay(tag)
        outcome = outcome_of(module.cache, r.id, timeout=60)
        assert not outcome.ok and "nothing after a" in str(outcome.error)
        with pytest.raises(LookupError, match="nothing after a"):
            r.get(timeout=30)  # the backend holds the failure, as a delivery would leave it
        assert deliveries(module, r.id) == 1


def test_a_worker_killed_while_carrying_a_run_on_loses_nothing(redis_url, tmp_path: Path) -> None:
    with durable_app(redis_url) as (module, env):
        first = both_queues(module, env, "both-1", tmp_path)
        second = both_queues(module, env, "both-2", tmp_path)
        with started(module, first, second):
            tag = uuid.uuid4().hex[:10]
            r = module.pausing.delay(tag, 0.0, 600.0)  # its first replay past a pauses
            pid = int(
                wait_until(
                    lambda: module._redis.lindex(f"pids:{tag}:pause", 0), "the replay to pause"
                )
            )
            victim = first if pid in first.children() else second
            assert pid in victim.children()  # a pool process carried the run on after step a
            assert module.count(f"{tag}:a") == 1 and deliveries(module, r.id) == 1
            children = victim.children()
            for process in (victim.pid, *children):  # the whole worker, at once
                os.kill(process, signal.SIGKILL)
            outcome = outcome_of(module.cache, r.id, timeout=120)
        assert outcome.ok and outcome.value == [1, 1]
        assert module.count(f"{tag}:a") == 1 and module.count(f"{tag}:b") == 1
