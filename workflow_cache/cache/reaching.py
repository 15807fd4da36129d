"""Redis failures as the cache's own error: a lost or full server is ``CacheUnavailable``.

Blocking and asyncio clients raise the same redis-py exceptions, so both use this.
"""

from __future__ import annotations

from typing import Any, Literal

import redis

from workflow_cache.store import CacheUnavailable

__all__ = ["Reaching", "out_of_memory", "unreachable"]


def out_of_memory(where: str) -> str:
    """The message for a write Redis refused because ``maxmemory`` is reached."""
    return (
        f"Redis at {where} refused a write: out of memory (maxmemory reached under a "
        "noeviction policy); nothing was stored"
    )


def unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` says Redis could not be reached (refused, timed out, still loading),
    which passes, rather than refused a write (out of memory), which is an answer."""
    cause = exc.__cause__ if exc.__cause__ is not None else exc
    return isinstance(cause, redis.ConnectionError | redis.TimeoutError)


class Reaching:
    """``with reaching:`` turns a lost or full Redis into :class:`CacheUnavailable`.

    A wrong password stays ``redis.AuthenticationError``: a configuration error, not an
    outage to fall back from. One reusable object per client: a generator-based context
    manager would cost about a microsecond on every read.
    """

    __slots__ = ("where",)

    def __init__(self, where: str) -> None:
        self.where = where

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, exc: BaseException | None, tb: Any) -> Literal[False]:
        if exc is None or isinstance(exc, redis.AuthenticationError):
            return False
        if isinstance(exc, redis.ConnectionError | redis.TimeoutError):
            raise CacheUnavailable(f"cannot reach Redis at {self.where}: {exc}") from exc
        if isinstance(exc, redis.OutOfMemoryError):
            raise CacheUnavailable(out_of_memory(self.where)) from exc
        return False
