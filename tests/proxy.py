"""A TCP proxy on loopback that a test can cut and restore, to play a dropped network link."""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading

from tests.servers import free_port


class LinkProxy:
    """Forwards ``127.0.0.1:<port>`` to a target port until ``cut()``.

    ``cut()`` closes every open connection and refuses new ones (a partition
    that the peers notice as a reset); ``restore()`` accepts again.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._lock = threading.Lock()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._up = True
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def cut(self) -> None:
        with self._lock:
            self._up = False
            pairs, self._pairs = self._pairs, []
        for a, b in pairs:
            for sock in (a, b):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    def restore(self) -> None:
        with self._lock:
            self._up = True

    def close(self) -> None:
        self._closed = True
        self.cut()
        self._listener.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                up = self._up
            if not up:
                client.close()  # refused while the link is down
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                client.close()
                continue
            with self._lock:
                self._pairs.append((client, upstream))
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        peer = {a: b, b: a}
        with selectors.DefaultSelector() as sel:
            sel.register(a, selectors.EVENT_READ)
            sel.register(b, selectors.EVENT_READ)
            while True:
                try:
                    events = sel.select(timeout=1.0)
                except (OSError, ValueError):
                    return
                for key, _ in events:
                    src = key.fileobj
                    try:
                        data = src.recv(65536)  # type: ignore[union-attr]
                    except OSError:
                        data = b""
                    if not data:
                        for sock in (a, b):
                            sock.close()
                        return
                    try:
                        peer[src].sendall(data)  # type: ignore[index]
                    except OSError:
                        for sock in (a, b):
                            sock.close()
                        return
