"""Durable runs on real ``celery worker`` processes: nothing depends on one message.

A resume deleted from the broker, a workflow worker killed mid-replay and a step worker
killed whole mid-step (with the default one-hour visibility timeout) are all repaired
by the fleet's reconciler from the run's record; a key committed by a producer's own
local step resumes its runs through the workers' handoff listener.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.test_workflows_suspend import workers as started
from tests.waiting import wait_until
from tests.workers import CeleryWorker, configured_test_app, wait_ready
from workflow_cache import create_workflow
from workflow_cache.distributed import outcome_of, result_of, run_info, waiting_on
from workflow_cache.distributed.cancel import cancel_run
from workflow_cache.distributed.events import send_event

LEASE = 1.5
INTERVAL = 0.5


@contextmanager
def durable_app(
    redis_url: str, app: str = "tests.celery_app", *, recheck: float = 1.0, **extra: str
) -> Iterator[tuple[ModuleType, dict[str, str]]]:
    env = {
        "WORKFLOW_CACHE_BROKER": redis_url,
        "WORKFLOW_CACHE_NAMESPACE": f"dur-{uuid.uuid4().hex[:8]}",
        "WORKFLOW_CACHE_LEASE": str(LEASE),
        "WORKFLOW_CACHE_RECONCILE_INTERVAL": str(INTERVAL),
        "WORKFLOW_CACHE_RUN_RECHECK": str(recheck),
        "WORKFLOW_CACHE_SUSPEND_AFTER": "0",  # every pending step suspends: these tests watch it
        **extra,
    }
    with configured_test_app(env, app) as module:
        yield module, env


@contextmanager
def fleet(
    module: ModuleType, env: dict[str, str], logs: Path
) -> Iterator[tuple[CeleryWorker, CeleryWorker]]:
    """A steps worker and a one-slot workflows worker, ready."""
    queue = module.settings.workflow_queue
    steps = CeleryWorker("tests.celery_app", "steps", "steps", env, log=logs / "s.log")
    flows = CeleryWorker("tests.celery_app", "flows", queue, env, log=logs / "f.log")
    with started(module, steps, flows):
        yield steps, flows


def _messages_of(module: ModuleType, queue: str, run_id: str) -> list[bytes]:
    return [m for m in module._redis.lrange(queue, 0, -1) if run_id.encode() in m]


def test_a_resume_deleted_from_the_queue_still_finishes(redis_url, tmp_path: Path) -> None:
    with durable_app(redis_url) as (module, env):
        queue = module.settings.workflow_queue
        steps = CeleryWorker("tests.celery_app", "steps", "steps", env, log=tmp_path / "s.log")
        flows = CeleryWorker("tests.celery_app", "flows", queue, env, log=tmp_path / "f.log")
        with started(module, steps, flows) as running:
            tag = uuid.uuid4().hex[:10]
            r = module.pausing.delay(tag, 2.0)
            wait_until(lambda: waiting_on(module.cache, f"{tag}:a") == [r.id], "run waits on a")
            flows.stop()  # nobody consumes the workflow queue now
            running.remove(flows)
            resumed = wait_until(
                lambda: _messages_of(module, queue, r.id), "the resume to reach the queue"
            )
            committed = time.monotonic()
            for message in resumed:
                module._redis.lrem(queue, 0, message)  # the broker lost it
            assert not _messages_of(module, queue, r.id)
            again = CeleryWorker("tests.celery_app", "flows-2", queue, env, log=tmp_path / "f.log")
            running.append(again)
            wait_ready(module.app, [again])
            outcome = outcome_of(module.cache, r.id, timeout=120)
            print(f"\nresume deleted: finished {time.monotonic() - committed:.1f} s after it")
        assert outcome.ok and outcome.value == [1, 1]
        assert module.count(f"{tag}:a") == 1 and module.count(f"{tag}:b") == 1


def test_a_worker_killed_mid_replay_is_finished_by_another(redis_url, tmp_path: Path) -> None:
    with durable_app(redis_url) as (module, env):  # default visibility timeout: one hour
        queue = module.settings.workflow_queue

        def flows(name: str) -> CeleryWorker:
            return CeleryWorker("tests.celery_app", name, queue, env, log=tmp_path / "f.log")

        steps = CeleryWorker("tests.celery_app", "steps", "steps", env, log=tmp_path / "s.log")
        first, second = flows("flows-1"), flows("flows-2")
        with started(module, steps, first, second):
            tag = uuid.uuid4().hex[:10]
            r = module.pausing.delay(tag, 0.5, 600.0)  # pauses in its first replay past a
            pid = int(
                wait_until(
                    lambda: module._redis.lindex(f"pids:{tag}:pause", 0), "the replay to pause"
                )
            )
            victim = first if pid == first.pid else second
            assert pid == victim.pid
            os.kill(victim.pid, signal.SIGKILL)
            killed = time.monotonic()
            victim.proc.wait(timeout=10)
            outcome = outcome_of(module.cache, r.id, timeout=120)
            print(
                f"\nkilled mid-replay: finished {time.monotonic() - killed:.1f} s after the "
                f"kill (lease {LEASE} s, reconciler every {INTERVAL} s)"
            )
        assert outcome.ok and outcome.value == [1, 1]
        assert module.count(f"{tag}:a") == 1 and module.count(f"{tag}:b") == 1
        info = run_info(module.cache, r.id)
        assert info is not None and info.state == "done" and info.epoch >= 3


def test_cancel_suspended_replaying_and_finished_runs(redis_url, tmp_path: Path) -> None:
    with durable_app(redis_url) as (module, env):
        with fleet(module, env, tmp_path):
            # while suspended: the outcome says so, and the step's commit resumes nothing
            tag = uuid.uuid4().hex[:10]
            r = module.pausing.delay(tag, 2.0)
            wait_until(lambda: waiting_on(module.cache, f"{tag}:a") == [r.id], "run waits on a")
            assert cancel_run(module.cache, r.id, reason="not needed")
            cancelled = result_of(r, timeout=60)  # reported by the reconciler's last delivery
            assert not cancelled.ok and "cancelled: not needed" in str(cancelled.error)
            assert outcome_of(module.cache, r.id, timeout=5) == cancelled
            wait_until(lambda: module.count(f"{tag}:a") == 1, "the step to run anyway")
            wait_until(lambda: not waiting_on(module.cache, f"{tag}:a"), "its commit")
            info = run_info(module.cache, r.id)
            assert info is not None and info.state == "cancelled"

            # while replaying: the delivery stops at its next step (the only flows slot
            # serves the reconciler's last delivery only after it stopped)
            tag = uuid.uuid4().hex[:10]
            r = module.pausing.delay(tag, 0.2, 3.0)
            wait_until(lambda: module._redis.lindex(f"pids:{tag}:pause", 0), "the replay pause")
            assert cancel_run(module.cache, r.id)
            assert "cancelled" in str(result_of(r, timeout=60).error)
            assert module.count(f"{tag}:b") == 0

            # after finishing: unchanged
            tag = uuid.uuid4().hex[:10]
            r = module.pausing.delay(tag)
            assert result_of(r, timeout=60).value == [1, 1]
            assert not cancel_run(module.cache, r.id)
            assert outcome_of(module.cache, r.id, timeout=5).value == [1, 1]
        assert module.count(f"{tag}:b") == 1


def test_the_same_task_id_enqueued_three_times_runs_once(redis_url, tmp_path: Path) -> None:
    with durable_app(redis_url) as (module, env):
        queue = module.settings.workflow_queue
        steps = CeleryWorker("tests.celery_app", "steps", "steps", env, log=tmp_path / "s.log")
        flows = CeleryWorker(
            "tests.celery_app",
            "flows",
            queue,
            env,
            pool="threads",
            concurrency=3,
            log=tmp_path / "f.log",
        )
        with started(module, steps, flows):
            tag = uuid.uuid4().hex[:10]
            run_id = f"order-{tag}"
            sent = [module.pausing.apply_async((tag, 0.5), task_id=run_id) for _ in range(3)]
            outcomes = [result_of(s, timeout=60) for s in sent]
            assert all(o.ok and o.value == [1, 1] for o in outcomes)
            assert outcome_of(module.cache, run_id, timeout=5).value == [1, 1]
            again = module.pausing.apply_async((tag, 0.5), task_id=run_id)  # after it finished
            assert result_of(again, timeout=60).value == [1, 1]
        assert module.count(f"{tag}:a") == 1 and module.count(f"{tag}:b") == 1


NEVER = 600.0
"""A recheck delay no test waits for: a run resumed sooner was not resumed by the
reconciler's recheck."""


@pytest.mark.parametrize("face", ["sync", "async"])
def test_a_local_commit_resumes_the_runs_waiting_on_its_key_at_once(
    redis_url, tmp_path: Path, face: str
) -> None:
    with durable_app(redis_url, recheck=NEVER) as (module, env):
        queue = module.settings.workflow_queue
        flows = CeleryWorker("tests.celery_app", "flows", queue, env, log=tmp_path / "f.log")
        with started(module, flows):
            key = f"local-{uuid.uuid4().hex[:10]}"
            r = module.awaits_nobody.delay(key)
            wait_until(lambda: waiting_on(module.cache, key) == [r.id], "the run to wait")
            local = create_workflow(None, cache=module.cache)
            if face == "sync":
                made = local(lambda step: step(lambda: "made here", key=key))
            else:

                async def body(step: Any) -> object:
                    return await step(lambda: "made here", key=key)

                made = asyncio.run(local(body))
            assert made.value == "made here"
            committed = time.monotonic()
            # the reconciler would look at the run only NEVER seconds after it suspended:
            # what resumes it is the worker's handoff listener, told by the commit
            outcome = outcome_of(module.cache, r.id, timeout=60)
            took = time.monotonic() - committed
            print(f"\nlocal {face} commit: the run finished {took:.2f} s later")
        assert outcome.ok and outcome.value == "made here"
        assert not waiting_on(module.cache, key)


def test_a_step_worker_killed_whole_mid_step_is_sent_again(redis_url, tmp_path: Path) -> None:
    """kill -9 of a step worker's main process and pool: its message comes back only after
    the broker's visibility timeout (an hour), so the reconciler sends the run again."""
    log = tmp_path / "steps.log"
    log.touch()
    with durable_app(redis_url, "tests.chaos_app") as (module, env):
        queue = module.settings.workflow_queue

        def steps(name: str) -> CeleryWorker:
            return CeleryWorker(
                "tests.chaos_app", name, "steps", env, pool="prefork", log=tmp_path / "s.log"
            )

        victim = steps("steps-1")
        flows = CeleryWorker("tests.chaos_app", "flows", queue, env, log=tmp_path / "f.log")
        with started(module, victim, flows) as running:
            key = f"whole-{uuid.uuid4().hex[:10]}"
            r = module.single.delay(key, 600.0, str(log))
            pid = int(wait_until(lambda: _started_by(log, key), "the step to start").pop())
            children = victim.children()
            assert pid in children  # the pool process runs it
            os.kill(victim.pid, signal.SIGKILL)
            for child in children:
                os.kill(child, signal.SIGKILL)
            killed = time.monotonic()
            victim.proc.wait(timeout=10)
            running.remove(victim)
            spare = steps("steps-2")
            running.append(spare)
            wait_ready(module.app, [spare])
            outcome = outcome_of(module.cache, r.id, timeout=120)
            print(
                f"\nstep worker killed whole: the run finished {time.monotonic() - killed:.1f} s "
                f"after the kill (lease {LEASE} s, reconciler every {INTERVAL} s)"
            )
        assert outcome.ok and outcome.value == key
        ran_in = _started_by(log, key)
        assert ran_in[0] == str(pid) and len(ran_in) == 2  # once more, in another process
        assert int(ran_in[1]) not in (victim.pid, *children)


def _started_by(log: Path, key: str) -> list[str]:
    """Process ids of the executions of ``key`` so far, in order."""
    return [
        line.split()[3]
        for line in log.read_text().splitlines()
        if line.startswith("start ") and line.split()[1] == key
    ]


def test_an_async_workflow_task_suspends_and_replays(redis_url, tmp_path: Path) -> None:
    with durable_app(redis_url) as (module, env):
        with fleet(module, env, tmp_path):
            tag = uuid.uuid4().hex[:10]
            r = module.async_steps.delay(tag)
            outcome = result_of(r, timeout=60)
            assert outcome.ok and outcome.value == [1, "b", "c"]
            info = run_info(module.cache, r.id)
            assert info is not None and info.state == "done" and info.replays >= 1  # steps b, c may
            # commit while the replay joins them: it then carries on in place
        assert [module.count(f"{tag}:{k}") for k in "abc"] == [1, 1, 1]
        seen = [e.decode().split("|")[0] for e in module._redis.lrange(f"runevents:{r.id}", 0, -1)]
        assert "suspended" in seen and "resumed" in seen and seen[-1] == "finished"


def test_a_durable_sleep_holds_no_slot_and_wakes_once(redis_url, tmp_path: Path) -> None:
    with durable_app(redis_url) as (module, env):
        with fleet(module, env, tmp_path):
            tag = uuid.uuid4().hex[:10]
            r = module.napping.delay(tag, 2.0)
            info = wait_until(
                lambda: (i := run_info(module.cache, r.id)) and i.state == "sleeping" and i,
                "the run to sleep",
            )
            # while it sleeps, the one flows slot is free: another run finishes meanwhile
            other = module.pausing.delay(uuid.uuid4().hex[:10])
            assert result_of(other, timeout=60).ok
            assert run_info(module.cache, r.id).state == "sleeping"
            outcome = result_of(r, timeout=60)
            woke = [float(t) for t in module._redis.lrange(f"woke:{tag}", 0, -1)]
            late = woke[0] - info.wake_ms / 1000
            print(f"\ndurable sleep: the replay past the timer began {late:.3f} s after it")
        assert outcome.ok and outcome.value == [1, 1]
        assert len(woke) == 2  # past the sleep once, then once more after b: never early
        assert all(t >= info.wake_ms / 1000 - 0.05 for t in woke)


def test_a_run_waiting_past_the_retention_keeps_its_unkeyed_steps_outcome(
    redis_url, tmp_path: Path
) -> None:
    retention = {"WORKFLOW_CACHE_RUN_RETENTION": "2"}
    with durable_app(redis_url, **retention) as (module, env), fleet(module, env, tmp_path):
        tag = uuid.uuid4().hex[:10]
        r = module.unkeyed_then_event.delay(tag)
        wait_until(
            lambda: (i := run_info(module.cache, r.id)) and i.state == "waiting",
            "the run to wait for its event",
        )
        shared = module.cache.flight.keyspace.for_step(f"_run:{r.id}:0").out
        wait_until(  # the unkeyed step's shared copy lives for the retention only
            lambda: not module.cache.client.exists(shared), "the step's stored outcome to expire"
        )
        assert send_event(module.cache, f"go:{tag}", "yes")
        assert result_of(r, timeout=60).value == [1, "yes"]
        assert module.count(f"{tag}:u") == 1  # the replay found it in the run's record


def test_events_before_and_after_the_wait_a_timeout_and_a_second_send(
    redis_url, tmp_path: Path
) -> None:
    with durable_app(redis_url) as (module, env), fleet(module, env, tmp_path):
        # sent before the run waits: found when it asks
        tag = uuid.uuid4().hex[:10]
        assert send_event(module.cache, f"approve:{tag}", {"by": "ann"})
        r = module.approval.delay(tag)
        assert result_of(r, timeout=60).value == [1, {"by": "ann"}]

        # sent while it waits, holding no slot; a second send changes nothing
        tag = uuid.uuid4().hex[:10]
        r = module.approval.delay(tag)
        wait_until(
            lambda: (i := run_info(module.cache, r.id)) and i.state == "waiting",
            "the run to wait for its event",
        )
        assert send_event(module.cache, f"approve:{tag}", "yes")
        sent = time.monotonic()
        assert result_of(r, timeout=60).value == [1, "yes"]
        print(f"\nevent: the run finished {time.monotonic() - sent:.1f} s after send_event")
        assert not send_event(module.cache, f"approve:{tag}", "no")
        assert outcome_of(module.cache, r.id, timeout=5).value == [1, "yes"]

        # never sent: the wait times out with an error naming the event and the timeout
        tag = uuid.uuid4().hex[:10]
        r = module.approval.delay(tag, 1.0)
        timed_out = result_of(r, timeout=60)
        assert not timed_out.ok
        assert f"event 'approve:{tag}' did not arrive within 1 s" in str(timed_out.error)
