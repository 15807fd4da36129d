"""The Celery app of the distributed tests, run by real ``celery -A tests.celery_app worker``.

Configured from the same ``WORKFLOW_CACHE_*`` variables as ``workers/app.py``. Its tasks
count their executions in Redis, so tests can prove how often a body ran.
"""

from __future__ import annotations

import os
import time

import redis
from celery.signals import task_failure, task_prerun, task_retry, task_success

from workflow_cache import err
from workflow_cache.distributed import RunEvent, workflow_task
from workflow_cache.distributed.fleet import fleet_app
from workflow_cache.distributed.settings import WorkerSettings
from workflow_cache.distributed.steps import route

settings = WorkerSettings()
app, cache = fleet_app("wfc_tests", settings)
_redis = redis.Redis.from_url(settings.cache)

SECOND_QUEUE = "second"
LIMITS_QUEUE = "limits"  # served by a prefork worker: Celery enforces time limits there
route(app, "tests.routed", SECOND_QUEUE)
route(app, "tests.hard_limited", LIMITS_QUEUE)
route(app, "tests.soft_limited", LIMITS_QUEUE)


def count(name: str) -> int:
    return int(_redis.get(f"count:{name}") or 0)


@app.task(name="tests.work", shared=False)
def work(name: str, seconds: float = 0.0, value: object = None) -> object:
    """Counts itself, records which process runs it, sleeps, returns ``value`` or the count."""
    n = _redis.incr(f"count:{name}")
    _redis.rpush(f"pids:{name}", os.getpid())
    time.sleep(seconds)
    return {"count": n, "pid": os.getpid()} if value is None else value


@app.task(name="tests.slow_first", shared=False)
def slow_first(name: str, seconds: float) -> dict[str, int]:
    """Sleeps only on its first execution: the one a test kills or stops."""
    n = _redis.incr(f"count:{name}")
    _redis.rpush(f"pids:{name}", os.getpid())
    if n == 1:
        time.sleep(seconds)
    _redis.rpush(f"finished:{name}", os.getpid())
    return {"count": n, "pid": os.getpid()}


@app.task(name="tests.fails", shared=False)
def fails(name: str) -> None:
    _redis.incr(f"count:{name}")
    raise ValueError(f"{name} always fails")


@app.task(name="tests.unstorable", shared=False)
def unstorable(name: str) -> set[str]:
    """Returns a value JSON cannot hold (Celery never serializes it: steps keep no result)."""
    _redis.incr(f"count:{name}")
    return {name}


@app.task(name="tests.not_found", shared=False)
def not_found(name: str):
    _redis.incr(f"count:{name}")
    return err("NOT_FOUND")


def _signal(kind: str):
    """Record in Redis that a Celery signal fired for a task id (lists ``signals:<id>``)."""

    def handler(sender=None, task_id=None, request=None, **_):
        if task_id is None:
            task_id = getattr(request, "id", None) or sender.request.id
        _redis.rpush(f"signals:{task_id}", f"{kind}:{sender.name}")

    return handler


for _kind, _sig in (
    ("prerun", task_prerun),
    ("success", task_success),
    ("failure", task_failure),
    ("retry", task_retry),
):
    _sig.connect(_signal(_kind), weak=False)


@app.task(name="tests.whoami", bind=True, shared=False)
def whoami(self, name: str) -> dict[str, object]:
    """What Celery's request says about this execution, for ``bind=True`` checks."""
    _redis.incr(f"count:{name}")
    r = self.request
    return {
        "id": r.id,
        "called_directly": r.called_directly,
        "retries": r.retries,
        "hostname": r.hostname,
        "routing_key": (r.delivery_info or {}).get("routing_key"),
        "priority": (r.delivery_info or {}).get("priority"),
        "eta": r.eta,
        "pid": os.getpid(),
    }


@app.task(name="tests.routed", bind=True, shared=False)
def routed(self, name: str) -> dict[str, object]:
    _redis.incr(f"count:{name}")
    return {"pid": os.getpid(), "routing_key": self.request.delivery_info.get("routing_key")}


@app.task(name="tests.retry_twice", bind=True, shared=False, max_retries=5)
def retry_twice(self, name: str, countdown: float = 1.0) -> dict[str, object]:
    """Fails its first two attempts with ``self.retry(countdown=...)``, then succeeds."""
    n = _redis.incr(f"count:{name}")
    if self.request.retries < 2:
        raise self.retry(countdown=countdown)
    return {"attempts": n, "retries": self.request.retries, "id": self.request.id}


@app.task(
    name="tests.always_retry",
    shared=False,
    autoretry_for=(ValueError,),
    retry_backoff=1,
    retry_jitter=False,
    max_retries=2,
)
def always_retry(name: str) -> None:
    """Raises every time: ``autoretry_for`` retries it twice (1 s, then 2 s), then it fails."""
    _redis.incr(f"count:{name}")
    raise ValueError(f"{name} never works")


@app.task(name="tests.hard_limited", shared=False, time_limit=2)
def hard_limited(name: str, seconds: float) -> int:
    _redis.incr(f"count:{name}")
    _redis.rpush(f"pids:{name}", os.getpid())
    time.sleep(seconds)
    return 1


@app.task(name="tests.soft_limited", shared=False, soft_time_limit=1)
def soft_limited(name: str, seconds: float) -> int:
    _redis.incr(f"count:{name}")
    time.sleep(seconds)
    return 1


@workflow_task(app, name="tests.two_steps", queue=settings.workflow_queue)
def two_steps(step, name: str, crash_seconds: float = 0.0) -> dict[str, object]:
    """Step one is a local thunk, step two a dispatched task that is slow the first time."""

    def first() -> int:
        return _redis.incr(f"count:{name}:first")

    def second() -> int:
        n = _redis.incr(f"count:{name}:second")
        _redis.rpush(f"pids:{name}", os.getpid())
        if n == 1:
            time.sleep(crash_seconds)
        return n

    a = step(first, key=f"{name}:first")
    b = step(second, key=f"{name}:second")
    c = step(work.s(f"{name}:third"), key=f"{name}:third")
    return {"first": a, "second": b, "third": c["count"]}


# -- suspending workflows (tests/test_workflows_suspend.py) ------------------------------


def record_run_event(event: object) -> None:
    """``on_event`` of the suspending workflows: run events go to ``runevents:<run id>``."""
    if isinstance(event, RunEvent):
        waiting = ",".join(event.waiting_on)
        _redis.rpush(
            f"runevents:{event.run_id}", f"{event.kind}|{event.batch}|{event.replays}|{waiting}"
        )


@workflow_task(app, name="tests.three_steps", on_event=record_run_event)
def three_steps(step, tag: str, seconds: float = 0.0) -> list[int]:
    """Three dispatched steps one after another; the third has no key."""
    a = step(work.s(f"{tag}:a", seconds), key=f"{tag}:a")
    b = step(work.s(f"{tag}:b", seconds), key=f"{tag}:b")
    c = step(work.s(f"{tag}:c", seconds))
    return [a["count"], b["count"], c["count"]]


@workflow_task(app, name="tests.batches", on_event=record_run_event)
def batches(step, groups: list[list[str]], local: str = "") -> list[str]:
    """One ``step.all`` per group of keys (each key's task returns the key itself), and
    a local step between them that counts its executions."""
    out: list[str] = []
    for i, keys in enumerate(groups):
        out.extend(step.all([work.s(k, 0.0, k) for k in keys], keys=keys))
        if local and i == 0:
            step(lambda: _redis.incr(f"count:{local}"), key=local)
    return out


@workflow_task(app, name="tests.pausing", on_event=record_run_event)
def pausing(step, tag: str, step_seconds: float = 0.0, pause: float = 0.0) -> list[int]:
    """Step a, then (on the first replay that gets past a) a pause in the workflow body
    itself, not in a step, where a test can kill the worker; then step b."""
    a = step(work.s(f"{tag}:a", step_seconds), key=f"{tag}:a")
    n = _redis.incr(f"count:{tag}:past-a")
    if n == 1 and pause:
        _redis.rpush(f"pids:{tag}:pause", os.getpid())
        time.sleep(pause)
    b = step(work.s(f"{tag}:b"), key=f"{tag}:b")
    return [a["count"], b["count"]]


@workflow_task(app, name="tests.diverging")
def diverging(step, tag: str) -> str:
    """Asks for a different step on its replay than on its first run: not deterministic."""
    n = _redis.incr(f"count:{tag}:runs")
    key = f"{tag}:x" if n == 1 else f"{tag}:y"
    step(work.s(key), key=key)
    return "unreachable"


NOBODY_QUEUE = "nobody"  # no worker ever consumes it


@workflow_task(app, name="tests.blocking", suspend=False, block_timeout=3.0)
def blocking(step, tag: str) -> object:
    """Blocking mode: waits in its slot, at most 3 s, for a step nobody will run."""
    return step(work.s(tag).set(queue=NOBODY_QUEUE), key=tag)


@workflow_task(app, name="tests.awaits_nobody")
def awaits_nobody(step, key: str) -> object:
    """Suspends on a step sent to a queue no worker consumes: only another commit of the
    key (a producer's local step) can resume it."""
    return step(work.s(key).set(queue=NOBODY_QUEUE), key=key)


@workflow_task(app, name="tests.async_steps", on_event=record_run_event)
async def async_steps(step, tag: str) -> list[object]:
    """An ``async def`` workflow task: a dispatched step, then two side by side."""
    a = await step(work.s(f"{tag}:a"), key=f"{tag}:a")
    both = await step.all(
        [work.s(f"{tag}:b", 0.0, "b"), work.s(f"{tag}:c", 0.0, "c")],
        keys=[f"{tag}:b", f"{tag}:c"],
    )
    return [a["count"], *both]


@workflow_task(app, name="tests.napping", on_event=record_run_event)
def napping(step, tag: str, seconds: float) -> list[int]:
    """Step a, a durable sleep, step b; records the time of each replay past the sleep."""
    a = step(work.s(f"{tag}:a"), key=f"{tag}:a")
    step.sleep(seconds)
    _redis.rpush(f"woke:{tag}", time.time())
    b = step(work.s(f"{tag}:b"), key=f"{tag}:b")
    return [a["count"], b["count"]]


@workflow_task(app, name="tests.approval", on_event=record_run_event)
def approval(step, tag: str, timeout: float | None = None) -> list[object]:
    """Step a, then waits for the event ``approve:<tag>`` (at most ``timeout`` seconds)."""
    a = step(work.s(f"{tag}:a"), key=f"{tag}:a")
    payload = step.wait_event(f"approve:{tag}", timeout=timeout)
    return [a["count"], payload]


@workflow_task(app, name="tests.unkeyed_then_event", on_event=record_run_event)
def unkeyed_then_event(step, tag: str) -> list[object]:
    """An unkeyed dispatched step, then a wait for the event ``go:<tag>``."""
    a = step(work.s(f"{tag}:u"))
    payload = step.wait_event(f"go:{tag}")
    return [a["count"], payload]


@workflow_task(app, name="tests.five_steps")
def five_steps(step, tag: str) -> int:
    """Five trivial dispatched steps one after another, each counted."""
    for i in range(5):
        step(work.s(f"{tag}:{i}", 0.0, i), key=f"{tag}:{i}")
    return 5


@workflow_task(app, name="tests.small_and_large")
def small_and_large(step, tag: str, large: int) -> list[int]:
    """A step with a small value, then one whose value is ``large`` characters long."""
    small = step(work.s(f"{tag}:small", 0.0, "s"), key=f"{tag}:small")
    big = step(work.s(f"{tag}:large", 0.0, "x" * large), key=f"{tag}:large")
    return [len(small), len(big)]


@workflow_task(app, name="tests.limited_step")
def limited_step(step, tag: str) -> object:
    """One dispatched step with a soft time limit (its slot does not carry the run on)."""
    return step(work.s(f"{tag}:a", 0.0, 1).set(soft_time_limit=60), key=f"{tag}:a")


@workflow_task(app, name="tests.fails_after_a")
def fails_after_a(step, tag: str) -> None:
    """Step a, then the workflow function itself raises."""
    step(work.s(f"{tag}:a", 0.0, 1), key=f"{tag}:a")
    raise LookupError(f"{tag}: nothing after a")
