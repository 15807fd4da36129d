"""Is the broker there? Asked once, quickly, before a command waits on it.

Celery and kombu retry a missing broker for many seconds and then print a long
traceback; a command line wants one sentence and exit status 2 within seconds.
"""

from __future__ import annotations

from typing import Any

from workflow_cache.cache.clients import redact

CONNECT_TIMEOUT = 3.0
"""Seconds to wait for the broker and the Redis result backend to answer."""


class Unreachable(ConnectionError):
    """The broker or result backend did not answer within ``CONNECT_TIMEOUT`` seconds."""


def reachable(app: Any, timeout: float = CONNECT_TIMEOUT) -> None:
    """Raise :class:`Unreachable` (one line, password hidden) unless both ends answer."""
    broker = app.conf.broker_url
    try:
        with app.connection_for_write(connect_timeout=timeout) as conn:
            conn.ensure_connection(
                max_retries=1, interval_start=0, interval_step=0, timeout=timeout
            )
    except Exception as exc:
        raise Unreachable(f"cannot reach the broker at {redact(broker)}: {_reason(exc)}") from None
    backend = app.conf.result_backend
    if isinstance(backend, str) and backend.startswith(("redis://", "rediss://")):
        import redis

        client = redis.Redis.from_url(
            backend, socket_connect_timeout=timeout, socket_timeout=timeout
        )
        try:
            client.ping()
        except redis.RedisError as exc:
            raise Unreachable(
                f"cannot reach the result backend at {redact(backend)}: {_reason(exc)}"
            ) from None
        finally:
            client.close()


def _reason(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
