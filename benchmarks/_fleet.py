"""What the Celery benchmarks share: the bench app loaded from settings, and a drained queue."""

from __future__ import annotations

import importlib
import os
import time
from types import ModuleType
from typing import Any

APP_MODULE = "benchmarks._bench_app"


def load_app(env: dict[str, str]) -> ModuleType:
    """Import the bench app only once ``WORKFLOW_CACHE_*`` are set: it reads them at import time."""
    os.environ.update(env)
    return importlib.import_module(APP_MODULE)


def drain(client: Any, queue: str, timeout: float = 60.0) -> None:
    """Wait until the queue is empty and nothing is unacknowledged (leftover duplicates)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.llen(queue) == 0 and client.hlen("unacked") == 0:
            return
        time.sleep(0.005)
    raise RuntimeError(f"queue {queue!r} did not drain in {timeout} s")
