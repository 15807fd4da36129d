"""LocalCache runs a key once across the processes of one machine, with real processes.

Nothing here sleeps to let another process get somewhere: a process blocked on a
key's lock is seen in the kernel's lock table (:mod:`tests.flocks`).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from tests.flocks import wait_for_waiters
from workflow_cache import LocalCache, create_workflow, err, ok
from workflow_cache.cache.filelocks import KeyLocks

ROOT = Path(__file__).resolve().parent.parent

CHILD = r"""
import json, os, sys, time
from pathlib import Path
from tests.flocks import wait_for_waiters
from workflow_cache import LocalCache, create_workflow, err
from workflow_cache.cache.filelocks import KeyLocks
directory, key, mode, log, waiters = sys.argv[1:6]
cache = LocalCache(directory)

def work():
    with open(log, "a") as f:
        f.write(f"{os.getpid()}\n")
    print("STARTED", flush=True)
    if mode == "hang":
        time.sleep(120)
    # The outcome is made once the others wait for it: they must all receive it.
    wait_for_waiters(KeyLocks(Path(directory)).path(key), int(waiters))
    if mode == "fail":
        return err(f"failed in {os.getpid()}")
    return f"ran in {os.getpid()}"

print("READY", flush=True)
sys.stdin.readline()
workflow = create_workflow(cache=cache, cache_errors=False)
result = workflow(lambda step: step(work, key=key))
print("RESULT", json.dumps([result.ok, result.value if result.ok else result.error]), flush=True)
"""


def spawn(
    directory: Path, key: str, mode: str, log: Path, waiters: int = 0
) -> subprocess.Popen[str]:
    """A process that runs ``key`` when told ``go``; as holder, it finishes the step once
    ``waiters`` other processes wait on the key's lock."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, str(directory), key, mode, str(log), str(waiters)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )


def expect(proc: subprocess.Popen[str], prefix: str) -> str:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith(prefix), f"expected {prefix!r}, got {line!r}"
    return line.strip()


def go(*procs: subprocess.Popen[str]) -> None:
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()


def results(procs: list[subprocess.Popen[str]]) -> list[str]:
    found = []
    for proc in procs:
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0
        found += [line.partition(" ")[2] for line in out.splitlines() if line.startswith("RESULT")]
    return found


def kill_all(procs: list[subprocess.Popen[str]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def race(tmp_path: Path, key: str, mode: str, count: int) -> tuple[int, list[str]]:
    """``count`` processes released together on ``key``, the one that runs it waiting for
    the others to wait on its lock: executions and outcomes."""
    log = tmp_path / "executions"
    procs = [spawn(tmp_path / "cache", key, mode, log, count - 1) for _ in range(count)]
    try:
        for proc in procs:
            expect(proc, "READY")
        go(*procs)
        outcomes = results(procs)
    finally:
        kill_all(procs)
    return len(log.read_text().split()), outcomes


def test_eight_processes_on_one_key_run_it_once(tmp_path: Path) -> None:
    executions, outcomes = race(tmp_path, "hot", "ok", 8)
    assert executions == 1
    assert len(outcomes) == 8 and len(set(outcomes)) == 1, outcomes


def test_an_error_that_is_not_kept_still_reaches_the_waiters(tmp_path: Path) -> None:
    executions, outcomes = race(tmp_path, "bad", "fail", 4)
    assert executions == 1
    assert len(set(outcomes)) == 1 and outcomes[0].startswith("[false,"), outcomes
    assert not LocalCache(tmp_path / "cache").has("bad")  # not kept: the next run executes


def test_a_killed_holder_is_taken_over_at_once(tmp_path: Path) -> None:
    log = tmp_path / "executions"
    lock = KeyLocks(tmp_path / "cache").path("k")
    holder = spawn(tmp_path / "cache", "k", "hang", log)
    waiter = spawn(tmp_path / "cache", "k", "ok", log)
    try:
        expect(holder, "READY")
        go(holder)
        expect(holder, "STARTED")
        expect(waiter, "READY")
        go(waiter)
        assert waiter.pid in wait_for_waiters(lock, 1)  # blocked on the holder's lock
        assert len(log.read_text().split()) == 1
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
        expect(waiter, "STARTED")  # the kernel dropped the lock: no timer, no lease
        outcome = expect(waiter, "RESULT")
        assert waiter.wait(30) == 0
    finally:
        kill_all([holder, waiter])
    assert f"ran in {waiter.pid}" in outcome
    assert LocalCache(tmp_path / "cache").get("k") == ok(f"ran in {waiter.pid}")
    assert not lock.exists()  # the new holder removed the file the killed one left


def test_threads_of_one_process_share_one_execution(tmp_path: Path) -> None:
    cache = LocalCache(tmp_path / "cache")
    calls = []
    barrier = threading.Barrier(8)

    def work() -> str:
        calls.append(1)
        time.sleep(0.2)
        return "once"

    out: list[object] = []

    def contender() -> None:
        barrier.wait()
        out.append(create_workflow(cache=cache)(lambda step: step(work, key="t")).value)

    threads = [threading.Thread(target=contender) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert calls == [1] and out == ["once"] * 8


def test_a_stale_notice_is_not_taken_by_a_later_run(tmp_path: Path) -> None:
    cache = LocalCache(tmp_path / "cache")
    workflow = create_workflow(cache=cache, cache_errors=False)
    assert workflow(lambda step: step(lambda: err("first"), key="e")).error == "first"
    assert workflow(lambda step: step(lambda: err("second"), key="e")).error == "second"


def test_a_garbled_lock_file_is_ignored(tmp_path: Path) -> None:
    cache = LocalCache(tmp_path / "cache")
    lock = KeyLocks(tmp_path / "cache").path("g")
    lock.write_bytes(b"\x00not json")
    assert create_workflow(cache=cache)(lambda step: step(lambda: 1, key="g")).value == 1
