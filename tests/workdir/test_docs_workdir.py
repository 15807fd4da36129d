"""Every example in docs/working-directory.md runs: python blocks in order, bash blocks in bash."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "working-directory.md"
FENCE = re.compile(r"^```(\w+)\n(.*?)^```", re.DOTALL | re.MULTILINE)


def blocks(language: str) -> list[str]:
    return [body for lang, body in FENCE.findall(GUIDE.read_text()) if lang == language]


def test_guide_has_only_known_fences() -> None:
    languages = {lang for lang, _ in FENCE.findall(GUIDE.read_text())}
    assert languages <= {"python", "bash", "text", "yaml"}
    assert blocks("python") and blocks("bash")


def test_python_examples_run_in_order(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WORKFLOW_CACHE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "docs:working-directory"}
    for number, block in enumerate(blocks("python"), 1):
        exec(compile(block, f"working-directory.md (python example {number})", "exec"), namespace)


@pytest.mark.parametrize("number", range(len(blocks("bash"))))
def test_bash_examples_run(number: int, redis_url: str, tmp_path: Path) -> None:
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    env = {
        **os.environ,
        "WORKFLOW_CACHE_HOME": str(tmp_path / "home"),
        "REDIS_URL": redis_url,
        "COLUMNS": "160",
    }
    for name in ("WORKFLOW_CACHE_BROKER", "WORKFLOW_CACHE_STORAGE"):
        env.pop(name, None)
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", blocks("bash")[number]],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"


def test_yaml_examples_are_valid_cache_settings() -> None:
    """YAML fragments in the guide are checked against the models, not run."""
    import yaml

    from workflow_cache.workdir.spec import CacheSpec

    for block in blocks("yaml"):
        CacheSpec.model_validate(yaml.safe_load(block)["cache"])


def test_error_output_shown_is_the_real_one(tmp_path: Path) -> None:
    """The ```text block of an error reproduces what the bash example before it prints."""
    (shown,) = [block for block in blocks("text") if block.startswith("error:")]
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "id: a\nnamespace: dev\ntasks:\n  - id: x\n"
        "    type: io.kestra.plugin.core.flow.WorkingDirectory\n"
        "    cache: {patterns: [a/**], ttl: P1X}\n"
    )
    script = shutil.which("workflow-cache")
    assert script is not None
    done = subprocess.run(
        [script, "run", "bad.yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "400"},
        check=False,
    )
    assert " ".join(done.stderr.split()) == " ".join(shown.split())
