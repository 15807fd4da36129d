"""Redis key names for step outcomes, claims and notifications in one namespace.

Every key of a step is ``wfc:{namespace}:{<step key>}:<suffix>`` with literal braces
around the step key: Redis Cluster hashes only the text inside the first ``{...}``, so
a step's outcome, lock, epoch and queued marker share one hash slot and one Lua script
may touch them all.  The namespace is written without braces and may not contain ``{``,
``}`` or ``:`` so it can never be mistaken for the hash tag nor run into a neighbouring
namespace.

Pure functions and values only: nothing here talks to Redis.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PREFIX", "KeySpace", "Keys", "escape_glob"]

PREFIX = "wfc"
_FORBIDDEN_IN_NAMESPACE = "{}:"
_GLOB_SPECIALS = "\\*?[]"


def escape_glob(text: str) -> str:
    """Escape the characters that are special in a Redis ``MATCH``/``KEYS`` glob."""
    return "".join("\\" + ch if ch in _GLOB_SPECIALS else ch for ch in text)


def _check_namespace(namespace: str) -> str:
    if not isinstance(namespace, str):
        raise TypeError(f"namespace must be a str, got {type(namespace).__name__}")
    if not namespace:
        raise ValueError("namespace must not be empty")
    bad = sorted({ch for ch in namespace if ch in _FORBIDDEN_IN_NAMESPACE})
    if bad:
        raise ValueError(
            f"namespace {namespace!r} contains {', '.join(repr(ch) for ch in bad)}; "
            "a namespace may not contain '{', '}' or ':' (they delimit the Redis key parts)"
        )
    return namespace


def _check_step_key(key: str) -> str:
    if not isinstance(key, str):
        raise TypeError(f"step key must be a str, got {type(key).__name__}")
    if not key:
        raise ValueError("step key must not be empty")
    if key.startswith("}"):
        # "{}..." is an empty hash tag, which makes Redis Cluster hash the whole key
        # name, so the step's keys would land in different slots.
        raise ValueError(f"step key {key!r} must not start with '}}'")
    return key


@dataclass(frozen=True, slots=True)
class Keys:
    """The Redis names that belong to one step; all share one cluster hash slot."""

    out: str
    """String key holding the stored outcome (opaque bytes)."""
    lock: str
    """String key holding ``"<owner>|<epoch>"`` while a holder runs the step."""
    epoch: str
    """Integer key that only grows: the fencing token of the latest claim."""
    channel: str
    """Pub/sub channel on which commits and releases are announced to waiters."""
    queued: str
    """String key holding the task id of the one message sent for this step, until a
    worker starts it (or the marker expires because the message was lost)."""
    last: str
    """String key holding ``"<epoch>|<outcome>"`` of the latest outcome that was not kept,
    for a minute: a waiter that missed its notice still finds the outcome it waited for."""
    waiters: str
    """Set of ``"<run id>|<batch>"``: workflow runs suspended until this step commits."""
    handoff: str
    """Set the commit moves ``waiters`` into, atomically, for the committer to resume."""


class KeySpace:
    """Key naming for one namespace: ``KeySpace("prod").for_step("user:1").out``."""

    __slots__ = ("_prefix", "namespace")

    def __init__(self, namespace: str) -> None:
        self.namespace = _check_namespace(namespace)
        self._prefix = f"{PREFIX}:{namespace}:"

    def __repr__(self) -> str:
        return f"KeySpace({self.namespace!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, KeySpace) and other.namespace == self.namespace

    def __hash__(self) -> int:
        return hash((KeySpace, self.namespace))

    def for_step(self, key: str) -> Keys:
        """All names for the step ``key`` (refuses an empty key)."""
        base = f"{self._prefix}{{{_check_step_key(key)}}}"
        return Keys(
            out=f"{base}:out",
            lock=f"{base}:lock",
            epoch=f"{base}:epoch",
            channel=f"{base}:done",
            queued=f"{base}:queued",
            last=f"{base}:last",
            waiters=f"{base}:waiters",
            handoff=f"{base}:handoff",
        )

    def out(self, key: str) -> str:
        """Just the outcome key of ``key``: the hot path of every cache read."""
        return f"{self._prefix}{{{_check_step_key(key)}}}:out"

    @property
    def pattern(self) -> str:
        """``SCAN MATCH`` pattern for every key of this namespace (and nothing else)."""
        return f"{escape_glob(self._prefix)}*"
