"""The bookkeeping of one shared pub/sub connection, without I/O: who watches which
channel, which (UN)SUBSCRIBE commands are due, which subscriptions the server confirmed.

The thread listener (``notices.py``) and the asyncio one (``notices_async.py``) keep
their own connection and their own way of waiting; both keep these counts, so a
channel is subscribed once however many callers watch it, and a caller's wait counts
only once the server confirmed the subscription it relies on.

``sharded`` counts speak sharded pub/sub (``SSUBSCRIBE``, ``smessage``...), which a
Cluster node serves for the slots it owns. There the server may also end a
subscription by itself when the channel's slot leaves the node: ``received`` then
tells the caller, whose watchers must subscribe again on the slot's new owner.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, NamedTuple, TypeVar

from workflow_cache.cache.protocol import as_bytes

__all__ = ["CLASSIC", "SHARDED", "Mailbox", "Subscriptions", "Words"]


class Words(NamedTuple):
    """The commands one kind of pub/sub sends and the kinds of message it receives."""

    subscribe: str
    unsubscribe: str
    message: bytes
    subscribed: bytes
    unsubscribed: bytes


CLASSIC = Words("SUBSCRIBE", "UNSUBSCRIBE", b"message", b"subscribe", b"unsubscribe")
SHARDED = Words("SSUBSCRIBE", "SUNSUBSCRIBE", b"smessage", b"ssubscribe", b"sunsubscribe")


class Mailbox:
    """One waiter's inbox for the notices of one channel: ``deliver`` puts a notice in."""

    __slots__ = ("channel", "deliver")

    def __init__(self, channel: bytes, deliver: Callable[[bytes], None]) -> None:
        self.channel = channel
        self.deliver = deliver


M = TypeVar("M", bound=Mailbox)


class _Channel(Generic[M]):
    """Subscription state of one channel on the shared connection."""

    __slots__ = ("acked", "left", "sent", "subscribed", "unacked", "watches")

    def __init__(self) -> None:
        self.watches: set[M] = set()
        self.subscribed = False  # the last command sent for it was SUBSCRIBE
        self.sent = 0  # SUBSCRIBE commands sent since connecting
        self.acked = 0  # subscribe confirmations received since connecting
        self.left = 0  # UNSUBSCRIBE commands sent since connecting
        self.unacked = 0  # unsubscribe confirmations received since connecting

    @property
    def live(self) -> bool:
        return self.subscribed and self.acked == self.sent

    @property
    def idle(self) -> bool:
        """Nobody watches it and no confirmation is still to come: it can be forgotten."""
        return (
            not self.watches
            and not self.subscribed
            and self.acked == self.sent
            and self.unacked == self.left
        )


class Subscriptions(Generic[M]):
    """Channels the connection should be subscribed to, and what the server confirmed.

    Not thread-safe: the thread listener holds its lock around every call.
    """

    __slots__ = ("_channels", "_dirty", "words")

    def __init__(self, words: Words = CLASSIC) -> None:
        self.words = words
        self._channels: dict[bytes, _Channel[M]] = {}
        self._dirty: set[bytes] = set()

    def add(self, box: M) -> bool:
        """Count ``box`` as watching its channel; True if a SUBSCRIBE is now due."""
        ch = self._channels.get(box.channel)
        if ch is None:
            ch = self._channels[box.channel] = _Channel()
        ch.watches.add(box)
        if ch.subscribed:
            return False
        self._dirty.add(box.channel)
        return True

    def remove(self, box: M) -> bool:
        """Stop counting ``box``; True if an UNSUBSCRIBE is now due."""
        ch = self._channels.get(box.channel)
        if ch is None:
            return False
        ch.watches.discard(box)
        if ch.watches:
            return False
        self._dirty.add(box.channel)
        return True

    def due(self) -> list[tuple[str, bytes]]:
        """The commands that bring the server in line with the watchers, counted as sent."""
        commands: list[tuple[str, bytes]] = []
        for name in self._dirty:
            ch = self._channels.get(name)
            if ch is None:
                continue
            if ch.watches and not ch.subscribed:
                ch.subscribed = True
                ch.sent += 1
                commands.append((self.words.subscribe, name))
            elif not ch.watches and ch.subscribed:
                ch.subscribed = False
                ch.left += 1
                commands.append((self.words.unsubscribe, name))
            if ch.idle:
                del self._channels[name]
        self._dirty.clear()
        return commands

    def received(self, reply: Any) -> bool | list[M]:
        """Hand a message to its channel's watchers; True if it confirmed a subscription.

        A list: the server ended a subscription nobody asked to end (its slot left the
        node); those are its watchers, no longer counted here.
        """
        if not isinstance(reply, list) or len(reply) < 3:
            return False  # PONG
        kind, name = as_bytes(reply[0]), as_bytes(reply[1])
        ch = self._channels.get(name)
        if ch is None:
            return False
        if kind == self.words.message:
            notice = as_bytes(reply[2])
            for box in ch.watches:
                box.deliver(notice)
            return False
        if kind == self.words.unsubscribed:
            if ch.unacked < ch.left:
                ch.unacked += 1  # the answer to an UNSUBSCRIBE sent
                if ch.idle:
                    del self._channels[name]
                return False
            return self.drop(name)
        if kind != self.words.subscribed:
            return False
        ch.acked += 1
        if ch.idle:
            del self._channels[name]
        return True

    def drop(self, channel: bytes) -> list[M]:
        """Forget ``channel`` without unsubscribing (the server holds no subscription
        for it on this connection any more); returns the watchers it had."""
        ch = self._channels.pop(channel, None)
        self._dirty.discard(channel)
        return [] if ch is None else list(ch.watches)

    def channels(self) -> list[bytes]:
        """Every channel watched or awaiting a reply."""
        return list(self._channels)

    def reset(self) -> None:
        """A new (or lost) connection: nothing is subscribed, every watched channel is due."""
        for name, ch in list(self._channels.items()):
            ch.subscribed, ch.sent, ch.acked, ch.left, ch.unacked = False, 0, 0, 0, 0
            if ch.watches:
                self._dirty.add(name)
            else:
                del self._channels[name]

    def live(self, channel: bytes) -> bool:
        """True once the server confirmed the subscription watchers of ``channel`` rely on."""
        ch = self._channels.get(channel)
        return ch is not None and ch.live

    def watched(self) -> bool:
        return any(ch.watches for ch in self._channels.values())

    def subscribed(self) -> int:
        """Channels currently subscribed (for tests and benchmarks)."""
        return sum(1 for ch in self._channels.values() if ch.subscribed)
