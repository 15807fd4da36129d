"""First vs second run of a cached flow, the second with and without the local store.

    python benchmarks/bench_flow_rerun.py [FLOW.yaml] [--runs 3] [--pypi] [--where /var/tmp]

Runs ``workflow-cache run FLOW`` with a fresh ``WORKFLOW_CACHE_HOME`` and work
root, both in one temporary folder under ``--where`` (a real disk, so files can
be linked between them): once cold (installs dependencies, saves the archive and
keeps it unpacked in the worker-local store), then ``--runs`` times warm with
the local store and ``--runs`` times warm without it
(``WORKFLOW_CACHE_LOCAL_STORE_BYTES=0``: the archive is unpacked), the two
alternating. ``--pypi`` makes pip ignore any local mirror or wheel folder
configured on this machine (``PIP_CONFIG_FILE=/dev/null``), as on a user's
laptop. Target: the second run with the local store takes at most a quarter of
the first.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_FLOW = ROOT / "examples" / "flows" / "python_cached_dependencies.yaml"


def run(flow: Path, env: dict[str, str]) -> tuple[float, dict[str, Any]]:
    """Wall time of one ``workflow-cache run`` and its first WorkingDirectory's summary."""
    started = time.perf_counter()
    done = subprocess.run(
        ["workflow-cache", "run", str(flow), "--json"], env=env, capture_output=True, text=True
    )
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"workflow-cache run failed:\n{done.stdout}\n{done.stderr}")
    summary = json.loads(done.stdout)
    task = next(t for t in summary["tasks"] if t["kind"] == "WorkingDirectory")
    return elapsed, task


def file_system(path: str) -> str:
    done = subprocess.run(["stat", "-f", "-c", "%T", path], capture_output=True, text=True)
    return done.stdout.strip() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("flow", nargs="?", type=Path, default=DEFAULT_FLOW)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--pypi", action="store_true")
    parser.add_argument("--where", default="/var/tmp", help="folder for home and work root")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-flow-", dir=args.where) as base:
        env = {
            **os.environ,
            "WORKFLOW_CACHE_HOME": f"{base}/home",
            "WORKFLOW_CACHE_WORK_ROOT": f"{base}/work",
            "PIP_NO_CACHE_DIR": "1",
        }
        env.pop("WORKFLOW_CACHE_LOCAL_STORE_BYTES", None)
        if args.pypi:
            env["PIP_CONFIG_FILE"] = os.devnull
        without = {**env, "WORKFLOW_CACHE_LOCAL_STORE_BYTES": "0"}
        first, cold = run(args.flow, env)
        warm: list[float] = []
        bare: list[float] = []
        restores: dict[str, list[float]] = {"local store": [], "archive": []}
        for index in range(args.runs):
            pairs = [("local store", env, warm), ("archive", without, bare)]
            for label, environment, times in pairs if index % 2 == 0 else pairs[::-1]:
                elapsed, task = run(args.flow, environment)
                assert task["cache"] == "hit", task
                times.append(elapsed)
                restores[label].append(task["restore_seconds"])
    second, second_bare = statistics.median(warm), statistics.median(bare)
    print(
        f"flow: {args.flow.name}   home and work root in {args.where} ({file_system(args.where)})"
        f"   pip: {'PyPI only' if args.pypi else 'as configured'}   2 cores, shared"
    )
    print(
        f"first run (cold, saves)      {first:7.2f} s   "
        f"(save {cold['save_seconds']:.2f} s, keeping the local copy included)"
    )
    for label, times in (("local store", warm), ("archive", bare)):
        print(
            f"second run, {label:<12} median of {args.runs}: {statistics.median(times):7.2f} s"
            f"   ({', '.join(f'{w:.2f}' for w in times)}; restore "
            f"{', '.join(f'{r:.2f}' for r in restores[label])} s)"
        )
    print(f"second / first, local store  {second / first:7.2f}   (target <= 0.25)")
    print(f"second / first, archive      {second_bare / first:7.2f}")
    # The first run's save also unpacks the new archive into the local store,
    # which costs about what a restore from the archive does.
    lighter = first - statistics.median(restores["archive"])
    print(
        f"second / first, local store, the first run less one archive restore "
        f"(its keeping of the local copy): {second / lighter:.2f}"
    )


if __name__ == "__main__":
    main()
