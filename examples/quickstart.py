"""Run one workflow twice on the local default cache: the second run is served from it.

    python examples/quickstart.py

Run it again (a new process): every step is still a cache hit, because
LocalCache keeps outcomes on disk (under ~/.cache/workflow-cache/steps).
"""

from __future__ import annotations

import time

from workflow_cache import LocalCache, StepEvent, create_workflow, err, ok

USERS = {"1": {"id": "1", "name": "Ada Lovelace"}, "2": {"id": "2", "name": "Alan Turing"}}


def fetch_user(user_id: str):
    time.sleep(0.5)  # a slow database or API call
    user = USERS.get(user_id)
    return ok(user) if user else err("NOT_FOUND")


def report(event: StepEvent) -> None:
    if event.kind in ("cache_hit", "success", "error"):
        label = "served from cache" if event.kind == "cache_hit" else "executed"
        print(f"  {event.key:<10} {label:<18} {event.duration * 1000:8.1f} ms")


workflow = create_workflow({"fetch_user": fetch_user}, cache=LocalCache(), on_event=report)


def greet(step, deps):
    ada = step(lambda: deps["fetch_user"]("1"), key="user:1")
    alan = step(lambda: deps["fetch_user"]("2"), key="user:2")
    return f"Hello {ada['name']} and {alan['name']}"


if __name__ == "__main__":
    for run in (1, 2):
        print(f"run {run}:")
        started = time.perf_counter()
        result = workflow(greet)
        print(f"  -> {result.value!r} in {time.perf_counter() - started:.3f} s")
