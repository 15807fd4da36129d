"""Every example in docs/trust.md runs: python blocks in order, in one namespace."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

GUIDE = Path(__file__).resolve().parent.parent / "docs" / "trust.md"
FENCE = re.compile(r"^```(\w+)\n(.*?)^```", re.DOTALL | re.MULTILINE)


def blocks(language: str) -> list[str]:
    return [body for lang, body in FENCE.findall(GUIDE.read_text()) if lang == language]


def test_trust_guide_examples_run(redis_url: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("WORKFLOW_CACHE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.delenv("WORKFLOW_CACHE_SIGNING_KEY", raising=False)
    monkeypatch.chdir(tmp_path)
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    namespace: dict = {"__name__": "docs:trust"}
    python = blocks("python")
    assert len(python) == 3
    for number, block in enumerate(python, 1):
        exec(compile(block, f"docs/trust.md (python example {number})", "exec"), namespace)


@pytest.mark.parametrize("block", blocks("bash"))
def test_trust_guide_shell_lines_make_a_usable_key(block: str, tmp_path: Path) -> None:
    import subprocess
    import sys

    script = block.replace("python ", f"{sys.executable} ") + '\necho "$WORKFLOW_CACHE_SIGNING_KEY"'
    done = subprocess.run(["bash", "-euc", script], capture_output=True, text=True, check=True)
    assert re.fullmatch(r"[0-9a-f]{64}\n", done.stdout)
