"""Hostile entries restored into working folders, run through the real ``workflow-cache run``.

Each test plants what a writer of shared storage could leave there, runs a
flow in a subprocess and asserts: the exit status, no traceback, what the
cache did, and that nothing outside the folder and storage root changed.
"""

from __future__ import annotations

import os
import resource
import tarfile
from pathlib import Path

import pytest

from tests.hostile import (
    KEY,
    Member,
    Sandbox,
    archive_bytes,
    assert_clean,
    flow_yaml,
    plant_entry,
    snapshot,
)

SYM, DIR = tarfile.SYMTYPE, tarfile.DIRTYPE
CACHED = Member("cached/file.txt", b"from the cache\n")
BUILD = ["mkdir -p cached && echo built > cached/file.txt"]


@pytest.fixture
def box(tmp_path: Path) -> Sandbox:
    return Sandbox(tmp_path)


def test_input_file_over_a_restored_symlink_replaces_the_link(box: Sandbox) -> None:
    target = str(box.outside / "victim.txt")
    plant_entry(box.storage, [CACHED, Member("config.txt", kind=SYM, link=target)])
    flow = flow_yaml(
        box.root / "f.yaml", inputs={"config.txt": "mine\n"}, commands=[*BUILD, "cat config.txt"]
    )
    before = box.outside_snapshot()
    run = box.run(flow)
    assert_clean(run)
    assert run.task()["cache"] == "hit"
    assert "mine" in run.stderr  # the child read the input, not the victim
    assert box.outside_snapshot() == before


def test_input_file_through_a_restored_symlinked_folder_is_a_miss(box: Sandbox) -> None:
    plant_entry(box.storage, [CACHED, Member("conf", kind=SYM, link=str(box.outside))])
    flow = flow_yaml(
        box.root / "f.yaml",
        inputs={"conf/victim.txt": "mine\n"},
        commands=[*BUILD, "cat conf/victim.txt"],
    )
    before = box.outside_snapshot()
    run = box.run(flow)
    assert_clean(run)
    task = run.task()
    assert task["cache"] == "miss" and "rejected" in task["cache_reason"]
    assert "mine" in run.stderr
    assert box.outside_snapshot() == before


def test_restored_file_where_inputs_need_a_folder_is_a_miss(box: Sandbox) -> None:
    plant_entry(box.storage, [CACHED, Member("conf", b"a file, not a folder\n")])
    flow = flow_yaml(
        box.root / "f.yaml",
        inputs={"conf/app.ini": "[app]\n"},
        commands=[*BUILD, "cat conf/app.ini"],
    )
    run = box.run(flow)
    assert_clean(run)
    task = run.task()
    assert task["cache"] == "miss" and "rejected" in task["cache_reason"]
    assert task["status"] == "success" and "[app]" in run.stderr
    assert task["saved"], "the hostile entry was removed, so the run saved a fresh one"


@pytest.mark.parametrize(
    "members",
    [
        [CACHED, Member(".workflow-cache", kind=SYM, link="{outside}")],
        [
            CACHED,
            Member(".workflow-cache", kind=DIR),
            Member(".workflow-cache/scripts", kind=SYM, link="{outside}/scripts"),
        ],
        [
            CACHED,
            Member(".workflow-cache", kind=DIR),
            Member(".workflow-cache/origin", kind=SYM, link="{outside}/origin"),
        ],
    ],
    ids=["bookkeeping-folder-symlink", "scripts-symlink", "origin-symlink"],
)
def test_symlinked_bookkeeping_folder_is_a_miss_and_touches_nothing(
    box: Sandbox, members: list[Member]
) -> None:
    for member in members:
        member.link = member.link.format(outside=box.outside)
    plant_entry(box.storage, members)
    flow = flow_yaml(box.root / "f.yaml")
    before = box.outside_snapshot()
    run = box.run(flow)
    assert_clean(run)
    task = run.task()
    assert task["cache"] == "miss" and "rejected" in task["cache_reason"], task
    assert task["status"] == "success"
    assert box.outside_snapshot() == before  # outside/scripts and outside/origin are intact


def test_non_utf8_origin_marker_is_a_miss(box: Sandbox) -> None:
    plant_entry(box.storage, [CACHED, Member(".workflow-cache/origin", b"\xff\xfe/not-utf8")])
    run = box.run(flow_yaml(box.root / "f.yaml"))
    assert_clean(run)
    task = run.task()
    assert task["cache"] == "miss" and "UTF-8" in task["cache_reason"]
    assert task["warnings"] and task["status"] == "success"


def test_output_symlink_out_of_the_folder_is_not_copied(box: Sandbox) -> None:
    link = Member("report.txt", kind=SYM, link=str(box.outside / "victim.txt"))
    plant_entry(box.storage, [CACHED, link])
    flow = flow_yaml(box.root / "f.yaml", outputs=["report.txt", "cached/file.txt"])
    run = box.run(flow)
    assert_clean(run)
    assert run.task()["cache"] == "hit"
    copied = sorted(p.relative_to(box.outputs).as_posix() for p in box.outputs.rglob("*.txt"))
    assert copied == ["wd/cached/file.txt"]
    assert "symlink out of the folder" in run.stderr


@pytest.mark.parametrize("where", ["entry.json", "archive"])
def test_fifo_in_storage_does_not_hang_the_run(box: Sandbox, where: str) -> None:
    entry = plant_entry(box.storage, [CACHED])
    target = entry / "entry.json" if where == "entry.json" else next(entry.glob("archive-*"))
    target.unlink()
    os.mkfifo(target)
    flow = flow_yaml(box.root / "f.yaml")
    before = box.outside_snapshot()
    run = box.run(flow, timeout=60)
    assert_clean(run)
    task = run.task()
    assert task["cache"] == "miss" and task["warnings"]
    assert task["saved"], "the FIFO entry was removed and a fresh entry saved"
    assert not any(p.is_fifo() for p in box.storage.rglob("*"))
    assert box.outside_snapshot() == before


def test_archive_expanding_far_beyond_its_record_is_a_miss(box: Sandbox) -> None:
    data = archive_bytes([Member("cached/zeros", size=2 << 30)])
    assert len(data) < 200_000  # a small archive that would write 2 GiB
    plant_entry(box.storage, archive=data, files=1, bytes=10)
    run = box.run(flow_yaml(box.root / "f.yaml"), timeout=120)
    assert_clean(run)
    task = run.task()
    assert task["cache"] == "miss" and "limit" in " ".join(task["warnings"]) + run.stderr
    assert not list(box.work.iterdir())  # the partial restore went with the folder


def test_restore_cap_applies_even_when_the_record_agrees(box: Sandbox) -> None:
    data = archive_bytes([Member("cached/zeros", size=64 << 20)])
    plant_entry(box.storage, archive=data, files=1, bytes=64 << 20)
    env = {"WORKFLOW_CACHE_MAX_RESTORE_BYTES": str(8 << 20)}
    run = box.run(flow_yaml(box.root / "f.yaml"), env=env)
    assert_clean(run)
    assert run.task()["cache"] == "miss"
    assert "8,388,608" in run.stderr


def test_archive_larger_than_recorded_is_a_miss(box: Sandbox) -> None:
    members = [CACHED, Member("cached/big.bin", os.urandom(3 << 20))]
    plant_entry(box.storage, members, size=1000)  # the archive is ~3 MiB
    run = box.run(flow_yaml(box.root / "f.yaml"))
    assert_clean(run)
    assert run.task()["cache"] == "miss"
    assert "larger than" in run.stderr


def test_running_out_of_space_while_restoring_is_a_miss(box: Sandbox, tmp_path: Path) -> None:
    """A file-size limit makes writes fail like a full disk (EFBIG); the entry is kept."""
    members = [CACHED, Member("cached/big.bin", os.urandom(4 << 20))]
    entry = plant_entry(box.storage, members)
    kept = snapshot(entry)
    limit = 2 << 20

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    run = box.run(flow_yaml(box.root / "f.yaml"), preexec=small_files)
    assert_clean(run)
    task = run.task()
    assert task["cache"] == "miss" and task["status"] == "success"
    assert snapshot(entry) == kept, "a local failure must not remove or replace a good entry"
    assert not list(box.work.iterdir())
    assert KEY.name in run.stderr
