"""Which worker holds a step's queued message, so that a message lost with it is known.

A step message waiting in its queue is marked by the key's queued marker until a worker
starts it. A worker killed whole (main process and pool) takes the messages it had
received but not started with it: the broker gives them back only after its
visibility timeout (an hour by default), while the marker says "queued" for
``queued_ttl``. So the worker's main process, as it receives a step message, writes
beside the marker who holds it (``<queued>:by`` = ``"<task id>|<presence id>"``, for as
long as the marker lives). The reconciler, finding a run suspended on a key whose
marker names a holder whose presence is gone, drops the marker (``lost``) and sends
the run again, whose replay sends the step again. A false alarm (a live worker whose
presence connection was renewed after a Redis restart) only sends a second message,
which finds the key running or done and is acknowledged.

Only a message that waits is worth the record: one a pool slot starts at once has its
marker dropped by the step's claim a moment later. So a worker with an event loop (the
prefork pool) writes the record ``receipt_after`` seconds (50 ms by default) after the
receipt, from that loop's timer in the main process, and only for a message no pool
process has accepted by then. A worker killed whole within that moment leaves its
message to the marker's end, as one killed between its receipt and the record always
did. Other pools (solo, threads) write it at once.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery
from celery.signals import task_received

from workflow_cache import settings
from workflow_cache.cache.claims import SingleFlight
from workflow_cache.cache.keys import Keys
from workflow_cache.cache.lua import register
from workflow_cache.distributed.execution import runner_of
from workflow_cache.distributed.header import BadHeader, read_header

log = logging.getLogger(__name__)

RECEIPT_MS = 60_000
"""The least a receipt lives: a sent marker's default life (``CeleryDispatcher``'s
``queued_ttl``), which a marker received before its send was confirmed gets later."""


def receipt_key(keys: Keys) -> str:
    """Beside the queued marker: who received its message (``"<task id>|<presence>"``)."""
    return f"{keys.queued}:by"


def holder_of(raw: bytes | str | None, task_id: bytes | str | None) -> int | None:
    """The presence id a receipt names, if it is the receipt of ``task_id`` (untrusted)."""
    if raw is None or task_id is None:
        return None
    text = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
    task = task_id.decode(errors="replace") if isinstance(task_id, bytes) else task_id
    received, bar, presence = text.rpartition("|")
    if not bar or received != task or not presence.isdigit():
        return None
    return int(presence)


def drop_lost(flight: SingleFlight, key: str, task_id: bytes | str) -> bool:
    """Drop ``key``'s queued marker if it still names ``task_id`` (its message is lost)."""
    k = flight.keyspace.for_step(key)
    lost = register(flight.client, ["lost"])["lost"]
    return bool(flight.claims.call(lambda: lost(keys=[k.queued, receipt_key(k)], args=[task_id])))


def note_receipts(app: Celery) -> None:
    """In each worker of ``app``, record who received each step message that waits more
    than ``receipt_after`` seconds for a pool process (``task_received`` fires in the
    main process, which holds the message until a pool process accepts it)."""

    def on_received(sender: Any = None, request: Any = None, **_: Any) -> None:
        if getattr(sender, "app", None) is not app or request is None:
            return
        try:
            header = read_header(getattr(request, "request_dict", None))
        except BadHeader:
            return
        runner = runner_of(app)
        if header is None or runner is None or not isinstance(request.id, str):
            return
        task_id: str = request.id

        def write() -> None:
            try:
                flight = runner.messages(header.ns).flight
                presence = flight.presence_id()
                if presence is None:
                    return
                k = flight.keyspace.for_step(header.key)
                received = register(flight.client, ["received"])["received"]
                args: list[str | int] = [task_id, presence, RECEIPT_MS]
                flight.claims.call(lambda: received(keys=[k.queued, receipt_key(k)], args=args))
            except Exception as exc:  # the marker still expires: the step is sent again later
                log.debug("step %r: receipt not recorded: %s", header.key, exc)

        def if_still_waiting() -> None:
            if getattr(request, "time_start", None) is None:  # no pool process accepted it
                write()

        # The consumer's hub is the main thread's own loop: no thread races its forks.
        hub = getattr(sender, "hub", None)
        delay = settings.current().receipt_after
        if hub is None or delay <= 0:
            write()
        else:
            hub.call_later(delay, if_still_waiting)

    task_received.connect(on_received, weak=False)
