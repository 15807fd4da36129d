"""Time to ``import workflow_cache`` in a fresh interpreter, against ``python -c pass``.

    python benchmarks/bench_import.py [--runs 30] [--compare-rev REV]

Each run is a new process, so nothing is already imported; the three commands are
interleaved run by run so a busy machine slows them alike, and the medians are printed.
With ``--compare-rev REV`` the same import also runs on that git revision's code
(extracted with ``git archive``), for a before/after ratio measured in one run. The last
lines list the heavy libraries a bare import loads (there should be none).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("redis", "celery", "kombu", "opentelemetry", "pydantic_settings", "zstandard", "fsspec")


def _once(code: str, src: Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(src)}
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], cwd=src, env=env, check=True)
    return time.perf_counter() - started


def _loaded(src: Path) -> list[str]:
    code = f"import sys, workflow_cache; print(*sorted(m for m in {HEAVY!r} if m in sys.modules))"
    env = {**os.environ, "PYTHONPATH": str(src)}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=src, env=env, capture_output=True, text=True, check=True
    )
    return out.stdout.split()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--compare-rev", help="also time this git revision's import")
    args = parser.parse_args()
    sources = {"this code": ROOT}
    with tempfile.TemporaryDirectory(prefix="bench-import-") as tmp:
        if args.compare_rev:
            old = Path(tmp) / "old"
            old.mkdir()
            archive = subprocess.run(
                ["git", "-C", str(ROOT), "archive", args.compare_rev],
                capture_output=True,
                check=True,
            )
            subprocess.run(["tar", "-x", "-C", str(old)], input=archive.stdout, check=True)
            sources[f"code at {args.compare_rev}"] = old
        times: dict[str, list[float]] = {"python -c pass": []}
        times.update({label: [] for label in sources})
        for _ in range(args.runs):
            times["python -c pass"].append(_once("pass", ROOT))
            for label, src in sources.items():
                times[label].append(_once("import workflow_cache", src))
        base = statistics.median(times["python -c pass"])
        ours = statistics.median(times["this code"])
        print(f"{args.runs} runs each, interleaved; median wall time of a fresh process")
        for label, samples in times.items():
            median = statistics.median(samples)
            alone = (median - base) * 1e3
            print(f"  {label:<28} {median * 1e3:7.1f} ms   import alone {alone:6.1f} ms")
        for label in sources:
            if label != "this code":
                old_median = statistics.median(times[label])
                print(
                    f"this code / {label}: {ours / old_median:.2f}x wall, "
                    f"{(ours - base) / (old_median - base):.2f}x import alone"
                )
        for label, src in sources.items():
            print(f"heavy libraries loaded by a bare import ({label}): {_loaded(src) or 'none'}")


if __name__ == "__main__":
    main()
