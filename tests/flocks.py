"""Who waits on a ``flock`` lock, as the kernel reports it in ``/proc/locks`` (Linux).

Tests wait on this instead of sleeping and assuming a process has reached
``flock``: a blocked request is listed with ``->`` until it is granted.
"""

from __future__ import annotations

import os
import time
from pathlib import Path


def waiting_on(path: Path) -> list[int]:
    """The process ids blocked in ``flock`` on the file ``path`` names now."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return []
    device = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    pids = []
    with open("/proc/locks") as table:
        for line in table:
            fields = line.split()
            blocked = len(fields) > 6 and fields[1:3] == ["->", "FLOCK"]
            if blocked and fields[6] == device:
                pids.append(int(fields[5]))
    return pids


def wait_for_waiters(path: Path, count: int, *, timeout: float = 120.0) -> list[int]:
    """Block until ``count`` processes wait on ``path``'s lock; their ids.

    ``timeout`` only turns a hang into a failure; it is no measure of speed.
    """
    deadline = time.monotonic() + timeout
    while len(found := waiting_on(path)) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(found)} of {count} processes wait on {path}")
        time.sleep(0.005)  # polling the kernel's table: no other notice exists
    return found
