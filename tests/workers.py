"""Real ``celery worker`` processes for the distributed tests and benchmarks."""

from __future__ import annotations

import importlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

import pytest
from celery import Celery  # type: ignore[import-untyped]

from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parent.parent


class CeleryWorker:
    """One ``celery -A <app> worker`` subprocess consuming the given queues."""

    def __init__(
        self,
        app_module: str,
        name: str,
        queues: str,
        env: dict[str, str],
        *,
        pool: str = "solo",
        concurrency: int = 1,
        log: Path | None = None,
        options: tuple[str, ...] = (),
    ) -> None:
        self.name = f"{name}@{os.uname().nodename}"
        self.log = log
        out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                app_module,
                "worker",
                "-Q",
                queues,
                "-P",
                pool,
                "-c",
                str(concurrency),
                "-n",
                self.name,
                "-l",
                "warning",
                "--without-mingle",
                "--without-gossip",
                "--without-heartbeat",
                *options,
            ],
            cwd=ROOT,
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def children(self) -> list[int]:
        """Process ids of the worker's pool (its direct children), now."""
        try:
            text = Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text()
        except OSError:
            return []
        return [int(p) for p in text.split()]

    def kill(self) -> None:
        if self.alive():
            self.proc.kill()
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        stop_all([self])


def stop_all(workers: Iterable[CeleryWorker], grace: float = 10.0) -> None:
    """Warm shutdown (SIGTERM) of every worker at once, then SIGKILL for any still alive
    after ``grace`` seconds: one wait for the fleet, not one per worker. SIGCONT follows
    the SIGTERM, so a worker a test paused (SIGSTOP) stops as well."""
    alive = [w for w in workers if w.alive()]
    for worker in alive:
        worker.proc.send_signal(signal.SIGTERM)
        worker.proc.send_signal(signal.SIGCONT)
    deadline = time.monotonic() + grace
    for worker in alive:
        try:
            worker.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            worker.kill()


def wait_ready(app: Celery, workers: list[CeleryWorker], timeout: float = 60.0) -> None:
    """Block until every worker answers a broadcast ping."""
    wanted = {w.name for w in workers}
    seen: set[str] = set()

    def all_answered() -> bool:
        for w in workers:
            if not w.alive():
                raise RuntimeError(f"worker {w.name} exited with {w.proc.returncode}")
        replies = app.control.ping(timeout=0.5) or []
        seen.update(name for reply in replies for name in reply)
        return wanted <= seen

    wait_until(
        all_answered,
        lambda: f"workers to answer a ping; silent: {sorted(wanted - seen)}",
        timeout=timeout,
        interval=0,  # the ping itself waits half a second for replies
    )


@contextmanager
def configured_test_app(
    env: dict[str, str], module: str = "tests.celery_app"
) -> Iterator[ModuleType]:
    """``module`` (``tests.celery_app``) configured from ``env`` (it reads its settings at
    import).

    The variables are set for the block and restored after it; worker
    subprocesses get the same ``env`` explicitly.
    """
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        yield importlib.reload(importlib.import_module(module))
