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

__all__ = ["NOTICE_OUTCOME", "NOTICE_RELEASED", "Listener", "Notices", "Watch"]

log = logging.getLogger(__name__)

NOTICE_OUTCOME = b"o"
NOTICE_RELEASED = b"r"


def _as_bytes(value: bytes | str | memoryview) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    return bytes(value)


class Watch:
    """One waiting thread's mailbox for the notices of one channel."""

    __slots__ = ("channel", "inbox")

    def __init__(self, channel: bytes) -> None:
        self.channel = channel
        self.inbox: queue.SimpleQueue[bytes] = queue.SimpleQueue()

    def get(self, timeout: float) -> bytes | None:
        try:
            return self.inbox.get(timeout=max(timeout, 0.0))
        except queue.Empty:
            return None


class _Channel:
    """Subscription state of one channel on the shared connection."""

    __slots__ = ("acked", "sent", "subscribed", "watches")

    def __init__(self) -> None:
        self.watches: set[Watch] = set()
        self.subscribed = False  # the last command sent for it was SUBSCRIBE
        self.sent = 0  # SUBSCRIBE commands sent since connecting
        self.acked = 0  # subscribe confirmations received since connecting

    @property
    def live(self) -> bool:
        return self.subscribed and self.acked == self.sent


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
        self._channels: dict[bytes, _Channel] = {}
        self._dirty: set[bytes] = set()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._closed = False
        self._thread: threading.Thread | None = None
        self._conn: Any = None

    # -- called by waiting threads

    def watch(self, channel: str) -> Watch:
        name = channel.encode()
        w = Watch(name)
        with self._lock:
            if self._closed:
                raise RuntimeError("SingleFlight is closed")
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="wfc-listener", daemon=True)
                self._thread.start()
            ch = self._channels.get(name)
            if ch is None:
                ch = self._channels[name] = _Channel()
            ch.watches.add(w)
            wake = not ch.subscribed
            if wake:
                self._dirty.add(name)
        if wake:
            self._wake()
        return w

    def wait_live(self, w: Watch, timeout: float) -> bool:
        """Wait until the server has confirmed the subscription ``w`` relies on."""
        with self._lock:
            ch = self._channels.get(w.channel)
            return ch is not None and self._changed.wait_for(lambda: ch.live, timeout)

    def unwatch(self, w: Watch) -> None:
        with self._lock:
            ch = self._channels.get(w.channel)
            if ch is None:
                return
            ch.watches.discard(w)
            wake = not ch.watches
            if wake:
                self._dirty.add(w.channel)
        if wake:
            self._wake()

    def subscriptions(self) -> int:
        """Channels currently subscribed (for tests and benchmarks)."""
        with self._lock:
            return sum(1 for ch in self._channels.values() if ch.subscribed)

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
                    self._conn = None
                    for ch in self._channels.values():  # confirmations died with it
                        ch.subscribed, ch.sent, ch.acked = False, 0, 0
                    self._changed.notify_all()
                    if not any(ch.watches for ch in self._channels.values()):
                        self._thread = None  # nobody waits: the next watch() starts again
                        return
                log.warning("workflow-cache pub/sub connection lost (%s); reconnecting", exc)
                time.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
            finally:
                if conn is not None:
                    conn.disconnect()
        with self._lock:
            self._conn = None
            self._changed.notify_all()

    def _connect(self) -> Any:
        conn = self._make_connection()
        conn.connect()
        with self._lock:
            self._conn = conn
            for name, ch in list(self._channels.items()):
                ch.subscribed, ch.sent, ch.acked = False, 0, 0
                if ch.watches:
                    self._dirty.add(name)
                else:
                    del self._channels[name]
        return conn

    def _pump(self, conn: Any) -> None:
        sock = conn._sock  # select() on it together with the wake-up socket
        last_rx = time.monotonic()
        ping_sent = False
        while not self._closed:
            with self._lock:
                self._sync_subscriptions(conn)
            while conn.can_read(timeout=0):
                self._dispatch(conn.read_response())
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

    def _sync_subscriptions(self, conn: Any) -> None:
        """Bring the server's subscriptions in line with the watchers (lock held)."""
        if not self._dirty:
            return
        commands: list[tuple[str, bytes]] = []
        for name in self._dirty:
            ch = self._channels.get(name)
            if ch is None:
                continue
            if ch.watches and not ch.subscribed:
                ch.subscribed = True
                ch.sent += 1
                commands.append(("SUBSCRIBE", name))
            elif not ch.watches and ch.subscribed:
                ch.subscribed = False
                commands.append(("UNSUBSCRIBE", name))
            if not ch.watches and not ch.subscribed and ch.acked == ch.sent:
                del self._channels[name]
        self._dirty.clear()
        if commands:
            conn.send_packed_command(conn.pack_commands(commands), check_health=False)

    def _dispatch(self, reply: Any) -> None:
        if not isinstance(reply, list) or len(reply) < 3:
            return  # PONG
        kind, name, data = reply[0], _as_bytes(reply[1]), reply[2]
        with self._lock:
            ch = self._channels.get(name)
            if ch is None:
                return
            if kind == b"message":
                for w in ch.watches:
                    w.inbox.put(_as_bytes(data))
            elif kind == b"subscribe":
                ch.acked += 1
                if not ch.watches and not ch.subscribed and ch.acked == ch.sent:
                    del self._channels[name]
                self._changed.notify_all()


class Notices:
    """The notices of the keys a caller watches (see ``SingleFlight.watch_many``)."""

    def __init__(self, watches: dict[str, Watch]) -> None:
        self._watches = watches

    def outcome(self, key: str, timeout: float) -> bytes | None:
        """The outcome committed for ``key`` within ``timeout`` seconds, else None
        (also on a release notice: the caller then checks the claim itself)."""
        notice = self._watches[key].get(timeout)
        if notice is not None and notice[:1] == NOTICE_OUTCOME:
            return notice[1:]
        return None
