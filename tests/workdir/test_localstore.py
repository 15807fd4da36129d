"""The worker-local store: restores by link from unpacked entries, checked like archives."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from tests.workdir.flowkit import run_text
from workflow_cache.workdir.entrykey import EntryKey
from workflow_cache.workdir.filecache import FileCache
from workflow_cache.workdir.localstore import LocalStore
from workflow_cache.workdir.restored import relocate_from, take_origin

KEY = EntryKey("dev", "flow", "task")
OTHER = EntryKey("dev", "flow", "other")
STORE_LOG = "workflow_cache.workdir.localstore"


def make_tree(root: Path, text: str = "one") -> Path:
    """Files, modes, a nested folder, absolute and relative symlinks, a hard link."""
    (root / "venv/bin").mkdir(parents=True)
    (root / "venv/lib/deep/er").mkdir(parents=True)
    (root / "venv/lib/mod.py").write_text(f"VALUE = {text!r}\n")
    (root / "venv/lib/deep/er/data.bin").write_bytes(os.urandom(3000))
    (root / "venv/lib/empty").write_bytes(b"")
    tool = root / "venv/bin/tool"
    tool.write_text("#!/bin/sh\necho tool\n")
    tool.chmod(0o750)
    (root / "venv/bin/python").symlink_to("/usr/bin/python3")
    (root / "venv/bin/python3").symlink_to("python")
    os.link(root / "venv/lib/mod.py", root / "venv/lib/mod_again.py")
    return root


def snapshot(root: Path) -> dict[str, Any]:
    """What a restore decides: kinds, modes, file mtimes, contents, link targets.

    A folder's mtime is left out: ``venv`` itself is no archive member, so a restore
    makes it with the time of the day (the mtimes of member folders are compared
    where it matters).
    """
    found: dict[str, Any] = {}
    for path in sorted(root.rglob("*")):
        info = path.lstat()
        name = path.relative_to(root).as_posix()
        if stat.S_ISLNK(info.st_mode):
            found[name] = ("link", os.readlink(path))
        elif stat.S_ISDIR(info.st_mode):
            found[name] = ("dir", stat.S_IMODE(info.st_mode))
        else:
            content = path.read_bytes()
            found[name] = ("file", stat.S_IMODE(info.st_mode), info.st_mtime_ns, content)
    return found


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "local", 1 << 30)


def cache_with(tmp_path: Path, store: LocalStore | None) -> FileCache:
    return FileCache(str(tmp_path / "storage"), local_store=store)


def saved_entry(
    tmp_path: Path, store: LocalStore | None, key: EntryKey = KEY, text: str = "one"
) -> str:
    """Save a tree under ``key``; returns the archive's digest."""
    source = make_tree(tmp_path / f"source-{key.task}-{text}", text)
    cache = cache_with(tmp_path, store)
    assert cache.save(key, source, ["venv/**"]).saved
    digest = cache.read_entry(key.name).digest
    assert digest is not None
    return digest


def tree_of(store: LocalStore, digest: str) -> Path:
    return store.root / digest.removeprefix("sha256:") / "tree"


def test_a_saved_entry_is_kept_and_restored_as_the_archive_restores_it(
    tmp_path: Path, store: LocalStore
) -> None:
    digest = saved_entry(tmp_path, store)
    assert list(store.entries()) == [digest]

    from_archive = tmp_path / "from-archive"
    assert cache_with(tmp_path, None).restore(KEY, from_archive, None).hit
    from_store = tmp_path / "from-store"
    result = cache_with(tmp_path, store).restore(KEY, from_store, None)

    assert (result.hit, result.reason, result.files) == (True, "restored", 7)
    assert snapshot(from_store) == snapshot(from_archive)
    member = "venv/lib/deep"
    assert (from_store / member).stat().st_mtime_ns == (from_archive / member).stat().st_mtime_ns
    kept = tree_of(store, digest) / "venv/lib/deep/er/data.bin"
    restored = from_store / "venv/lib/deep/er/data.bin"
    reflinks = store.fill(digest, tmp_path / "probe")
    assert reflinks is not None
    if reflinks.reflinked == 0:  # no reflinks on this file system: the file is the store's inode
        assert os.stat(restored).st_ino == os.stat(kept).st_ino
        tool = "venv/bin/tool"  # but a file tools tend to rewrite in place is a copy
        assert os.stat(from_store / tool).st_ino != os.stat(tree_of(store, digest) / tool).st_ino


def test_restores_hit_and_miss_by_archive_digest(tmp_path: Path, store: LocalStore) -> None:
    first = saved_entry(tmp_path, None, KEY, "one")  # saved by another worker
    second = saved_entry(tmp_path, None, OTHER, "two")
    cache = cache_with(tmp_path, store)
    assert store.fill(first, tmp_path / "nothing-yet") is None

    assert cache.restore(KEY, tmp_path / "a", None).hit  # from the archive, kept here
    assert list(store.entries()) == [first]
    assert cache.restore(OTHER, tmp_path / "b", None).hit  # another digest: a miss here
    assert sorted(store.entries()) == sorted([first, second])
    assert (tmp_path / "a/venv/lib/mod.py").read_text() == "VALUE = 'one'\n"
    assert (tmp_path / "b/venv/lib/mod.py").read_text() == "VALUE = 'two'\n"

    # While folder "a" still links to the store's files, no other folder gets them.
    shared = store.fill(first, tmp_path / "c")
    assert shared is not None and (shared.linked, shared.copied) == (0, 5)
    shutil.rmtree(tmp_path / "a")  # as a run removes its folder at the end
    again = store.fill(first, tmp_path / "d")
    assert again is not None
    if again.reflinked == 0:  # venv/bin/tool is copied: tools rewrite such files in place
        assert (again.linked, again.copied) == (4, 1)
    assert (tmp_path / "d/venv/lib/mod.py").read_text() == "VALUE = 'one'\n"


def test_least_recently_used_entries_are_evicted_by_size(tmp_path: Path) -> None:
    sizes = LocalStore(tmp_path / "probe", 1 << 30)
    probe = saved_entry(tmp_path / "p", sizes)
    one_entry = sizes.entries()[probe]
    store = LocalStore(tmp_path / "local", 2 * one_entry + one_entry // 2)  # two fit, not three

    a = saved_entry(tmp_path, store, EntryKey("dev", "flow", "a"))
    b = saved_entry(tmp_path, store, EntryKey("dev", "flow", "b"))
    assert sorted(store.entries()) == sorted([a, b])
    assert store.fill(a, tmp_path / "use-a") is not None  # a is now the more recently used
    c = saved_entry(tmp_path, store, EntryKey("dev", "flow", "c"))

    assert sorted(store.entries()) == sorted([a, c])
    assert store.fill(b, tmp_path / "b-gone") is None


def test_an_entry_larger_than_the_store_is_not_kept(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "local", 100)
    saved_entry(tmp_path, store)
    assert store.entries() == {}
    assert cache_with(tmp_path, store).restore(KEY, tmp_path / "r", None).hit


def _restore_in_process(storage: str, store_root: str, dest: str, barrier: Any) -> None:
    barrier.wait()
    cache = FileCache(storage, local_store=LocalStore(Path(store_root), 1 << 30, wait=60.0))
    result = cache.restore(KEY, Path(dest), None)
    raise SystemExit(0 if result.hit else 1)


def test_two_processes_restoring_the_same_entry_at_once(tmp_path: Path) -> None:
    digest = saved_entry(tmp_path, None)
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(2)
    dests = [tmp_path / "w1", tmp_path / "w2"]
    store_root = tmp_path / "local"
    processes = [
        context.Process(
            target=_restore_in_process,
            args=(str(tmp_path / "storage"), str(store_root), str(dest), barrier),
        )
        for dest in dests
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)
    assert [process.exitcode for process in processes] == [0, 0]

    assert cache_with(tmp_path, None).restore(KEY, tmp_path / "expected", None).hit
    expected = snapshot(tmp_path / "expected")
    for dest in dests:
        assert snapshot(dest) == expected
    store = LocalStore(store_root, 1 << 30)
    assert list(store.entries()) == [digest]
    assert not [name for name in os.listdir(store_root) if name.startswith(".tmp-")]
    for path in ("venv/lib/mod.py", "venv/bin/tool", "venv/lib/deep/er/data.bin"):  # never shared
        assert os.stat(dests[0] / path).st_ino != os.stat(dests[1] / path).st_ino


def test_an_entry_held_past_the_wait_is_restored_from_the_archive(tmp_path: Path) -> None:
    """Another process building or filling from the entry holds its lock: no waiting for it."""
    digest = saved_entry(tmp_path, None)
    store = LocalStore(tmp_path / "local", 1 << 30, wait=0.1)
    store.root.mkdir()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            HOLD_LOCK,
            str(store.root / f"{digest.removeprefix('sha256:')}.lock"),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        result = cache_with(tmp_path, store).restore(KEY, tmp_path / "r", None)
        assert result.hit
        assert store.entries() == {}  # the holder had it: this process did not build it
        assert (tmp_path / "r/venv/lib/mod.py").read_text() == "VALUE = 'one'\n"
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=60)


HOLD_LOCK = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
sys.stdin.read()  # until the test closes it
"""


def _replace_file(tree: Path) -> None:
    target = tree / "venv/lib/mod.py"
    before = target.stat()
    replacement = tree / "venv/lib/.new"
    replacement.write_text("VALUE = 'bad'\n")  # same size as the original
    os.utime(replacement, ns=(before.st_atime_ns, before.st_mtime_ns))
    os.chmod(replacement, stat.S_IMODE(before.st_mode))
    os.replace(replacement, target)


def _file_becomes_symlink(tree: Path) -> None:
    target = tree / "venv/bin/tool"
    target.unlink()
    target.symlink_to("/etc/passwd")


def _symlink_planted(tree: Path) -> None:
    (tree / "venv/lib/planted").symlink_to("/etc/passwd")


def _folder_becomes_symlink(tree: Path) -> None:
    outside = tree.parent.parent.parent / "outside"
    outside.mkdir()
    os.rename(tree / "venv/lib/deep", outside / "deep")
    (tree / "venv/lib/deep").symlink_to(outside / "deep")


def _planted_in_spare_folders(tree: Path) -> None:
    (tree.parent / "spares/first/venv/lib/planted").symlink_to("/etc/passwd")


@pytest.mark.parametrize(
    "tamper",
    [
        _replace_file,
        _file_becomes_symlink,
        _symlink_planted,
        _folder_becomes_symlink,
        _planted_in_spare_folders,
    ],
    ids=[
        "file replaced",
        "file became a symlink",
        "symlink planted",
        "folder became a symlink",
        "symlink planted in the spare folders",
    ],
)
def test_a_tampered_entry_is_not_served(
    tmp_path: Path, store: LocalStore, tamper: Any, caplog: pytest.LogCaptureFixture
) -> None:
    digest = saved_entry(tmp_path, store)
    tamper(tree_of(store, digest))
    expected = snapshot(make_tree(tmp_path / "expected"))

    with caplog.at_level(logging.WARNING, logger=STORE_LOG):
        result = cache_with(tmp_path, store).restore(KEY, tmp_path / "r", None)

    assert result.hit  # from the archive, which was kept again
    got = snapshot(tmp_path / "r")
    assert {k: v[0] for k, v in got.items()} == {k: v[0] for k, v in expected.items()}
    assert (tmp_path / "r/venv/lib/mod.py").read_text() == "VALUE = 'one'\n"
    assert not (tmp_path / "r/venv/lib/planted").exists()
    warnings = [r for r in caplog.records if r.name == STORE_LOG]
    assert len(warnings) == 1 and "not served" in warnings[0].getMessage()
    rebuilt = store.fill(digest, tmp_path / "again")
    assert rebuilt is not None
    assert (tmp_path / "again/venv/lib/mod.py").read_text() == "VALUE = 'one'\n"


def test_a_malformed_manifest_is_not_served(
    tmp_path: Path, store: LocalStore, caplog: pytest.LogCaptureFixture
) -> None:
    digest = saved_entry(tmp_path, store)
    manifest = tree_of(store, digest).parent / "manifest.json"
    manifest.write_text('{"v": 1, "items": "nope"}')
    with caplog.at_level(logging.WARNING, logger=STORE_LOG):
        assert store.fill(digest, tmp_path / "r") is None
    assert len([r for r in caplog.records if r.name == STORE_LOG]) == 1
    assert store.entries() == {}
    assert not (tmp_path / "r/venv").exists()


APPENDING_FLOW = """
id: appending
namespace: dev
tasks:
  - id: wd
    type: io.kestra.plugin.core.flow.WorkingDirectory
    cache:
      patterns: ["data/**"]
    tasks:
      - id: append
        type: io.kestra.plugin.scripts.shell.Commands
        commands:
          - mkdir -p data/logs
          - cat {log} 2>/dev/null || true
          - echo "run" >> {log}
"""


@pytest.mark.parametrize(
    ("log", "drops"),
    [("data/logs/run.log", 1), ("data/run.log", 0)],
    ids=["linked file: learned once", "top-level file: copied from the start"],
)
def test_an_in_place_append_never_reaches_a_later_restore(
    tmp_path: Path, store: LocalStore, caplog: pytest.LogCaptureFixture, log: str, drops: int
) -> None:
    cache = cache_with(tmp_path, store)
    seen = []
    for _ in range(5):
        summary, lines = run_text(APPENDING_FLOW.format(log=log), tmp_path, cache=cache)
        assert summary.ok
        seen.append((summary.task("wd").cache, lines.of("append")))

    # The first run saved one line; every later run starts from exactly that line,
    # although the second one appended to a file it shared with the store.
    assert seen == [("miss", [])] + [("hit", ["run"])] * 4
    dropped = [r for r in caplog.records if r.name == STORE_LOG]
    # at most once: from then on the store copies that file (none when the store had
    # copied it already, as it does for a file another folder still links to)
    assert len(dropped) <= drops
    digest = cache.read_entry(EntryKey("dev", "appending", "wd").name).digest
    assert digest is not None
    kept = tree_of(store, digest) / log
    assert kept.read_text() == "run\n"


def test_relocation_replaces_files_instead_of_writing_into_the_store(
    tmp_path: Path, store: LocalStore
) -> None:
    source = make_tree(tmp_path / "source")
    (source / "venv/bin/activate").write_text(f"VIRTUAL_ENV={source}/venv\n")
    (source / ".workflow-cache").mkdir()
    (source / ".workflow-cache/origin").write_text(str(source))
    cache = cache_with(tmp_path, store)
    assert cache.save(KEY, source, ["venv/**", ".workflow-cache/origin"]).saved
    digest = cache.read_entry(KEY.name).digest
    assert digest is not None

    run = tmp_path / "run"
    assert cache.restore(KEY, run, None).hit
    assert relocate_from(run, take_origin(run)) == 1

    assert (run / "venv/bin/activate").read_text() == f"VIRTUAL_ENV={run}/venv\n"
    kept = tree_of(store, digest) / "venv/bin/activate"
    assert kept.read_text() == f"VIRTUAL_ENV={source}/venv\n"
    assert (tree_of(store, digest) / ".workflow-cache/origin").read_text() == str(source)
    assert store.fill(digest, tmp_path / "later") is not None  # still intact


FULL_DISK = """
import json, resource, signal, sys
from pathlib import Path
from workflow_cache.workdir.filecache import FileCache
from workflow_cache.workdir.entrykey import EntryKey
from workflow_cache.workdir.localstore import LocalStore

storage, store_root, dest, limit = sys.argv[1:5]
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (int(limit), int(limit)))
store = LocalStore(Path(store_root), 1 << 30)
cache = FileCache(storage, local_store=store)
result = cache.restore(EntryKey("dev", "flow", "task"), Path(dest), None)
print(json.dumps({"hit": result.hit, "reason": result.reason, "files": result.files,
                  "kept": list(store.entries())}))
"""


def test_a_full_disk_while_keeping_a_copy_falls_back_to_the_archive(tmp_path: Path) -> None:
    """The store's writes fail while the restore's own writes fit.

    No test may mount a small file system, so the disk "fills" through
    RLIMIT_FSIZE in a subprocess: every file is below the limit except the
    store's manifest, which names 400 entries. Writing it fails (EFBIG) the way
    a full disk fails (ENOSPC): an ``OSError`` from a write while the store is
    being populated.
    """
    source = tmp_path / "source"
    (source / "many").mkdir(parents=True)
    for index in range(400):
        (source / f"many/file-{index:03}.txt").write_text(f"{index}\n")
    assert cache_with(tmp_path, None).save(KEY, source, ["many/**"]).saved
    store_root = tmp_path / "local"

    arguments = [str(tmp_path / "storage"), str(store_root), str(tmp_path / "r"), "8192"]
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(FULL_DISK), *arguments],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert done.returncode == 0, done.stderr
    outcome = json.loads(done.stdout)
    assert outcome == {"hit": True, "reason": "restored", "files": 400, "kept": []}
    assert "cannot keep a local copy" in done.stderr
    assert (tmp_path / "r/many/file-399.txt").read_text() == "399\n"
    assert not [name for name in os.listdir(store_root) if name.startswith(".tmp-")]


def test_the_store_is_off_when_its_size_setting_is_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    from workflow_cache import settings

    monkeypatch.setenv("WORKFLOW_CACHE_LOCAL_STORE_BYTES", "0")
    settings.forget()
    assert LocalStore.configured() is None
    monkeypatch.setenv("WORKFLOW_CACHE_LOCAL_STORE_BYTES", "1000")
    settings.forget()
    configured = LocalStore.configured()
    assert configured is not None and configured.max_bytes == 1000
    assert configured.root == settings.current().home / "local"
