"""LocalCache's lock files exist only while a key runs, and removing them keeps single flight.

Real processes race on one key while another removes every lock file nobody
holds; each round must still run the key exactly once, no two holders may
overlap, and the folder must end with no lock files.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import time
from multiprocessing.synchronize import Barrier, Event
from pathlib import Path

from tests.flocks import wait_for_waiters
from workflow_cache import LocalCache, create_workflow, ok
from workflow_cache.cache.filelocks import KeyLock, KeyLocks
from workflow_cache.envelope import Envelope

ROOT = Path(__file__).resolve().parent.parent
KEY = "hot"
CONTENDERS = 5
ROUNDS = 100


def lock_files(directory: Path) -> list[str]:
    return sorted(os.listdir(directory / "locks"))


def note(log: Path, line: str) -> None:
    """One line appended in one write: lines of racing processes never mix."""
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{line}\n".encode())
    finally:
        os.close(fd)


def contender(directory: Path, log: Path, barrier: Barrier, first: bool) -> None:
    """Runs every round of KEY: as holder it logs enter/exit around a little work, and in
    odd rounds the round's first holder releases without an outcome."""
    cache = LocalCache(directory)
    pid = os.getpid()
    for round_ in range(ROUNDS):
        barrier.wait()
        got = cache.acquire(KEY)
        if isinstance(got, KeyLock):
            note(log, f"enter {round_} {pid}")
            time.sleep(0.002)  # the work: long enough for a second holder to overlap
            released = directory / f"released-{round_}"
            if round_ % 2 and not released.exists():
                released.touch()
                note(log, f"exit {round_} {pid} released")
                got.release()
            else:
                note(log, f"exit {round_} {pid} ran")
                got.commit(Envelope.from_result(KEY, ok(round_), ttl=None), keep=True)
        barrier.wait()
        if first:
            cache.delete(KEY)  # the next round runs the key again
        barrier.wait()
    cache.close()


def sweeper(directory: Path, stop: Event) -> None:
    """Removes every lock file nobody holds, as fast as it can, until told to stop."""
    locks = KeyLocks(directory)
    while not stop.is_set():
        locks.sweep()


def test_racing_processes_and_a_sweeper_keep_one_holder_and_leave_no_files(
    tmp_path: Path,
) -> None:
    directory, log = tmp_path / "cache", tmp_path / "holds"
    LocalCache(directory).close()
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(CONTENDERS, timeout=120)  # a crashed racer breaks it
    stop = context.Event()
    clean = context.Process(target=sweeper, args=(directory, stop))
    racers = [
        context.Process(target=contender, args=(directory, log, barrier, i == 0))
        for i in range(CONTENDERS)
    ]
    clean.start()
    for racer in racers:
        racer.start()
    try:
        for racer in racers:
            racer.join(300)
            assert racer.exitcode == 0
    finally:
        stop.set()
        clean.join(60)
        for process in [*racers, clean]:
            if process.is_alive():
                process.kill()
    lines = [line.split() for line in log.read_text().splitlines()]
    # No overlap: every enter is followed by the exit of the same process and round.
    assert len(lines) % 2 == 0
    for enter, exit_ in zip(lines[::2], lines[1::2], strict=True):
        assert enter[0] == "enter" and exit_[0] == "exit", (enter, exit_)
        assert enter[1:3] == exit_[1:3], (enter, exit_)
    ran = [exit_[1] for exit_ in lines[1::2] if exit_[3] == "ran"]
    released = [exit_[1] for exit_ in lines[1::2] if exit_[3] == "released"]
    assert sorted(ran, key=int) == [str(r) for r in range(ROUNDS)]  # once per round
    assert sorted(released, key=int) == [str(r) for r in range(1, ROUNDS, 2)]
    assert lock_files(directory) == []


def test_two_hundred_stored_keys_leave_no_lock_files(tmp_path: Path) -> None:
    cache = LocalCache(tmp_path)
    workflow = create_workflow(cache=cache)
    values = workflow(lambda step: [step(lambda i=i: i, key=f"k{i}") for i in range(200)]).value
    assert values == list(range(200))
    assert len(cache.keys()) == 200
    assert lock_files(tmp_path) == []


HOLDER = r"""
import sys, time
from workflow_cache import LocalCache
cache = LocalCache(sys.argv[1])
claims = [cache.acquire(key) for key in sys.argv[2:]]
print("HELD", flush=True)
time.sleep(120)
"""


def child(script: str, *args: str) -> subprocess.Popen[str]:
    """``script`` run by a Python process of its own, importing this checkout."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-c", script, *args]
    return subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)


def hold(directory: Path, *keys: str) -> subprocess.Popen[str]:
    """A process holding the locks of ``keys`` until it is killed."""
    proc = child(HOLDER, str(directory), *keys)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "HELD"
    return proc


def kill(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)


def test_delete_and_clear_remove_the_lock_files_a_killed_holder_left(tmp_path: Path) -> None:
    cache = LocalCache(tmp_path)
    kill(hold(tmp_path, "a", "b", "c"))
    assert len(lock_files(tmp_path)) == 3  # the kernel dropped the locks, not the files
    cache.set("a", 1)
    assert cache.delete("a")
    assert lock_files(tmp_path) == sorted(KeyLocks(tmp_path).path(k).name for k in "bc")
    cache.set("b", 2)
    assert cache.clear() == 1
    assert lock_files(tmp_path) == []
    assert cache.keys() == []


def test_a_held_lock_file_stays_until_its_holder_is_done(tmp_path: Path) -> None:
    cache = LocalCache(tmp_path)
    lock = KeyLocks(tmp_path).path("busy")
    holder = hold(tmp_path, "busy")
    try:
        cache.delete("busy")
        cache.clear()
        assert lock.exists()  # removing it now would let a second process run the key
    finally:
        kill(holder)
    assert cache.delete("busy") is False  # no outcome, but the file left behind goes
    assert not lock.exists()


WAITER = r"""
import sys
from workflow_cache import LocalCache, create_workflow
workflow = create_workflow(cache=LocalCache(sys.argv[1]))
print(workflow(lambda step: step(lambda: "waiter", key="k")).value)
"""


def test_a_waiter_on_a_removed_file_runs_the_key_once(tmp_path: Path) -> None:
    """A waiter blocked on a file its holder removes starts again on the path's new file."""
    cache = LocalCache(tmp_path)
    lock = KeyLocks(tmp_path).path("k")
    claim = cache.acquire("k")
    assert isinstance(claim, KeyLock) and lock.exists()
    waiter = child(WAITER, str(tmp_path))
    try:
        assert waiter.pid in wait_for_waiters(lock, 1)
        claim.release()  # no outcome: the file goes, and the waiter must run the key
        out, _ = waiter.communicate(timeout=120)
    finally:
        if waiter.poll() is None:
            waiter.kill()
    assert out.strip() == "waiter"
    assert cache.get("k") == ok("waiter")
    assert lock_files(tmp_path) == []
