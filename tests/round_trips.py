"""A real Redis connection that counts the writes it sends: one per round trip, since a
pipeline is packed and sent at once and a lone command is sent alone."""

from __future__ import annotations

from typing import Any

import redis


class CountingConnection(redis.Connection):
    sends = 0

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        type(self).sends += 1
        super().send_packed_command(command, check_health)


def counting() -> type[CountingConnection]:
    """A fresh subclass, so that counts of different clients stay apart."""
    return type("Counting", (CountingConnection,), {"sends": 0})


def counted_nodes(client: Any) -> type[CountingConnection]:
    """Every node connection of a Cluster client counted from now on (its nodes'
    pools then open counting connections; a Cluster client takes no connection class)."""
    sends = counting()
    for node in client.get_nodes():
        pool = client.get_redis_connection(node).connection_pool
        pool.connection_class = sends
        pool.reset()
    return sends
