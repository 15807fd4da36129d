"""Step outcomes in Redis, shared by every producer and worker that points at it.

Each outcome is one JSON envelope at ``wfc:<namespace>:{<key>}:out`` with its
time-to-live set in Redis itself. One client (one connection pool) per cache.
A missing key is run under the single-flight claim of ``claims.py``: of all the
processes that reach it at once, one executes and the others get its outcome.

With signing keys configured, outcomes are written signed and an unsigned,
forged or wrongly keyed one is a miss with one warning: it is removed (only if
it is still the same bytes) so the step runs and stores a signed outcome.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import redis

from workflow_cache import signing
from workflow_cache.cache.base import NativeCache
from workflow_cache.cache.claims import Holder, SingleFlight
from workflow_cache.cache.clients import client_from_url, read_many, redact
from workflow_cache.cache.envelopes import REFUSED_RETRIES, acquiring, refusal
from workflow_cache.cache.keys import KeySpace
from workflow_cache.cache.reaching import Reaching
from workflow_cache.cache.records import ClaimRecord, record_lookup
from workflow_cache.drive import drive_sync
from workflow_cache.duration import TTL, to_seconds
from workflow_cache.envelope import Envelope, UnsignedEnvelopeError
from workflow_cache.options import check_key

if TYPE_CHECKING:
    from workflow_cache.cache.redis_async import AsyncRedisCache

__all__ = ["ASYNC_CONNECTIONS", "REFUSED_RETRIES", "RedisCache", "RedisClaim"]

_SCAN_BATCH = 500

ASYNC_CONNECTIONS = 100
"""Connections of one event loop's pool; more concurrent steps queue for a free one."""

log = logging.getLogger(__name__)


class RedisCache(NativeCache):
    """``RedisCache("redis://host:6379/0", namespace="prod")``; TLS and passwords via the URL."""

    def __init__(
        self,
        url: str = "redis://localhost:6379/0",
        *,
        namespace: str = "default",
        default_ttl: TTL | None = None,
        lease: float = 5.0,
        wait_timeout: float | None = None,
        socket_timeout: float = 5.0,
        connect_timeout: float = 2.0,
        client: redis.Redis | None = None,
    ) -> None:
        self.url = url
        self.namespace = namespace
        self.keyspace = KeySpace(namespace)
        self.default_ttl = to_seconds(default_ttl, name="default_ttl")
        signing.signing_keys()  # a bad key setting fails here, not at the first read
        self.lease = float(lease)
        self.wait_timeout = wait_timeout
        self._flight: SingleFlight | None = None
        self._flight_lock = threading.Lock()
        self._timeouts = {
            "socket_timeout": socket_timeout,
            "socket_connect_timeout": connect_timeout,
        }
        self.reaching = Reaching(redact(url))
        self._async_ok = client is None and url.startswith(("redis://", "rediss://", "unix://"))
        self._views: weakref.WeakKeyDictionary[Any, AsyncRedisCache] = weakref.WeakKeyDictionary()
        self._last_view: tuple[weakref.ref[Any], AsyncRedisCache] | None = None
        self.client = client or client_from_url(
            url,
            socket_timeout=socket_timeout,
            socket_connect_timeout=connect_timeout,
        )

    def _out(self, key: str) -> str:
        return self.keyspace.out(check_key(key))  # type: ignore[arg-type]

    # -- what workflows use -------------------------------------------------------------

    def load(self, key: str) -> Envelope | None:
        with self.reaching:
            raw = self.client.get(self._out(key))
        record_lookup(self.namespace, [key], [raw])
        return None if raw is None else self._decode(key, raw)

    def load_many(self, keys: Sequence[str]) -> list[Envelope | None]:
        if not keys:
            return []
        with self.reaching:
            rows = read_many(self.client, [self._out(key) for key in keys])
        record_lookup(self.namespace, keys, rows)
        if signing.enabled():  # each row's signature checked, a refused one removed
            return [
                None if raw is None else self._decode(k, raw)
                for k, raw in zip(keys, rows, strict=True)
            ]
        return Envelope.loads_many(keys, rows)

    def _decode(self, key: str, raw: bytes | str) -> Envelope | None:
        """The stored envelope; None (a miss, removed, one warning) if its signature is bad."""
        try:
            return Envelope.loads(key, raw)
        except UnsignedEnvelopeError as exc:
            self.flight.perform(refusal(self._out(key), raw, exc))
            return None

    def save(self, key: str, envelope: Envelope) -> None:
        text = envelope.sealed(key)
        ttl_ms = envelope.ttl_ms
        with self.reaching:
            self.client.set(self._out(key), text, px=ttl_ms)

    @property
    def flight(self) -> SingleFlight:
        """The claim protocol on this cache's client; made on first use."""
        with self._flight_lock:
            if self._flight is None:
                self._flight = SingleFlight(self.client, self.keyspace, lease=self.lease)
            return self._flight

    def acquire(self, key: str) -> Envelope | RedisClaim:
        """The key's outcome once known (waiting while another process runs it), or its claim."""
        flight = self.flight
        wait = functools.partial(flight.acquire, check_key(key), timeout=self.wait_timeout)  # type: ignore[arg-type]
        got = drive_sync(acquiring(self.keyspace, key, wait, flight.perform))
        return got if isinstance(got, Envelope) else RedisClaim(key, got, self.namespace)

    def for_async(self) -> AsyncRedisCache | None:
        """This cache on ``redis.asyncio`` for the running event loop (one pool per loop),
        or None where async workflows keep the blocking client: a ``client=`` passed in,
        or a Sentinel or Cluster URL."""
        if not self._async_ok:
            return None
        loop = asyncio.get_running_loop()
        last = self._last_view  # every async workflow asks: the common answer first
        if last is not None and last[0]() is loop:
            return last[1]
        view = self._views.get(loop)
        if view is not None:
            self._last_view = (weakref.ref(loop), view)
            return view
        with self._flight_lock:
            view = self._views.get(loop)
            if view is None:
                import redis.asyncio

                from workflow_cache.cache.redis_async import AsyncRedisCache

                pool = redis.asyncio.BlockingConnectionPool.from_url(
                    self.url, max_connections=ASYNC_CONNECTIONS, **self._timeouts
                )
                client = redis.asyncio.Redis.from_pool(pool)
                view = self._views[loop] = AsyncRedisCache(
                    client,
                    redact(self.url),
                    keyspace=self.keyspace,
                    lease=self.lease,
                    wait_timeout=self.wait_timeout,
                )
            return view

    async def aclose(self) -> None:
        """Close the running loop's ``redis.asyncio`` pool, pub/sub connection and tasks."""
        with self._flight_lock:
            self._last_view = None
            view = self._views.pop(asyncio.get_running_loop(), None)
        if view is not None:
            await view.aclose()

    # -- Map-like management --------------------------------------------------------------

    def has(self, key: str) -> bool:
        with self.reaching:
            return bool(self.client.exists(self._out(key)))

    def delete(self, key: str) -> bool:
        with self.reaching:
            return bool(self.client.delete(self._out(key)))

    def clear(self) -> int:
        """Delete this namespace's keys (SCAN + UNLINK in batches); other namespaces stay."""
        removed = 0
        with self.reaching:
            batch: list[Any] = []
            for name in self.client.scan_iter(match=self.keyspace.pattern, count=_SCAN_BATCH):
                batch.append(name)
                if len(batch) >= _SCAN_BATCH:
                    removed += self.client.unlink(*batch)
                    batch.clear()
            if batch:
                removed += self.client.unlink(*batch)
        return removed

    def close(self) -> None:
        if self._flight is not None:
            self._flight.close()
        self.client.close()

    def __repr__(self) -> str:
        return f"RedisCache({redact(self.url)!r}, namespace={self.namespace!r})"


class RedisClaim(ClaimRecord):
    """This process runs the key: commit its outcome (fenced) or release the claim."""

    def __init__(self, key: str, holder: Holder, namespace: str = "") -> None:
        super().__init__(key, holder.epoch, namespace)
        self.holder = holder

    def commit(self, envelope: Envelope, *, keep: bool) -> bool:
        text = envelope.sealed(self.key)
        accepted = self.holder.commit(text, ttl_ms=envelope.ttl_ms, keep=keep)
        return self.committed(envelope, accepted=accepted, keep=keep)

    def release(self) -> None:
        if not self.holder.finished:
            self.holder.release()
        self.released()
