"""Files a LocalCache folder holds per stored step, and what clear() leaves, same run.

    python benchmarks/bench_local_footprint.py [--steps 20000]

Runs ``--steps`` distinct keyed steps through ``create_workflow`` on a fresh
``LocalCache`` in a temporary folder (claim, run, commit: the single-flight path
every process takes), then counts what the folder holds:

  files in the folder       (target: the database and its journals, not one per key)
  lock files in locks/      (target 0: a lock file exists only while its key runs)
  files left after clear()  (target: the database and its journals only)

and prints the time per step for reference.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from workflow_cache import LocalCache, create_workflow

BATCH = 500


def steps_of(batch: range) -> Callable[[Any], list[Any]]:
    """A workflow function running one keyed step per number in ``batch``."""

    def run(step: Any) -> list[Any]:
        return [step(lambda i=i: {"id": i, "name": f"user {i}"}, key=f"user:{i}") for i in batch]

    return run


def files_in(folder: Path) -> int:
    return sum(len(names) for _, _, names in os.walk(folder))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20_000)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-local-") as tmp:
        folder = Path(tmp)
        cache = LocalCache(folder)
        workflow = create_workflow(cache=cache)
        started = time.perf_counter()
        for first in range(0, args.steps, BATCH):
            workflow(steps_of(range(first, min(first + BATCH, args.steps))))
        seconds = time.perf_counter() - started
        stored = len(cache.keys())
        files, locks = files_in(folder), files_in(folder / "locks")
        cleared = cache.clear()
        after_clear = files_in(folder)
        cache.close()

    print(f"steps stored              {stored:,} ({seconds / args.steps * 1e6:.0f} us per step)")
    print(f"files in the folder       {files:,}")
    print(f"lock files in locks/      {locks:,}  (target 0)")
    print(f"files left after clear()  {after_clear:,}  ({cleared:,} outcomes cleared)")


if __name__ == "__main__":
    main()
