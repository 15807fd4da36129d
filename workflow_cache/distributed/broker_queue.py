"""Whether a run's message still waits in its broker queue: read, never changed.

A run recorded ``resuming`` (its first message sent, or a resume) that has not begun
by its recheck is either queued behind others (a backlog longer than the recheck) or
lost (a committer killed between its arrival and its send, a broker that lost it).
Sending it again in the first case only adds a duplicate, which costs a message and a
``begin`` and, under a long backlog, snowballs: every queued run is sent again at
each of its rechecks. So the reconciler first asks the broker: Celery's Redis transport
keeps each queue as lists (one per priority step), and one read-only script returns
the task ids waiting in them, read at most once per queue per tick. A run whose id is
there is left alone (looked at again after its next, doubled, recheck).

A queue longer than ``SCAN_LIMIT`` messages is not read: its runs are assumed queued
until the backlog shrinks. Another broker (AMQP, SQS) cannot be read like this: its
runs are sent again as before, duplicates included. A message a worker has taken but
not yet begun is in no list and is sent again: harmless, and short-lived.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import redis
from celery import Celery

from workflow_cache.cache.lua import script

log = logging.getLogger(__name__)

SCAN_LIMIT = 20_000
"""The most messages one queue read goes through (all priority lists together)."""
PRIORITY_STEPS = (0, 3, 6, 9)
"""kombu's default priority steps: a message of priority p waits in ``<queue>\\x06\\x16p``."""
PRIORITY_SEP = "\x06\x16"


class BrokerQueues:
    """The task ids waiting in the broker's queues, read once per queue per tick."""

    def __init__(self, app: Celery) -> None:
        self.app = app
        self._client: Any = None
        self._script: Any = None
        self._readable: bool | None = None
        self._seen: dict[str, frozenset[str] | None] = {}

    def new_tick(self) -> None:
        self._seen.clear()

    def holds(self, queue: str, task_id: str) -> bool:
        """True when ``task_id``'s message waits in ``queue`` (or the queue is too long to
        tell); False when it does not, or when the broker cannot be read."""
        if queue not in self._seen:
            self._seen[queue] = self._read(queue)
        ids = self._seen[queue]
        if ids is None:
            return self._readable is True  # readable but too long: assume it is queued
        return task_id in ids

    def _read(self, queue: str) -> frozenset[str] | None:
        client = self._broker()
        if client is None:
            return None
        try:
            reply = self._script(keys=self._lists(queue), args=[SCAN_LIMIT], client=client)
        except redis.RedisError as exc:
            log.warning("run reconciler could not read broker queue %r: %s", queue, exc)
            self._readable = False
            return None
        self._readable = True
        ids = [i.decode() if isinstance(i, bytes) else str(i) for i in reply]
        if ids == ["?"]:
            return None
        return frozenset(ids)

    def _lists(self, queue: str) -> Sequence[str]:
        options = self.app.conf.broker_transport_options or {}
        prefix = str(options.get("global_keyprefix", ""))
        steps = options.get("priority_steps", PRIORITY_STEPS)
        names = [queue if not p else f"{queue}{PRIORITY_SEP}{p}" for p in sorted(set(steps))]
        return [f"{prefix}{name}" for name in names]

    def _broker(self) -> Any:
        """A client of the broker when it is a Redis server, else None."""
        if self._readable is False and self._client is None:
            return None
        if self._client is None:
            url = self.app.conf.broker_read_url or self.app.conf.broker_url
            if not isinstance(url, str) or not url.startswith(("redis://", "rediss://")):
                self._readable = False
                return None
            self._client = redis.Redis.from_url(url.split(";")[0], socket_timeout=5)
            self._script = self._client.register_script(script("queued_ids"))
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


__all__ = ["SCAN_LIMIT", "BrokerQueues"]
