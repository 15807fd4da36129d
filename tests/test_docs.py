"""Every Python example in README.md and the step-cache guides runs, in order, per file."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.workers import CeleryWorker, stop_all, wait_ready

ROOT = Path(__file__).resolve().parent.parent
DOCS = ["README.md", "docs/caching.md", "docs/distributed.md"]
FENCE = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


def python_blocks(path: Path) -> list[str]:
    return FENCE.findall(path.read_text())


@pytest.fixture
def fleet_app(redis_url, tmp_path, monkeypatch) -> Iterator[None]:
    """Real workers of ``workers.app`` for the distributed guide, configured like production."""
    env = {
        "WORKFLOW_CACHE_BROKER": redis_url,
        "WORKFLOW_CACHE_NAMESPACE": f"docs-{tmp_path.name}",
        "WORKFLOW_CACHE_LEASE": "2",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    sys.modules.pop("workers.app", None)
    import workers.app

    workers_ = [
        CeleryWorker("workers.app", "docs-steps", "steps", env),
        CeleryWorker("workers.app", "docs-flows", "workflows", env),
    ]
    try:
        wait_ready(workers.app.app, workers_)
        yield
    finally:
        stop_all(workers_)
        sys.modules.pop("workers.app", None)


@pytest.mark.parametrize("name", [d for d in DOCS if (ROOT / d).exists()])
def test_python_examples_run(name, redis_url, tmp_path, monkeypatch, request) -> None:
    blocks = python_blocks(ROOT / name)
    assert blocks, f"{name} has no python examples"
    if name == "docs/distributed.md":
        request.getfixturevalue("fleet_app")
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("WORKFLOW_CACHE_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": f"docs:{name}"}
    for number, block in enumerate(blocks, 1):
        code = compile(block, f"{name} (python example {number})", "exec")
        exec(code, namespace)


def test_the_readme_first_command_runs_and_shows_cache_hits(tmp_path) -> None:
    """The README's first command, minus the install this test environment already did."""
    first = re.search(r"```bash\n(.*?)\n```", (ROOT / "README.md").read_text(), re.DOTALL)
    assert first is not None
    command = first.group(1).strip()
    assert command.startswith("pip install -e . && ")
    command = command.removeprefix("pip install -e . && ")
    env = {**os.environ, "WORKFLOW_CACHE_HOME": str(tmp_path / "home")}

    def run() -> str:
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", command],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    once = run()
    assert "served from cache" in once and "cache miss" in once
    twice = run()
    assert "executed" not in twice  # every step a hit, even in a new process
    assert "cache hit (restored)" in twice
