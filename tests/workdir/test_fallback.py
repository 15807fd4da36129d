"""Fallback restores: a changed key file starts from the newest valid entry of the same task."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.workdir.flowkit import Cli, run_text, task_of
from workflow_cache.workdir.entrykey import EntryKey
from workflow_cache.workdir.filecache import FileCache

FLOW = """id: locked
namespace: dev
inputs:
  - id: lock
    type: STRING
tasks:
  - id: wd
    type: io.kestra.plugin.core.flow.WorkingDirectory
    inputFiles:
      deps.lock: "{{ inputs.lock }}"
    cache:
      patterns: [deps/**]
      keyFiles: [deps.lock]
      fallback: FALLBACK
      ttl: PT1H
    tasks:
      - id: install
        type: io.kestra.plugin.scripts.shell.Commands
        commands:
          - mkdir -p deps
          - >-
            for name in $(cat deps.lock); do
            if [ -e deps/$name ]; then echo "kept $name";
            else echo "installed $name"; echo $name > deps/$name; fi; done
"""


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2024, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def flow(fallback: bool) -> str:
    return FLOW.replace("FALLBACK", "true" if fallback else "false")


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def cache(tmp_path: Path, clock: Clock) -> FileCache:
    return FileCache(str(tmp_path / "storage"), clock=clock)


def test_a_changed_key_file_restores_the_previous_entry_then_saves_its_own(
    tmp_path: Path, cache: FileCache, clock: Clock
) -> None:
    first, lines = run_text(flow(True), tmp_path, cache=cache, inputs={"lock": "a b"})
    assert first.task("wd").cache == "miss" and first.task("wd").saved
    assert lines.of("install") == ["installed a", "installed b"]
    (old,) = cache.entries()

    clock.now += timedelta(minutes=10)
    second, lines = run_text(flow(True), tmp_path, cache=cache, inputs={"lock": "a b c"})
    wd = second.task("wd")
    assert second.ok and wd.cache == "partial"
    assert wd.cache_reason == f"fallback from {old.name}"
    assert wd.restored_files == 2
    assert lines.of("install") == ["kept a", "kept b", "installed c"]
    assert wd.saved, "the exact entry is saved after a partial hit"
    assert len(cache.entries()) == 2

    third, lines = run_text(flow(True), tmp_path, cache=cache, inputs={"lock": "a b c"})
    assert third.task("wd").cache == "hit" and not third.task("wd").saved
    assert lines.of("install") == ["kept a", "kept b", "kept c"]


def test_without_fallback_a_changed_key_file_starts_from_nothing(
    tmp_path: Path, cache: FileCache
) -> None:
    run_text(flow(False), tmp_path, cache=cache, inputs={"lock": "a b"})
    second, lines = run_text(flow(False), tmp_path, cache=cache, inputs={"lock": "a b c"})
    assert second.task("wd").cache == "miss"
    assert lines.of("install") == ["installed a", "installed b", "installed c"]


def test_the_newest_valid_entry_is_chosen(tmp_path: Path, cache: FileCache, clock: Clock) -> None:
    run_text(flow(False), tmp_path, cache=cache, inputs={"lock": "old"})
    clock.now += timedelta(minutes=20)
    run_text(flow(False), tmp_path, cache=cache, inputs={"lock": "newer"})
    clock.now += timedelta(minutes=5)
    summary, lines = run_text(flow(True), tmp_path, cache=cache, inputs={"lock": "newer old"})
    assert summary.task("wd").cache == "partial"
    assert lines.of("install") == ["kept newer", "installed old"]


def test_expired_entries_are_not_fallbacks(tmp_path: Path, cache: FileCache, clock: Clock) -> None:
    run_text(flow(False), tmp_path, cache=cache, inputs={"lock": "a"})
    clock.now += timedelta(hours=2)  # past the PT1H ttl
    summary, lines = run_text(flow(True), tmp_path, cache=cache, inputs={"lock": "a b"})
    assert summary.task("wd").cache == "miss"
    assert lines.of("install") == ["installed a", "installed b"]


def test_a_corrupt_newest_entry_falls_back_to_the_next(
    tmp_path: Path, cache: FileCache, clock: Clock
) -> None:
    run_text(flow(False), tmp_path, cache=cache, inputs={"lock": "first"})
    clock.now += timedelta(minutes=1)
    run_text(flow(False), tmp_path, cache=cache, inputs={"lock": "second"})
    newest = max(cache.entries(), key=lambda entry: entry.created_at)
    archive = tmp_path / "storage" / newest.name / newest.archive
    archive.write_bytes(b"not an archive")
    with pytest.warns(UserWarning, match="corrupt"):
        summary, lines = run_text(flow(True), tmp_path, cache=cache, inputs={"lock": "first x"})
    assert summary.ok and summary.task("wd").cache == "partial"
    assert lines.of("install") == ["kept first", "installed x"]


def test_an_entry_whose_metadata_names_another_key_is_skipped(
    tmp_path: Path, cache: FileCache
) -> None:
    """A planted pointer in this task's folder that claims another key is never restored."""
    run_text(flow(False), tmp_path, cache=cache, inputs={"lock": "a"})
    (entry,) = cache.entries()
    pointer = tmp_path / "storage" / entry.name / "entry.json"
    document = json.loads(pointer.read_text())
    document["key"]["task"] = "other"
    pointer.write_text(json.dumps(document))
    summary, lines = run_text(flow(True), tmp_path, cache=cache, inputs={"lock": "a b"})
    assert summary.task("wd").cache == "miss"
    assert lines.of("install") == ["installed a", "installed b"]


def test_fallback_through_the_cli(tmp_path: Path) -> None:
    cli = Cli(tmp_path)
    path = cli.write("locked.yaml", flow(True))
    first = cli.run_json(path, "--input", "lock=a")
    assert task_of(first, "wd")["cache"] == "miss"
    second = cli.run_json(path, "--input", "lock=a b")
    assert task_of(second, "wd")["cache"] == "partial"
    assert "[install] kept a" in second["stderr"] and "[install] installed b" in second["stderr"]
    table = cli("run", path, "--input", "lock=a b c")
    assert table.returncode == 0
    assert "wd: cache partial (fallback from dev/locked/wd/@" in table.stdout
    assert "saved" in table.stdout


def test_fallback_is_off_by_default() -> None:
    from workflow_cache.workdir.spec import CacheSpec

    assert CacheSpec(patterns=["a/**"]).fallback is False
    assert EntryKey("dev", "f", "t").name == "dev/f/t"
