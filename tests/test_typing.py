"""The public API as a type checker sees it: typed keywords, real lazy exports, a Result
that narrows on ``.ok``. Runs mypy (the one CI runs on the package) on two small files."""

from __future__ import annotations

import re
import subprocess
import sys
from functools import cache
from pathlib import Path

HERE = Path(__file__).resolve().parent / "typing"


@cache
def _errors() -> tuple[str, ...]:
    """mypy's errors for both files, checked in one run (the package is only followed)."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--follow-imports=silent",
            "--no-incremental",
            str(HERE / "usage.py"),
            str(HERE / "mistakes.py"),
        ],
        capture_output=True,
        text=True,
        cwd=HERE.parent.parent,
    )
    assert "error: " in out.stdout or out.returncode == 0, out.stdout + out.stderr
    return tuple(line for line in out.stdout.splitlines() if ": error:" in line)


def test_the_documented_usage_type_checks_cleanly() -> None:
    assert [e for e in _errors() if "usage.py" in e] == []


def test_each_mistake_is_caught_on_its_line() -> None:
    source = (HERE / "mistakes.py").read_text().splitlines()
    expected = {n for n, line in enumerate(source, 1) if "# E:" in line}
    errors = [e for e in _errors() if "mistakes.py" in e]
    flagged = {int(m.group(1)) for e in errors if (m := re.search(r"mistakes\.py:(\d+):", e))}
    assert flagged == expected, errors
    assert any("cahce" in e for e in errors)
