"""``cache prune`` on real entries, in a local folder and on S3 (moto): age, orphans, size cap."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from workflow_cache.admin.archives import prune
from workflow_cache.cli import main
from workflow_cache.workdir.entrykey import EntryKey
from workflow_cache.workdir.filecache import FileCache

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


def workdir(root: Path, size: int) -> Path:
    (root / "deps").mkdir(parents=True)
    (root / "deps/blob.bin").write_bytes(os.urandom(size))  # incompressible: size is known
    return root


def keys(*names: str) -> list[EntryKey]:
    return [EntryKey("dev", name, "working_dir") for name in names]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def cache(target: Any, clock: Clock) -> FileCache:
    return FileCache(target.url, clock=clock, **target.options)


def save_three(cache: FileCache, clock: Clock, tmp_path: Path) -> list[EntryKey]:
    """a (T0, 30 kB), b (T0+1h, 20 kB), c (T0+2h, 10 kB); a restored at T0+3h."""
    a, b, c = keys("a", "b", "c")
    for i, (key, size) in enumerate(((a, 30_000), (b, 20_000), (c, 10_000))):
        clock.now = T0 + timedelta(hours=i)
        assert cache.save(key, workdir(tmp_path / key.flow, size), ["deps/**"]).saved
    clock.now = T0 + timedelta(hours=3)
    assert cache.restore(a, tmp_path / "restored", None).hit
    return [a, b, c]


def names(cache: FileCache) -> list[str]:
    return [entry.key.flow for entry in cache.entries()]


def test_size_cap_evicts_the_least_recently_restored(
    cache: FileCache, clock: Clock, tmp_path: Path
) -> None:
    a, b, c = save_three(cache, clock, tmp_path)
    sizes = {e.key.flow: e.size for e in cache.entries()}
    total = sum(sizes.values())

    dry = prune(cache, max_bytes=total - 1, dry_run=True)
    assert dry.evicted == [b.name] and names(cache) == ["a", "b", "c"]  # dry run: nothing gone

    report = prune(cache, max_bytes=total - 1)
    # b is the oldest never-restored entry; a was created first but restored last
    assert report.evicted == [b.name]
    assert names(cache) == ["a", "c"]
    assert report.kept_bytes == sizes["a"] + sizes["c"] <= total - 1
    assert report.freed_bytes == sizes["b"]
    assert not [n for n in cache.storage.list() if n.startswith(b.name + "/")]

    report = prune(cache, max_bytes=sizes["a"])
    assert report.evicted == [c.name] and names(cache) == ["a"]
    assert cache.restore(a, tmp_path / "again", None).hit  # what is kept still restores


def test_max_age_removes_old_entries_and_keeps_young_ones(
    cache: FileCache, clock: Clock, tmp_path: Path
) -> None:
    save_three(cache, clock, tmp_path)
    clock.now = T0 + timedelta(hours=4)
    report = prune(cache, max_age=timedelta(hours=3))
    assert report.expired == ["dev/a/working_dir", "dev/b/working_dir"]
    assert names(cache) == ["c"]


def test_orphaned_archives_go_after_the_grace_period(
    cache: FileCache, clock: Clock, tmp_path: Path
) -> None:
    (a,) = keys("a")
    assert cache.save(a, workdir(tmp_path / "a", 1000), ["deps/**"]).saved

    def write(handle: Any) -> None:
        handle.write(b"left behind by a crashed save")

    old = f"{a.name}/archive-20240501T090000-0123456789abcdef.tar.zst"
    young = f"{a.name}/archive-20240501T115900-fedcba9876543210.tar.zst"
    lonely = "dev/gone/working_dir/archive-20240430T000000-00000000000000aa.tar.zst"
    for name in (old, young, lonely):
        cache.storage.publish(name, write)

    report = prune(cache, grace=timedelta(hours=1))
    assert sorted(report.orphans) == sorted([old, lonely])
    left = cache.storage.list()
    assert young in left and old not in left and lonely not in left
    assert names(cache) == ["a"] and cache.restore(a, tmp_path / "r", None).hit


def test_an_entry_naming_a_missing_archive_is_removed(cache: FileCache, tmp_path: Path) -> None:
    (a,) = keys("a")
    assert cache.save(a, workdir(tmp_path / "a", 1000), ["deps/**"]).saved
    entry = cache.show(a)
    assert entry is not None
    cache.storage.delete(f"{entry.name}/{entry.archive}")
    report = prune(cache)
    assert report.corrupt == [a.name] and cache.entries() == []


def test_cli_prune_lists_and_prefixes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    storage = tmp_path / "storage"
    cache = FileCache(str(storage))
    for key, size in zip(
        [EntryKey("dev", "offline_node", "wd"), EntryKey("dev", "online", "wd")],
        (5000, 6000),
        strict=True,
    ):
        assert cache.save(key, workdir(tmp_path / key.flow, size), ["deps/**"]).saved

    assert main(["cache", "list", "dev/offline", "--storage", str(storage), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [e["flow"] for e in listed] == ["offline_node"]

    assert main(["cache", "prune", "--storage", str(storage), "--max-size", "1B", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert len(report["evicted"]) == 2 and FileCache(str(storage)).entries() == []

    assert main(["cache", "prune", "--storage", str(storage), "--max-size", "10XB"]) == 2
    err = capsys.readouterr().err
    assert "--max-size '10XB' is not a size" in err and len(err.strip().splitlines()) == 1


def test_deleting_an_entry_removes_its_restore_markers(
    cache: FileCache, clock: Clock, tmp_path: Path
) -> None:
    a, _, _ = save_three(cache, clock, tmp_path)  # a was restored: it has a marker
    (entry,) = [e for e in cache.entries() if e.key == a]
    folder = entry.name.rsplit("/", 1)[0] if entry.name.endswith("entry.json") else entry.name
    before = cache.storage.list(folder)
    assert any("/restored-" in n for n in before)
    assert cache.delete_name(entry.name)
    assert cache.storage.list(folder) == []
