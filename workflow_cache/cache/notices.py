"""Commit and release notices: one pub/sub connection per process, one mailbox per waiter.

A commit publishes ``b"o" + outcome`` on the step's channel and a release ``b"r"``
(on a Cluster with ``SPUBLISH``, heard on the node owning the step's slot).
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

from redis.crc import key_slot

from workflow_cache.cache.clients import REDIRECTED, NoticeNodes, OneServer
from workflow_cache.cache.protocol import NOTICE_OUTCOME, NOTICE_RELEASED
from workflow_cache.cache.subscriptions import CLASSIC, SHARDED, Mailbox, Subscriptions

__all__ = ["NOTICE_OUTCOME", "NOTICE_RELEASED", "Listener", "Notices", "Watch"]

log = logging.getLogger(__name__)


class Watch(Mailbox):
    """One waiting thread's mailbox for the notices of one channel."""

    __slots__ = ("gone", "inbox", "link")

    link: _Link
    """The connection its channel is subscribed on (set by ``Listener.watch``)."""

    def __init__(self, channel: bytes) -> None:
        self.inbox: queue.SimpleQueue[bytes] = queue.SimpleQueue()
        self.gone = False  # unwatched: a link that lost it must not watch it again
        super().__init__(channel, self.inbox.put)

    def get(self, timeout: float) -> bytes | None:
        try:
            return self.inbox.get(timeout=max(timeout, 0.0))
        except queue.Empty:
            return None


class Listener:
    """The pub/sub connections shared by every waiting thread of a ``SingleFlight``.

    One server: one connection. A Cluster: one connection per node that owns the slot
    of a channel somebody watches, subscribed with ``SSUBSCRIBE`` (``clients.py``).
    Each connection is owned by a daemon thread (``_Link``) that sends (UN)SUBSCRIBE
    when waiters come and go (woken through a socket pair) and hands each message to
    the mailboxes of the threads watching its channel. Subscribing is
    reference-counted per channel, so 64 threads waiting on one key cost one
    connection and one subscription. After a connection loss a link reconnects with
    backoff and resubscribes; notices sent meanwhile are lost, which waiters survive
    because they never wait longer than the lease. On a Cluster, a channel whose slot
    moved (the node answers ``MOVED`` or ends the subscription itself) or whose node
    cannot be reached is subscribed again wherever the refreshed slot map says.
    """

    IDLE_PING_S = 15.0

    def __init__(self, nodes: NoticeNodes | Callable[[], Any]) -> None:
        self._nodes: NoticeNodes = OneServer(nodes) if callable(nodes) else nodes
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._links: dict[str, _Link] = {}
        self._closed = False

    # -- called by waiting threads

    def watch(self, channel: str) -> Watch:
        w = Watch(channel.encode())
        node = self._nodes.node_of(w.channel)
        with self._lock:
            if self._closed:
                raise RuntimeError("SingleFlight is closed")
            link, wake = self._add(w, node)
        if wake:
            link.wake()
        return w

    def wait_live(self, w: Watch, timeout: float) -> bool:
        """Wait until the server has confirmed the subscription ``w`` relies on."""
        with self._lock:
            return self._changed.wait_for(lambda: w.link.subs.live(w.channel), timeout)

    def unwatch(self, w: Watch) -> None:
        with self._lock:
            w.gone = True
            link = w.link
            wake = link.subs.remove(w)
        if wake:
            link.wake()

    def subscriptions(self) -> int:
        """Channels currently subscribed (for tests and benchmarks)."""
        with self._lock:
            return sum(link.subs.subscribed() for link in self._links.values())

    def nodes(self) -> list[str]:
        """The nodes this listener holds a connection to, or tries to (for tests)."""
        with self._lock:
            return [name for name, link in self._links.items() if link.thread is not None]

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            links = list(self._links.values())
        for link in links:
            link.wake()
        for link in links:
            link.join()
            link.close_sockets()

    # -- shared with the links (the lock held)

    def _add(self, w: Watch, node: str) -> tuple[_Link, bool]:
        """Count ``w`` on ``node``'s link, starting its thread if none runs; True if a
        SUBSCRIBE is now due there."""
        link = self._links.get(node)
        if link is None:
            link = self._links[node] = _Link(self, node)
        w.link = link
        wake = link.subs.add(w)
        link.start()
        return link, wake

    def _reroute(self, boxes: list[Watch], refresh: bool) -> None:
        """Watch ``boxes`` again on the nodes their channels belong to now (their link
        holds them no longer). Called by a link's thread, without the lock."""
        if refresh:
            try:
                self._nodes.refresh()
            except Exception as exc:  # no node answers: the map stays, links retry
                log.warning("workflow-cache could not refresh the Cluster's slots (%s)", exc)
        moved = [(w, self._nodes.node_of(w.channel)) for w in boxes]
        with self._lock:
            if self._closed:
                return
            links = {self._add(w, node)[0] for w, node in moved if not w.gone}
            self._changed.notify_all()
        for link in links:
            link.wake()


class _Link:
    """One pub/sub connection, to one node, owned by one daemon thread."""

    def __init__(self, listener: Listener, node: str) -> None:
        self.listener = listener
        self.node = node
        self.sharded = listener._nodes.sharded
        self.subs: Subscriptions[Watch] = Subscriptions(SHARDED if self.sharded else CLASSIC)
        self.thread: threading.Thread | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)

    @property
    def _lock(self) -> threading.Lock:
        return self.listener._lock

    def start(self) -> None:
        """Start the thread if it does not run (the lock held)."""
        if self.thread is None:
            name = "wfc-listener" if not self.node else f"wfc-listener-{self.node}"
            self.thread = threading.Thread(target=self._run, name=name, daemon=True)
            self.thread.start()

    def wake(self) -> None:
        with contextlib.suppress(OSError):  # full pipe: a wake-up is already pending
            self._wake_w.send(b"!")

    def join(self) -> None:
        thread = self.thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)

    def close_sockets(self) -> None:
        for sock in (self._wake_r, self._wake_w):
            sock.close()

    def _changed(self) -> None:
        self.listener._changed.notify_all()

    def _run(self) -> None:
        backoff = 0.05
        listener = self.listener
        while not listener._closed:
            conn = None
            try:
                conn = self._connect()
                backoff = 0.05
                self._pump(conn)
            except Exception as exc:  # any failure: drop the connection, then reconnect
                if listener._closed:
                    break
                lost: list[Watch] = []
                with self._lock:
                    if self.sharded:  # the slot map may be stale: watch again where it says
                        for channel in self.subs.channels():
                            lost.extend(self.subs.drop(channel))
                    self.subs.reset()  # confirmations died with it
                    self._changed()
                    if not self.subs.watched() and not lost:
                        self.thread = None  # nobody waits: the next watch() starts again
                        return
                log.warning("workflow-cache pub/sub connection lost (%s); reconnecting", exc)
                time.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                if lost:
                    listener._reroute(lost, refresh=True)
            finally:
                if conn is not None:
                    conn.disconnect()
        with self._lock:
            self._changed()

    def _connect(self) -> Any:
        conn = self.listener._nodes.connect(self.node)
        conn.connect()
        with self._lock:
            self.subs.reset()
        return conn

    def _pump(self, conn: Any) -> None:
        sock = conn._sock  # select() on it together with the wake-up socket
        last_rx = time.monotonic()
        ping_sent = False
        listener = self.listener
        while not listener._closed:
            with self._lock:
                commands = self.subs.due()
            if commands:
                conn.send_packed_command(conn.pack_commands(commands), check_health=False)
            while conn.can_read(timeout=0):
                try:
                    reply = conn.read_response()
                except REDIRECTED as moved:  # an SSUBSCRIBE the node does not serve
                    self._moved(moved)
                    continue
                with self._lock:
                    got = self.subs.received(reply)
                    if got is True:
                        self._changed()
                if isinstance(got, list) and got:  # the server ended them: the slot moved
                    listener._reroute(got, refresh=True)
                last_rx, ping_sent = time.monotonic(), False
            if getattr(sock, "pending", None) and sock.pending():
                continue  # TLS bytes already decrypted but not yet parsed
            ready, _, _ = select.select([sock, self._wake_r], [], [], listener.IDLE_PING_S)
            if self._wake_r in ready:
                with contextlib.suppress(BlockingIOError):
                    while self._wake_r.recv(4096):
                        pass
            if not ready and time.monotonic() - last_rx >= listener.IDLE_PING_S:
                if ping_sent:
                    raise TimeoutError("no answer to PING on the pub/sub connection")
                conn.send_command("PING", check_health=False)
                ping_sent = True

    def _moved(self, error: Exception) -> None:
        """A node refused a subscription for a slot it does not own: every channel of
        that slot here is watched again where the refreshed slot map says."""
        slot = getattr(error, "slot_id", None)
        with self._lock:
            lost = [
                w
                for channel in self.subs.channels()
                if slot is None or key_slot(channel) == slot
                for w in self.subs.drop(channel)
            ]
        log.warning("workflow-cache pub/sub: %s; subscribing again where it moved", error)
        time.sleep(0.05)  # a slot in the middle of a move: do not spin on it
        if lost:
            self.listener._reroute(lost, refresh=True)


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
