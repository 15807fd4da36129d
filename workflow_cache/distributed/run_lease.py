"""The lease a delivery holds on its run while it replays, renewed like a step's claim.

The delivery that ``begin`` let in holds the run's epoch; the flight's renewer thread
extends its lease every lease/3 (``run_renew.lua``). When a renewal is refused (the
lease lapsed and the reconciler's re-send took the run with a newer epoch, or the run
was cancelled) the lease is *lost*: the delivery stops at its next dispatched step
(``Superseded``) and whatever it would still write is refused by the epoch anyway.
"""

from __future__ import annotations

from types import TracebackType

from workflow_cache.distributed.runs import Runs


class Superseded(BaseException):
    """Unwinds a delivery that no longer holds its run (a later delivery took it, or it was
    cancelled). A ``BaseException`` so the workflow's own ``except Exception`` cannot keep it."""


class RunLease:
    """A delivery's hold on its run: renewed while open (``with``), checked at each step."""

    def __init__(self, runs: Runs, run_id: str, epoch: int) -> None:
        self.runs = runs
        self.run_id = run_id
        self.epoch = epoch
        self.lost = False

    def renew(self) -> None:
        if not self.lost and not self.runs.renew(self.run_id, self.epoch):
            self.lost = True

    def check(self) -> None:
        """``Superseded`` once the run is no longer this delivery's."""
        if self.lost:
            raise Superseded(f"run {self.run_id}: epoch {self.epoch} no longer holds the run")

    def __enter__(self) -> RunLease:
        self.runs.flight.renewer().add(self)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.runs.flight.renewer().discard(self)

    def __repr__(self) -> str:
        return f"RunLease({self.run_id!r}, epoch={self.epoch})"
