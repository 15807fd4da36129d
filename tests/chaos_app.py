"""The Celery app of the chaos soak (``tests/test_durable_chaos.py``), run by real workers.

Configured from the ``WORKFLOW_CACHE_*`` variables like ``tests/celery_app.py``. Its step
task touches nothing but a local file: Redis is restarted under it, and a count kept in
Redis would turn a restart into a failed step. Each execution appends ``start`` and
``end`` lines (with its own id and process id) to the log file it is given, so the test
can tell an execution that finished from one whose process was killed.
"""

from __future__ import annotations

import os
import time
import uuid

from workflow_cache.distributed import workflow_task
from workflow_cache.distributed.fleet import fleet_app
from workflow_cache.distributed.settings import WorkerSettings

settings = WorkerSettings()
app, cache = fleet_app("wfc_chaos", settings)

SHARED_KEYS = 12
"""Keys every run may ask for in its ``step.all``; each run takes three of them."""


def note(log: str, line: str) -> None:
    """One line appended at once (``O_APPEND``: lines of several processes never mix)."""
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


@app.task(name="tests.chaos.step", shared=False)
def chaos_step(key: str, seconds: float, value: int, log: str) -> dict[str, object]:
    """Records its start, works for ``seconds``, records its end; returns ``value`` and the
    id of this execution (so every reader of the key can say which execution it got)."""
    execution = uuid.uuid4().hex[:12]
    note(log, f"start {key} {execution} {os.getpid()}")
    time.sleep(seconds)
    note(log, f"end {key} {execution} {os.getpid()}")
    return {"value": value, "by": execution}


def shared_picks(run: int) -> list[int]:
    """The three shared keys run ``run`` asks for (a pure function of the run's number)."""
    return sorted({run % SHARED_KEYS, (run * 5 + 1) % SHARED_KEYS, (run * 7 + 3) % SHARED_KEYS})


def expected(run: int) -> list[int]:
    """What run ``run`` must finish with."""
    return [run, run + 1, *(100 + j for j in shared_picks(run))]


@workflow_task(app, name="tests.chaos.flow")
def flow(step, run: int, tag: str, seconds: float, log: str) -> dict[str, object]:
    """Two dispatched steps one after the other, then a ``step.all`` over shared keys."""
    a = step(chaos_step.s(f"{tag}:{run}:a", seconds, run, log), key=f"{tag}:{run}:a")
    b = step(chaos_step.s(f"{tag}:{run}:b", seconds, a["value"] + 1, log), key=f"{tag}:{run}:b")
    picks = shared_picks(run)
    keys = [f"{tag}:shared:{j}" for j in picks]
    shared = step.all(
        [chaos_step.s(k, seconds, 100 + j, log) for k, j in zip(keys, picks, strict=True)],
        keys=keys,
    )
    return {
        "values": [a["value"], b["value"], *(s["value"] for s in shared)],
        "by": {
            f"{tag}:{run}:a": a["by"],
            f"{tag}:{run}:b": b["by"],
            **{k: s["by"] for k, s in zip(keys, shared, strict=True)},
        },
    }


@app.task(name="tests.chaos.slow_once", shared=False)
def slow_once(key: str, seconds: float, log: str) -> dict[str, object]:
    """As ``chaos_step``, but only its first execution works for ``seconds`` (the one a
    test kills); later ones return at once."""
    with open(log) as lines:
        first = not any(line.split()[1] == key for line in lines if line.startswith("start"))
    execution = uuid.uuid4().hex[:12]
    note(log, f"start {key} {execution} {os.getpid()}")
    if first:
        time.sleep(seconds)
    note(log, f"end {key} {execution} {os.getpid()}")
    return {"value": key, "by": execution}


@workflow_task(app, name="tests.chaos.single")
def single(step, key: str, seconds: float, log: str) -> object:
    """One dispatched step, slow the first time it runs."""
    return step(slow_once.s(key, seconds, log), key=key)["value"]
