"""Which Celery signatures can be a step: one task, or a group of tasks; never a chain or chord.

A step has one key and one outcome. A single task maps onto that directly. A group is
a fan-out, so ``step(group(...), key=k)`` runs like ``step.all``: each member is its own
step, keyed ``k[0]``, ``k[1]``, ... (unkeyed when the group is), sent together, and the
step returns the list of their values. A chain or chord would need the outcome of
one task to start another inside a single step; each link is instead its own step, in
order, which caches every intermediate result too. Refusals happen before anything is
sent, so no message is ever left behind.
"""

from __future__ import annotations

from typing import Any

from celery import Signature
from celery.canvas import _chain, chord, group

_CHAIN = (
    "a chain cannot be one step: give each task its own step, in order, e.g. "
    "a = step(first.s(x), key=...); b = step(second.s(a), key=...)"
)
_CHORD = (
    "a chord cannot be one step: run its header with step.all([...], keys=[...]) "
    "(or step(group(...), key=...)), then its callback with step(callback.s(results), key=...)"
)
_GROUP_INSIDE = (
    "a group cannot be one item of step.all or of another group: pass its tasks "
    "themselves, e.g. step.all(list(g.tasks), keys=[...])"
)


def require_task(sig: Any) -> Signature:
    """``sig`` if it is one task's signature; otherwise a ``TypeError`` saying what to use."""
    if isinstance(sig, _chain):
        raise TypeError(_CHAIN)
    if isinstance(sig, chord):
        raise TypeError(_CHORD)
    if isinstance(sig, group):
        raise TypeError(_GROUP_INSIDE)
    if not isinstance(sig, Signature):
        raise TypeError(f"expected a Celery task signature, got {type(sig).__name__}")
    kind = sig.get("subtask_type")
    if kind:
        raise TypeError(
            f"a {kind} signature cannot be a step: give step.all one signature per task"
        )
    return sig


def members(sig: Signature) -> list[Signature] | None:
    """The tasks of a group (each checked), None for a single task; TypeError otherwise."""
    if isinstance(sig, group) and not isinstance(sig, chord):
        tasks = list(sig.tasks)
        for task in tasks:
            require_task(task)
        return tasks
    require_task(sig)
    return None
