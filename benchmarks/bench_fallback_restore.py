"""One dependency added to a lock file: a run with a fallback restore against one without.

    python benchmarks/bench_fallback_restore.py [--runs 3] [--packages express,lodash,...]

The flow is the Node example keyed by its lock file (``keyFiles:
[package-lock.json]``), with package.json and package-lock.json given as FILE
inputs. Each round, in fresh storage:

1. seed: run with the first lock file (cold install, saves an entry);
2. without fallback: run with a lock file that adds one dependency (``colors``):
   the key changed, nothing is restored, npm installs everything: a cold install;
3. with fallback: the same run with ``fallback: true`` on a copy of the seeded
   storage: the old ``node_modules`` is restored and npm adds one package.

Steps 2 and 3 swap places every other round. Every npm run gets an empty npm
cache, so each install downloads from the registry as a fresh machine would,
and starts after ``sync``, with no writes of the run before it pending. Prints wall times of whole
``workflow-cache run`` commands, medians over ``--runs`` rounds.
Target: the run with fallback at least 2x faster than the one without.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PACKAGES = "express,lodash,axios,moment,yargs,commander,eslint"
ADDED = "colors@1.4.0"

FLOW = """\
id: node_locked_dependencies
namespace: dev
inputs:
  - id: manifest
    type: FILE
  - id: lock
    type: FILE
tasks:
  - id: working_dir
    type: io.kestra.plugin.core.flow.WorkingDirectory
    inputFiles:
      package.json: "{{{{ inputs.manifest }}}}"
      package-lock.json: "{{{{ inputs.lock }}}}"
    cache:
      patterns:
        - node_modules/**
      keyFiles: [package-lock.json]
      fallback: {fallback}
      ttl: PT1H
    tasks:
      - id: node_script
        type: io.kestra.plugin.scripts.node.Script
        warningOnStdErr: false
        beforeCommands:
          - npm install --no-audit --no-fund
        script: |
          const manifest = JSON.parse(require("fs").readFileSync("package.json", "utf8"));
          const names = Object.keys(manifest.dependencies);
          names.forEach((name) => require.resolve(name));
          console.log(`${{names.length}} packages resolve`);
"""


def command() -> list[str]:
    script = Path(sys.executable).parent / "workflow-cache"
    return [str(script)] if script.exists() else ["workflow-cache"]


def output(*args: str) -> str:
    return subprocess.run(args, capture_output=True, text=True).stdout.strip()


def npm(args: list[str], cwd: Path, env: dict[str, str]) -> None:
    done = subprocess.run(["npm", *args], cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"npm {' '.join(args)} failed:\n{done.stderr}")


def make_locks(folder: Path, packages: list[str], env: dict[str, str]) -> tuple[Path, Path]:
    """Two package.json/package-lock.json pairs: ``packages``, then the same plus ``colors``."""
    work = folder / "npm"
    work.mkdir()
    (work / "package.json").write_text(json.dumps({"name": "bench", "version": "1.0.0"}))
    flags = ["--package-lock-only", "--no-audit", "--no-fund"]
    npm(["install", *flags, *packages], work, env)
    first = folder / "first"
    first.mkdir()
    for name in ("package.json", "package-lock.json"):
        shutil.copy(work / name, first / name)
    npm(["install", *flags, ADDED], work, env)
    second = folder / "second"
    second.mkdir()
    for name in ("package.json", "package-lock.json"):
        shutil.copy(work / name, second / name)
    return first, second


class Run:
    """One ``workflow-cache run``: wall time, cache result and where the time went."""

    def __init__(self, seconds: float, task: dict[str, object], npm_seconds: float) -> None:
        self.seconds = seconds
        self.cache = str(task["cache"])
        self.restore = float(task["restore_seconds"])  # type: ignore[arg-type]
        self.save = float(task["save_seconds"])  # type: ignore[arg-type]
        self.npm = npm_seconds


def run(flow: Path, locks: Path, storage: Path, env: dict[str, str]) -> Run:
    """Run the flow once with the lock files in ``locks``."""
    npm_cache = tempfile.mkdtemp(prefix="bench-npm-cache-")
    os.sync()  # start every measured run with no writes of the previous one pending
    started = time.perf_counter()
    done = subprocess.run(
        [
            *command(),
            "run",
            str(flow),
            "--json",
            "--storage",
            str(storage),
            "--input",
            f"manifest={locks / 'package.json'}",
            "--input",
            f"lock={locks / 'package-lock.json'}",
        ],
        env={**env, "npm_config_cache": npm_cache},
        capture_output=True,
        text=True,
    )
    elapsed = time.perf_counter() - started
    shutil.rmtree(npm_cache, ignore_errors=True)
    if done.returncode != 0:
        raise SystemExit(f"workflow-cache run failed:\n{done.stdout}\n{done.stderr}")
    summary = json.loads(done.stdout)
    tasks = {item["task_id"]: item for item in summary["tasks"]}
    return Run(elapsed, tasks["working_dir"], tasks["node_script"]["run_seconds"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--packages", default=PACKAGES)
    args = parser.parse_args()
    packages = [name for name in args.packages.split(",") if name]
    with tempfile.TemporaryDirectory(prefix="bench-fallback-") as tmp:
        folder = Path(tmp)
        env = {**os.environ, "WORKFLOW_CACHE_HOME": str(folder / "home"), "COLUMNS": "200"}
        env["npm_config_cache"] = str(folder / "lock-cache")
        first, second = make_locks(folder, packages, env)
        lock = json.loads((second / "package-lock.json").read_text())
        lock_packages = len(lock["packages"]) - 1
        flows = {}
        for fallback in (False, True):
            flows[fallback] = folder / f"flow-{fallback}.yaml"
            flows[fallback].write_text(FLOW.format(fallback="true" if fallback else "false"))
        seeds: list[float] = []
        without: list[Run] = []
        with_fallback: list[Run] = []
        for round_number in range(args.runs):
            storage = folder / f"storage-{round_number}"
            seed = run(flows[False], first, storage, env)
            assert seed.cache == "miss", seed.cache
            seeds.append(seed.seconds)
            copy = folder / f"storage-{round_number}-copy"
            shutil.copytree(storage, copy, symlinks=True)
            # Alternate which variant runs first, so neither always follows the other.
            order = [(False, storage), (True, copy)]
            for fallback, where in order if round_number % 2 == 0 else order[::-1]:
                measured = run(flows[fallback], second, where, env)
                assert measured.cache == ("partial" if fallback else "miss"), measured.cache
                (with_fallback if fallback else without).append(measured)
            plain, partial = without[-1], with_fallback[-1]
            print(
                f"round {round_number + 1}: seed {seeds[-1]:.2f} s,"
                f" without {plain.seconds:.2f} s, with fallback {partial.seconds:.2f} s",
                file=sys.stderr,
                flush=True,
            )
    cold = statistics.median(run.seconds for run in without)
    warm = statistics.median(run.seconds for run in with_fallback)
    print(f"packages: {', '.join(packages)} + {ADDED}   ({lock_packages} in the lock file)")
    registry = output("npm", "config", "get", "registry")
    print(f"npm: {output('npm', '--version')}   registry: {registry}")
    print(f"rounds: {args.runs} (medians; every npm run starts with an empty npm cache)")
    seed = statistics.median(seeds)
    print(f"seed run, first lock file (cold)       {seed:7.2f} s   ({listed(seeds)})")
    for label, runs, median in (
        ("one dependency added, without fallback", without, cold),
        ("one dependency added, with fallback   ", with_fallback, warm),
    ):
        print(f"{label} {median:7.2f} s   ({listed([run.seconds for run in runs])})")
        print(
            f"    of which restore {statistics.median(run.restore for run in runs):.2f} s,"
            f" npm + script {statistics.median(run.npm for run in runs):.2f} s,"
            f" save {statistics.median(run.save for run in runs):.2f} s"
        )
    print(f"without / with                         {cold / warm:7.2f}x  (target >= 2x)")


def listed(values: list[float]) -> str:
    return ", ".join(f"{value:.2f}" for value in values)


if __name__ == "__main__":
    main()
