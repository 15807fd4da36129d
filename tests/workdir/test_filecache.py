"""Cache entries: restore/save round trips, ttl from the current spec, corruption, races."""

from __future__ import annotations

import json
import multiprocessing
import os
import stat
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from workflow_cache.duration import to_timedelta
from workflow_cache.workdir.filecache import CacheRestoreWarning, EntryKey, FileCache
from workflow_cache.workdir.patterns import PatternError

# ``target`` (conftest) is a local folder or an S3 prefix on moto: .kind, .url, .options

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
KEY = EntryKey("dev", "python_cached_dependencies", "working_dir")


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def cache(target: Any, clock: Clock) -> FileCache:
    return FileCache(target.url, clock=clock, **target.options)


def make_workdir(root: Path) -> Path:
    """What a run leaves behind: a venv to cache, plus files that are not cached."""
    (root / "venv/bin").mkdir(parents=True)
    (root / "venv/lib").mkdir()
    (root / "venv/lib/pandas.py").write_text("__version__ = '2.2'\n")
    tool = root / "venv/bin/activate"
    tool.write_text("#!/bin/sh\necho activated\n")
    tool.chmod(0o755)
    (root / "venv/bin/python").symlink_to("/usr/bin/python3")
    (root / "main.py").write_text("print('not cached')\n")
    return root


def files_of(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))


def test_save_then_restore(cache: FileCache, tmp_path: Path) -> None:
    run1 = make_workdir(tmp_path / "run1")
    assert cache.restore(KEY, tmp_path / "empty", to_timedelta("PT24H")).reason == "missing"

    saved = cache.save(KEY, run1, ["venv/**"])
    assert (saved.saved, saved.reason, saved.files) == (True, "saved", 3)
    assert saved.bytes == len("__version__ = '2.2'\n") + len("#!/bin/sh\necho activated\n")

    run2 = tmp_path / "run2"
    run2.mkdir()
    restored = cache.restore(KEY, run2, to_timedelta("PT24H"))
    assert (restored.hit, restored.reason, restored.files) == (True, "restored", 3)
    assert restored.created_at == T0
    assert files_of(run2) == [p for p in files_of(run1) if p.startswith("venv")]
    assert os.readlink(run2 / "venv/bin/python") == "/usr/bin/python3"
    assert stat.S_IMODE((run2 / "venv/bin/activate").stat().st_mode) == 0o755

    again = cache.save(KEY, run2, ["venv/**"])
    assert (again.saved, again.reason) == (False, "already saved")


def test_entries_show_and_delete(cache: FileCache, tmp_path: Path) -> None:
    root = make_workdir(tmp_path / "w")
    other = EntryKey("dev", "node_cached_dependencies", "working_dir")
    elsewhere = EntryKey("prod.team", "flow", "task")
    for key in (KEY, other, elsewhere):
        cache.save(key, root, ["venv/**"])

    names = [e.name for e in cache.entries()]
    assert names == sorted(names) and len(names) == 3
    assert [e.key for e in cache.entries("dev")] == sorted([KEY, other], key=lambda k: k.name)
    assert cache.entries("de") == cache.entries("dev")  # names that start with the prefix
    assert [e.key for e in cache.entries("dev/node")] == [other]
    assert cache.entries("dev/") == cache.entries("dev") and cache.entries("pro/") == []
    info = cache.show(KEY)
    assert info is not None
    assert (info.key, info.created_at, info.files, info.patterns) == (KEY, T0, 3, ["venv/**"])
    assert info.size == cache.storage.info(f"{info.name}/{info.archive}")["size"]
    assert cache.show(info.name) == info
    assert cache.show(EntryKey("no", "such", "entry")) is None

    assert cache.delete(KEY) is True
    assert cache.delete(KEY) is False
    assert cache.show(KEY) is None
    assert cache.delete_prefix("dev") == 1
    assert cache.clear() == 1
    assert cache.entries() == []
    assert cache.storage.list() == []


def test_nothing_matched_saves_nothing(cache: FileCache, tmp_path: Path) -> None:
    root = make_workdir(tmp_path / "w")
    result = cache.save(KEY, root, ["node_modules/**"])
    assert (result.saved, result.reason, result.files) == (False, "nothing matched", 0)
    assert cache.entries() == []


def test_bad_patterns_are_errors(cache: FileCache, tmp_path: Path) -> None:
    with pytest.raises(PatternError, match=r"'\.\./secrets/\*\*'"):
        cache.save(KEY, make_workdir(tmp_path / "w"), ["venv/**", "../secrets/**"])


# --- ttl ----------------------------------------------------------------------------------


def test_entry_expires_after_ttl(cache: FileCache, clock: Clock, tmp_path: Path) -> None:
    root = make_workdir(tmp_path / "w")
    cache.save(KEY, root, ["venv/**"])
    ttl = to_timedelta("PT1H")

    clock.advance(minutes=59)
    assert cache.restore(KEY, tmp_path / "a", ttl).hit

    clock.advance(minutes=1)
    expired = cache.restore(KEY, tmp_path / "b", ttl)
    assert (expired.hit, expired.reason, expired.created_at) == (False, "expired", T0)
    assert not (tmp_path / "b").exists() or files_of(tmp_path / "b") == []
    assert cache.show(KEY) is None  # the expired entry is gone...

    (root / "venv/lib/pandas.py").write_text("__version__ = '3.0'\n")
    fresh = cache.save(KEY, root, ["venv/**"])
    assert (fresh.saved, fresh.reason) == (True, "saved")  # ...so a new one is saved
    restored = cache.restore(KEY, tmp_path / "c", ttl)
    assert restored.hit and restored.created_at == clock.now
    assert (tmp_path / "c/venv/lib/pandas.py").read_text() == "__version__ = '3.0'\n"
    objects = [n for n in cache.storage.list() if "/restored-" not in n]  # restore markers
    assert len(objects) == 2  # one pointer, one archive


def test_ttl_comes_from_the_current_spec(cache: FileCache, clock: Clock, tmp_path: Path) -> None:
    """Raising the ttl keeps an entry longer; lowering it expires the entry sooner."""
    cache.save(KEY, make_workdir(tmp_path / "w"), ["venv/**"])
    clock.advance(hours=3)
    assert cache.restore(KEY, tmp_path / "a", to_timedelta("PT5H")).hit  # raised from PT1H
    assert cache.restore(KEY, tmp_path / "b", to_timedelta("PT1H")).reason == "expired"


def test_no_ttl_never_expires(cache: FileCache, clock: Clock, tmp_path: Path) -> None:
    cache.save(KEY, make_workdir(tmp_path / "w"), ["venv/**"])
    clock.advance(days=3650)
    assert cache.restore(KEY, tmp_path / "a", None).hit


def test_naive_clock_means_utc(target: Any, tmp_path: Path) -> None:
    cache = FileCache(target.url, clock=lambda: datetime(2024, 1, 1), **target.options)
    cache.save(KEY, make_workdir(tmp_path / "w"), ["venv/**"])
    info = cache.show(KEY)
    assert info is not None and info.created_at == datetime(2024, 1, 1, tzinfo=UTC)


# --- content keys -----------------------------------------------------------------------


def test_content_key_from_lock_files(cache: FileCache, tmp_path: Path) -> None:
    root = make_workdir(tmp_path / "w")
    (root / "package-lock.json").write_text('{"colors": "1.4.0"}')
    key1 = KEY.with_files(root, ["package-lock.json"])
    assert key1.content and len(key1.content) == 64
    assert KEY.with_files(root, ["package-lock.json"]) == key1
    cache.save(key1, root, ["venv/**"])

    (root / "package-lock.json").write_text('{"colors": "1.4.1"}')
    key2 = KEY.with_files(root, ["package-lock.json"])
    assert key2 != key1
    assert cache.restore(key2, tmp_path / "a", None).reason == "missing"
    cache.save(key2, root, ["venv/**"])
    cache.save(KEY, root, ["venv/**"])
    assert len(cache.entries("dev/python_cached_dependencies/working_dir")) == 3
    assert cache.delete(KEY) is True  # only the entry without content
    assert {e.key for e in cache.entries()} == {key1, key2}

    with pytest.raises(FileNotFoundError, match=r"yarn\.lock"):
        KEY.with_files(root, ["yarn.lock"])
    with pytest.raises(ValueError, match="inside"):
        KEY.with_files(root, ["../package-lock.json"])


@pytest.mark.parametrize("field", ["namespace", "flow", "task"])
def test_key_fields_are_checked(field: str) -> None:
    values: dict[str, Any] = {"namespace": "dev", "flow": "f", "task": "t", field: ""}
    with pytest.raises(ValueError, match=field):
        EntryKey(**values)


def test_odd_key_names_stay_inside_storage(cache: FileCache, tmp_path: Path) -> None:
    key = EntryKey("..", "a/b", ".hidden", content="x/../y")
    cache.save(key, make_workdir(tmp_path / "w"), ["venv/**"])
    assert cache.restore(key, tmp_path / "r", None).hit
    assert [e.key for e in cache.entries()] == [key]


# --- failures are misses ------------------------------------------------------------------


def damage(cache: FileCache, key: EntryKey, change: Any) -> None:
    """Rewrite the stored archive of ``key`` behind the cache's back."""
    info = cache.show(key)
    assert info is not None
    name = f"{info.name}/{info.archive}"
    with cache.storage.open_read(name) as handle:
        data = handle.read()
    cache.storage.fs.pipe_file(f"{cache.storage.root}/{name}", change(data))


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda d: d[: len(d) // 2], id="truncated"),
        pytest.param(lambda d: d[:100] + bytes(50) + d[150:], id="corrupt"),
        pytest.param(lambda d: b"", id="empty"),
    ],
)
def test_damaged_archive_is_a_miss(cache: FileCache, tmp_path: Path, change: Any) -> None:
    root = make_workdir(tmp_path / "w")
    for i in range(20):
        (root / f"venv/lib/m{i}.py").write_bytes(os.urandom(4000))
    cache.save(KEY, root, ["venv/**"])
    damage(cache, KEY, change)
    target = tmp_path / "r"
    target.mkdir()
    (target / "input.txt").write_text("mine")

    with pytest.warns(CacheRestoreWarning, match="corrupt"):
        result = cache.restore(KEY, target, None)
    assert (result.hit, result.reason) == (False, "corrupt")
    assert files_of(target) == ["input.txt"]  # no partial files
    assert cache.show(KEY) is None  # removed, so the next save replaces it
    assert cache.save(KEY, root, ["venv/**"]).reason == "saved"
    assert cache.restore(KEY, target, None).hit


def test_missing_archive_is_a_miss(cache: FileCache, tmp_path: Path) -> None:
    cache.save(KEY, make_workdir(tmp_path / "w"), ["venv/**"])
    info = cache.show(KEY)
    assert info is not None
    cache.storage.delete(f"{info.name}/{info.archive}")
    with pytest.warns(CacheRestoreWarning):
        assert cache.restore(KEY, tmp_path / "r", None).reason == "corrupt"
    assert cache.show(KEY) is None


def test_unreadable_metadata_is_a_miss(cache: FileCache, tmp_path: Path) -> None:
    root = make_workdir(tmp_path / "w")
    pointer = f"{cache.storage.root}/{KEY.name}/entry.json"
    for bad in (b"{not json", json.dumps({"v": 99}).encode()):
        cache.save(KEY, root, ["venv/**"])
        cache.storage.fs.pipe_file(pointer, bad)
        with pytest.warns(CacheRestoreWarning, match="metadata"):
            assert cache.restore(KEY, tmp_path / "r", None).reason == "corrupt"
        assert cache.storage.list() == []


# --- progress and races -------------------------------------------------------------------


def test_progress_reports_bytes(target: Any, tmp_path: Path) -> None:
    calls: list[tuple[str, int | None]] = []
    seen: dict[str, int] = {}

    def factory(label: str, total: int | None) -> Any:
        calls.append((label, total))
        seen[label] = 0

        def advance(n: int) -> None:
            seen[label] += n

        return advance

    cache = FileCache(target.url, progress_factory=factory, **target.options)
    saved = cache.save(KEY, make_workdir(tmp_path / "w"), ["venv/**"])
    restored = cache.restore(KEY, tmp_path / "r", None)
    name = KEY.name
    assert calls == [(f"save {name}", saved.bytes), (f"restore {name}", saved.bytes)]
    assert seen == {f"save {name}": saved.bytes, f"restore {name}": restored.bytes}


def test_concurrent_saves_leave_one_entry(cache: FileCache, tmp_path: Path) -> None:
    roots = []
    for i in range(6):
        root = make_workdir(tmp_path / f"w{i}")
        (root / "venv/lib/who.txt").write_text(f"saver {i}\n" + "x" * 100_000)
        roots.append(root)
    barrier = threading.Barrier(len(roots))
    results: list[Any] = [None] * len(roots)

    def save(i: int) -> None:
        barrier.wait()
        results[i] = cache.save(KEY, roots[i], ["venv/**"])

    threads = [threading.Thread(target=save, args=(i,)) for i in range(len(roots))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    reasons = sorted(r.reason for r in results)
    assert reasons.count("saved") == 1
    assert set(reasons) <= {"saved", "already saved"}
    assert len(cache.storage.list()) == 2  # one pointer and its archive, losers cleaned up
    assert cache.restore(KEY, tmp_path / "r", None).hit
    winner = next(i for i, r in enumerate(results) if r.saved)
    assert (tmp_path / "r/venv/lib/who.txt").read_text().startswith(f"saver {winner}\n")


def _save_in_process(url: str, root: str, start: Any, queue: Any) -> None:
    start.wait()
    queue.put(FileCache(url).save(KEY, Path(root), ["venv/**"]).reason)


def test_concurrent_saves_from_processes(tmp_path: Path) -> None:
    url = str(tmp_path / "storage")
    context = multiprocessing.get_context("spawn")
    start, queue = context.Event(), context.Queue()
    roots = [make_workdir(tmp_path / f"w{i}") for i in range(4)]
    procs = [
        context.Process(target=_save_in_process, args=(url, str(r), start, queue)) for r in roots
    ]
    for proc in procs:
        proc.start()
    start.set()
    for proc in procs:
        proc.join(60)
        assert proc.exitcode == 0
    reasons = sorted(queue.get(timeout=5) for _ in procs)
    assert reasons.count("saved") == 1
    cache = FileCache(url)
    assert len(cache.storage.list()) == 2
    assert cache.restore(KEY, tmp_path / "r", None).hit


def test_default_storage_is_the_local_files_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WORKFLOW_CACHE_HOME", str(tmp_path / "home"))
    cache = FileCache()
    cache.save(KEY, make_workdir(tmp_path / "w"), ["venv/**"])
    assert (tmp_path / "home/files" / KEY.name / "entry.json").is_file()
