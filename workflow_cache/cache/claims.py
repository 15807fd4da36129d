"""Single flight in Redis: at most one process runs a step, every caller gets its outcome.

The claim protocol is four of the Lua scripts in ``lua/`` (the others serve dispatch,
``messages.py``), each one atomic step on the keys
of one step (see ``keys.py``; they share a cluster hash slot):

``claim``
    Outcome stored -> ``Done``.  Lock held -> ``Running(owner, remaining lease)``.
    Otherwise ``INCR`` the epoch and ``SET lock "<owner>|<epoch>" PX lease`` ->
    ``Claimed(token, epoch)``.  The epoch is a fencing token: it only grows, so a token
    names one claim and no other.
``renew``
    Extend the lease, only if the lock still holds this exact token.
``commit``
    Fenced write of the outcome, delete of the lock and ``PUBLISH`` of the outcome to
    waiters, all or nothing.  Accepted when the lock holds this token, **or** when the lock
    has expired but nobody has claimed since (the epoch key still equals this claim's
    epoch) and no outcome is stored: a holder that overran its lease without a successor
    keeps its work, which is safe because any later claim would have bumped the epoch.
    An outcome that is not kept is written to ``:last`` with its epoch for a minute
    instead, for waiters that missed the notice (see ``messages.py``).  Workflow runs
    suspended on the key (``:waiters``) are moved to ``:handoff`` in the same step, for
    the committer to resume (``distributed/resume.py``).
    A refused commit writes nothing and notifies nobody.
``release``
    Owner-checked delete of the lock and a "released" notice, so waiters claim at once
    instead of waiting for the lease to run out.

Notifications on the step's channel are ``b"o" + outcome`` (commit) or ``b"r"``
(release), delivered by ``notices.py``.  Waiters wake on them; if the holder dies
silently they wake when its lease runs out and claim in turn, which is how a crashed
holder is taken over.  Holders' leases are renewed by ``leases.py``.

Epoch after commit: a commit that stores its outcome deletes the epoch key, so a
committed step leaves nothing in Redis but its outcome.  While the outcome is stored
nobody can claim; once it expires a new claim restarts at epoch 1, and fencing rests on
the owner part of the token (a stale holder's ``owner|epoch`` never equals a new
owner's).  An outcome that is not kept leaves the epoch: it tells the readers of
``last`` which run that outcome belongs to.

Epoch expiry (trade-off): the epoch key gets a long expiry (7 days) refreshed at every
claim, which bounds what claims that never commit leave behind.  Without it, every
step key ever claimed without a commit would leave an integer in Redis forever.  With
it, an epoch can restart at 1 after a step has seen no claim for a week;
fencing then relies on the owner part of the token (hostname:pid:uuid), so a holder
paused for more than a week could only be confused with a claim made by the very same
``SingleFlight`` instance.  Pass ``epoch_ttl_ms=None`` to ``Claims`` to keep epochs forever.

Outcomes are opaque ``bytes`` here (the JSON envelope lives elsewhere); nothing is
pickled.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self, TypeVar

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from workflow_cache.cache.base import CacheUnavailable
from workflow_cache.cache.clients import client_from_url, describe, pool_of, read_many
from workflow_cache.cache.keys import Keys, KeySpace
from workflow_cache.cache.leases import Renewer
from workflow_cache.cache.lua import script
from workflow_cache.cache.notices import NOTICE_OUTCOME, Listener, Notices, Watch

__all__ = [
    "EPOCH_TTL_MS",
    "LAST_TTL_MS",
    "CacheUnavailable",
    "ClaimTimeout",
    "Claimed",
    "Claims",
    "Done",
    "Holder",
    "Notices",
    "Running",
    "SingleFlight",
    "connect",
]

log = logging.getLogger(__name__)

EPOCH_TTL_MS = 7 * 24 * 3600 * 1000
"""Expiry of a step's epoch key, refreshed at each claim (see the module docstring)."""

LAST_TTL_MS = 60_000
"""How long an outcome that is not kept stays readable by the callers that waited for it
(``Keys.last``), in case its notice did not reach them."""


_T = TypeVar("_T")


# --------------------------------------------------------------------------- errors


class ClaimTimeout(TimeoutError):
    """``acquire`` gave up: another holder kept the step running past the caller's timeout."""


# --------------------------------------------------------------------------- states


@dataclass(frozen=True, slots=True)
class Done:
    """The step has an outcome; nobody needs to run it."""

    outcome: bytes


@dataclass(frozen=True, slots=True)
class Running:
    """Another owner holds the claim; its lease runs out in ``remaining_ms`` unless renewed."""

    owner: str
    remaining_ms: int


@dataclass(frozen=True, slots=True)
class Claimed:
    """The caller holds the claim: ``token`` is ``"<owner>|<epoch>"``."""

    token: str
    epoch: int

    @property
    def owner(self) -> str:
        return self.token.rpartition("|")[0]


ClaimState = Done | Running | Claimed


# --------------------------------------------------------------------------- scripts


def _as_bytes(value: bytes | str | memoryview) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    return bytes(value)


def _as_str(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def out_of_memory(where: str) -> str:
    """The message for a write Redis refused because ``maxmemory`` is reached."""
    return (
        f"Redis at {where} refused a write: out of memory (maxmemory reached under a "
        "noeviction policy); nothing was stored"
    )


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

    def __exit__(self, kind: Any, exc: BaseException | None, tb: Any) -> bool:
        if exc is None or isinstance(exc, redis.AuthenticationError):
            return False
        if isinstance(exc, redis.ConnectionError | redis.TimeoutError):
            raise CacheUnavailable(f"cannot reach Redis at {self.where}: {exc}") from exc
        if isinstance(exc, redis.OutOfMemoryError):
            raise CacheUnavailable(out_of_memory(self.where)) from exc
        return False


def connect(url: str, *, timeout: float = 2.0, **kwargs: Any) -> redis.Redis:
    """A client that fails fast: ``timeout``-second connect/socket timeouts, one quick retry.

    redis-py's defaults (5 s timeouts, 3 retries with backoff) turn a down server into
    several seconds of silence; a cache should say so at once.
    """
    kwargs.setdefault("socket_connect_timeout", timeout)
    kwargs.setdefault("socket_timeout", timeout)
    kwargs.setdefault("retry", Retry(ExponentialBackoff(cap=0.05, base=0.01), 1))
    return client_from_url(url, **kwargs)


class Claims:
    """The four protocol scripts bound to one client (registered once, run by EVALSHA)."""

    def __init__(self, client: redis.Redis, *, epoch_ttl_ms: int | None = EPOCH_TTL_MS) -> None:
        self.client = client
        self.where = describe(client)
        self._reaching = Reaching(self.where)
        self._epoch_ttl_ms = int(epoch_ttl_ms or 0)
        self._claim = client.register_script(script("claim"))
        self._renew = client.register_script(script("renew"))
        self._commit = client.register_script(script("commit"))
        self._release = client.register_script(script("release"))

    def call(self, fn: Callable[[], _T]) -> _T:
        """Run ``fn``; a connection failure is ``CacheUnavailable`` naming the server."""
        with self._reaching:
            return fn()

    def claim(self, keys: Keys, owner: str, lease_ms: int) -> ClaimState:
        """Done, Running or Claimed (one atomic script)."""
        if lease_ms <= 0:
            raise ValueError(f"lease_ms must be positive, got {lease_ms}")
        reply = self.call(
            lambda: self._claim(
                keys=[keys.out, keys.lock, keys.epoch],
                args=[owner, int(lease_ms), self._epoch_ttl_ms],
            )
        )
        return claim_state(reply)

    def renew(self, keys: Keys, claim: Claimed, lease_ms: int) -> bool:
        """Extend the lease to ``lease_ms`` from now, if ``claim`` still holds the lock."""
        return bool(
            self.call(lambda: self._renew(keys=[keys.lock], args=[claim.token, int(lease_ms)]))
        )

    def commit(
        self,
        keys: Keys,
        claim: Claimed,
        outcome: bytes | str,
        ttl_ms: int | None = None,
        keep: bool = True,
    ) -> bool:
        """Fenced: store (if ``keep``) and announce ``outcome``, drop the lock; False if refused."""
        return self.commit_reply(keys, claim, outcome, ttl_ms, keep) > 0

    def commit_reply(
        self,
        keys: Keys,
        claim: Claimed,
        outcome: bytes | str,
        ttl_ms: int | None = None,
        keep: bool = True,
    ) -> int:
        """As :meth:`commit`: 0 refused, 1 committed, 2 committed with workflows to resume."""
        args = commit_args(keys, claim, outcome, ttl_ms, keep)
        return int(
            self.call(
                lambda: self._commit(
                    keys=[keys.out, keys.lock, keys.epoch, keys.last, keys.waiters, keys.handoff],
                    args=args,
                )
            )
            or 0
        )

    def release(self, keys: Keys, claim: Claimed) -> bool:
        """Give the claim up without an outcome; waiters are told to claim again at once."""
        return bool(
            self.call(lambda: self._release(keys=[keys.lock], args=[claim.token, keys.channel]))
        )


def wait_for_holder(
    state: Running,
    lease_ms: int,
    margin_s: float,
    deadline: float | None,
    key: str,
    keyspace: KeySpace,
    timeout: float | None,
) -> float:
    """Seconds to wait for ``state``'s holder: its lease left plus a margin, within the
    caller's deadline; past the deadline, ``ClaimTimeout`` naming the key and holder."""
    remaining = state.remaining_ms if state.remaining_ms >= 0 else lease_ms
    wait = remaining / 1000 + margin_s
    if deadline is None:
        return wait
    left = deadline - time.monotonic()
    if left <= 0:
        raise ClaimTimeout(
            f"step {key!r} in namespace {keyspace.namespace!r} is still "
            f"running under {state.owner!r} after {timeout:g} s"
        )
    return min(wait, left)


def claim_state(reply: Any) -> ClaimState:
    """The reply of the ``claim`` script as Done, Running or Claimed."""
    kind = _as_str(reply[0])
    if kind == "done":
        return Done(_as_bytes(reply[1]))
    if kind == "running":
        return Running(owner=_as_str(reply[1]).rpartition("|")[0], remaining_ms=int(reply[2]))
    return Claimed(token=_as_str(reply[1]), epoch=int(reply[2]))


def commit_args(
    keys: Keys, claim: Claimed, outcome: bytes | str, ttl_ms: int | None, keep: bool
) -> list[Any]:
    """ARGV of the ``commit`` script (shared by the blocking and the asyncio clients)."""
    if ttl_ms is not None and ttl_ms <= 0:
        raise ValueError(f"ttl_ms must be positive or None, got {ttl_ms}")
    return [
        claim.token,
        claim.epoch,
        _as_bytes(outcome),
        int(ttl_ms or 0),
        1 if keep else 0,
        keys.channel,
        LAST_TTL_MS,
    ]


# --------------------------------------------------------------------------- single flight


def default_owner() -> str:
    """``hostname:pid:uuid``: unique per instance, readable in ``Running.owner``."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


class Holder:
    """The caller runs the step: commit its outcome, or release (leaving the block releases).

    The flight's renewer thread renews the lease every lease/3 while the holder is open.
    If renewal is refused (the lease ran out and someone else claimed) or Redis stays
    unreachable for a whole lease, ``lost`` becomes True; ``commit`` is still fenced,
    so a lost holder's commit is refused unless nobody took over.
    """

    def __init__(self, flight: SingleFlight, key: str, keys: Keys, claim: Claimed) -> None:
        self.key = key
        self.keys = keys
        self.claim = claim
        self._flight = flight
        self._lost = False
        self._finished = False
        self.handed_over = False
        """True once a commit found workflows waiting to be resumed (``hand_over``)."""
        self._last_renewed = time.monotonic()
        flight._renewer().add(self)

    @property
    def token(self) -> str:
        return self.claim.token

    @property
    def epoch(self) -> int:
        return self.claim.epoch

    @property
    def lost(self) -> bool:
        """True once the lease is known to be gone (renewal refused or Redis silent a lease)."""
        return self._lost

    @property
    def finished(self) -> bool:
        return self._finished

    def __repr__(self) -> str:
        return f"Holder(key={self.key!r}, token={self.token!r}, lost={self._lost})"

    def _renew(self) -> None:
        """One renewal, called by the flight's renewer thread every lease/3."""
        flight = self._flight
        try:
            ok = flight.claims.renew(self.keys, self.claim, flight.lease_ms)
        except CacheUnavailable as exc:
            if time.monotonic() - self._last_renewed < flight.lease:
                return
            log.warning("lease of %r lost: %s", self.key, exc)
            ok = False
        if self._finished:
            return
        if not ok:
            self._lost = True
            flight._renewer().discard(self)
            return
        self._last_renewed = time.monotonic()

    def _finish(self) -> None:
        if self._finished:
            raise RuntimeError(f"the claim on {self.key!r} was already committed or released")
        self._finished = True
        self._flight._renewer().discard(self)

    def commit(self, outcome: bytes | str, ttl_ms: int | None = None, keep: bool = True) -> bool:
        """Store (if ``keep``) and announce ``outcome``; False if a successor took over.

        A commit Redis refuses (out of memory) or cannot take raises ``CacheUnavailable``
        after releasing the claim where it can: a refused write is no outcome, and
        waiters are told now rather than when the lease runs out.
        """
        self._finish()
        try:
            reply = self._flight.claims.commit_reply(self.keys, self.claim, outcome, ttl_ms, keep)
        except CacheUnavailable:
            with contextlib.suppress(CacheUnavailable):
                self._flight.claims.release(self.keys, self.claim)
            raise
        self.handed_over = reply == 2
        if not reply:
            self._lost = True
        return reply > 0

    def abandon(self) -> None:
        """Stop renewing without releasing: the claim ends when its lease runs out.

        For a process being torn down (terminated, shutting down): whoever ends it may
        still record an outcome for the claim, and waiters take over after the lease.
        """
        self._finish()

    def release(self) -> bool:
        """Give up without an outcome so a waiter runs the step now; False if already lost."""
        self._finish()
        ok = self._flight.claims.release(self.keys, self.claim)
        if not ok:
            self._lost = True
        return ok

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self._finished:
            try:
                self.release()
            except CacheUnavailable:
                if exc is None:
                    raise
                log.warning("could not release %r (the lease will expire)", self.key)


class SingleFlight:
    """Run each step key at most once across processes; everyone else gets its outcome.

    ``acquire(key)`` returns ``Done(outcome)`` or a ``Holder`` that must commit.  Waiting is
    notification-driven over one pub/sub connection per instance, shared by all threads.
    Redis failures surface as ``CacheUnavailable``.  Use one instance per process (it is
    thread-safe); after ``fork`` the child transparently opens its own pub/sub connection.
    """

    #: Added to a holder's remaining lease before a waiter re-checks the claim.
    MARGIN_S = 0.025
    #: Longest wait for the server to confirm a subscription before claiming anyway.
    CONFIRM_S = 2.0

    def __init__(
        self,
        client: redis.Redis,
        keyspace: KeySpace | str,
        *,
        lease: float = 5.0,
        owner: str | None = None,
    ) -> None:
        if lease <= 0:
            raise ValueError(f"lease must be a positive number of seconds, got {lease!r}")
        self.client = client
        self.keyspace = keyspace if isinstance(keyspace, KeySpace) else KeySpace(keyspace)
        self.lease = float(lease)
        self.lease_ms = max(1, round(lease * 1000))
        self.owner = owner or default_owner()
        self.claims = Claims(client)
        self._listener_lock = threading.Lock()
        self._listener: Listener | None = None
        self._listener_pid = os.getpid()
        self._renewer_obj: Renewer | None = None
        self._renewer_pid = os.getpid()

    @classmethod
    def from_url(
        cls,
        url: str,
        keyspace: KeySpace | str,
        *,
        lease: float = 5.0,
        owner: str | None = None,
        timeout: float = 2.0,
    ) -> SingleFlight:
        """A ``SingleFlight`` on a fail-fast client (see ``connect``)."""
        return cls(connect(url, timeout=timeout), keyspace, lease=lease, owner=owner)

    @property
    def where(self) -> str:
        return self.claims.where

    # -- pub/sub

    def _make_pubsub_connection(self) -> Any:
        pool = pool_of(self.client)
        kwargs = dict(pool.connection_kwargs)
        if "maint_notifications_config" in kwargs:  # redis-py >= 6.3, RESP3-only feature
            kwargs.pop("maint_notifications_pool_handler", None)
            kwargs["maint_notifications_config"] = None
        kwargs.update(
            decode_responses=False,
            protocol=2,  # messages as plain replies, not RESP3 pushes
            retry=Retry(ExponentialBackoff(cap=0.05, base=0.01), 0),  # the listener retries
            health_check_interval=0,
        )
        return pool.connection_class(**kwargs)

    def _renewer(self) -> Renewer:
        with self._listener_lock:
            if self._renewer_pid != os.getpid() or self._renewer_obj is None:
                self._renewer_obj, self._renewer_pid = Renewer(self.lease / 3), os.getpid()
            return self._renewer_obj

    def _notifier(self) -> Listener:
        with self._listener_lock:
            if self._listener_pid != os.getpid():  # forked: the parent's thread is not here
                self._listener, self._listener_pid = None, os.getpid()
            if self._listener is None:
                self._listener = Listener(self._make_pubsub_connection)
                # An instance dropped without close() must not leave its thread and socket.
                weakref.finalize(self, self._listener.close)
            return self._listener

    # -- the protocol

    def acquire(self, key: str, *, timeout: float | None = None) -> Done | Holder:
        """``Done(outcome)`` if the step has (or gets) an outcome, else a ``Holder`` to run it.

        Waits while another owner holds the claim: woken by its commit (returning its
        outcome, kept or not) or release (claiming at once), or by its lease running out
        (claiming in its place).  ``timeout`` seconds (None = no limit, 0 = do not wait)
        bound the wait; past it ``ClaimTimeout`` is raised.
        """
        keys = self.keyspace.for_step(key)
        deadline = None if timeout is None else time.monotonic() + timeout
        state = self.claims.claim(keys, self.owner, self.lease_ms)
        if not isinstance(state, Running):  # the common cases need no subscription
            return self._wrap(key, keys, state)
        listener = self._notifier()
        watch = listener.watch(keys.channel)
        try:
            # Subscribed (and confirmed) *before* the claim we wait on: a commit landing
            # between that claim and the wait is still delivered to our mailbox.
            confirm = self.CONFIRM_S if deadline is None else max(0.0, deadline - time.monotonic())
            listener.wait_live(watch, min(confirm, self.CONFIRM_S))
            while True:
                state = self.claims.claim(keys, self.owner, self.lease_ms)
                if not isinstance(state, Running):
                    return self._wrap(key, keys, state)
                wait = wait_for_holder(
                    state, self.lease_ms, self.MARGIN_S, deadline, key, self.keyspace, timeout
                )
                notice = watch.get(wait)
                if notice is not None and notice[:1] == NOTICE_OUTCOME:
                    return Done(notice[1:])
                # released, lease ran out, or deadline: claim again (or time out)
        finally:
            listener.unwatch(watch)

    def _wrap(self, key: str, keys: Keys, state: Done | Claimed) -> Done | Holder:
        if isinstance(state, Done):
            return state
        return Holder(self, key, keys, state)

    def read(self, key: str) -> bytes | None:
        """The stored outcome of ``key``, or None."""
        out = self.keyspace.for_step(key).out
        value = self.claims.call(lambda: self.client.get(out))
        return None if value is None else _as_bytes(value)

    def read_many(self, keys: Iterable[str]) -> list[bytes | None]:
        """Stored outcomes of ``keys`` in order (one MGET)."""
        outs = [self.keyspace.for_step(k).out for k in keys]
        if not outs:
            return []
        values: Sequence[Any] = self.claims.call(lambda: read_many(self.client, outs))
        return [None if v is None else _as_bytes(v) for v in values]

    @contextlib.contextmanager
    def watch_many(self, keys: Iterable[str]) -> Iterator[Notices]:
        """Subscribe to the channels of ``keys`` (confirmed) for a caller that waits without
        claiming, e.g. a producer that sent the work to a worker: subscribe, send, then wait.
        """
        listener = self._notifier()
        watches: dict[str, Watch] = {}
        try:
            for key in keys:
                if key not in watches:
                    watches[key] = listener.watch(self.keyspace.for_step(key).channel)
            for w in watches.values():
                listener.wait_live(w, self.CONFIRM_S)
            yield Notices(watches)
        finally:
            for w in watches.values():
                listener.unwatch(w)

    # -- lifetime

    def subscriptions(self) -> int:
        """Channels the shared pub/sub connection is subscribed to right now."""
        with self._listener_lock:
            listener = self._listener
        return 0 if listener is None else listener.subscriptions()

    def close(self) -> None:
        """Stop the listener thread and close its connection (the client stays open)."""
        with self._listener_lock:
            listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
