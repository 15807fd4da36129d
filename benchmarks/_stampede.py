"""Many threads released at once on one piece of work: the benchmarks' stampede."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def stampede(threads: int, call: Callable[[], T]) -> tuple[float, list[T]]:
    """Start ``threads`` threads behind a barrier, release them together, wait for all.

    Returns the wall time from release to the last one finishing, and what each returned.
    """
    barrier = threading.Barrier(threads + 1)
    results: list[T] = []

    def contender() -> None:
        barrier.wait()
        results.append(call())  # list.append is atomic

    workers = [threading.Thread(target=contender) for _ in range(threads)]
    for worker in workers:
        worker.start()
    barrier.wait()
    started = time.perf_counter()
    for worker in workers:
        worker.join()
    return time.perf_counter() - started, results
