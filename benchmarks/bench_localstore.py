"""A restore from the worker-local store against ``tar -I zstd -x`` of the same archive.

    python benchmarks/bench_localstore.py [--rounds 5] [--tree DIR] [--work DIR]

The tree is a venv with pandas installed (``--tree``, default
/work/bench-data/venv-pandas, made with ``python -m venv`` and ``pip install
pandas`` when missing). It is saved once as a cache entry, which also keeps it
unpacked in a local store; all of it lives in ``--work`` (default
/work/bench-data/localstore), which must be a real disk, not tmpfs.

Each round, in an order that alternates, times into a fresh folder:

* ``tar -I zstd -xf`` of the entry's archive (the baseline);
* ``FileCache.restore`` served by the local store (links), with the spare
  folders the store makes ahead on a thread (joined before the next timing);
* the same with the spare folders removed first: every folder made by ``mkdir``;
* ``FileCache.restore`` from the archive, without a local store.

Each folder is removed and ``sync`` run before the next timing, so no write of
one timing is pending during another, and each timing starts once the disk has
had no request in flight for half a second (or after 30 s: other jobs share
it). Prints per-round times and the median ratio to tar.
Target: the local-store restore at most 0.2x the tar extraction.
"""

from __future__ import annotations

import argparse
import os
import shutil
import stat
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from workflow_cache.workdir.entrykey import EntryKey
from workflow_cache.workdir.filecache import FileCache
from workflow_cache.workdir.localstore import LocalStore

KEY = EntryKey("bench", "localstore", "venv")
DEVICE: Path | None = None


def file_system(path: Path) -> str:
    done = subprocess.run(
        ["stat", "-f", "-c", "%T", str(path)], capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


def build_tree(tree: Path) -> None:
    print(f"building {tree}: python -m venv + pip install pandas", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(tree)], check=True)
    subprocess.run([str(tree / "bin/pip"), "install", "-q", "pandas"], check=True)


def count(tree: Path) -> tuple[int, int]:
    files = size = 0
    for dirpath, _, names in os.walk(tree):
        for name in names:
            info = os.lstat(os.path.join(dirpath, name))
            files += 1
            size += info.st_size if stat.S_ISREG(info.st_mode) else 0
    return files, size


def settle(device: Path | None, quiet: float = 0.5, longest: float = 30.0) -> None:
    """Wait until the disk has had no request in flight for ``quiet`` seconds (or ``longest``).

    Removing a tree makes the file system discard its blocks for a while after
    ``sync``; a timing started then measures that, not the restore.
    """
    if device is None:
        return
    deadline = time.monotonic() + longest
    idle_since = time.monotonic()
    while time.monotonic() < deadline:
        if any(int(n) for n in (device / "inflight").read_text().split()):
            idle_since = time.monotonic()
        elif time.monotonic() - idle_since >= quiet:
            return
        time.sleep(0.02)


def block_device(path: Path) -> Path | None:
    info = os.stat(path)
    device = Path(f"/sys/dev/block/{os.major(info.st_dev)}:{os.minor(info.st_dev)}")
    return device if (device / "inflight").exists() else None


def timed(action: Callable[[Path], object], dest: Path) -> float:
    settle(DEVICE)
    started = time.perf_counter()
    action(dest)
    elapsed = time.perf_counter() - started
    for thread in threading.enumerate():  # spare folders for the next fill, made meanwhile
        if thread.name == "wfc-local-spare":
            thread.join()
    shutil.rmtree(dest)
    subprocess.run(["sync"], check=True)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tree", type=Path, default=Path("/work/bench-data/venv-pandas"))
    parser.add_argument("--work", type=Path, default=Path("/work/bench-data/localstore"))
    args = parser.parse_args()
    if not args.tree.is_dir():
        build_tree(args.tree)
    kind = file_system(args.tree.parent)
    if kind == "tmpfs":
        raise SystemExit(f"{args.work} is on tmpfs; give --work on a real disk")
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    global DEVICE
    DEVICE = block_device(args.work)
    store = LocalStore(args.work / "local", 20 << 30)
    with_store = FileCache(str(args.work / "storage"), local_store=store)
    without = FileCache(str(args.work / "storage"), local_store=False)

    source = args.work / "source"
    source.mkdir()
    shutil.copytree(args.tree, source / "venv", symlinks=True)
    files, size = count(source / "venv")
    saved = with_store.save(KEY, source, ["venv/**"])
    assert saved.saved and list(store.entries()), "the save did not keep a local copy"
    shutil.rmtree(source)
    entry = with_store.read_entry(KEY.name)
    assert entry.digest is not None
    entry_dir = entry.digest.removeprefix("sha256:")
    archive = args.work / "storage" / entry.name / entry.archive
    print(
        f"tree: {files:,} files, {size / 1e6:.0f} MB; archive {entry.size / 1e6:.0f} MB; "
        f"file system: {kind}; 2 cores shared with other jobs"
    )

    def tar(dest: Path) -> None:
        dest.mkdir()
        subprocess.run(["tar", "-I", "zstd", "-xf", str(archive), "-C", str(dest)], check=True)

    def local(dest: Path) -> None:
        assert with_store.restore(KEY, dest, None).hit

    def local_no_spare(dest: Path) -> None:
        shutil.rmtree(args.work / "local" / entry_dir / "spares", ignore_errors=True)
        local(dest)

    def from_archive(dest: Path) -> None:
        assert without.restore(KEY, dest, None).hit

    rows = []
    order = [
        ("tar", tar),
        ("local store", local),
        ("no spare", local_no_spare),
        ("archive", from_archive),
    ]
    for index in range(args.rounds):
        turn = order if index % 2 == 0 else order[::-1]
        times = {name: timed(action, args.work / f"dest-{name}") for name, action in turn}
        rows.append(times)
        print(
            f"round {index + 1}: tar {times['tar']:.2f} s   local store "
            f"{times['local store']:.3f} s ({times['local store'] / times['tar']:.3f}x)   "
            f"without spare folders {times['no spare']:.3f} s "
            f"({times['no spare'] / times['tar']:.3f}x)   "
            f"archive restore {times['archive']:.2f} s ({times['archive'] / times['tar']:.2f}x)",
            flush=True,
        )
    local_ratio = statistics.median(r["local store"] / r["tar"] for r in rows)
    bare_ratio = statistics.median(r["no spare"] / r["tar"] for r in rows)
    archive_ratio = statistics.median(r["archive"] / r["tar"] for r in rows)
    print(
        f"median over {args.rounds} rounds: tar {statistics.median(r['tar'] for r in rows):.2f} s,"
        f" local store {statistics.median(r['local store'] for r in rows):.3f} s,"
        f" archive restore {statistics.median(r['archive'] for r in rows):.2f} s"
    )
    print(f"local store / tar    {local_ratio:.3f}x   (target <= 0.2)")
    print(f"local store without spare folders / tar {bare_ratio:.3f}x")
    print(f"archive restore / tar {archive_ratio:.2f}x")
    shutil.rmtree(args.work, ignore_errors=True)


if __name__ == "__main__":
    main()
