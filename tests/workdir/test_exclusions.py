"""``!pattern`` in cache patterns: the last pattern matching a path or a parent folder decides."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.workdir.flowkit import Cli, run_text, task_of
from workflow_cache.workdir.patterns import PatternError, match_files, selects, validate_patterns

FILES = [
    "node_modules/a/index.js",
    "node_modules/a/.bin/a",
    "node_modules/.cache/babel/x.json",
    "node_modules/.cache/keep/y.json",
    "src/app.js",
    "src/gen/out.js",
]


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    for name in FILES:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(name)
    return tmp_path


def files(root: Path, patterns: list[str]) -> list[str]:
    return [path.as_posix() for path in match_files(root, patterns) if (root / path).is_file()]


@pytest.mark.parametrize(
    ("patterns", "kept"),
    [
        (["node_modules/**"], [f for f in FILES if f.startswith("node_modules")]),
        (
            ["node_modules/**", "!node_modules/.cache/**"],
            ["node_modules/a/.bin/a", "node_modules/a/index.js"],
        ),
        (
            ["node_modules", "!node_modules/.cache"],
            ["node_modules/a/.bin/a", "node_modules/a/index.js"],
        ),
        (
            ["node_modules/**", "!node_modules/.cache/**", "node_modules/.cache/keep/**"],
            ["node_modules/.cache/keep/y.json", "node_modules/a/.bin/a", "node_modules/a/index.js"],
        ),
        # Order matters: an exclusion before the pattern it would narrow has no effect.
        (
            ["!node_modules/.cache/**", "node_modules/**"],
            [f for f in FILES if f.startswith("node_modules")],
        ),
        (["**/*.js", "!src/gen/**"], ["node_modules/a/index.js", "src/app.js"]),
        (["src/**", "!**/*.js"], []),
    ],
)
def test_later_patterns_win(tree: Path, patterns: list[str], kept: list[str]) -> None:
    assert files(tree, patterns) == sorted(kept)
    for name in FILES:
        assert selects(patterns, name) == (name in kept), name


def test_excluded_folders_are_left_out_entirely(tree: Path) -> None:
    found = [p.as_posix() for p in match_files(tree, ["node_modules", "!node_modules/.cache"])]
    assert not any(name.startswith("node_modules/.cache") for name in found)
    assert "node_modules" in found and "node_modules/a" in found


@pytest.mark.parametrize(
    ("patterns", "message"),
    [
        (["!node_modules/**"], "only exclude ('!')"),
        (["a/**", "!"], "excludes nothing"),
        (["a/**", "!!a/b"], "more than one '!'"),
        (["a/**", "!../b"], "cache pattern '!../b' escapes the working directory"),
        (["a/**", "!/etc/**"], "cache pattern '!/etc/**' is absolute"),
    ],
)
def test_bad_exclusions_are_refused(patterns: list[str], message: str) -> None:
    with pytest.raises(PatternError, match=re.escape(message)):
        validate_patterns(patterns)


def test_exclusions_are_normalised() -> None:
    assert validate_patterns(["./deps//", "!./deps/tmp/"]) == ["deps", "!deps/tmp"]


FLOW = """id: exclude
namespace: dev
tasks:
  - id: wd
    type: io.kestra.plugin.core.flow.WorkingDirectory
    cache:
      patterns:
        - deps/**
        - "!deps/tmp/**"
        - deps/tmp/keep.txt
    tasks:
      - id: fill
        type: io.kestra.plugin.scripts.shell.Commands
        commands:
          - ls -R deps 2>/dev/null | tr '\\n' ' '; echo
          - mkdir -p deps/lib deps/tmp && touch deps/lib/a deps/tmp/scratch deps/tmp/keep.txt
"""


def test_a_flow_saves_only_what_the_patterns_keep(tmp_path: Path) -> None:
    first, _ = run_text(FLOW, tmp_path)
    assert first.ok and first.task("wd").saved
    second, lines = run_text(FLOW, tmp_path)
    assert second.task("wd").cache == "hit"
    restored = lines.of("fill")[0]
    assert "a" in restored.split() and "keep.txt" in restored.split()
    assert "scratch" not in restored


def test_exclusions_through_the_cli(tmp_path: Path) -> None:
    cli = Cli(tmp_path)
    flow = cli.write("exclude.yaml", FLOW)
    first = cli.run_json(flow)
    assert task_of(first, "wd")["saved"]
    assert task_of(first, "wd")["saved_files"] == 2  # deps/lib/a and deps/tmp/keep.txt
    listing = cli("cache", "list", "--json")
    assert listing.returncode == 0
    second = cli.run_json(flow)
    assert task_of(second, "wd")["cache"] == "hit"
    assert "scratch" not in second["stderr"] and "keep.txt" in second["stderr"]
    bad = cli.write("bad.yaml", FLOW.replace('"!deps/tmp/**"', '"!../x"'))
    done = cli("run", bad)
    assert done.returncode == 2
    assert "tasks[0].cache.patterns: cache pattern '!../x' escapes" in done.stderr
