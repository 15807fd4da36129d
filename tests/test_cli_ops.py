"""CLI behaviour an operator relies on: down brokers, progress bars, entries shown plainly."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console

from tests.servers import free_port
from workflow_cache.cli import _SlowProgress, main
from workflow_cache.workdir.filecache import EntryKey, FileCache

ROOT = Path(__file__).resolve().parent.parent
FLOW = ROOT / "examples" / "flows" / "caching_files.yaml"


@pytest.mark.parametrize(
    "args",
    [
        ["run", str(FLOW), "--broker", "redis://:secret@127.0.0.1:{port}/0"],
        ["steps", "stats", "--redis", "redis://127.0.0.1:{port}/0"],
    ],
)
def test_a_down_broker_or_redis_is_one_line_and_exit_2(args: list[str], tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "workflow_cache.cli", *(a.format(port=port) for a in args)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1 and "cannot reach" in lines[0] and f"127.0.0.1:{port}" in lines[0]
    assert "secret" not in done.stderr  # passwords never printed
    assert time.monotonic() - started < 60  # generous on a busy machine; typically < 2 s


def test_progress_bar_is_cleared_when_done_and_restarts_after_a_stop() -> None:
    console = Console(file=io.StringIO(), force_terminal=True, width=80)
    progress = _SlowProgress(console, delay=0)
    advance = progress.track("restore dev/flow/task", 100)
    advance(10)
    assert progress._progress is not None and progress._progress.live.is_started
    progress.stop()  # what the script-output sink does before printing a line
    assert progress._progress is None
    advance(10)  # more bytes after a script line: a fresh bar, no KeyError
    assert progress._progress is not None
    advance(80)  # complete: cleared at once, before anything else is printed
    assert progress._progress is None


def test_cache_show_prints_plain_values(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    storage = tmp_path / "storage"
    work = tmp_path / "w"
    (work / "node_modules/.workflow-cache").mkdir(parents=True)
    (work / "node_modules/a.js").write_text("x" * 5000)
    (work / ".workflow-cache").mkdir()
    (work / ".workflow-cache/origin").write_text("{}")
    key = EntryKey("dev", "flow", "task")
    assert (
        FileCache(str(storage)).save(key, work, ["node_modules/**", ".workflow-cache/origin"]).saved
    )
    assert main(["cache", "show", "dev/flow/task", "--storage", str(storage)]) == 0
    shown = capsys.readouterr().out
    assert "None" not in shown and "[" not in shown
    assert "patterns: node_modules/**\n" in shown
    assert "kB" in shown  # the same SI units as the progress bars
    assert main(["cache", "show", "dev/flow/task", "--storage", str(storage), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["patterns"] == ["node_modules/**"] and data["content"] is None


@pytest.mark.parametrize("broker", ["redis", "amqp"])
def test_steps_use_the_broker_s_redis_only_when_the_broker_is_redis(
    broker: str,
    redis_url: str,
    namespace: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The ``steps`` command asks the settings for their Redis (``configured_cache``)."""
    monkeypatch.setenv("WORKFLOW_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("WORKFLOW_CACHE_NAMESPACE", namespace)
    monkeypatch.delenv("WORKFLOW_CACHE_CACHE_URL", raising=False)
    url = redis_url if broker == "redis" else "amqp://guest@127.0.0.1:1//"
    monkeypatch.setenv("WORKFLOW_CACHE_BROKER", url)
    assert main(["steps", "list"]) == 0
    title = capsys.readouterr().out.splitlines()[0]
    if broker == "redis":
        assert f"in RedisCache('{redis_url}', namespace='{namespace}')" in title
    else:
        assert f"in LocalCache('{tmp_path / 'steps'}')" in title
