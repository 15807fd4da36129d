"""A run whose message waits in a long queue is not sent again (``broker_queue.py``).

Runs are recorded ``resuming`` when their first message is sent; a backlog longer than
the recheck used to make the reconciler send every one of them again at each recheck.
Here no worker consumes the workflows queue for several rechecks, while a steps worker's
reconciler looks at the runs: the queue keeps one message per run, and once a workflows
worker starts every run finishes, each step run once and each suspension replayed once.
(A message a worker has taken into its prefetch is in no list, so a run not begun by its
recheck may then be sent again, by design: that duplicate is begun and dropped.)
"""

from __future__ import annotations

import uuid
from pathlib import Path

from tests.test_durable_workers import durable_app
from tests.test_workflows_suspend import workers as started
from tests.waiting import wait_until
from tests.workers import CeleryWorker, wait_ready
from workflow_cache.distributed import outcome_of, run_info
from workflow_cache.distributed.runs import Runs

RUNS = 20


def test_queued_runs_are_not_sent_again_while_they_wait(redis_url, tmp_path: Path) -> None:
    with durable_app(redis_url, recheck=0.3) as (module, env):
        queue = module.settings.workflow_queue
        steps = CeleryWorker("tests.celery_app", "steps", "steps", env, log=tmp_path / "s.log")
        with started(module, steps) as running:
            tags = [uuid.uuid4().hex[:10] for _ in range(RUNS)]
            sent = [module.five_steps.delay(tag) for tag in tags]
            runs = Runs(module.cache.flight)

            def looked_at(times: int) -> bool:
                return all(
                    int(module._redis.hget(runs.keys(r.id).run, "checks") or 0) >= times
                    for r in sent
                )

            wait_until(lambda: looked_at(3), "the reconciler to look at every run 3 times")
            assert module._redis.llen(queue) == RUNS  # nothing sent twice
            flows = CeleryWorker("tests.celery_app", "flows", queue, env, log=tmp_path / "f.log")
            running.append(flows)
            wait_ready(module.app, [flows])
            for r in sent:
                assert outcome_of(module.cache, r.id, timeout=120).value == 5
            counts = {int(module._redis.get(f"count:{t}:{i}") or 0) for t in tags for i in range(5)}
            assert counts == {1}
            infos = [run_info(module.cache, r.id) for r in sent]
            # one replay per batch at most: a batch whose step committed before the run
            # finished suspending is carried on in place, with no replay of its own
            assert [(i.batch, i.replays <= i.batch) if i else None for i in infos] == [
                (5, True)
            ] * RUNS


def test_a_lost_first_message_is_still_sent_again(redis_url, tmp_path: Path) -> None:
    with durable_app(redis_url, recheck=0.3) as (module, env):
        queue = module.settings.workflow_queue
        steps = CeleryWorker("tests.celery_app", "steps", "steps", env, log=tmp_path / "s.log")
        with started(module, steps):
            r = module.five_steps.delay(uuid.uuid4().hex[:10])
            (message,) = wait_until(lambda: module._redis.lrange(queue, 0, -1), "the message")
            module._redis.lrem(queue, 0, message)  # the broker lost it
            again = wait_until(lambda: module._redis.lrange(queue, 0, -1), "a message again")
            assert r.id.encode() in again[0]
