"""A batch of scripts on one server is one round trip: a bare EVALSHA per call, no
``SCRIPT EXISTS`` before it, and a script the server forgot is loaded and run again."""

from __future__ import annotations

import redis

from tests.round_trips import counting
from workflow_cache.cache.claims import SingleFlight
from workflow_cache.cache.clients import client_from_url
from workflow_cache.cache.messages import Busy, Send, StepMessages


def messages_on(url: str, namespace: str, connection_class: type) -> StepMessages:
    client = client_from_url(url, connection_class=connection_class)
    return StepMessages(SingleFlight(client, namespace, lease=5))


def command_calls(node: redis.Redis, name: str) -> int:
    return int(node.info("commandstats").get(f"cmdstat_{name}", {}).get("calls", 0))


def test_a_batch_of_known_scripts_is_one_round_trip(
    redis_url: str, redis_client: redis.Redis, namespace: str
) -> None:
    sends = counting()
    messages = messages_on(redis_url, namespace, sends)
    messages.enqueue_many(["warm-up"], ["t"], 10.0)  # the script is known to the server
    keys = [f"k{i}" for i in range(50)]
    ids = [f"t{i}" for i in range(50)]
    exists = command_calls(redis_client, "script|exists")
    before = sends.sends
    assert messages.enqueue_many(keys, ids, 10.0) == [Send(i, since=1) for i in ids]
    assert sends.sends - before == 1
    assert command_calls(redis_client, "script|exists") == exists


def test_a_batch_after_script_flush_loads_the_script_and_runs_each_call_once(
    redis_url: str, redis_client: redis.Redis, namespace: str
) -> None:
    messages = messages_on(redis_url, namespace, counting())
    messages.enqueue_many(["warm-up"], ["t"], 10.0)
    redis_client.script_flush()
    keys = [f"k{i}" for i in range(20)]
    ids = [f"t{i}" for i in range(20)]
    assert messages.enqueue_many(keys, ids, 10.0) == [Send(i, since=1) for i in ids]
    messages.sent_many(keys, ids, [60.0] * len(keys))
    assert all(redis_client.pttl(messages.keys(k).queued) > 10_000 for k in keys)
    again = messages.enqueue_many(keys, [f"u{i}" for i in range(20)], 10.0)
    assert again == [Busy(i, since=1) for i in ids]
