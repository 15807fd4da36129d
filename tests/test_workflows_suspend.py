"""Suspending workflows on real ``celery worker`` processes: no slot waits on a step.

A workflow task that reaches a pending dispatched step sends it, registers itself as
the step's waiter and returns; the step's commit enqueues it again and it replays from
the top with its finished steps as hits.
"""

from __future__ import annotations

import os
import random
import signal
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

import pytest

from tests.waiting import wait_until
from tests.workers import CeleryWorker, configured_test_app, stop_all, wait_ready
from workflow_cache import UnexpectedError
from workflow_cache.distributed import outcome_of, result_of, run_info, waiting_on
from workflow_cache.distributed.resume import GIVE_LIMIT
from workflow_cache.distributed.runs import Runs

LEASE = 1.5
VISIBILITY = 8


@contextmanager
def app_for(redis_url: str, **extra: str) -> Iterator[tuple[ModuleType, dict[str, str]]]:
    """``tests.celery_app`` configured for a namespace of its own (and its worker env)."""
    env = {
        "WORKFLOW_CACHE_BROKER": redis_url,
        "WORKFLOW_CACHE_NAMESPACE": f"sus-{uuid.uuid4().hex[:8]}",
        "WORKFLOW_CACHE_LEASE": str(LEASE),
        **extra,
    }
    with configured_test_app(env) as module:
        yield module, env


@contextmanager
def workers(module: ModuleType, *made: CeleryWorker) -> Iterator[list[CeleryWorker]]:
    running = list(made)
    try:
        wait_ready(module.app, running)
        yield running
    finally:
        stop_all(running)


def events(module: ModuleType, run_id: str) -> list[str]:
    return [e.decode() for e in module._redis.lrange(f"runevents:{run_id}", 0, -1)]


def kinds(module: ModuleType, run_id: str) -> list[str]:
    return [e.split("|")[0] for e in events(module, run_id)]


def handed_out_at(module: ModuleType, task_id: str) -> float | None:
    """When the broker handed out the still unacknowledged message of ``task_id`` (the
    Redis transport's ``unacked_index`` score, a Unix time), or None if it holds none."""
    for tag, message in module._redis.hgetall("unacked").items():
        if task_id.encode() in message:
            return module._redis.zscore("unacked_index", tag)
    return None


@pytest.fixture(scope="class")
def solo(redis_url, tmp_path_factory) -> Iterator[tuple[ModuleType, Path]]:
    """One solo worker (one slot) consuming both the workflows and the steps queues.

    Class-scoped: it is stopped before the tests that start workers of their own, so
    it never takes their messages."""
    log = tmp_path_factory.mktemp("suspend-solo") / "worker.log"
    with app_for(redis_url) as (module, env):
        worker = CeleryWorker("tests.celery_app", "solo", "workflows,steps", env, log=log)
        with workers(module, worker):
            yield module, log


class TestOneSoloWorkerOnBothQueues:
    """Suspending workflows on one worker with one slot, serving workflows and steps."""

    def test_one_solo_worker_on_both_queues_runs_20_workflows_of_3_steps(self, solo) -> None:
        module, _ = solo
        tags = [uuid.uuid4().hex[:10] for _ in range(20)]
        sent = [module.three_steps.delay(tag) for tag in tags]
        outcomes = [result_of(r, timeout=120) for r in sent]
        assert all(o.ok and o.value == [1, 1, 1] for o in outcomes), outcomes
        for tag, r in zip(tags, sent, strict=True):
            assert [module.count(f"{tag}:{s}") for s in "abc"] == [1, 1, 1]
            # three pending steps, one after another: three suspensions, three resumes
            assert kinds(module, r.id) == ["suspended", "resumed"] * 3 + ["finished"]
            info = run_info(module.cache, r.id)
            assert info is not None and info.state == "done" and info.replays == 3
            assert [s.split("|")[0] for s in info.steps] == ["tests.work"] * 3

    def test_suspended_runs_are_listed_as_waiters_and_resume_once(self, solo) -> None:
        module, _ = solo
        tag = uuid.uuid4().hex[:10]
        r = module.three_steps.delay(tag, 1.0)  # each step takes a second: the run waits
        wait_until(lambda: waiting_on(module.cache, f"{tag}:a") == [r.id], "the run to wait on a")
        info = wait_until(  # it lingers for a moment first (WORKFLOW_CACHE_SUSPEND_AFTER)
            lambda: (i := run_info(module.cache, r.id)) and i.state == "suspended" and i,
            "the run to suspend",
        )
        assert info.waiting_on == (f"{tag}:a",)
        assert result_of(r, timeout=60).value == [1, 1, 1]
        assert waiting_on(module.cache, f"{tag}:a") == []
        assert outcome_of(module.cache, r.id, timeout=5).value == [1, 1, 1]
        first = events(module, r.id)[0].split("|")
        assert first[0] == "suspended" and first[3] == f"{tag}:a"

    def test_a_producer_waits_on_the_runs_own_outcome_key(self, solo) -> None:
        module, _ = solo
        tag = uuid.uuid4().hex[:10]
        r = module.three_steps.delay(tag, 0.2)
        outcome = outcome_of(module.cache, r.id, timeout=60)  # no result backend involved
        assert outcome.ok and outcome.value == [1, 1, 1]
        assert module.cache.get(f"run:{r.id}") == outcome

    def test_small_outcomes_come_with_the_run_record_large_ones_are_read(self, solo) -> None:
        module, _ = solo
        tag = uuid.uuid4().hex[:10]
        large = GIVE_LIMIT + 1
        r = module.small_and_large.delay(tag, large)
        assert result_of(r, timeout=60).value == [1, large]  # both replays saw both values
        given = module._redis.hgetall(Runs(module.cache.flight).keys(r.id).given)
        small_key = module.cache.flight.keyspace.for_step(f"{tag}:small").out
        # the small outcome was delivered into the record, byte for byte as it is stored
        assert given == {f"{tag}:small".encode(): module._redis.get(small_key)}
        assert [module.count(f"{tag}:{k}") for k in ("small", "large")] == [1, 1]

    def test_a_divergent_replay_is_a_clear_error(self, solo) -> None:
        module, _ = solo
        tag = uuid.uuid4().hex[:10]
        outcome = result_of(module.diverging.delay(tag), timeout=60)
        assert not outcome.ok and isinstance(outcome.error, UnexpectedError)
        assert outcome.error.type.endswith("ReplayDiverged")
        message = outcome.error.message
        assert "step #0" in message and f"{tag}:x" in message and f"{tag}:y" in message
        assert module.count(f"{tag}:y") == 0  # the divergent step was never sent

    def test_blocking_mode_fails_past_its_deadline_naming_step_and_queue(self, solo) -> None:
        module, _ = solo
        tag = uuid.uuid4().hex[:10]
        started = time.monotonic()
        outcome = result_of(module.blocking.delay(tag), timeout=60)
        waited = time.monotonic() - started
        assert not outcome.ok and outcome.error.type.endswith("StepWaitTimeout")
        assert repr(tag) in outcome.error.message and "'nobody'" in outcome.error.message
        assert "no worker has started it" in outcome.error.message
        assert waited >= 3.0, waited  # not before its block_timeout of 3 s

    def test_a_worker_on_both_queues_warns_about_blocking_workflows(self, solo) -> None:
        _, log = solo
        text = log.read_text()
        assert "blocking workflow task(s) tests.blocking" in text
        assert "'steps' with 1 slot(s)" in text


def test_200_workflows_with_shared_keys_on_2_slots(redis_url, tmp_path) -> None:
    rng = random.Random(10)
    with app_for(redis_url) as (module, env):
        tag = uuid.uuid4().hex[:8]
        pool = [f"{tag}:k{i}" for i in range(40)]
        plans = [[rng.sample(pool, 3), rng.sample(pool, 3)] for _ in range(200)]
        worker = CeleryWorker(
            "tests.celery_app",
            "two",
            "workflows,steps",
            env,
            pool="prefork",
            concurrency=2,
            log=tmp_path / "two.log",
        )
        with workers(module, worker):
            sent = [module.batches.delay(groups) for groups in plans]
            outcomes = [outcome_of(module.cache, r.id, timeout=300) for r in sent]
        assert all(o.ok for o in outcomes)
        for groups, outcome in zip(plans, outcomes, strict=True):
            assert outcome.value == groups[0] + groups[1]
        used = {k for groups in plans for g in groups for k in g}
        assert [module.count(k) for k in sorted(used)] == [1] * len(used)  # once per key
        for r in sent:
            seen = kinds(module, r.id)
            suspended = seen.count("suspended")
            # one suspension per batch that was pending (a batch of hits never suspends),
            # and exactly one resume per suspension
            assert 0 <= suspended <= 2 and seen.count("resumed") == suspended
            assert seen[-1] == "finished"
            info = run_info(module.cache, r.id)
            # a batch whose keys all committed while the run was joining them carries on
            # in place: it counts as a batch, never as a suspension or a resume
            assert info is not None and info.replays == suspended and info.batch >= suspended


def test_kill_9_while_suspended_and_while_replaying(redis_url, tmp_path) -> None:
    extra = {"WORKFLOW_CACHE_VISIBILITY_TIMEOUT": str(VISIBILITY)}
    with app_for(redis_url, **extra) as (module, env):

        def flows(name: str) -> CeleryWorker:
            return CeleryWorker(
                "tests.celery_app", name, "workflows", env, log=tmp_path / "flows.log"
            )

        steps = CeleryWorker("tests.celery_app", "steps", "steps", env, log=tmp_path / "s.log")
        first = flows("flows-1")
        with workers(module, steps, first) as running:
            tag = uuid.uuid4().hex[:10]
            r = module.pausing.delay(tag, 3.0, 60.0)
            # suspended on a (3 s on the steps worker): kill the workflow worker
            wait_until(
                lambda: waiting_on(module.cache, f"{tag}:a") == [r.id], "the run to wait on a"
            )
            os.kill(first.pid, signal.SIGKILL)
            first.proc.wait(timeout=10)
            second = flows("flows-2")
            running.append(second)
            # a commits and resumes the run on the new worker, which pauses in the replay (no
            # ping first: a solo worker already pausing in the replay could not answer it)
            pid = int(
                wait_until(
                    lambda: module._redis.lindex(f"pids:{tag}:pause", 0), "the replay to pause"
                )
            )
            assert pid == second.pid
            os.kill(second.pid, signal.SIGKILL)  # killed while it replays
            second.proc.wait(timeout=10)
            # the Redis broker hands an unacknowledged message out again once it is older
            # than the visibility timeout; a starting worker looks at once
            since = wait_until(
                lambda: handed_out_at(module, r.id), "the killed replay's message to stay unacked"
            )
            wait_until(
                lambda: time.time() - since > VISIBILITY,
                f"the unacked message to be older than the {VISIBILITY} s visibility timeout",
                interval=0.1,
            )
            third = flows("flows-3")
            running.append(third)
            wait_ready(module.app, [third])
            outcome = result_of(r, timeout=120)  # redelivered after the visibility timeout
        assert outcome.ok and outcome.value == [1, 1]
        assert module.count(f"{tag}:a") == 1 and module.count(f"{tag}:b") == 1
        assert "resumed" in kinds(module, r.id)


@contextmanager
def steps_and_flows(
    redis_url: str, tmp_path: Path, linger: str
) -> Iterator[tuple[ModuleType, dict[str, str]]]:
    """A one-slot steps worker and a one-slot workflows worker, lingering ``linger`` s."""
    with app_for(redis_url, WORKFLOW_CACHE_SUSPEND_AFTER=linger) as (module, env):
        queue = module.settings.workflow_queue
        steps = CeleryWorker("tests.celery_app", "steps", "steps", env, log=tmp_path / "s.log")
        flows = CeleryWorker("tests.celery_app", "flows", queue, env, log=tmp_path / "f.log")
        with workers(module, steps, flows):
            yield module, env


class TestLinger:
    def test_fast_steps_finish_in_the_delivery_that_sent_them(self, redis_url, tmp_path) -> None:
        # a linger far longer than a trivial step takes, even on a busy machine
        with steps_and_flows(redis_url, tmp_path, "10") as (module, _):
            tag = uuid.uuid4().hex[:10]
            r = module.three_steps.delay(tag)
            assert result_of(r, timeout=60).value == [1, 1, 1]
            info = run_info(module.cache, r.id)
            # three batches, each sent and waited for in place: no suspension, no replay
            assert info is not None and info.state == "done"
            assert info.batch == 3 and info.replays == 0
            assert kinds(module, r.id) == ["finished"]
            assert [module.count(f"{tag}:{s}") for s in "ab"] == [1, 1]

    def test_a_slow_step_suspends_after_the_linger_and_frees_the_slot(
        self, redis_url, tmp_path
    ) -> None:
        with steps_and_flows(redis_url, tmp_path, "0.2") as (module, _):
            tag = uuid.uuid4().hex[:10]
            r = module.three_steps.delay(tag, 3.0)  # each step outlasts the linger
            wait_until(
                lambda: (i := run_info(module.cache, r.id)) and i.state == "suspended",
                "the run to suspend once the linger is over",
            )
            # the one workflows slot is free while step a runs: another run begins there
            other = module.three_steps.delay(uuid.uuid4().hex[:10])
            wait_until(
                lambda: (i := run_info(module.cache, other.id)) and i.batch >= 1,
                "the other run to begin in the freed slot",
            )
            assert run_info(module.cache, r.id).state == "suspended"  # a runs for 3 s
            assert result_of(r, timeout=120).value == [1, 1, 1]
            info = run_info(module.cache, r.id)
            assert info is not None and info.batch == 3 and info.replays == 3
            assert kinds(module, r.id) == ["suspended", "resumed"] * 3 + ["finished"]
            assert result_of(other, timeout=60).ok


def test_an_async_step_all_suspends_once_for_its_batch(redis_url, tmp_path) -> None:
    with steps_and_flows(redis_url, tmp_path, "0") as (module, _):
        tag = uuid.uuid4().hex[:10]
        r = module.async_steps.delay(tag)  # step a, then step.all of b and c
        assert result_of(r, timeout=60).value == [1, "b", "c"]
        info = run_info(module.cache, r.id)
        # a is one batch, b and c together the second: two suspensions, not three
        assert info is not None and info.batch == 2 and info.replays == 2
        assert kinds(module, r.id) == ["suspended", "resumed"] * 2 + ["finished"]
        waited = [e.split("|")[3] for e in events(module, r.id) if e.startswith("suspended")]
        assert [sorted(w.split(",")) for w in waited] == [[f"{tag}:a"], [f"{tag}:b", f"{tag}:c"]]
        assert [module.count(f"{tag}:{k}") for k in "abc"] == [1, 1, 1]
