"""Commit and release notices: one pub/sub connection per process, one mailbox per waiter.

A commit publishes ``b"o" + outcome`` on the step's channel and a release ``b"r"``.
Waiters subscribe (and wait for the server's confirmation) *before* they read or claim,
so a notice published in between still reaches them; they never rely on a notice
alone, since one sent while the connection is down is lost: they also wake when a
lease runs out.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import select
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from workflow_cache.cache.protocol import NOTICE_OUTCOME, NOTICE_RELEASED
from workflow_cache.cache.subscriptions import Mailbox, Subscriptions

__all__ = ["NOTICE_OUTCOME", "NOTICE_RELEASED", "Listener", "Notices", "Watch"]

log = logging.getLogger(__name__)


class Watch(Mailbox):
    """One waiting thread's mailbox for the notices of one channel."""

    __slots__ = ("inbox",)

    def __init__(self, channel: bytes) -> None:
        self.inbox: queue.SimpleQueue[bytes] = queue.SimpleQueue()
        super().__init__(channel, self.inbox.put)

    def get(self, timeout: float) -> bytes | None:
        try:
            return self.inbox.get(timeout=max(timeout, 0.0))
        except queue.Empty:
            return None


class Listener:
    """One pub/sub connection shared by every waiting thread of a ``SingleFlight``.

    A daemon thread owns the connection: it sends (UN)SUBSCRIBE when waiters come and
    go (woken through a socket pair) and hands each message to the mailboxes of the
    threads watching its channel.  Subscribing is reference-counted per channel, so 64
    threads waiting on one key cost one connection and one subscription.  After a
    connection loss it reconnects with backoff and resubscribes; notices sent meanwhile
    are lost, which waiters survive because they never wait longer than the lease.
    """

    IDLE_PING_S = 15.0

    def __init__(self, make_connection: Callable[[], Any]) -> None:
        self._make_connection = make_connection
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._subs: Subscriptions[Watch] = Subscriptions()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._closed = False
        self._thread: threading.Thread | None = None

    # -- called by waiting threads

    def watch(self, channel: str) -> Watch:
        w = Watch(channel.encode())
        with self._lock:
            if self._closed:
                raise RuntimeError("SingleFlight is closed")
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="wfc-listener", daemon=True)
                self._thread.start()
            wake = self._subs.add(w)
        if wake:
            self._wake()
        return w

    def wait_live(self, w: Watch, timeout: float) -> bool:
        """Wait until the server has confirmed the subscription ``w`` relies on."""
        with self._lock:
            return self._changed.wait_for(lambda: self._subs.live(w.channel), timeout)

    def unwatch(self, w: Watch) -> None:
        with self._lock:
            wake = self._subs.remove(w)
        if wake:
            self._wake()

    def subscriptions(self) -> int:
        """Channels currently subscribed (for tests and benchmarks)."""
        with self._lock:
            return self._subs.subscribed()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            thread = self._thread
        self._wake()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)
        for sock in (self._wake_r, self._wake_w):
            sock.close()

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # full pipe: a wake-up is already pending
            self._wake_w.send(b"!")

    # -- the listener thread

    def _run(self) -> None:
        backoff = 0.05
        while not self._closed:
            conn = None
            try:
                conn = self._connect()
                backoff = 0.05
                self._pump(conn)
            except Exception as exc:  # any failure: drop the connection, then reconnect
                if self._closed:
                    break
                with self._lock:
                    self._subs.reset()  # confirmations died with it
                    self._changed.notify_all()
                    if not self._subs.watched():
                        self._thread = None  # nobody waits: the next watch() starts again
                        return
                log.warning("workflow-cache pub/sub connection lost (%s); reconnecting", exc)
                time.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
            finally:
                if conn is not None:
                    conn.disconnect()
        with self._lock:
            self._changed.notify_all()

    def _connect(self) -> Any:
        conn = self._make_connection()
        conn.connect()
        with self._lock:
            self._subs.reset()
        return conn

    def _pump(self, conn: Any) -> None:
        sock = conn._sock  # select() on it together with the wake-up socket
        last_rx = time.monotonic()
        ping_sent = False
        while not self._closed:
            with self._lock:
                commands = self._subs.due()
            if commands:
                conn.send_packed_command(conn.pack_commands(commands), check_health=False)
            while conn.can_read(timeout=0):
                reply = conn.read_response()
                with self._lock:
                    if self._subs.received(reply):
                        self._changed.notify_all()
                last_rx, ping_sent = time.monotonic(), False
            if getattr(sock, "pending", None) and sock.pending():
                continue  # TLS bytes already decrypted but not yet parsed
            ready, _, _ = select.select([sock, self._wake_r], [], [], self.IDLE_PING_S)
            if self._wake_r in ready:
                with contextlib.suppress(BlockingIOError):
                    while self._wake_r.recv(4096):
                        pass
            if not ready and time.monotonic() - last_rx >= self.IDLE_PING_S:
                if ping_sent:
                    raise TimeoutError("no answer to PING on the pub/sub connection")
                conn.send_command("PING", check_health=False)
                ping_sent = True


class Notices:
    """The notices of the keys a caller watches (see ``SingleFlight.watch_many``)."""

    def __init__(self, watches: dict[str, Watch]) -> None:
        self._watches = watches

    def next(self, key: str, timeout: float) -> bytes | None:
        """The next notice for ``key`` within ``timeout`` seconds, whatever it says."""
        return self._watches[key].get(timeout)

    def outcome(self, key: str, timeout: float) -> bytes | None:
        """The outcome committed for ``key`` within ``timeout`` seconds, else None
        (also on a release notice: the caller then checks the claim itself)."""
        notice = self._watches[key].get(timeout)
        if notice is not None and notice[:1] == NOTICE_OUTCOME:
            return notice[1:]
        return None
