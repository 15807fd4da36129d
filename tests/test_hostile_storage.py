"""Hostile storage: planted symlinks, foreign files and bad ``entry.json``, through the real CLI.

``cache delete`` removes only the entry files it names and never leaves the
storage root; listings survive bad entries; saves never write through a
planted symlink; a pointer that cannot be written takes its archive with it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import pytest

from tests.hostile import (
    KEY,
    Member,
    Sandbox,
    assert_clean,
    flow_yaml,
    plant_entry,
    snapshot,
)
from workflow_cache.workdir.filecache import EntryKey, FileCache
from workflow_cache.workdir.storage import Published

T = TypeVar("T")
CACHED = Member("cached/file.txt", b"from the cache\n")
OTHER = EntryKey("dev", "hostile", "other")


@pytest.fixture
def box(tmp_path: Path) -> Sandbox:
    return Sandbox(tmp_path)


def _plant_outside_entries(box: Sandbox) -> None:
    """Entry-shaped files outside storage, reachable through a symlinked folder in it."""
    plant_entry(box.outside, [CACHED], folder="fakens/hostile/wd")
    (box.storage / "dev").symlink_to(box.outside / "fakens", target_is_directory=True)


@pytest.mark.parametrize(
    "args",
    [("--prefix", "dev"), ("--all", "--yes"), ("dev/hostile/wd",)],
    ids=["prefix", "all", "name"],
)
def test_delete_never_follows_a_symlinked_folder_out_of_storage(
    box: Sandbox, args: tuple[str, ...]
) -> None:
    _plant_outside_entries(box)
    before = box.outside_snapshot()
    run = box.cli("cache", "delete", *args, "--storage", box.storage)
    assert "Traceback" not in run.output
    assert run.returncode in (0, 2), run.output
    assert box.outside_snapshot() == before
    assert (box.storage / "dev").is_symlink()


def test_delete_all_removes_entry_files_and_nothing_else(box: Sandbox) -> None:
    plant_entry(box.storage, [CACHED])
    (box.storage / "README.txt").write_text("not an entry\n")
    (box.storage / KEY.name / "notes.txt").write_text("not an entry either\n")
    (box.storage / "dev" / "hostile" / "wd" / "sub").mkdir()
    (box.storage / "dev" / "hostile" / "wd" / "sub" / "entry.json").write_text("{}")
    run = box.cli("cache", "delete", "--all", "--yes", "--storage", box.storage)
    assert_clean(run)
    assert "deleted 1 entry" in run.stdout
    assert sorted(snapshot(box.storage)) == [
        "README.txt",
        "dev",
        "dev/hostile",
        "dev/hostile/wd",
        "dev/hostile/wd/notes.txt",
        "dev/hostile/wd/sub",
        "dev/hostile/wd/sub/entry.json",
    ]


def test_delete_all_needs_confirmation(box: Sandbox) -> None:
    plant_entry(box.storage, [CACHED])
    before = snapshot(box.storage)
    run = box.cli("cache", "delete", "--all", "--storage", box.storage)
    assert_clean(run, status=2)
    assert "--yes" in run.stderr and len(run.stderr.strip().splitlines()) == 1
    assert snapshot(box.storage) == before


@pytest.mark.parametrize("prefix", ["//", "/", "./", " "])
def test_prefix_that_normalises_to_nothing_is_refused(box: Sandbox, prefix: str) -> None:
    plant_entry(box.storage, [CACHED])
    before = snapshot(box.storage)
    run = box.cli("cache", "delete", "--prefix", prefix, "--storage", box.storage)
    assert_clean(run, status=2)
    assert len(run.stderr.strip().splitlines()) == 1, run.stderr
    assert snapshot(box.storage) == before


def test_delete_name_removes_that_entry_not_the_one_its_pointer_names(box: Sandbox) -> None:
    plant_entry(box.storage, [CACHED], key=OTHER)
    liar = plant_entry(box.storage, [CACHED])
    document = json.loads((liar / "entry.json").read_text())
    document["key"]["task"] = OTHER.task  # A's entry.json claims to be B
    (liar / "entry.json").write_text(json.dumps(document))
    other_before = snapshot(box.storage / OTHER.name)
    run = box.cli("cache", "delete", KEY.name, "--storage", box.storage)
    assert_clean(run)
    assert not liar.exists()
    assert snapshot(box.storage / OTHER.name) == other_before


def test_delete_name_must_name_an_entry_folder(box: Sandbox) -> None:
    plant_entry(box.storage, [CACHED])
    before = snapshot(box.storage)
    for name in ("dev", "dev/hostile", "/", "dev/hostile/wd/x/y", "../outside/x/y"):
        run = box.cli("cache", "delete", name, "--storage", box.storage)
        assert_clean(run, status=2)
    assert snapshot(box.storage) == before


@pytest.mark.parametrize(
    "fields",
    [{"size": float("inf")}, {"patterns": 5}, {"files": -1}, {"created_at": 12}, {"v": True}],
    ids=["size-infinity", "patterns-int", "negative-files", "created-number", "v-true"],
)
def test_one_bad_entry_does_not_break_listing(box: Sandbox, fields: dict[str, Any]) -> None:
    plant_entry(box.storage, [CACHED], key=OTHER)
    plant_entry(box.storage, [CACHED], **fields)
    run = box.cli("cache", "list", "--json", "--storage", box.storage)
    assert_clean(run)
    assert [entry["name"] for entry in json.loads(run.stdout)] == [OTHER.name]
    assert KEY.name in run.stderr


def test_list_and_restore_skip_a_pointer_that_is_a_symlink(box: Sandbox) -> None:
    entry = plant_entry(box.outside, [CACHED], folder="elsewhere")
    folder = box.storage / KEY.name
    folder.mkdir(parents=True)
    (folder / "entry.json").symlink_to(entry / "entry.json")
    flow = flow_yaml(box.root / "f.yaml")
    before = box.outside_snapshot()
    listed = box.cli("cache", "list", "--json", "--storage", box.storage)
    assert_clean(listed)
    assert json.loads(listed.stdout) == []
    run = box.run(flow)
    assert_clean(run)
    assert run.task()["cache"] == "miss" and run.task()["warnings"]
    assert box.outside_snapshot() == before


def test_save_never_writes_through_a_symlink_planted_in_storage(box: Sandbox) -> None:
    planted = box.outside / "planted"
    planted.mkdir()
    (box.storage / "dev").symlink_to(planted, target_is_directory=True)
    flow = flow_yaml(box.root / "f.yaml")
    before = box.outside_snapshot()
    run = box.run(flow)
    assert_clean(run)
    task = run.task()
    assert not task["saved"] and "save failed" in task["save_reason"]
    assert box.outside_snapshot() == before
    assert list(planted.iterdir()) == []


class _PointerFails(FileCache):
    """A file cache whose storage cannot write ``entry.json`` (a full or broken share)."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        create = self.storage.create

        def failing(name: str, write: Callable[[BinaryIO], T]) -> Published:
            if name.endswith("/entry.json"):
                raise OSError(28, "No space left on device", name)
            return create(name, write)

        self.storage.create = failing  # type: ignore[method-assign]


def test_failed_pointer_write_removes_the_archive(box: Sandbox) -> None:
    folder = box.work / "w"
    (folder / "cached").mkdir(parents=True)
    (folder / "cached" / "file.txt").write_text("data\n")
    cache = _PointerFails(str(box.storage))
    with pytest.raises(OSError, match="No space left"):
        cache.save(KEY, folder, ["cached/**"])
    assert snapshot(box.storage) == {}
    assert os.listdir(box.storage) == []


def test_show_of_a_bad_entry_is_one_line_exit_2(box: Sandbox) -> None:
    plant_entry(box.storage, [CACHED], size=float("inf"))
    run = box.cli("cache", "show", KEY.name, "--storage", box.storage)
    assert_clean(run, status=2)
    assert len(run.stderr.strip().splitlines()) == 1 and "size" in run.stderr


@pytest.mark.parametrize("value", ["lots", "0", "-5"])
def test_bad_restore_cap_setting_is_exit_2(box: Sandbox, value: str) -> None:
    run = box.run(flow_yaml(box.root / "f.yaml"), env={"WORKFLOW_CACHE_MAX_RESTORE_BYTES": value})
    assert_clean(run, status=2)
    assert "WORKFLOW_CACHE_MAX_RESTORE_BYTES" in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1
