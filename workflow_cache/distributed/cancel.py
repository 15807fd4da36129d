"""Cancelling a run: it ends with an error outcome that says so, whatever state it was in.

``cancel_run`` is one script on the run's record (``run_cancel.lua``): a live run
(running, suspended, being resumed) becomes ``cancelled`` with the outcome, and a new
epoch fences the delivery in progress, if any: its lease renewal is refused, so it
stops at its next dispatched step, and its batches and finish are refused too. Commits
of keys it waited on find it not suspended and resume nothing. The outcome is written
under ``run:<id>`` (``outcome_of``); the run stays due once, so the reconciler sends
its task one last time and that delivery, finding the run finished, returns the
outcome to Celery's result backend (``result_of``).
"""

from __future__ import annotations

import asyncio

from workflow_cache.cache.redis import RedisCache
from workflow_cache.distributed.runs import Runs, outcome_key
from workflow_cache.envelope import Envelope
from workflow_cache.result import UnexpectedError, err


class RunCancelled(Exception):
    """The error of a cancelled run's outcome (carried as an ``UnexpectedError``)."""


def cancel_run(cache: RedisCache, run_id: str, reason: str | None = None) -> bool:
    """End a live run as cancelled; True if it was, False for a finished or unknown run
    (which stays as it was)."""
    message = f"workflow run {run_id} was cancelled" + (f": {reason}" if reason else "")
    key = outcome_key(run_id)
    error = UnexpectedError.from_exception(RunCancelled(message))
    outcome = Envelope.from_result(key, err(error), ttl=None)
    return Runs(cache.flight).cancel(run_id, outcome.dumps(key))


async def cancel_run_async(cache: RedisCache, run_id: str, reason: str | None = None) -> bool:
    """:func:`cancel_run` for a coroutine (the script runs in a worker thread)."""
    return await asyncio.to_thread(cancel_run, cache, run_id, reason)


__all__ = ["RunCancelled", "cancel_run", "cancel_run_async"]
