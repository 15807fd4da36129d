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
``take_over``
    A waiter found the holder's presence gone (below): delete the lock, only if it still
    holds the token the waiter saw and ``:lock:by`` still names the presence seen gone,
    and announce a release.  The next claim bumps the epoch, fencing the dead holder.

Presence: ``claim`` and ``renew`` also write the holder process's presence id (the
``CLIENT ID`` of one idle connection it keeps, ``presence.py``) to ``:lock:by``.  A
process that dies closes that connection with it, so waiters that see the id gone
from ``CLIENT LIST`` for ``PRESENCE_GRACE_S`` take over without waiting out the lease;
a live holder whose connection dropped renews at once with its new id, which refuses
the takeover.  A paused or partitioned holder stays connected and keeps its lease.

Notifications on the step's channel are ``b"o" + outcome`` (commit) or ``b"r"``
(release), delivered by ``notices.py``; a dispatched step's start adds ``b"s"`` (see
``messages.py``), which other waiters take as a cue to look at the claim again.
Waiters wake on them; if the holder dies silently they wake when its lease runs out
(or its presence is gone) and claim in turn, which is how a crashed holder is taken
over.  Holders' leases are renewed by ``leases.py``.

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

The protocol itself (which script, which keys, what each reply means, how long to
wait) is written once, without I/O, in ``protocol.py``; this module is its blocking
driver and ``aio.py`` its asyncio driver.  Outcomes are opaque ``bytes`` here (the
JSON envelope lives elsewhere); nothing is pickled.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from types import TracebackType
from typing import Any, Self, TypeVar

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from workflow_cache.cache.clients import (
    client_from_url,
    describe,
    notice_nodes,
    publish,
    read_many,
)
from workflow_cache.cache.handoffs import handoff_channel, handoff_notice
from workflow_cache.cache.keys import Keys, KeySpace
from workflow_cache.cache.leases import Renewer
from workflow_cache.cache.lua import register
from workflow_cache.cache.notices import Listener, Notices, Watch
from workflow_cache.cache.presence import Presence, presence_of
from workflow_cache.cache.protocol import (
    EPOCH_TTL_MS,
    LAST_TTL_MS,
    SCRIPTS,
    Call,
    Claimed,
    ClaimState,
    ClaimTimeout,
    Done,
    Effect,
    Hold,
    Pause,
    Plan,
    Present,
    Rules,
    Running,
    Subscribe,
    as_bytes,
    claim_state,
    default_owner,
    performed,
)
from workflow_cache.cache.reaching import Reaching
from workflow_cache.drive import drive_sync
from workflow_cache.store import CacheUnavailable

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
    "Reaching",
    "Running",
    "SingleFlight",
    "claim_state",
    "connect",
    "default_owner",
]

log = logging.getLogger(__name__)

_T = TypeVar("_T")


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
    """The protocol's scripts bound to one blocking client (registered once, run by
    EVALSHA): what performs a plan's :class:`Call`."""

    def __init__(self, client: redis.Redis, *, epoch_ttl_ms: int | None = EPOCH_TTL_MS) -> None:
        self.client = client
        self.where = describe(client)
        self.reaching = Reaching(self.where)
        self._epoch_ttl_ms = int(epoch_ttl_ms or 0)
        self._scripts = register(client, SCRIPTS)

    def call(self, fn: Callable[[], _T]) -> _T:
        """Run ``fn``; a connection failure is ``CacheUnavailable`` naming the server."""
        with self.reaching:
            return fn()

    def run(self, call: Call) -> Any:
        """The reply of one script call."""
        with self.reaching:
            return self._scripts[call.script](keys=call.keys, args=call.args)

    def present(self, presence: int) -> bool:
        """Whether the client ``presence`` is connected now (True if Redis cannot say)."""
        with self.reaching:
            try:
                return bool(self.client.client_list(client_id=[presence]))
            except redis.ResponseError:  # before Redis 6.2: no ID filter, no takeover
                return True

    def claim(
        self, keys: Keys, owner: str, lease_ms: int, presence: int | None = None
    ) -> ClaimState:
        """Done, Running or Claimed (one atomic script)."""
        call = Rules.claim(keys, owner, lease_ms, self._epoch_ttl_ms, presence)
        return claim_state(self.run(call))

    def renew(self, keys: Keys, claim: Claimed, lease_ms: int) -> bool:
        """Extend the lease to ``lease_ms`` from now, if ``claim`` still holds the lock."""
        return bool(self.run(Rules.renew(keys, claim, lease_ms)))

    def take_over(self, keys: Keys, state: Running) -> bool:
        """End ``state``'s claim if it still holds the lock under the same presence."""
        return bool(self.run(Rules.take_over(keys, state)))

    def commit(
        self,
        keys: Keys,
        claim: Claimed,
        outcome: bytes | str,
        ttl_ms: int | None = None,
        keep: bool = True,
    ) -> bool:
        """Fenced: store (if ``keep``) and announce ``outcome``, drop the lock; False if refused
        (2 from the script: committed, with workflows to resume)."""
        return int(self.run(Rules.commit(keys, claim, outcome, ttl_ms, keep)) or 0) > 0

    def release(self, keys: Keys, claim: Claimed) -> bool:
        """Give the claim up without an outcome; waiters are told to claim again at once."""
        return bool(self.run(Rules.release(keys, claim)))


def _call_alive(method: weakref.WeakMethod[Callable[[], None]]) -> None:
    found = method()
    if found is not None:
        found()


# --------------------------------------------------------------------------- single flight


class Holder(Hold):
    """The caller runs the step: commit its outcome, or release (leaving the block releases).

    The flight's renewer thread renews the lease every lease/3 while the holder is open.
    If renewal is refused (the lease ran out and someone else claimed) or Redis stays
    unreachable for a whole lease, ``lost`` becomes True; ``commit`` is still fenced,
    so a lost holder's commit is refused unless nobody took over.
    """

    def __init__(self, flight: SingleFlight, key: str, keys: Keys, claim: Claimed) -> None:
        super().__init__(flight.rules, key, keys, claim)
        self._flight = flight
        flight.renewer().add(self)

    def _run(self, plan: Plan[_T]) -> _T:
        return drive_sync(performed(plan, self._flight.perform))

    def renew(self) -> None:
        """One renewal, called by the flight's renewer thread every lease/3."""
        if not self._run(self.renewing()):
            self._flight.renewer().discard(self)

    def finish(self) -> None:
        super().finish()
        self._flight.renewer().discard(self)

    def commit(self, outcome: bytes | str, ttl_ms: int | None = None, keep: bool = True) -> bool:
        """Store (if ``keep``) and announce ``outcome``; False if a successor took over
        (see :meth:`Hold.committing`)."""
        committed = self._run(self.committing(outcome, ttl_ms, keep))
        if committed and self.handed_over and not self.hands_over:
            self._flight.announce_handoff(self.key, None if keep else outcome)
        return committed

    def recommit(self, outcome: bytes | str, ttl_ms: int | None = None, keep: bool = True) -> bool:
        """The same fenced commit again, after one that could not reach Redis."""
        return self._run(self.recommitting(outcome, ttl_ms, keep))

    def release(self) -> bool:
        """Give up without an outcome so a waiter runs the step now; False if already lost."""
        return self._run(self.releasing())

    def abandon(self) -> None:
        """Stop renewing without releasing: the claim ends when its lease runs out.

        For a process being torn down (terminated, shutting down): whoever ends it may
        still record an outcome for the claim, and waiters take over after the lease.
        """
        self.finish()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self.finished:
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

    MARGIN_S = Rules.MARGIN_S
    CONFIRM_S = Rules.CONFIRM_S

    def __init__(
        self,
        client: redis.Redis,
        keyspace: KeySpace | str,
        *,
        lease: float = 5.0,
        owner: str | None = None,
    ) -> None:
        self.client = client
        self.keyspace = keyspace if isinstance(keyspace, KeySpace) else KeySpace(keyspace)
        self._presence: Presence | None = None
        self._presence_pid = 0
        self.rules = Rules(
            self.keyspace.namespace, lease=lease, owner=owner, presence=self.presence_id
        )
        self.lease = self.rules.lease
        self.lease_ms = self.rules.lease_ms
        self.owner = self.rules.owner
        self.claims = Claims(client)
        self._listener_lock = threading.Lock()
        self._listener: Listener | None = None
        self._listener_pid = os.getpid()
        self._renewer: Renewer | None = None
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

    def presence_id(self) -> int | None:
        """This process's presence id on the flight's server (None on a Cluster, or while
        its presence connection is down: claims then rely on the lease alone)."""
        presence = self._presence
        if presence is None or self._presence_pid != os.getpid():
            with self._listener_lock:
                if self._presence is None or self._presence_pid != os.getpid():
                    self._presence = presence_of(self.client)
                    self._presence_pid = os.getpid()
                    if self._presence is not None:
                        changed = weakref.WeakMethod(self._presence_changed)
                        forget = self._presence.on_change(lambda: _call_alive(changed))
                        weakref.finalize(self, forget)
                presence = self._presence
            if presence is None:
                return None
            return presence.wait_ready(self.CONFIRM_S)
        return presence.cid

    def _presence_changed(self) -> None:
        """Reconnected with a new id: renew every open holder now, recording it."""
        with self._listener_lock:
            renewer = self._renewer if self._renewer_pid == os.getpid() else None
        if renewer is not None:
            renewer.renew_now()

    def renewer(self) -> Renewer:
        """The thread renewing this flight's open holders (this process's own)."""
        with self._listener_lock:
            if self._renewer_pid != os.getpid() or self._renewer is None:
                self._renewer, self._renewer_pid = Renewer(self.lease / 3), os.getpid()
            return self._renewer

    def notifier(self) -> Listener:
        """The listener of this flight's notices (this process's own)."""
        with self._listener_lock:
            if self._listener_pid != os.getpid():  # forked: the parent's thread is not here
                self._listener, self._listener_pid = None, os.getpid()
            if self._listener is None:
                retry = Retry(ExponentialBackoff(cap=0.05, base=0.01), 0)
                self._listener = Listener(notice_nodes(self.client, retry))
                # An instance dropped without close() must not leave its thread and socket.
                weakref.finalize(self, self._listener.close)
            return self._listener

    # -- the driver

    def perform(self, effect: Effect, watching: list[tuple[Listener, Watch]] | None = None) -> Any:
        """Do what ``effect`` says, blocking; ``watching`` keeps one acquire's watch."""
        if isinstance(effect, Call):
            return self.claims.run(effect)
        if isinstance(effect, Present):
            return self.claims.present(effect.presence)
        if isinstance(effect, Pause):
            time.sleep(effect.seconds)
            return None
        assert watching is not None, "only acquire subscribes or listens"
        if isinstance(effect, Subscribe):
            listener = self.notifier()
            watch = listener.watch(effect.channel)
            watching.append((listener, watch))
            listener.wait_live(watch, effect.confirm_s)
            return None
        return watching[-1][1].get(effect.seconds)

    def announce_handoff(self, key: str, given: bytes | str | None = None) -> None:
        """Tell the fleet that runs wait in ``key``'s handoff set (see ``handoffs.py``).
        Never raises: the commit stands, and the reconciler finds the runs otherwise."""
        notice = handoff_notice(key, given)
        channel = handoff_channel(self.keyspace)
        try:
            self.claims.call(lambda: publish(self.client, channel, notice))
        except CacheUnavailable as exc:
            log.warning("step %r: its waiting runs left to the reconciler: %s", key, exc)

    def take_over_if_gone(self, key: str, state: Running) -> bool:
        """End ``state``'s claim if its holder's presence stays gone for the grace (see
        ``Rules.taking_over``); True if the caller may claim now."""
        keys = self.keyspace.for_step(key)
        return drive_sync(performed(self.rules.taking_over(keys, state), self.perform))

    def acquire(self, key: str, *, timeout: float | None = None) -> Done | Holder:
        """``Done(outcome)`` if the step has (or gets) an outcome, else a ``Holder`` to run it.

        Waits while another owner holds the claim (see ``Rules.acquire``); ``timeout``
        seconds (None = no limit, 0 = do not wait) bound the wait; past it
        ``ClaimTimeout`` is raised.
        """
        keys = self.keyspace.for_step(key)
        watching: list[tuple[Listener, Watch]] = []
        perform = functools.partial(self.perform, watching=watching)
        try:
            state = drive_sync(performed(self.rules.acquire(key, keys, timeout), perform))
        finally:
            for listener, watch in watching:
                listener.unwatch(watch)
        if isinstance(state, Done):
            return state
        return Holder(self, key, keys, state)

    def read(self, key: str) -> bytes | None:
        """The stored outcome of ``key``, or None."""
        out = self.keyspace.for_step(key).out
        value = self.claims.call(lambda: self.client.get(out))
        return None if value is None else as_bytes(value)

    def read_many(self, keys: Iterable[str]) -> list[bytes | None]:
        """Stored outcomes of ``keys`` in order (one MGET)."""
        outs = [self.keyspace.for_step(k).out for k in keys]
        if not outs:
            return []
        values: Sequence[Any] = self.claims.call(lambda: read_many(self.client, outs))
        return [None if v is None else as_bytes(v) for v in values]

    @contextlib.contextmanager
    def watch_many(self, keys: Iterable[str]) -> Iterator[Notices]:
        """Subscribe to the channels of ``keys`` (confirmed) for a caller that waits without
        claiming, e.g. a producer that sent the work to a worker: subscribe, send, then wait.
        """
        listener = self.notifier()
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
