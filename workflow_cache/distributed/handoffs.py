"""Resumes for commits made outside the fleet, heard on the namespace's handoff channel.

A producer's local step that commits a key some runs wait on cannot send their resumes
(it has no Celery app); its commit publishes the key instead (``cache/handoffs.py``).
Every worker's main process listens there beside its reconciler; on a notice it takes
the key's handoff set (one taker wins, whichever worker it is) and resumes the runs as
a dispatched step's committer would (``resume.hand_over``): within a round trip of the
commit rather than at the reconciler's next recheck. A notice missed while the listener
reconnects is no loss: the handoff set waits for the reconciler.
"""

from __future__ import annotations

import logging
import threading

from celery import Celery

from workflow_cache.cache.handoffs import handoff_channel, read_handoff_notice
from workflow_cache.cache.redis import RedisCache
from workflow_cache.distributed.resume import hand_over

log = logging.getLogger(__name__)


class HandoffListener:
    """A daemon thread subscribed to one namespace's handoff channel."""

    def __init__(self, app: Celery, cache: RedisCache) -> None:
        self.app = app
        self.cache = cache
        self.channel = handoff_channel(cache.flight.keyspace)
        self.resumed = 0
        """Runs this listener resumed (for operators and tests)."""
        self.listening = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def take(self, data: object) -> int:
        """Resume the runs a notice names; returns how many resumes were sent."""
        notice = read_handoff_notice(data)
        if notice is None:
            log.warning("a handoff notice that is not one was ignored (%d bytes)", _size(data))
            return 0
        key, given = notice
        sent, _ = hand_over(self.app, self.cache.flight, key, given)
        if sent:
            log.info("step %r: committed outside the fleet; %d run(s) resumed", key, sent)
        self.resumed += sent
        return sent

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="wfc-handoffs", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout=5)

    def _loop(self) -> None:
        # the process's notice connection: it reconnects and subscribes again by itself
        listener = self.cache.flight.notifier()
        watch = listener.watch(self.channel)
        try:
            while not self._stop.is_set():
                if listener.wait_live(watch, 0):
                    self.listening.set()
                else:
                    self.listening.clear()
                data = watch.get(1.0)
                if data is not None:
                    try:
                        self.take(data)
                    except Exception as exc:  # one bad notice must not stop the listener
                        log.warning("handoff listener: %s", exc)
        finally:
            self.listening.clear()
            listener.unwatch(watch)


def _size(data: object) -> int:
    return len(data) if isinstance(data, bytes | str) else 0
