"""Lease renewal: one thread per ``SingleFlight`` keeps every open claim alive."""

from __future__ import annotations

import logging
import threading
from typing import Protocol

log = logging.getLogger(__name__)

__all__ = ["Renewer"]


class Renewable(Protocol):
    def renew(self) -> None: ...


class Renewer:
    """One thread per ``SingleFlight`` renewing every open holder each lease/3.

    A thread per claim would cost a thread start (and its scheduling) on the hot
    path of every step; one shared thread costs nothing while nobody holds a claim:
    it exits when the last holder finishes and starts again with the next one.
    """

    def __init__(self, interval: float) -> None:
        self._interval = interval
        self._lock = threading.Lock()
        self._holders: set[Renewable] = set()
        self._thread: threading.Thread | None = None
        self._now = threading.Event()

    def add(self, holder: Renewable) -> None:
        with self._lock:
            self._holders.add(holder)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="wfc-renew", daemon=True)
                self._thread.start()

    def renew_now(self) -> None:
        """Renew every open holder at once (this process's presence id changed)."""
        self._now.set()

    def discard(self, holder: Renewable) -> None:
        with self._lock:
            self._holders.discard(holder)

    def _run(self) -> None:
        try:
            while True:
                self._now.wait(self._interval)
                self._now.clear()
                with self._lock:
                    holders = list(self._holders)
                    if not holders:
                        return
                for holder in holders:
                    try:
                        holder.renew()
                    except Exception as exc:  # one odd reply must not end every renewal
                        log.warning("lease renewal of %r failed: %s", holder, exc)
        finally:
            with self._lock:
                self._thread = None
                if self._holders:  # ended by something unexpected: keep renewing
                    self._thread = threading.Thread(target=self._run, name="wfc-renew", daemon=True)
                    self._thread.start()
