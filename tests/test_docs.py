"""Every Python example in README.md and the step-cache guides runs, in order, per file."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ["README.md", "docs/caching.md", "docs/distributed.md"]
FENCE = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


def python_blocks(path: Path) -> list[str]:
    return FENCE.findall(path.read_text())


@pytest.mark.parametrize("name", [d for d in DOCS if (ROOT / d).exists()])
def test_python_examples_run(name, redis_url, tmp_path, monkeypatch) -> None:
    blocks = python_blocks(ROOT / name)
    assert blocks, f"{name} has no python examples"
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("WORKFLOW_CACHE_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": f"docs:{name}"}
    for number, block in enumerate(blocks, 1):
        code = compile(block, f"{name} (python example {number})", "exec")
        exec(code, namespace)
