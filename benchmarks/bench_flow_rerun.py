"""First vs second run of a cached flow: how much the file cache saves.

    python benchmarks/bench_flow_rerun.py [FLOW.yaml] [--runs 3] [--pypi]

Runs ``workflow-cache run FLOW`` with a fresh ``WORKFLOW_CACHE_HOME``: once
cold (installs dependencies and saves the archive), then ``--runs`` times warm
(restores the archive). ``--pypi`` makes pip ignore any local mirror or wheel
folder configured on this machine (``PIP_CONFIG_FILE=/dev/null``), as on a
user's laptop. The working folders go where ``TMPDIR`` points.
Target: the second run takes at most a quarter of the first.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_FLOW = ROOT / "examples" / "flows" / "python_cached_dependencies.yaml"


def run(flow: Path, env: dict[str, str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(
        ["workflow-cache", "run", str(flow)], env=env, capture_output=True, text=True
    )
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"workflow-cache run failed:\n{done.stdout}\n{done.stderr}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("flow", nargs="?", type=Path, default=DEFAULT_FLOW)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--pypi", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-flow-") as home:
        env = {**os.environ, "WORKFLOW_CACHE_HOME": home, "PIP_NO_CACHE_DIR": "1"}
        if args.pypi:
            env["PIP_CONFIG_FILE"] = os.devnull
        first = run(args.flow, env)
        warm = [run(args.flow, env) for _ in range(args.runs)]
    second = statistics.median(warm)
    print(
        f"flow: {args.flow.name}   TMPDIR={os.environ.get('TMPDIR', '/tmp')}"
        f"   pip: {'PyPI only' if args.pypi else 'as configured'}"
    )
    print(f"first run (cold, saves)      {first:7.2f} s")
    print(
        f"second run (restored), median of {args.runs}: {second:7.2f} s"
        f"   ({', '.join(f'{w:.2f}' for w in warm)})"
    )
    print(f"second / first               {second / first:7.2f}   (target <= 0.25)")


if __name__ == "__main__":
    main()
