"""The claim protocol once, without I/O: which script to run on which keys, what each
reply means, and how long to wait next.

A plan here is a generator that yields *effects* as data (:class:`Call` a Lua script,
:class:`Subscribe` to a step's notices, :class:`Listen` for the next one) and receives
what performing them gave.  The blocking driver (``claims.py``) and the asyncio driver
(``aio.py``) only perform effects, so they run the same scripts on the same keys and
wait the same times; ``performed`` turns a plan into what ``drive.py`` runs.

The scripts and the keys they touch are described in ``claims.py``; outcomes are
opaque ``bytes`` here.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, TypeVar

from workflow_cache.cache.keys import Keys
from workflow_cache.store import CacheUnavailable

__all__ = [
    "EPOCH_TTL_MS",
    "LAST_TTL_MS",
    "NOTICE_OUTCOME",
    "NOTICE_RELEASED",
    "NOTICE_STARTED",
    "PRESENCE_GRACE_S",
    "PRESENCE_POLL_S",
    "SCRIPTS",
    "Call",
    "ClaimTimeout",
    "Claimed",
    "Done",
    "Effect",
    "Hold",
    "Listen",
    "Pause",
    "Present",
    "Rules",
    "Running",
    "Subscribe",
    "claim_state",
    "default_owner",
    "performed",
    "presence_key",
    "started_by",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

EPOCH_TTL_MS = 7 * 24 * 3600 * 1000
"""Expiry of a step's epoch key, refreshed at each claim (see ``claims.py``)."""

LAST_TTL_MS = 60_000
"""How long an outcome that is not kept stays readable by the callers that waited for it
(``Keys.last``), in case its notice did not reach them."""

NOTICE_OUTCOME = b"o"
"""First byte of a commit's notice; the outcome follows."""
NOTICE_RELEASED = b"r"
"""The whole notice of a release: claim again now."""
NOTICE_STARTED = b"s"
"""First byte of a dispatched step's start: ``s<presence id> <token>`` of its holder."""

PRESENCE_POLL_S = 0.25
"""How often a waiter checks that the holder's process is still connected to Redis."""
PRESENCE_GRACE_S = 0.5
"""How long a holder's presence must stay gone before a waiter takes over: time for a
live holder whose connection dropped (a blip, a Redis restart) to reconnect and renew
with its new presence id, which cancels the takeover (see ``presence.py``)."""


def presence_key(keys: Keys) -> str:
    """Beside the lock, while a holder holds it: its process's presence id (CLIENT ID)."""
    return f"{keys.lock}:by"


class ClaimTimeout(TimeoutError):
    """``acquire`` gave up: another holder kept the step running past the caller's timeout."""


# --------------------------------------------------------------------------- states


@dataclass(frozen=True, slots=True)
class Done:
    """The step has an outcome; nobody needs to run it."""

    outcome: bytes


@dataclass(frozen=True, slots=True)
class Running:
    """Another owner holds the claim; its lease runs out in ``remaining_ms`` unless renewed.

    ``token`` is the lock's whole value; ``presence`` the holder process's presence id,
    None when its claim recorded none (a Cluster, a parked claim, an older client)."""

    owner: str
    remaining_ms: int
    token: str = ""
    presence: int | None = None


@dataclass(frozen=True, slots=True)
class Claimed:
    """The caller holds the claim: ``token`` is ``"<owner>|<epoch>"``."""

    token: str
    epoch: int

    @property
    def owner(self) -> str:
        return self.token.rpartition("|")[0]


ClaimState = Done | Running | Claimed


def as_bytes(value: bytes | str | memoryview) -> bytes:
    """A reply (or argument) as bytes, whichever form the client gave it in."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    return bytes(value)


def as_text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def claim_state(reply: Any) -> ClaimState:
    """The reply of the ``claim`` (or ``start``) script as Done, Running or Claimed."""
    kind = as_text(reply[0])
    if kind == "done":
        return Done(as_bytes(reply[1]))
    if kind == "running":
        token = as_text(reply[1])
        by = as_text(reply[3]) if len(reply) > 3 else ""
        return Running(
            owner=token.rpartition("|")[0],
            remaining_ms=int(reply[2]),
            token=token,
            presence=int(by) if by.isdigit() else None,
        )
    return Claimed(token=as_text(reply[1]), epoch=int(reply[2]))


def started_by(notice: bytes) -> Running | None:
    """The holder a start notice names (``NOTICE_STARTED``), None for any other notice."""
    if notice[:1] != NOTICE_STARTED:
        return None
    presence, _, token = as_text(notice[1:]).partition(" ")
    if not presence.isdigit() or not token:
        return None
    return Running(token.rpartition("|")[0], -1, token, int(presence))


def default_owner() -> str:
    """``hostname:pid:uuid``: unique per instance, readable in ``Running.owner``."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


# --------------------------------------------------------------------------- effects

SCRIPTS = ("claim", "renew", "commit", "release", "take_over", "delete_if_same")
"""The scripts a plan here (or in ``envelopes.py``) may call; a driver registers them."""


@dataclass(frozen=True, slots=True)
class Call:
    """Run ``lua/<script>.lua`` with these KEYS and ARGV; the plan gets the raw reply."""

    script: str
    keys: tuple[str, ...]
    args: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class Subscribe:
    """Watch ``channel`` for this acquire, and wait up to ``confirm_s`` for the server to
    confirm it: a notice published after the confirmation cannot be missed."""

    channel: str
    confirm_s: float


@dataclass(frozen=True, slots=True)
class Listen:
    """Wait up to ``seconds`` for the next notice on the watched channel (None if none)."""

    seconds: float


@dataclass(frozen=True, slots=True)
class Present:
    """Is the client ``presence`` connected to Redis now (``CLIENT LIST ID``)? A bool."""

    presence: int


@dataclass(frozen=True, slots=True)
class Pause:
    """Wait ``seconds`` (a caller with no notice to wait on)."""

    seconds: float


Effect = Call | Subscribe | Listen | Present | Pause
Plan = Generator[Effect, Any, T]


def performed(plan: Plan[T], perform: Callable[[Effect], Any]) -> Generator[Any, Any, T]:
    """``plan`` with each effect handed to ``perform``: a plan of thunks for ``drive.py``.

    What ``perform`` raises goes back into the plan, which decides what it means.
    """
    try:
        effect = next(plan)
        while True:
            try:
                reply = yield functools.partial(perform, effect)
            except Exception as exc:
                effect = plan.throw(exc)
            else:
                effect = plan.send(reply)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
    finally:
        plan.close()


# --------------------------------------------------------------------------- the rules


class Rules:
    """One flight's side of the protocol: its owner string, lease and margins."""

    #: Added to a holder's remaining lease before a waiter re-checks the claim.
    MARGIN_S = 0.025
    #: Longest wait for the server to confirm a subscription before claiming anyway.
    CONFIRM_S = 2.0

    __slots__ = ("clock", "epoch_ttl_ms", "lease", "lease_ms", "namespace", "owner", "presence")

    def __init__(
        self,
        namespace: str,
        *,
        lease: float,
        owner: str | None = None,
        epoch_ttl_ms: int | None = EPOCH_TTL_MS,
        clock: Callable[[], float] = time.monotonic,
        presence: Callable[[], int | None] | None = None,
    ) -> None:
        if lease <= 0:
            raise ValueError(f"lease must be a positive number of seconds, got {lease!r}")
        self.namespace = namespace
        self.lease = float(lease)
        self.lease_ms = max(1, round(lease * 1000))
        self.owner = owner or default_owner()
        self.epoch_ttl_ms = int(epoch_ttl_ms or 0)
        self.clock = clock
        self.presence = presence or _absent
        """This process's presence id now (None: claims record none, lease only)."""

    # -- the four scripts

    @staticmethod
    def claim(
        keys: Keys, owner: str, lease_ms: int, epoch_ttl_ms: int, presence: int | None = None
    ) -> Call:
        if lease_ms <= 0:
            raise ValueError(f"lease_ms must be positive, got {lease_ms}")
        return Call(
            "claim",
            (keys.out, keys.lock, keys.epoch, presence_key(keys)),
            (owner, int(lease_ms), epoch_ttl_ms, _id(presence)),
        )

    @staticmethod
    def renew(keys: Keys, claim: Claimed, lease_ms: int, presence: int | None = None) -> Call:
        return Call(
            "renew", (keys.lock, presence_key(keys)), (claim.token, int(lease_ms), _id(presence))
        )

    @staticmethod
    def take_over(keys: Keys, state: Running) -> Call:
        """End ``state``'s claim if it is still the lock's and its presence still gone."""
        return Call(
            "take_over",
            (keys.lock, presence_key(keys)),
            (state.token, _id(state.presence), keys.channel),
        )

    @staticmethod
    def commit(
        keys: Keys,
        claim: Claimed,
        outcome: bytes | str,
        ttl_ms: int | None,
        keep: bool,
        take: bool = False,
    ) -> Call:
        """The fenced commit; with the waiters and handoff keys, so workflow runs
        suspended on the key are handed over in the same step (and, with ``take``,
        taken by this committer in it too)."""
        if ttl_ms is not None and ttl_ms <= 0:
            raise ValueError(f"ttl_ms must be positive or None, got {ttl_ms}")
        return Call(
            "commit",
            (
                keys.out,
                keys.lock,
                keys.epoch,
                keys.last,
                keys.waiters,
                keys.handoff,
                presence_key(keys),
            ),
            (
                claim.token,
                claim.epoch,
                as_bytes(outcome),
                int(ttl_ms or 0),
                1 if keep else 0,
                keys.channel,
                LAST_TTL_MS,
                1 if take else 0,
            ),
        )

    @staticmethod
    def release(keys: Keys, claim: Claimed) -> Call:
        return Call("release", (keys.lock, presence_key(keys)), (claim.token, keys.channel))

    # -- acquiring

    def acquire(self, key: str, keys: Keys, timeout: float | None) -> Plan[Done | Claimed]:
        """``Done`` or ``Claimed``, waiting while another owner holds the claim: woken by
        its commit (its outcome) or release (claim again), or by its lease running out
        (claim in its place), or by its process's presence staying gone for
        ``PRESENCE_GRACE_S`` (take over at once).  Past ``timeout`` seconds (None: no
        limit, 0: do not wait at all, not even for a subscription) ``ClaimTimeout``."""
        clock = self.clock
        deadline = None if timeout is None else clock() + timeout
        state = claim_state((yield self._claim(keys)))
        if not isinstance(state, Running):  # the common cases need no subscription
            return state
        left = self._left(deadline, state, key, timeout, clock())
        # Subscribed (and confirmed) *before* the claim we wait on: a commit landing
        # between that claim and the wait is still delivered to our mailbox.
        yield Subscribe(keys.channel, self.CONFIRM_S if left is None else min(left, self.CONFIRM_S))
        while True:
            state = claim_state((yield self._claim(keys)))
            if not isinstance(state, Running):
                return state
            now = clock()
            left = self._left(deadline, state, key, timeout, now)
            until = now + self.wait_for(state, left)
            gone_at: float | None = None  # when the holder's presence was first seen gone
            while True:  # until the lease (or deadline) is due: listen, checking presence
                wait = until - now
                if state.presence is not None:
                    poll = PRESENCE_POLL_S if gone_at is None else gone_at + PRESENCE_GRACE_S
                    wait = min(wait, poll if gone_at is None else poll - now)
                notice = yield Listen(max(wait, 0.0))
                if notice is not None:
                    if notice[:1] == NOTICE_OUTCOME:
                        return Done(notice[1:])
                    break  # released: claim again now
                now = clock()
                if now >= until or state.presence is None:
                    break  # the lease ran out (or the deadline came): claim again
                if (yield Present(state.presence)):
                    gone_at = None
                elif gone_at is None:
                    gone_at = now
                elif now >= gone_at + PRESENCE_GRACE_S:
                    log.info("step %r: holder %s is gone; taking over", key, state.owner)
                    yield self.take_over(keys, state)
                    break  # claim again (a refused takeover: the holder came back)

    def taking_over(self, keys: Keys, state: Running) -> Plan[bool]:
        """For a caller that does not wait (a worker given a step another process holds):
        True once the claim of a holder whose presence stays gone for the grace is ended,
        so the caller may claim now; False while the holder is (or may be) alive."""
        if state.presence is None or (yield Present(state.presence)):
            return False
        yield Pause(PRESENCE_GRACE_S)
        if (yield Present(state.presence)):
            return False
        log.info("step holder %s is gone; taking over", state.owner)
        return bool((yield self.take_over(keys, state)))

    def _claim(self, keys: Keys) -> Call:
        return self.claim(keys, self.owner, self.lease_ms, self.epoch_ttl_ms, self.presence())

    def wait_for(self, state: Running, left: float | None) -> float:
        """Seconds to wait for ``state``'s holder: its lease left plus a margin, within
        the ``left`` seconds of the caller's deadline."""
        remaining = state.remaining_ms if state.remaining_ms >= 0 else self.lease_ms
        wait = remaining / 1000 + self.MARGIN_S
        return wait if left is None else min(wait, left)

    def _left(
        self, deadline: float | None, state: Running, key: str, timeout: float | None, now: float
    ) -> float | None:
        if deadline is None:
            return None
        left = deadline - now
        if left <= 0:
            raise ClaimTimeout(
                f"step {key!r} in namespace {self.namespace!r} is still "
                f"running under {state.owner!r} after {timeout:g} s"
            )
        return left


def _absent() -> int | None:
    return None


def _id(presence: int | None) -> str:
    return "" if presence is None else str(presence)


# --------------------------------------------------------------------------- holding


class Hold:
    """What the caller that runs a step knows about its claim, and the plans to end it.

    ``lost`` turns True once the lease is known gone (renewal refused, Redis silent for
    a whole lease, a commit or release refused); ``commit`` stays fenced, so a lost
    holder's commit is refused unless nobody took over.
    """

    def __init__(self, rules: Rules, key: str, keys: Keys, claim: Claimed) -> None:
        self.rules = rules
        self.key = key
        self.keys = keys
        self.claim = claim
        self.lost = False
        self.finished = False
        self.handed_over = False
        """True once a commit found workflows waiting to be resumed (``hand_over``)."""
        self.hands_over = False
        """True for a committer that resumes the runs its commit hands over itself (a
        dispatched step's worker): its commit takes them (``taken``); any other
        committer announces them on the handoff channel."""
        self.taken: list[bytes] = []
        """The waiter entries the commit took, for ``hands_over``."""
        self.last_renewed = rules.clock()

    @property
    def token(self) -> str:
        return self.claim.token

    @property
    def epoch(self) -> int:
        return self.claim.epoch

    def __repr__(self) -> str:
        return f"{type(self).__name__}(key={self.key!r}, token={self.token!r}, lost={self.lost})"

    def finish(self) -> None:
        """Mark the claim ended here (commit, release, park or abandon): once only."""
        if self.finished:
            raise RuntimeError(f"the claim on {self.key!r} was already committed or released")
        self.finished = True

    def renewing(self) -> Plan[bool]:
        """One renewal; True while the holder should be renewed again."""
        rules = self.rules
        try:
            renew = Rules.renew(self.keys, self.claim, rules.lease_ms, rules.presence())
            ok = bool((yield renew))
        except CacheUnavailable as exc:
            if rules.clock() - self.last_renewed < rules.lease:
                return True
            log.warning("lease of %r lost: %s", self.key, exc)
            ok = False
        if self.finished:
            return False
        if not ok:
            self.lost = True
            return False
        self.last_renewed = rules.clock()
        return True

    def committing(self, outcome: bytes | str, ttl_ms: int | None, keep: bool) -> Plan[bool]:
        """Store (if ``keep``) and announce ``outcome``; False if a successor took over.

        A commit Redis refuses (out of memory) or cannot take raises ``CacheUnavailable``
        after releasing the claim where it can: a refused write is no outcome, and
        waiters are told now rather than when the lease runs out.
        """
        self.finish()
        try:
            return (yield from self.recommitting(outcome, ttl_ms, keep))
        except CacheUnavailable:
            with contextlib.suppress(CacheUnavailable):
                yield Rules.release(self.keys, self.claim)
            raise

    def recommitting(self, outcome: bytes | str, ttl_ms: int | None, keep: bool) -> Plan[bool]:
        """The fenced commit alone: also the same commit tried again, once Redis answers,
        by a holder whose first commit could not reach it."""
        call = Rules.commit(self.keys, self.claim, outcome, ttl_ms, keep, self.hands_over)
        answer = yield call
        if isinstance(answer, list):  # {2, members}: handed over and taken here
            self.taken = [m if isinstance(m, bytes) else str(m).encode() for m in answer[1]]
            answer = answer[0]
        reply = int(answer or 0)
        self.handed_over = reply == 2
        if not reply:
            self.lost = True
        return reply > 0

    def releasing(self) -> Plan[bool]:
        """Give up without an outcome so a waiter claims now; False if already lost."""
        self.finish()
        ok = bool((yield Rules.release(self.keys, self.claim)))
        if not ok:
            self.lost = True
        return ok
