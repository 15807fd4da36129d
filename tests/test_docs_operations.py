"""Every example in docs/operations.md runs, in a temporary folder, against a real Redis."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GUIDE = ROOT / "docs" / "operations.md"
FENCE = re.compile(r"^```(\w+)\n(.*?)^```", re.DOTALL | re.MULTILINE)


def blocks(language: str) -> list[str]:
    return [body for lang, body in FENCE.findall(GUIDE.read_text()) if lang == language]


def test_guide_has_only_bash_examples() -> None:
    assert {lang for lang, _ in FENCE.findall(GUIDE.read_text())} == {"bash"}


@pytest.mark.parametrize("number", range(len(blocks("bash"))))
def test_bash_examples_run(number: int, redis_url: str, tmp_path: Path) -> None:
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    env = {key: value for key, value in os.environ.items() if not key.startswith("WORKFLOW_CACHE_")}
    env.update(
        {
            "WORKFLOW_CACHE_HOME": str(tmp_path / "home"),
            "REDIS_URL": redis_url,
            "COLUMNS": "160",
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
            "TMPDIR": str(tmp_path / "tmp"),
        }
    )
    (tmp_path / "tmp").mkdir()
    before = sorted(p.name for p in tmp_path.iterdir())
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", blocks("bash")[number]],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    assert "Traceback" not in done.stderr
    # written only under temporary folders (and the cache home), never where it ran
    after = sorted(p.name for p in tmp_path.iterdir())
    assert set(after) - set(before) <= {"home"}, after


def test_the_readme_snippet_runs_after_the_quickstart(tmp_path: Path) -> None:
    """Both use the default LocalCache: their keys must not collide."""
    env = {**os.environ, "WORKFLOW_CACHE_HOME": str(tmp_path / "home")}
    quick = subprocess.run(
        [sys.executable, "examples/quickstart.py"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert quick.returncode == 0, quick.stderr
    (snippet,) = re.findall(r"^```python\n(.*?)^```", (ROOT / "README.md").read_text(), re.M | re.S)
    readme = subprocess.run(
        [sys.executable, "-c", snippet],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert readme.returncode == 0, readme.stderr
