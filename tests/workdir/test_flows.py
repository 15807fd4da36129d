"""Running flows in-process: restore, children, save, ttl from the current spec, outputs."""

from __future__ import annotations

import json
import os
import stat
import zipfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from workflow_cache.workdir.entrykey import EntryKey
from workflow_cache.workdir.filecache import FileCache
from workflow_cache.workdir.flow import FlowSummary, relocate, run_flow
from workflow_cache.workdir.loader import load_flow, parse_flow
from workflow_cache.workdir.spec import FlowError

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "flows"


class Clock:
    """A clock the test moves by hand, so ttl checks need no sleeping."""

    def __init__(self) -> None:
        self.now = datetime(2024, 1, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


class Lines:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, task_id: str, stream: str, line: str) -> None:
        self.lines.append(f"{task_id}:{line}")


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def cache(tmp_path: Path, clock: Clock) -> FileCache:
    return FileCache(str(tmp_path / "storage"), clock=clock)


def run(flow_text: str, cache: FileCache, tmp_path: Path, **options: Any) -> FlowSummary:
    options.setdefault("work_root", tmp_path / "work")
    options.setdefault("outputs_dir", tmp_path / "outputs")
    options.setdefault("sink", Lines())
    return run_flow(parse_flow(flow_text), cache=cache, **options)


DEPS_FLOW = """
id: deps
namespace: dev
tasks:
  - id: wd
    type: io.kestra.plugin.core.flow.WorkingDirectory
    cache:
      patterns: [deps/**]
      ttl: {ttl}
    tasks:
      - id: install
        type: io.kestra.plugin.scripts.shell.Commands
        commands:
          - test -f deps/installed || {{ mkdir -p deps && echo fresh > deps/installed; }}
          - cat deps/installed
"""


def deps_flow(ttl: str = "PT1H") -> str:
    return DEPS_FLOW.format(ttl=ttl)


def test_first_run_saves_second_run_restores(cache: FileCache, tmp_path: Path) -> None:
    first_lines, second_lines = Lines(), Lines()
    first = run(deps_flow(), cache, tmp_path, sink=first_lines)
    assert first.ok
    wd = first.task("wd")
    assert (wd.cache, wd.saved, wd.saved_files, wd.saved_bytes) == ("miss", True, 1, 6)
    assert first.task("install").parent == "wd"

    second = run(deps_flow(), cache, tmp_path, sink=second_lines)
    wd = second.task("wd")
    assert (wd.cache, wd.saved, wd.restored_files) == ("hit", False, 1)
    assert wd.restored_bytes == len("fresh\n")
    assert "valid entry" in wd.save_reason
    assert second_lines.lines == ["install:fresh"]
    assert not list((tmp_path / "work").iterdir()), "task folders are removed after the run"


def test_ttl_is_read_from_the_current_spec_at_every_run(
    cache: FileCache, clock: Clock, tmp_path: Path
) -> None:
    """Edit the YAML between runs: lowering expires the entry, raising extends it."""
    flow_file = tmp_path / "deps.yaml"

    def run_with(ttl: str) -> str:
        flow_file.write_text(deps_flow(ttl))
        summary = run_flow(
            load_flow(flow_file), cache=cache, work_root=tmp_path / "w", sink=Lines()
        )
        return summary.task("wd").cache

    assert run_with("PT1H") == "miss"  # saved at 12:00
    clock.advance(minutes=30)
    assert run_with("PT1H") == "hit"
    assert run_with("PT5M") == "expired"  # 30 min old > 5 min: removed, saved again at 12:30
    clock.advance(minutes=3)
    assert run_with("PT5M") == "hit"
    clock.advance(minutes=57)  # 13:30, entry from 12:30
    assert run_with("PT5H") == "hit"  # raised: still valid
    assert run_with("PT30M") == "expired"
    (entry,) = cache.entries("dev")
    assert entry.created_at == clock.now


def test_failed_child_saves_nothing_and_skips_the_rest(cache: FileCache, tmp_path: Path) -> None:
    text = """
id: broken
namespace: dev
tasks:
  - id: wd
    type: io.kestra.plugin.core.flow.WorkingDirectory
    cache: {patterns: ["**"]}
    tasks:
      - id: make
        type: io.kestra.plugin.scripts.shell.Commands
        commands: [echo data > file.txt]
      - id: fail
        type: io.kestra.plugin.scripts.python.Script
        script: raise SystemExit("no luck")
      - id: never
        type: io.kestra.plugin.scripts.shell.Commands
        commands: [touch never]
  - id: after
    type: io.kestra.plugin.scripts.shell.Commands
    commands: [echo after]
"""
    summary = run(text, cache, tmp_path)
    assert not summary.ok
    assert summary.task("fail").status == "failed"
    assert summary.task("fail").error == "exit code 1: no luck"
    assert summary.task("never").status == "skipped"
    assert summary.task("after").status == "skipped"
    wd = summary.task("wd")
    assert wd.status == "failed" and not wd.saved
    assert cache.entries() == []


def test_content_key_from_lock_files(cache: FileCache, tmp_path: Path) -> None:
    template = """
id: locked
namespace: dev
tasks:
  - id: wd
    type: io.kestra.plugin.core.flow.WorkingDirectory
    inputFiles:
      requirements.txt: "{pin}"
    cache:
      patterns: [deps/**]
      keyFiles: [requirements.txt]
      key: py311
    tasks:
      - id: install
        type: io.kestra.plugin.scripts.shell.Commands
        commands: ["test -d deps || {{ mkdir deps; cp requirements.txt deps/; }}"]
"""
    states = [
        run(template.format(pin=pin), cache, tmp_path).task("wd").cache
        for pin in ("a==1", "a==1", "a==2", "a==1")
    ]
    assert states == ["miss", "hit", "miss", "hit"]
    names = sorted(entry.name for entry in cache.entries("dev/locked"))
    assert len(names) == 2 and all("@py311-" in name for name in names)


def test_missing_key_file_fails_the_task(cache: FileCache, tmp_path: Path) -> None:
    text = deps_flow().replace("ttl: PT1H", "keyFiles: [package-lock.json]")
    summary = run(text, cache, tmp_path)
    assert not summary.ok
    assert "package-lock.json" in (summary.task("wd").error or "")


def test_corrupt_entry_is_a_miss_with_a_warning(cache: FileCache, tmp_path: Path) -> None:
    assert run(deps_flow(), cache, tmp_path).task("wd").saved
    (entry,) = cache.entries()
    archive = tmp_path / "storage" / entry.name / entry.archive
    archive.write_bytes(b"this is not zstd")
    with pytest.warns(UserWarning, match="corrupt"):
        summary = run(deps_flow(), cache, tmp_path)
    wd = summary.task("wd")
    assert summary.ok and wd.cache == "miss" and wd.warnings
    assert wd.saved, "a fresh entry replaces the corrupt one"
    assert run(deps_flow(), cache, tmp_path).task("wd").cache == "hit"


def test_input_files_win_over_restored_files(cache: FileCache, tmp_path: Path) -> None:
    template = """
id: inputs
namespace: dev
tasks:
  - id: wd
    type: io.kestra.plugin.core.flow.WorkingDirectory
    inputFiles:
      conf/settings.txt: "{value}"
    cache: {{patterns: ["conf/**"]}}
    tasks:
      - id: show
        type: io.kestra.plugin.scripts.shell.Commands
        commands: [cat conf/settings.txt]
"""
    run(template.format(value="old"), cache, tmp_path)
    lines = Lines()
    summary = run(template.format(value="new"), cache, tmp_path, sink=lines)
    assert summary.task("wd").cache == "hit"
    assert lines.lines == ["show:new"]


def test_output_files_are_copied_out(cache: FileCache, tmp_path: Path) -> None:
    text = """
id: outputs
namespace: dev
tasks:
  - id: wd
    type: io.kestra.plugin.core.flow.WorkingDirectory
    outputFiles: ["*.csv"]
    tasks:
      - id: write
        type: io.kestra.plugin.scripts.python.Script
        outputFiles: [report/*.txt]
        script: |
          import pathlib
          pathlib.Path("data.csv").write_text("a,b\\n1,2\\n")
          pathlib.Path("report").mkdir()
          pathlib.Path("report/summary.txt").write_text("ok")
          pathlib.Path("ignored.log").write_text("no")
  - id: standalone
    type: io.kestra.plugin.scripts.shell.Commands
    inputFiles: {in.txt: hello}
    outputFiles: [out.txt]
    commands: [tr a-z A-Z < in.txt > out.txt]
"""
    summary = run(text, cache, tmp_path)
    outputs = tmp_path / "outputs"
    assert (outputs / "wd" / "data.csv").read_text() == "a,b\n1,2\n"
    assert (outputs / "wd" / "report" / "summary.txt").read_text() == "ok"
    assert not (outputs / "wd" / "ignored.log").exists()
    assert (outputs / "standalone" / "out.txt").read_text() == "HELLO"
    assert summary.task("standalone").outputs == [str(outputs / "standalone" / "out.txt")]
    assert summary.task("standalone").cache == "off"


def test_top_level_scripts_get_their_own_fresh_folder(cache: FileCache, tmp_path: Path) -> None:
    text = """
id: plain
namespace: dev
tasks:
  - id: one
    type: io.kestra.plugin.scripts.shell.Commands
    commands: [pwd, touch left-behind]
  - id: two
    type: io.kestra.plugin.scripts.shell.Commands
    commands: [pwd, test ! -e left-behind]
"""
    lines = Lines()
    summary = run(text, cache, tmp_path, sink=lines)
    assert summary.ok, summary
    first, second = (line.split(":", 1)[1] for line in lines.lines)
    assert first != second
    assert not Path(first).exists() and not Path(second).exists()


def test_caching_files_example_without_children(cache: FileCache, tmp_path: Path) -> None:
    flow = load_flow(EXAMPLES / "caching_files.yaml")
    for _ in range(2):
        summary = run_flow(flow, cache=cache, work_root=tmp_path / "w", sink=Lines())
        wd = summary.task("working_dir")
        assert summary.ok and wd.cache == "miss" and not wd.saved
        assert wd.save_reason == "not saved: no files matched the cache patterns"


def test_docker_task_is_refused_before_anything_runs(
    cache: FileCache, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    marker = tmp_path / "ran"
    text = f"""
id: mixed
namespace: dev
tasks:
  - id: first
    type: io.kestra.plugin.scripts.shell.Commands
    commands: [touch {marker}]
  - id: wd
    type: io.kestra.plugin.core.flow.WorkingDirectory
    tasks:
      - id: in_docker
        type: io.kestra.plugin.scripts.python.Script
        runner: DOCKER
        containerImage: python:3.11-slim
        script: print(1)
"""
    with pytest.raises(FlowError, match="'in_docker' uses 'runner: DOCKER'") as caught:
        run(text, cache, tmp_path)
    assert "runner: PROCESS" in str(caught.value)
    assert not marker.exists()


def test_warning_on_stderr_marks_the_task_and_its_folder(cache: FileCache, tmp_path: Path) -> None:
    text = """
id: noisy
namespace: dev
tasks:
  - id: wd
    type: io.kestra.plugin.core.flow.WorkingDirectory
    tasks:
      - id: talk
        type: io.kestra.plugin.scripts.shell.Commands
        commands: [echo note >&2]
"""
    summary = run(text, cache, tmp_path)
    assert summary.ok
    assert summary.task("talk").status == "warning"
    assert summary.task("wd").status == "warning"


def test_disabled_tasks_are_skipped(cache: FileCache, tmp_path: Path) -> None:
    text = """
id: disabled_demo
namespace: dev
tasks:
  - id: skip_me
    type: io.kestra.plugin.scripts.shell.Commands
    disabled: true
    commands: [exit 1]
  - id: run_me
    type: io.kestra.plugin.scripts.shell.Commands
    commands: ['true']
"""
    summary = run(text, cache, tmp_path)
    assert summary.ok
    assert [t.status for t in summary.tasks] == ["skipped", "success"]


def test_summary_round_trips_through_json(cache: FileCache, tmp_path: Path) -> None:
    summary = run(deps_flow(), cache, tmp_path)
    again = FlowSummary.from_dict(json.loads(json.dumps(summary.to_dict())))
    assert again == summary


def test_relocate_rewrites_paths_of_the_old_folder(tmp_path: Path) -> None:
    old, new = tmp_path / "old", tmp_path / "new"
    (new / "venv" / "bin").mkdir(parents=True)
    (new / ".workflow-cache").mkdir()
    (new / ".workflow-cache" / "origin").write_text(str(old))
    script = new / "venv" / "bin" / "tool"
    script.write_text(f"#!{old}/venv/bin/python\nprint('hi')\n")
    script.chmod(0o755)
    (new / "venv" / "bin" / "python").symlink_to(f"{old}/venv/bin/real")
    (new / "venv" / "bin" / "rel").symlink_to("tool")
    (new / "venv" / "blob.bin").write_bytes(f"{old}\0binary".encode())
    assert relocate(new) == 2
    assert script.read_text().startswith(f"#!{new}/venv/bin/python\n")
    assert stat.S_IMODE(script.stat().st_mode) == 0o755
    assert os.readlink(new / "venv" / "bin" / "python") == f"{new}/venv/bin/real"
    assert os.readlink(new / "venv" / "bin" / "rel") == "tool"
    assert (new / "venv" / "blob.bin").read_bytes().startswith(str(old).encode())
    assert not (new / ".workflow-cache").exists()


OFFLINE_VENV = """
id: offline_venv
namespace: dev
tasks:
  - id: wd
    type: io.kestra.plugin.core.flow.WorkingDirectory
    cache:
      patterns: [venv/**]
      ttl: P1D
    tasks:
      - id: use
        type: io.kestra.plugin.scripts.shell.Commands
        env: {{PIP_NO_INDEX: "1", PIP_DISABLE_PIP_VERSION_CHECK: "1", WHEEL: "{wheel}"}}
        warningOnStdErr: false
        beforeCommands:
          - test -d venv || python -m venv venv
          - source venv/bin/activate
          - test -x venv/bin/greet || pip install -q "$WHEEL"
        commands:
          - greet
          - python -c "import greeting, sys; print(greeting.__file__.startswith(sys.prefix))"
          - python -c "import sys; print(sys.prefix == '$PWD/venv')"
"""


def build_wheel(folder: Path) -> Path:
    """A pure-Python wheel with a console script, built by hand so no network or build tool runs."""
    files = {
        "greeting.py": "def main():\n    print('hello from greeting')\n",
        "greeting-1.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: greeting\nVersion: 1.0\n",
        "greeting-1.0.dist-info/WHEEL": (
            "Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
        "greeting-1.0.dist-info/entry_points.txt": "[console_scripts]\ngreet = greeting:main\n",
    }
    record = "".join(f"{name},,\n" for name in files) + "greeting-1.0.dist-info/RECORD,,\n"
    wheel = folder / "greeting-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for name, text in {**files, "greeting-1.0.dist-info/RECORD": record}.items():
            archive.writestr(name, text)
    return wheel


def test_offline_venv_is_restored_and_relocated(cache: FileCache, tmp_path: Path) -> None:
    """A venv restored into a new folder: its console script, python and activate all work."""
    text = OFFLINE_VENV.format(wheel=build_wheel(tmp_path))
    first_lines, second_lines = Lines(), Lines()
    first = run(text, cache, tmp_path, sink=first_lines)
    assert first.ok, first_lines.lines
    assert first.task("wd").saved
    second = run(text, cache, tmp_path, sink=second_lines)
    assert second.ok, second_lines.lines
    assert second.task("wd").cache == "hit"
    expected = ["use:hello from greeting", "use:True", "use:True"]
    assert first_lines.lines == expected
    assert second_lines.lines == expected


def test_s3_storage(s3: Any, tmp_path: Path) -> None:
    """The same flow against an S3 API (moto): a second run restores from the bucket."""
    from tests.workdir.conftest import BUCKET

    url = f"s3://{BUCKET}/flows-{tmp_path.name}"
    cache = FileCache(url, **s3.options())
    assert run(deps_flow(), cache, tmp_path).task("wd").saved
    assert run(deps_flow(), cache, tmp_path).task("wd").cache == "hit"
    assert cache.show(EntryKey("dev", "deps", "wd")) is not None
