"""The ``workflow-cache`` command in a subprocess, as a user runs it, with its home in tmp."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "flows"


class Cli:
    """Runs the console script with ``WORKFLOW_CACHE_HOME`` and the cwd inside tmp."""

    def __init__(self, tmp_path: Path) -> None:
        self.cwd = tmp_path / "cwd"
        self.cwd.mkdir()
        self.home = tmp_path / "home"
        self.env = {**os.environ, "WORKFLOW_CACHE_HOME": str(self.home), "COLUMNS": "160"}
        for name in ("WORKFLOW_CACHE_BROKER", "WORKFLOW_CACHE_STORAGE"):
            self.env.pop(name, None)
        script = shutil.which("workflow-cache")
        self.command = [script] if script else [sys.executable, "-m", "workflow_cache.cli"]

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

    def run_json(self, flow: Path, *args: str, timeout: float = 120) -> dict[str, Any]:
        done = self("run", flow, "--json", *args, timeout=timeout)
        assert done.returncode == 0, done.stderr + done.stdout
        summary = json.loads(done.stdout)
        summary["stderr"] = done.stderr
        return summary

    def copy(self, name: str) -> Path:
        target = self.cwd / name
        shutil.copyfile(EXAMPLES / name, target)
        return target


def wd_of(summary: dict[str, Any], task_id: str = "working_dir") -> dict[str, Any]:
    return next(task for task in summary["tasks"] if task["task_id"] == task_id)


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    return Cli(tmp_path)


def test_version(cli: Cli) -> None:
    done = cli("--version")
    assert done.returncode == 0
    assert done.stdout.startswith("workflow-cache ")


@pytest.mark.network
@pytest.mark.skipif(shutil.which("npm") is None, reason="npm is not installed")
def test_node_example_end_to_end(cli: Cli) -> None:
    """Kestra's node example, unmodified: ``npm install colors`` once, then from the cache."""
    flow = cli.copy("node_cached_dependencies.yaml")
    first = cli.run_json(flow, timeout=300)
    assert wd_of(first)["cache"] == "miss" and wd_of(first)["saved"]
    assert "Hello" in first["stderr"]
    second = cli.run_json(flow, timeout=300)
    assert wd_of(second)["cache"] == "hit"
    assert wd_of(second)["restored_files"] == wd_of(first)["saved_files"]
    assert "Hello" in second["stderr"]
    assert (cli.home / "files" / "dev" / "node_cached_dependencies" / "working_dir").is_dir()


@pytest.mark.network
def test_python_example_end_to_end(cli: Cli, capsys: pytest.CaptureFixture[str]) -> None:
    """Kestra's pandas example, unmodified: the restored venv imports pandas in a new folder."""
    flow = cli.copy("python_cached_dependencies.yaml")
    started = time.monotonic()
    first = cli.run_json(flow, timeout=900)
    first_seconds = time.monotonic() - started
    assert wd_of(first)["cache"] == "miss" and wd_of(first)["saved"]
    version = first["stderr"].strip().splitlines()[-1].split("] ", 1)[1]

    started = time.monotonic()
    second = cli.run_json(flow, timeout=900)
    second_seconds = time.monotonic() - started
    assert wd_of(second)["cache"] == "hit"
    assert "Successfully installed" not in second["stderr"]
    assert f"[python_script] {version}" in second["stderr"]
    with capsys.disabled():
        print(
            f"\npython example: first run {first_seconds:.1f}s, second run {second_seconds:.1f}s "
            f"(ratio {second_seconds / first_seconds:.2f}; restore "
            f"{wd_of(second)['restore_seconds']:.1f}s, save {wd_of(first)['save_seconds']:.1f}s)"
        )
    assert second_seconds < first_seconds


def test_caching_files_example_runs_twice(cli: Cli) -> None:
    flow = cli.copy("caching_files.yaml")
    for _ in range(2):
        done = cli("run", flow)
        assert done.returncode == 0, done.stderr
        assert "no files matched the cache patterns" in done.stdout
        assert "dev.caching_files: success" in done.stdout


def test_offline_example_restores_without_npm(cli: Cli) -> None:
    flow = cli.copy("offline_node_local_package.yaml")
    first = cli.run_json(flow)
    assert wd_of(first)["saved"]
    assert "added 1 package" in first["stderr"]
    second = cli.run_json(flow)
    assert wd_of(second)["cache"] == "hit"
    assert "added" not in second["stderr"], "npm did not run: node_modules came from the cache"
    assert "[node_script] Hello, node script!" in second["stderr"]
    assert "[greet_command] Hello, command line!" in second["stderr"]


def test_table_summary_and_progress_free_output(cli: Cli) -> None:
    flow = cli.copy("offline_node_local_package.yaml")
    cli("run", flow)
    done = cli("run", flow)
    assert done.returncode == 0
    header = next(line for line in done.stdout.splitlines() if "task" in line and "cache" in line)
    for column in ("status", "files", "size", "restore", "run", "save"):
        assert column in header
    row = next(line for line in done.stdout.splitlines() if "working_dir" in line)
    assert "hit" in row
    assert "cache hit (restored)" in done.stdout


DEPS = """id: ttl_demo
namespace: dev
tasks:
  - id: wd
    type: io.kestra.plugin.core.flow.WorkingDirectory
    cache:
      patterns: [deps/**]
      ttl: {ttl}
    tasks:
      - id: make
        type: io.kestra.plugin.scripts.shell.Commands
        commands: ["test -d deps || {{ mkdir deps; date +%s%N > deps/stamp; }}"]
"""


def test_editing_the_ttl_between_runs(cli: Cli) -> None:
    """The ttl in the file at the time of the run decides: lowering expires, raising extends."""
    flow = cli.cwd / "ttl.yaml"

    def run_with(ttl: str) -> str:
        flow.write_text(DEPS.format(ttl=ttl))
        return wd_of(cli.run_json(flow), "wd")["cache"]

    assert run_with("PT1H") == "miss"
    assert run_with("PT1H") == "hit"
    time.sleep(1.2)
    assert run_with("PT1S") == "expired"  # saved again now
    assert run_with("PT10H") == "hit"


@pytest.mark.parametrize(
    ("flow_text", "expected"),
    [
        ("id: a\nnamespace: dev\ntasks:\n  - id: x\n   type: y\n", "bad.yaml:5:4: malformed YAML"),
        (
            "id: a\nnamespace: dev\ntasks:\n  - id: x\n    type: io.kestra.Nope\n",
            "tasks[0]: unknown task type 'io.kestra.Nope'",
        ),
        (
            "id: a\nnamespace: dev\ntasks:\n  - id: x\n"
            "    type: io.kestra.plugin.core.flow.WorkingDirectory\n"
            "    cache: {patterns: [a/**], ttl: P1X}\n",
            "tasks[0].cache.ttl: invalid duration 'P1X'",
        ),
        (
            "id: a\nnamespace: dev\ntasks:\n  - id: x\n"
            "    type: io.kestra.plugin.core.flow.WorkingDirectory\n"
            "    cache: {patterns: [../../etc/**]}\n",
            "escapes the working directory",
        ),
        (
            "id: a\nnamespace: dev\ntasks:\n  - id: x\n"
            "    type: io.kestra.plugin.core.flow.WorkingDirectory\n"
            "    cache: {patterns: [/etc/**]}\n",
            "is absolute",
        ),
        (
            "id: a\nnamespace: dev\ntasks:\n  - id: x\n"
            "    type: io.kestra.plugin.scripts.python.Script\n"
            "    runner: DOCKER\n    script: print(1)\n",
            "no Docker engine can run on this machine",
        ),
    ],
    ids=["yaml", "type", "duration", "escape", "absolute", "docker"],
)
def test_bad_input_is_one_message_and_exit_2(cli: Cli, flow_text: str, expected: str) -> None:
    cli.env["DOCKER_HOST"] = f"unix://{cli.cwd}/no-engine.sock"
    (cli.cwd / "bad.yaml").write_text(flow_text)
    done = cli("run", "bad.yaml")
    assert done.returncode == 2
    assert expected in done.stderr
    assert done.stderr.startswith("error: ")
    assert "Traceback" not in done.stderr + done.stdout
    if expected.startswith("no Docker"):
        assert "runner: PROCESS" in done.stderr


def test_missing_flow_file(cli: Cli) -> None:
    done = cli("run", "nope.yaml")
    assert done.returncode == 2
    assert "nope.yaml: no such flow file" in done.stderr


def test_failing_flow_exits_1_with_the_reason(cli: Cli) -> None:
    (cli.cwd / "fail.yaml").write_text(
        "id: fail\nnamespace: dev\ntasks:\n  - id: boom\n"
        "    type: io.kestra.plugin.scripts.python.Script\n"
        "    script: raise SystemExit('it broke')\n"
    )
    done = cli("run", "fail.yaml")
    assert done.returncode == 1
    assert "FAILED" in done.stdout
    assert "it broke" in done.stdout
    assert "Traceback" not in done.stdout


def test_storage_option_and_namespace_override(cli: Cli, tmp_path: Path) -> None:
    flow = cli.copy("offline_node_local_package.yaml")
    storage = tmp_path / "elsewhere"
    summary = cli.run_json(flow, "--storage", str(storage), "--namespace", "team.a")
    assert summary["namespace"] == "team.a"
    assert (storage / "team.a" / "offline_node_local_package" / "working_dir").is_dir()
    assert not (cli.home / "files").exists()
    listed = json.loads(cli("cache", "list", "--storage", str(storage), "--json").stdout)
    assert [entry["name"] for entry in listed] == ["team.a/offline_node_local_package/working_dir"]


def test_cache_list_show_delete(cli: Cli) -> None:
    flow = cli.copy("offline_node_local_package.yaml")
    cli.run_json(flow)
    cli.run_json(flow, "--namespace", "other")
    name = "dev/offline_node_local_package/working_dir"

    listed = json.loads(cli("cache", "list", "--json").stdout)
    assert sorted(entry["name"] for entry in listed) == [
        name,
        "other/offline_node_local_package/working_dir",
    ]
    assert [e["name"] for e in json.loads(cli("cache", "list", "dev", "--json").stdout)] == [name]
    table = cli("cache", "list").stdout
    assert "2 cached folder(s)" in table and name in table

    shown = json.loads(cli("cache", "show", name, "--json").stdout)
    # the folder's own bookkeeping file is archived but is not shown as a pattern
    assert shown["files"] >= 4 and shown["patterns"] == ["node_modules/**"]
    assert shown["task"] == "working_dir"
    assert "created_at:" in cli("cache", "show", name).stdout

    missing = cli("cache", "show", "dev/none/x")
    assert missing.returncode == 2 and "no cache entry named 'dev/none/x'" in missing.stderr

    assert cli("cache", "delete").returncode == 2
    assert cli("cache", "delete", name, "--all").returncode == 2
    deleted = cli("cache", "delete", name)
    assert deleted.returncode == 0 and "deleted 1 entry" in deleted.stdout
    assert cli("cache", "delete", name).returncode == 2

    cli.run_json(flow)
    assert "deleted 1 entry" in cli("cache", "delete", "--prefix", "other").stdout
    assert "deleted 1 entry" in cli("cache", "delete", "--all", "--yes").stdout
    assert json.loads(cli("cache", "list", "--json").stdout) == []
