"""Running flow text in tests: in-process with ``run_flow`` and as ``workflow-cache run``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from workflow_cache.workdir.filecache import FileCache
from workflow_cache.workdir.flow import FlowSummary, run_flow
from workflow_cache.workdir.loader import parse_flow


class Lines:
    """A sink that keeps ``task:line`` for every line a script prints."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, task_id: str, stream: str, line: str) -> None:
        self.lines.append(f"{task_id}:{line}")

    def of(self, task_id: str) -> list[str]:
        prefix = f"{task_id}:"
        return [line[len(prefix) :] for line in self.lines if line.startswith(prefix)]


def run_text(
    text: str, tmp_path: Path, *, cache: FileCache | None = None, **options: Any
) -> tuple[FlowSummary, Lines]:
    """Run flow ``text`` in-process with storage, work and outputs folders under ``tmp_path``."""
    lines = Lines()
    summary = run_flow(
        parse_flow(text, source="flow.yaml"),
        cache=cache or FileCache(str(tmp_path / "storage")),
        work_root=tmp_path / "work",
        outputs_dir=tmp_path / "outputs",
        sink=lines,
        **options,
    )
    return summary, lines


class Cli:
    """``workflow-cache`` in a subprocess, with its home and cwd inside a temp folder."""

    def __init__(self, tmp_path: Path) -> None:
        self.cwd = tmp_path / "cwd"
        self.cwd.mkdir(exist_ok=True)
        self.env = {**os.environ, "WORKFLOW_CACHE_HOME": str(tmp_path / "home"), "COLUMNS": "200"}
        for name in ("WORKFLOW_CACHE_BROKER", "WORKFLOW_CACHE_STORAGE"):
            self.env.pop(name, None)
        beside = Path(sys.executable).parent / "workflow-cache"  # this environment's script
        script = str(beside) if beside.exists() else shutil.which("workflow-cache")
        self.command = [script] if script else [sys.executable, "-m", "workflow_cache.cli"]

    def write(self, name: str, text: str) -> Path:
        path = self.cwd / name
        path.write_text(text)
        return path

    def __call__(self, *args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.command, *map(str, args)],
            cwd=self.cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def run_json(self, flow: Path, *args: str) -> dict[str, Any]:
        done = self("run", flow, "--json", *args)
        assert done.returncode == 0, done.stderr + done.stdout
        summary: dict[str, Any] = json.loads(done.stdout)
        summary["stderr"] = done.stderr
        return summary


def task_of(summary: dict[str, Any], task_id: str) -> dict[str, Any]:
    return next(task for task in summary["tasks"] if task["task_id"] == task_id)
