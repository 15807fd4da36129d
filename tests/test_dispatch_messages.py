"""The message-side scripts against a real Redis: queued marker, start, park, fail_task."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from workflow_cache.cache.claims import Done, Holder, Running, SingleFlight
from workflow_cache.cache.messages import Busy, Send, StepMessages
from workflow_cache.cache.protocol import started_by

TTL = 30.0


@pytest.fixture
def messages(redis_client: redis.Redis, namespace: str) -> Iterator[StepMessages]:
    flight = SingleFlight(redis_client, namespace, lease=5)
    yield StepMessages(flight)
    flight.close()


def started(messages: StepMessages, key: str, task_id: str) -> Holder:
    holder = messages.start(key, task_id)
    assert isinstance(holder, Holder), holder
    return holder


def test_one_caller_of_many_gets_to_send(messages: StepMessages) -> None:
    first = messages.enqueue_many(["k"], ["t1"], TTL)[0]
    assert first == Send("t1", since=1)
    for other in ("t2", "t3"):
        assert messages.enqueue_many(["k"], [other], TTL)[0] == Busy("t1", since=1)
    holder = started(messages, "k", "t1")
    busy = messages.enqueue_many(["k"], ["t4"], TTL)[0]
    assert isinstance(busy, Busy) and (busy.holder, busy.since) == ("claimed", 1)
    assert busy.running is not None and busy.running.token == holder.token
    assert busy.running.presence == messages.flight.presence_id() is not None
    holder.commit(b"v")
    assert messages.enqueue_many(["k"], ["t5"], TTL)[0] == Done(b"v")


def test_start_never_waits_on_a_running_or_committed_key(messages: StepMessages) -> None:
    holder = started(messages, "k", "t1")
    running = messages.start("k", "t2")
    assert isinstance(running, Running) and running.owner.startswith("t1@")
    holder.commit(b"v")
    assert isinstance(messages.start("k", "t3"), Done)


def test_starting_drops_the_queued_marker(messages: StepMessages) -> None:
    messages.enqueue_many(["k"], ["t1"], TTL)
    queued = messages.keys("k").queued
    assert messages.flight.client.get(queued) == b"t1"
    started(messages, "k", "t1")
    assert messages.flight.client.get(queued) is None


def test_a_parked_claim_is_taken_up_only_by_the_same_task(messages: StepMessages) -> None:
    holder = started(messages, "k", "t1")
    assert messages.park(holder, "t1", 10)
    assert isinstance(messages.start("k", "other"), Running)  # a duplicate: acked at once
    assert messages.enqueue_many(["k"], ["t9"], TTL)[0] == Busy("claimed", since=1)
    retry = started(messages, "k", "t1")  # the retried message, same task id
    assert retry.epoch == holder.epoch + 1
    claims = messages.flight.claims
    assert not claims.commit(holder.keys, holder.claim, b"stale")  # parked token is gone
    assert retry.commit(b"v")


def test_a_waiter_finds_an_outcome_that_was_not_kept(messages: StepMessages) -> None:
    """The notice of a dropped error may be missed; the waiter must not send again."""
    sent = messages.enqueue_many(["k"], ["t1"], TTL)[0]
    assert isinstance(sent, Send)
    started(messages, "k", "t1").commit(b"boom", keep=False)
    assert messages.enqueue("k", "t2", TTL, since=sent.since) == Done(b"boom")
    # a new caller is not served the dropped outcome: it runs the step again
    fresh = messages.enqueue_many(["k"], ["t3"], TTL)[0]
    assert fresh == Send("t3", since=2)
    # ... and a waiter of that new run never takes the older outcome for its own
    messages.flight.client.delete(messages.keys("k").queued)  # the message was lost
    assert messages.enqueue("k", "t4", TTL, since=fresh.since) == Send("t4", since=2)


def test_fail_task_commits_for_the_claim_or_the_marker_of_that_task(
    messages: StepMessages,
) -> None:
    started(messages, "a", "t1")
    assert not messages.fail_task("a", "t2", b"x", None, keep=True)  # not its claim
    assert messages.fail_task("a", "t1", b"limit", None, keep=True)
    assert messages.enqueue_many(["a"], ["t3"], TTL)[0] == Done(b"limit")

    sent = messages.enqueue_many(["b"], ["q1"], TTL)[0]  # queued, never started (expired)
    assert isinstance(sent, Send)
    assert not messages.fail_task("b", "q2", b"x", None, keep=False)
    assert messages.fail_task("b", "q1", b"expired", None, keep=False)
    assert messages.enqueue("b", "w", TTL, since=sent.since) == Done(b"expired")


def test_a_step_no_worker_would_accept_is_refused_before_anything_is_queued(
    redis_url: str, namespace: str
) -> None:
    from celery import Celery

    from workflow_cache import RedisCache, create_workflow
    from workflow_cache.distributed import CeleryDispatcher, install

    app = Celery("refused", broker=redis_url)
    cache = RedisCache(redis_url, namespace=namespace)
    install(app, cache)

    @app.task(name="tests.refused", shared=False)
    def refused() -> None:
        """Never runs: the step is refused before it is sent."""

    workflow = create_workflow({}, cache=cache, dispatcher=CeleryDispatcher(app, cache, timeout=5))
    long_key = "k" * 5000
    with pytest.raises(ValueError, match="cannot be sent: key"):
        workflow(lambda step: step(refused.s(), key=long_key))
    assert cache.client.keys(f"wfc:{namespace}:*") == []  # no queued marker left behind
    cache.close()


def test_a_marker_lives_short_until_its_message_is_confirmed_sent(
    messages: StepMessages, redis_client: redis.Redis
) -> None:
    """A producer killed between the marker and the publish strands the key only for the
    short life the marker was set with; once sent, the marker lasts the queued time."""
    queued = messages.keys("k").queued
    assert messages.enqueue_many(["k", "j"], ["t1", "t2"], 0.5) == [
        Send("t1", since=1),
        Send("t2", since=1),
    ]
    messages.sent_many(["k"], ["t1"], [TTL])  # only t1's message was handed to the broker
    assert redis_client.pttl(queued) > 1000
    assert 0 < redis_client.pttl(messages.keys("j").queued) <= 500
    messages.sent_many(["k"], ["other"], [1.0])  # not its marker: left alone
    assert redis_client.pttl(queued) > 1000
    # j's message never left: once its marker runs out, the next waiter sends it.
    again = messages.enqueue("j", "t3", 0.5, since=1)
    while not isinstance(again, Send):
        assert again == Busy("t2", since=1)
        redis_client.pexpire(messages.keys("j").queued, 1)  # its short life, run out
        again = messages.enqueue("j", "t3", 0.5, since=1)
    assert again == Send("t3", since=1)


def test_a_dead_holders_claim_is_taken_over_by_the_next_delivery(
    messages: StepMessages, redis_client: redis.Redis
) -> None:
    """The holder's process is gone (its presence connection closed): a redelivered
    message ends that claim after the grace and starts the step; a live one's stays."""
    gone = redis.Redis(
        connection_pool=redis.ConnectionPool(**redis_client.connection_pool.connection_kwargs)
    )
    presence = gone.client_id()
    keys = messages.keys("k")
    assert redis_client.set(keys.lock, "t1@dead|1") and redis_client.set(
        f"{keys.lock}:by", presence
    )
    running = messages.start("k", "t1")
    assert isinstance(running, Running) and running.presence == presence
    assert not messages.flight.take_over_if_gone("k", running)  # alive: nothing happens
    assert redis_client.client_kill_filter(_id=str(presence)) == 1
    assert messages.flight.take_over_if_gone("k", running)
    holder = started(messages, "k", "t1")
    assert holder.epoch == 1 and redis_client.get(f"{keys.lock}:by") is not None
    assert holder.commit(b"v")


def test_a_start_announces_its_holder_to_waiting_producers(messages: StepMessages) -> None:
    """Producers waiting on the step learn which process to watch the moment it starts."""
    with messages.flight.watch_many(["k"]) as notices:
        holder = started(messages, "k", "t1")
        notice = notices.next("k", 30)
    assert notice is not None
    running = started_by(notice)
    assert running is not None and running.token == holder.token
    assert running.presence == messages.flight.presence_id()
    assert started_by(b"r") is None and started_by(b"o{}") is None
    assert holder.commit(b"v")


def test_a_producer_that_finds_its_key_busy_looks_again_once_subscribed(
    redis_url: str, namespace: str, redis_client: redis.Redis
) -> None:
    """Subscribing and the first enqueue share a round trip, so a commit announced before
    the subscription was live is not heard: the busy key is read again, not waited on."""
    from celery import Celery

    from workflow_cache import RedisCache, create_workflow
    from workflow_cache.distributed import CeleryDispatcher, install
    from workflow_cache.envelope import Envelope
    from workflow_cache.result import ok

    app = Celery("recheck", broker=redis_url)
    cache = RedisCache(redis_url, namespace=namespace, lease=60)  # wake-ups every 20 s
    install(app, cache)

    @app.task(name="tests.recheck", shared=False)
    def never() -> None:
        """No worker runs here: the outcome comes from the other holder."""

    dispatcher = CeleryDispatcher(app, cache, timeout=60)
    other = StepMessages(SingleFlight(redis_client, namespace, lease=60))
    holder = started(other, "busy", "elsewhere")  # a worker of another producer runs it
    k = other.keys("busy")
    first_reads: list[object] = []
    periodic: list[object] = []
    enqueue_many, enqueue = dispatcher.messages.enqueue_many, dispatcher.messages.enqueue

    def enqueue_many_then_commit(*args: object, **kwargs: object) -> object:
        states = enqueue_many(*args, **kwargs)  # type: ignore[arg-type]
        if not first_reads:  # its commit lands now, its notice unheard (written directly)
            first_reads.extend(states)
            sealed = Envelope.from_result("busy", ok("theirs"), ttl=None).sealed("busy")
            redis_client.set(k.out, sealed)
            redis_client.delete(k.lock)
        return states

    def counted(*args: object, **kwargs: object) -> object:
        periodic.append(args)
        return enqueue(*args, **kwargs)  # type: ignore[arg-type]

    dispatcher.messages.enqueue_many = enqueue_many_then_commit  # type: ignore[method-assign]
    dispatcher.messages.enqueue = counted  # type: ignore[method-assign]
    workflow = create_workflow({}, cache=cache, dispatcher=dispatcher)
    result = workflow(lambda step: step(never.s(), key="busy"))
    assert result.value == "theirs"
    assert isinstance(first_reads[0], Busy)
    assert periodic == []  # found by the second look, not by a wake-up
    assert redis_client.llen("celery") == 0  # and nothing was sent
    holder.finish()
    other.flight.close()
    cache.close()


def test_one_keys_enqueue_and_confirmation_are_one_command_each(
    messages: StepMessages, redis_client: redis.Redis
) -> None:
    """A pipeline holding a script asks SCRIPT EXISTS first, a round trip more: one key's
    scripts are called as they are."""
    messages.enqueue_many(["warm"], ["t0"], TTL)  # the script is loaded
    redis_client.config_resetstat()
    assert messages.enqueue_many(["k"], ["t1"], TTL) == [Send("t1", since=1)]
    messages.sent_many(["k"], ["t1"], [TTL])
    stats = redis_client.info("commandstats")
    assert "cmdstat_script|exists" not in stats
    assert stats["cmdstat_evalsha"]["calls"] == 2
