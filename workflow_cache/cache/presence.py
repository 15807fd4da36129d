"""A process's presence in Redis: one idle connection whose ``CLIENT ID`` names it.

A claim records the holder's presence id beside its lock (``protocol.py``). When the
holder's process dies, even by ``kill -9``, the kernel closes its sockets and Redis
drops the client at once, so a waiter that finds the id gone from ``CLIENT LIST``
knows the holder is dead without waiting out the lease. A paused (SIGSTOP) or
partitioned holder keeps its connection open on the server side, so it stays present
and is taken over only when its lease runs out, as before.

A connection can also be dropped while its process lives (a network blip, a Redis
restart). A thread blocks on reading the connection, so it sees the drop at once,
reconnects and calls ``on_change`` with the new id: the holders of the process renew
at once, writing the new id beside their locks. Waiters give a gone id a grace period
(``protocol.PRESENCE_GRACE_S``) before taking over, and take over only if the id
beside the lock is still the one they saw gone.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import os
import select
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis

from workflow_cache.cache.clients import is_cluster, pool_of, pubsub_connection

__all__ = ["Presence", "presence_of"]

log = logging.getLogger(__name__)


class Presence:
    """One process's presence connection to one server, kept open by a daemon thread."""

    RETRY_S = 0.05
    #: Reconnect often: a live holder must be back well within the waiters' grace.
    RETRY_MAX_S = 0.1

    def __init__(self, make_connection: Callable[[], Any]) -> None:
        self._make_connection = make_connection
        self._lock = threading.Lock()
        self._listeners: list[Callable[[], None]] = []
        self._conn: Any = None
        self.cid: int | None = None
        """The presence id now, None while disconnected."""
        self.ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        """Done once the first connection answered ``CLIENT ID`` (or failed to)."""
        self._thread = threading.Thread(target=self._run, name="wfc-presence", daemon=True)
        self._thread.start()

    def on_change(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback`` (from the presence thread) each time the id changes; returns
        what stops it."""
        with self._lock:
            self._listeners.append(callback)

        def forget() -> None:
            with self._lock, contextlib.suppress(ValueError):
                self._listeners.remove(callback)

        return forget

    def wait_ready(self, timeout: float) -> int | None:
        """The id, waiting up to ``timeout`` seconds for the first connection."""
        with contextlib.suppress(concurrent.futures.TimeoutError):
            self.ready.result(timeout)
        return self.cid

    def _run(self) -> None:
        delay = self.RETRY_S
        while True:
            conn = None
            try:
                conn = self._conn = self._make_connection()
                conn.connect()
                conn.send_command("CLIENT", "ID")
                self.cid = int(conn.read_response())
                delay = self.RETRY_S
                self._changed()
                # Nothing is ever sent on it: readable means closed (or an error line).
                select.select([conn._sock], [], [])
                raise ConnectionError("presence connection closed")
            except Exception as exc:
                self.cid = None
                log.debug("presence connection lost (%s); reconnecting", exc)
                self._changed()
                time.sleep(delay)
                delay = min(delay * 2, self.RETRY_MAX_S)
            finally:
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.disconnect()

    def close_inherited(self) -> None:
        """In a forked child: close this (the parent's) socket here only, without a word
        to Redis, so the connection ends when the parent dies, not when this child does."""
        sock = getattr(self._conn, "_sock", None)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()

    def _changed(self) -> None:
        if not self.ready.done():
            self.ready.set_result(None)
        with self._lock:
            listeners = list(self._listeners)
        for callback in listeners:
            try:
                callback()
            except Exception as exc:  # one listener's failure must not end the presence
                log.warning("presence listener failed: %s", exc)


_PRESENCES: dict[tuple[int, tuple[Any, ...]], Presence] = {}
_PRESENCES_LOCK = threading.Lock()


def _forget_inherited() -> None:
    """After ``fork``, in the child: the parent's presences are not this process's."""
    global _PRESENCES_LOCK
    _PRESENCES_LOCK = threading.Lock()  # another thread may have held it at the fork
    for key, presence in list(_PRESENCES.items()):
        if key[0] != os.getpid():
            presence.close_inherited()
            del _PRESENCES[key]


os.register_at_fork(after_in_child=_forget_inherited)


def presence_of(client: Any) -> Presence | None:
    """This process's presence on the server of ``client`` (blocking or asyncio), made
    on first use; None on a Cluster, where a claim's node is not one connection's."""
    if is_cluster(client):
        return None
    pool = pool_of(client)
    kwargs = pool.connection_kwargs
    where = (
        getattr(pool, "service_name", None),
        kwargs.get("host"),
        kwargs.get("port"),
        kwargs.get("path"),
        kwargs.get("db", 0),
    )
    key = (os.getpid(), where)  # a forked child has its own connections and id
    with _PRESENCES_LOCK:
        found = _PRESENCES.get(key)
        if found is None:
            found = _PRESENCES[key] = Presence(lambda: _blocking_connection(pool))
        return found


@dataclass(frozen=True)
class _Template:
    """What ``pubsub_connection`` reads of a pool: its connection kwargs and class."""

    connection_kwargs: dict[str, Any]
    connection_class: type[Any]


_BLOCKING = {
    "Connection": redis.Connection,
    "SSLConnection": redis.SSLConnection,
    "UnixDomainSocketConnection": redis.UnixDomainSocketConnection,
}


def _blocking_connection(pool: Any) -> Any:
    """A blocking connection to ``pool``'s server: the presence thread blocks on it, for
    an asyncio flight too (whose pool's kwargs name the same server)."""
    cls = pool.connection_class
    if cls.__module__.startswith("redis.asyncio"):
        kwargs = {k: v for k, v in pool.connection_kwargs.items() if k != "retry"}
        pool = _Template(kwargs, _BLOCKING.get(cls.__name__, redis.Connection))
    return pubsub_connection(pool, None)
