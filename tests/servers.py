"""Real servers on loopback for the tests: redis-server started on a free port."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import redis

from tests.waiting import wait_until


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """One ``redis-server`` process bound to 127.0.0.1.

    No persistence by default; ``appendonly=True`` keeps every write in an
    append-only file synced on each command, so a restart loses nothing.
    """

    def __init__(
        self,
        workdir: Path,
        port: int | None = None,
        *,
        password: str | None = None,
        appendonly: bool = False,
    ) -> None:
        self.port = port or free_port()
        self.workdir = workdir
        self.password = password
        self.appendonly = appendonly
        auth = f":{password}@" if password else ""
        self.url = f"redis://{auth}127.0.0.1:{self.port}/0"
        self._start()

    def _start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        extra = ["--requirepass", self.password] if self.password else []
        if self.appendonly:
            extra += ["--appendfsync", "always"]
        self._proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes" if self.appendonly else "no",
                "--dir",
                str(self.workdir),
                "--loglevel",
                "warning",
                *extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self._wait_ready()

    def _wait_ready(self, timeout: float = 10.0) -> None:
        def answers() -> bool:
            if self._proc.poll() is not None:
                raise RuntimeError(f"redis-server on port {self.port} exited")
            client = redis.Redis(host="127.0.0.1", port=self.port, password=self.password)
            try:
                return bool(client.ping())
            finally:
                client.close()

        wait_until(
            answers,
            f"redis-server on port {self.port} to answer PING",
            timeout=timeout,
            ignoring=(redis.ConnectionError,),
        )

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)

    def stop(self) -> None:
        if self._proc.poll() is None:
            self._proc.terminate()
            self._proc.wait(timeout=10)

    def restart(self, down_for: float = 0.0) -> None:
        """Stop the server (clients see their connections closed), wait, start it again."""
        self.stop()
        time.sleep(down_for)
        self._start()

    def kill(self) -> None:
        """SIGKILL: the server dies without a word, as a lost machine does."""
        self._proc.kill()
        self._proc.wait(timeout=10)

    def pause(self) -> None:
        """SIGSTOP: connections stay open and nothing answers, as with a hung server."""
        self._proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._proc.send_signal(signal.SIGCONT)
