"""The run's state machine on a real Redis: indexes, leases and fencing, the reconciler.

Each transition is one script that also moves the run between the by-state and due
indexes; a delivery holds the run by epoch and lease; the reconciler finds, from state
alone, the runs a lost message or a dead machine would strand.
"""

from __future__ import annotations

import threading
import uuid
from pathlib import Path
from typing import Any

from celery import Celery

from tests.waiting import wait_until
from workflow_cache import LocalCache, RedisCache, create_workflow
from workflow_cache.cache.claims import Done
from workflow_cache.distributed.cancel import cancel_run
from workflow_cache.distributed.events import event_key, send_event
from workflow_cache.distributed.reconciler import Reconciler
from workflow_cache.distributed.run_states import STATES, TRANSITIONS, due_action
from workflow_cache.distributed.runs import Carry, Resume, Runs, Taken
from workflow_cache.distributed.waiters import Joined, Waiters

FLOW = Resume("t.flow", ["a"], {}, "wq")


def _flow() -> Resume:
    """A run whose task goes to a queue of its own (the tests share one Redis)."""
    return Resume("t.flow", ["a"], {}, f"wq-{uuid.uuid4().hex[:8]}")


def _states(runs: Runs, run_id: str) -> list[str]:
    client = runs.flight.client
    return [s for s in STATES if client.zscore(runs.state_key(s), run_id) is not None]


def _due(runs: Runs, run_id: str) -> float | None:
    return runs.flight.client.zscore(runs.due_key, run_id)


def _commit(cache: RedisCache, key: str) -> None:
    holder = cache.flight.acquire(key)
    assert not isinstance(holder, Done)
    assert holder.commit(b'{"v":1,"status":"ok","value":1}')


def _parked(
    cache: RedisCache, runs: Runs, run_id: str, key: str, flow: Resume = FLOW, **arm: Any
) -> int:
    """A run begun, then suspended on ``key`` (waiting for it as an event when ``arm`` says
    ``waiting=True``); returns its batch."""
    begun = runs.begin(run_id, 0, flow)
    event = bool(arm.get("waiting"))
    entry = f"event|{key}" if event else f"t.step|{key}"
    batch = runs.prepare(run_id, begun.epoch, [entry], [key])
    Waiters(cache.flight).join_many([key], ["id"], [60.0], run_id, batch, send=not event)
    assert runs.arm(run_id, begun.epoch, batch, [], **arm) == "wait"
    return batch


def _app(redis_url: str) -> Celery:
    return Celery("durable-tests", broker=redis_url, set_as_current=False)


def test_every_transition_moves_the_run_between_the_indexes(redis_url, namespace) -> None:
    cache = RedisCache(redis_url, namespace=namespace)
    runs = Runs(cache.flight, recheck=60)
    seen = []
    begun = runs.begin("r", 0, FLOW)
    assert _states(runs, "r") == ["running"]
    info = runs.info("r")
    assert info is not None and info.lease_ms == _due(runs, "r")  # due when the lease ends
    seen.append(("run_begin", "running"))
    batch = runs.prepare("r", begun.epoch, ["t.step|k"], ["k"])
    assert _states(runs, "r") == ["suspending"]
    seen.append(("run_prepare", "suspending"))
    Waiters(cache.flight).join_many(["k"], ["id"], [60.0], "r", batch)
    assert runs.arm("r", begun.epoch, batch, []) == "wait"
    assert _states(runs, "r") == ["suspended"] and _due(runs, "r") is not None
    assert cache.flight.client.pttl(runs.keys("r").run) == -1  # a live run never expires
    seen.append(("run_arm", "suspended"))
    _commit(cache, "k")
    for who, b in Waiters(cache.flight).take_handoff("k"):
        assert runs.arrive(who, b, "k", b"") is not None
    assert _states(runs, "r") == ["resuming"]
    seen.append(("run_arrive", "resuming"))
    again = runs.begin("r", batch, FLOW)
    assert again.kind == "run" and again.epoch == begun.epoch + 1
    assert _states(runs, "r") == ["running"]
    assert runs.finish("r", again.epoch, '{"v":1,"status":"ok","value":2}')
    assert _states(runs, "r") == ["done"]
    # due once more: the reconciler writes run:<id> if the finisher died before it did
    assert runs.look("r").outcome and _due(runs, "r") is None
    seen.append(("run_finish", "done"))
    assert 0 < cache.flight.client.pttl(runs.keys("r").run) <= runs.retention_ms
    assert cache.get("run:r").value == 2
    table = {(t.script, t.target) for t in TRANSITIONS}
    assert set(seen) <= table  # the scripts do what the table says
    cache.close()


def test_an_arrival_takes_the_run_for_a_committer_that_carries_it_on(redis_url, namespace) -> None:
    cache = RedisCache(redis_url, namespace=namespace)
    runs = Runs(cache.flight, recheck=60)
    flow = _flow()
    batches = {r: _parked(cache, runs, r, f"k-{r}", flow) for r in ("other", "mine")}
    for run_id in batches:
        _commit(cache, f"k-{run_id}")
    # a committer that cannot run the workflow's task (or lacks its queue) resumes it
    wrong = Carry(("t.flow",), ("another-queue",))
    sent = runs.arrive_or_take("other", batches["other"], "k-other", b"", wrong)
    assert sent == flow and _states(runs, "other") == ["resuming"]
    first = runs.info("mine")
    mine = Carry(("t.flow",), (flow.queue,))
    taken = runs.arrive_or_take("mine", batches["mine"], "k-mine", b"", mine)
    assert isinstance(taken, Taken) and taken.resume == flow
    assert taken.begun.kind == "run" and taken.begun.batch == batches["mine"]
    assert first is not None and taken.begun.epoch == first.epoch + 1
    assert taken.begun.replays == 1 and taken.begun.steps == ("t.step|k-mine",)
    assert _states(runs, "mine") == ["running"]
    info = runs.info("mine")
    assert info is not None and info.lease_ms == _due(runs, "mine")  # due when the lease ends
    # the resume's delivery, if one came anyway, finds the run held
    assert runs.begin("mine", batches["mine"], flow).kind == "busy"
    assert ("take", "run_arrive") in {(t.name, t.script) for t in TRANSITIONS}
    cache.close()


def test_a_due_run_is_looked_at_again_sooner_never_later(redis_url, namespace) -> None:
    cache = RedisCache(redis_url, namespace=namespace)
    runs = Runs(cache.flight, recheck=600)
    _parked(cache, runs, "later", "k-later")
    due = _due(runs, "later")
    assert due is not None and due > runs.now_ms() + 500_000
    assert runs.look_again_within("later", 1_000)  # a claim it waits on ends in 1 s
    sooner = _due(runs, "later")
    assert sooner is not None and sooner <= runs.now_ms() + 1_000
    assert not runs.look_again_within("later", 60_000)  # never later than it is
    assert _due(runs, "later") == sooner
    assert not runs.look_again_within("not-a-run", 1_000)  # only a run in the due index
    assert _due(runs, "not-a-run") is None
    cache.close()


def test_a_lapsed_lease_is_superseded_and_its_writes_refused(redis_url, namespace) -> None:
    cache = RedisCache(redis_url, namespace=namespace)
    runs = Runs(cache.flight, lease=0.3)
    first = runs.begin("f", 0, FLOW)
    assert runs.begin("f", 0, FLOW).kind == "busy"  # a duplicate while the lease lives
    assert runs.renew("f", first.epoch)
    info = runs.info("f")
    assert info is not None and info.lease_ms is not None
    wait_until(lambda: runs.now_ms() > (info.lease_ms or 0), "the lease to lapse")
    second = runs.begin("f", 0, FLOW)  # the reconciler's re-send takes the run
    assert second.kind == "run" and second.epoch == first.epoch + 1
    assert not runs.renew("f", first.epoch)
    assert runs.prepare("f", first.epoch, [], ["x"]) == -1
    assert not runs.finish("f", first.epoch, '{"v":1,"status":"ok","value":"old"}')
    assert runs.finish("f", second.epoch, '{"v":1,"status":"ok","value":"new"}')
    assert cache.get("run:f").value == "new"
    cache.close()


def test_the_reconciler_resumes_a_run_whose_handoff_was_lost(redis_url, namespace) -> None:
    cache = RedisCache(redis_url, namespace=namespace)
    runs = Runs(cache.flight, recheck=0.05)
    flow = _flow()
    _parked(cache, runs, "lost", "k", flow)
    _commit(cache, "k")
    assert Waiters(cache.flight).take_handoff("k")  # the committer dies right here
    reconciler = Reconciler(_app(redis_url), cache, interval=0.05)
    reconciler.runs = runs
    wait_until(lambda: "lost" in runs.due(10), "the suspended run to be due")
    tick = reconciler.settle_due()
    assert tick.resumed == 1
    info = runs.info("lost")
    assert info is not None and info.state == "resuming"
    assert cache.flight.client.llen(flow.queue) == 1  # the resume is in the workflow queue
    cache.close()


def test_the_reconciler_resends_a_run_whose_lease_lapsed(redis_url, namespace) -> None:
    cache = RedisCache(redis_url, namespace=namespace)
    runs = Runs(cache.flight, lease=0.1)
    flow = _flow()
    runs.begin("dead", 0, flow)  # its machine dies: nobody renews
    reconciler = Reconciler(_app(redis_url), cache, interval=0.05)
    reconciler.runs = runs
    wait_until(lambda: "dead" in runs.due(10), "the lapsed lease to be due")
    assert reconciler.settle_due().resent == 1
    assert cache.flight.client.llen(flow.queue) == 1
    assert runs.begin("dead", 0, flow).kind == "run"  # the re-sent delivery takes it
    cache.close()


def test_a_tick_reads_only_the_due_runs_and_one_process_ticks(redis_url, namespace) -> None:
    cache = RedisCache(redis_url, namespace=namespace)
    idle = Runs(cache.flight, recheck=3600)
    for i in range(300):  # suspended for an hour: not due
        run_id = f"idle-{i}"
        begun = idle.begin(run_id, 0, FLOW)
        batch = idle.prepare(run_id, begun.epoch, ["t.step|k"], [f"k{i}"])
        assert idle.arm(run_id, begun.epoch, batch, []) == "wait"
    quick = Runs(cache.flight, lease=0.05)
    for i in range(3):
        quick.begin(f"due-{i}", 0, FLOW)
    one = Reconciler(_app(redis_url), cache, interval=30)
    other = Reconciler(_app(redis_url), cache, interval=30)
    wait_until(lambda: len(quick.due(10)) == 3, "the three lapsed leases to be due")
    tick = one.tick()
    assert tick is not None and tick.looked == 3 and tick.resent == 3
    assert other.tick() is None  # this interval was taken
    cache.close()


def test_due_actions() -> None:
    assert due_action("running", True) == "resend"
    assert due_action("running", False) == "wait"
    assert due_action("resuming", False) == "resend"
    assert due_action("suspended", False) == "check"
    assert due_action("done", False) == "forget"
    assert due_action(None, False) == "forget"


def test_run_ids_are_any_text(redis_url, namespace) -> None:
    cache = RedisCache(redis_url, namespace=namespace)
    runs = Runs(cache.flight)
    odd = f"order:{{42}}|{uuid.uuid4()}"
    begun = runs.begin(odd, 0, FLOW)
    assert runs.finish(odd, begun.epoch, '{"v":1,"status":"ok","value":1}')
    assert runs.begin(odd, 0, FLOW).kind == "done"
    cache.close()


def test_cancel_a_suspended_run_a_delivery_in_progress_and_a_finished_one(
    redis_url, namespace
) -> None:
    cache = RedisCache(redis_url, namespace=namespace)
    runs = Runs(cache.flight)
    batch = _parked(cache, runs, "c1", "ck")
    assert cancel_run(cache, "c1", reason="order withdrawn")
    outcome = cache.get("run:c1")
    assert not outcome.ok
    assert "was cancelled: order withdrawn" in str(outcome.error)
    assert _states(runs, "c1") == ["cancelled"]
    _commit(cache, "ck")
    for who, b in Waiters(cache.flight).take_handoff("ck"):
        assert runs.arrive(who, b, "ck", b"") is None  # a later commit resumes nothing
    assert runs.begin("c1", batch, FLOW).kind == "done"  # a late resume reports the outcome
    assert not cancel_run(cache, "c1")  # once

    live = runs.begin("c2", 0, FLOW)  # a delivery in progress
    assert cancel_run(cache, "c2")
    assert not runs.renew("c2", live.epoch)  # so it stops at its next step
    assert not runs.finish("c2", live.epoch, '{"v":1,"status":"ok","value":1}')
    assert "cancelled" in str(cache.get("run:c2").error)

    done = runs.begin("c3", 0, FLOW)
    assert runs.finish("c3", done.epoch, '{"v":1,"status":"ok","value":3}')
    assert not cancel_run(cache, "c3") and not cancel_run(cache, "nobody")
    assert cache.get("run:c3").value == 3
    info = runs.info("c3")
    assert info is not None and info.state == "done"
    cache.close()


def test_the_docs_draw_every_transition_of_the_table() -> None:
    text = (Path(__file__).resolve().parent.parent / "docs" / "distributed.md").read_text()
    section = text[text.index("### The run's states") : text.index("### Limits")]
    rows = {
        (cells[0], cells[4].strip("`"))
        for cells in (
            [c.strip() for c in line.strip("|").split("|")]
            for line in section.splitlines()
            if line.startswith("| ") and not line.startswith(("| arrow", "| ---"))
        )
    }
    assert rows == {(t.name, t.script) for t in TRANSITIONS}
    for t in TRANSITIONS:
        assert f"{t.script}" in section.split("```text")[1]  # drawn too


def test_a_timer_sleeps_once_and_a_replay_past_it_goes_on(redis_url, namespace) -> None:
    cache = RedisCache(redis_url, namespace=namespace)
    runs = Runs(cache.flight, recheck=60)
    flow = _flow()
    begun = runs.begin("nap", 0, flow)
    slept = runs.sleep("nap", begun.epoch, ["sleep|"], "t0", 0.2)
    assert slept.kind == "sleep" and slept.resume == flow and 0 < slept.delay_ms <= 200
    info = runs.info("nap")
    assert info is not None and info.state == "sleeping" and info.wake_ms is not None
    assert _due(runs, "nap") == info.wake_ms + runs.recheck_ms  # a lost timer still fires
    assert runs.sleep("nap", begun.epoch, ["sleep|"], "t0", 0.2).kind == "fenced"
    early = runs.begin("nap", slept.batch, flow)  # a replay before the wake time sleeps again
    again = runs.sleep("nap", early.epoch, ["sleep|"], "t0", 0.2)
    assert again.kind == "sleep" and again.delay_ms <= slept.delay_ms
    wait_until(lambda: runs.now_ms() >= (info.wake_ms or 0), "the wake time")
    late = runs.begin("nap", again.batch, flow)
    assert runs.sleep("nap", late.epoch, ["sleep|"], "t0", 0.2).kind == "go"
    cache.close()


def test_a_keyed_local_sleep_does_not_sleep_again(monkeypatch, tmp_path) -> None:
    import workflow_cache.step as step_module

    asked: list[float] = []
    real = step_module.time.sleep
    me = threading.get_ident()  # time.sleep is patched process-wide: count this thread's

    def sleep(seconds: float) -> None:
        if threading.get_ident() == me:
            asked.append(seconds)
        real(seconds)

    monkeypatch.setattr(step_module.time, "sleep", sleep)
    workflow = create_workflow({}, cache=LocalCache(tmp_path))
    assert workflow(lambda step: step.sleep(0.05, key="nap") or "up").value == "up"
    assert len(asked) == 1 and 0 < asked[0] <= 0.05
    assert workflow(lambda step: step.sleep(0.05, key="nap") or "up").value == "up"
    assert len(asked) == 1  # the wake time had passed: no sleep


def test_events_first_send_wins_and_hands_the_waiting_run_over(redis_url, namespace) -> None:
    cache = RedisCache(redis_url, namespace=namespace)
    runs = Runs(cache.flight, recheck=60)
    assert send_event(cache, "early", {"ok": 1})
    assert not send_event(cache, "early", {"ok": 2})  # first send wins
    assert cache.get(event_key("early")).value == {"ok": 1}

    begun = runs.begin("w", 0, FLOW)
    batch = runs.prepare("w", begun.epoch, ["event|event:late"], ["event:late"])
    (joined,) = Waiters(cache.flight).join_many(["event:late"], [""], [1.0], "w", batch, send=False)
    assert isinstance(joined, Joined) and joined.send is None  # nothing to send for an event
    assert runs.arm("w", begun.epoch, batch, [], waiting=True, deadline="d", timeout=3600) == "wait"
    info = runs.info("w")
    assert info is not None and info.state == "waiting" and "w" not in runs.due(10)
    assert send_event(cache, "late", "approved")
    assert _states(runs, "w") == ["resuming"] and "w" in runs.due(10)  # the reconciler sends it
    cache.close()


def test_a_waiting_run_past_its_deadline_is_resumed_to_time_out(redis_url, namespace) -> None:
    cache = RedisCache(redis_url, namespace=namespace)
    runs = Runs(cache.flight, recheck=60)
    flow = _flow()
    _parked(cache, runs, "t", "event:never", flow, waiting=True, deadline="d", timeout=0.1)
    assert not runs.deadline_passed("t", "d")
    reconciler = Reconciler(_app(redis_url), cache, interval=0.05)
    reconciler.runs = runs
    wait_until(lambda: "t" in runs.due(10), "the deadline to be due")
    assert runs.deadline_passed("t", "d")
    assert reconciler.settle_due().resent == 1
    assert cache.flight.client.llen(flow.queue) == 1
    cache.close()
