"""``workflow-cache runs`` and the runs index, against a real Redis and a real worker.

Runs are made by ``tests.celery_app``'s workflows on a ``celery worker`` subprocess
(finished, failed, suspended on a step nobody runs, waiting for an event, sleeping,
cancelled); paging and index upkeep use the run scripts themselves on a namespace of
their own, with many runs.
"""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType

import pytest

from tests.waiting import wait_until
from tests.workers import CeleryWorker, configured_test_app, wait_ready
from workflow_cache import RedisCache, create_workflow
from workflow_cache.admin.runs import count_runs, list_runs, show_run
from workflow_cache.cli import main
from workflow_cache.distributed import outcome_of, result_of, run_info, waiting_on
from workflow_cache.distributed.cancel import cancel_run
from workflow_cache.distributed.events import send_event
from workflow_cache.distributed.runs import Resume, Runs

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Fleet:
    module: ModuleType
    env: dict[str, str]
    url: str
    namespace: str

    @property
    def cache(self) -> RedisCache:
        cache: RedisCache = self.module.cache
        return cache

    def where(self) -> list[str]:
        return ["--redis", self.url, "--namespace", self.namespace]


@pytest.fixture(scope="module")
def fleet(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """One solo worker serving the workflows and steps queues of a namespace of its own."""
    namespace = f"runs-{uuid.uuid4().hex[:8]}"
    env = {
        "WORKFLOW_CACHE_BROKER": redis_url,
        "WORKFLOW_CACHE_NAMESPACE": namespace,
        "WORKFLOW_CACHE_LEASE": "1.5",
        "WORKFLOW_CACHE_RECONCILE_INTERVAL": "0.5",
        "WORKFLOW_CACHE_RUN_RECHECK": "1.0",
    }
    log = tmp_path_factory.mktemp("runs-cli") / "worker.log"
    with configured_test_app(env) as module:
        queues = f"{module.settings.workflow_queue},steps"
        worker = CeleryWorker("tests.celery_app", "runs", queues, env, log=log)
        try:
            wait_ready(module.app, [worker])
            yield Fleet(module, env, redis_url, namespace)
        finally:
            worker.stop()


@dataclass
class Made:
    done: str
    done_tag: str
    failed: str
    suspended: str
    suspended_key: str
    cancelled: str


@pytest.fixture(scope="module")
def made(fleet: Fleet) -> Made:
    """A finished, a failed, a suspended and a cancelled run."""
    m = fleet.module
    tag = uuid.uuid4().hex[:10]
    done = m.three_steps.delay(tag)
    assert result_of(done, timeout=120).ok
    failed = m.diverging.delay(uuid.uuid4().hex[:10])
    assert not result_of(failed, timeout=120).ok
    key = f"nobody:{uuid.uuid4().hex[:10]}"
    suspended = m.awaits_nobody.delay(key)
    wait_until(lambda: waiting_on(fleet.cache, key) == [suspended.id], "the run to suspend")
    other = f"nobody:{uuid.uuid4().hex[:10]}"
    cancelled = m.awaits_nobody.delay(other)
    wait_until(lambda: waiting_on(fleet.cache, other) == [cancelled.id], "the run to suspend")
    assert cancel_run(fleet.cache, cancelled.id, reason="listing test")
    return Made(done.id, tag, failed.id, suspended.id, key, cancelled.id)


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def listed(capsys: pytest.CaptureFixture[str], fleet: Fleet, *args: str) -> dict[str, dict]:
    code, out, err = cli(capsys, "runs", "list", *fleet.where(), "--json", "--limit", "1000", *args)
    assert code == 0, err
    return {run["run_id"]: run for run in json.loads(out)["runs"]}


def shown(capsys: pytest.CaptureFixture[str], fleet: Fleet, run_id: str) -> dict:
    code, out, err = cli(capsys, "runs", "show", run_id, *fleet.where(), "--json")
    assert code == 0, err
    data: dict = json.loads(out)
    return data


def state_of(fleet: Fleet, run_id: str) -> str | None:
    info = run_info(fleet.cache, run_id)
    return None if info is None else info.state


def subprocess_cli(fleet: Fleet, *args: str, stdin: int | None = subprocess.DEVNULL) -> tuple:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WORKFLOW_CACHE_")}
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run(
        [sys.executable, "-m", "workflow_cache.cli", "runs", *args, *fleet.where()],
        stdin=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    return done.returncode, done.stdout, done.stderr


# ----------------------------------------------------------------------------- list


def test_finished_failed_suspended_and_cancelled_runs_are_listed_with_their_states(
    fleet: Fleet, made: Made, capsys: pytest.CaptureFixture[str]
) -> None:
    runs = listed(capsys, fleet)
    assert (runs[made.done]["state"], runs[made.done]["outcome_status"]) == ("done", "ok")
    assert (runs[made.failed]["state"], runs[made.failed]["outcome_status"]) == ("done", "err")
    assert (runs[made.suspended]["state"], runs[made.suspended]["outcome_status"]) == (
        "suspended",
        None,
    )
    assert (runs[made.cancelled]["state"], runs[made.cancelled]["outcome_status"]) == (
        "cancelled",
        "err",
    )
    assert runs[made.done]["task"] == "tests.three_steps" and runs[made.done]["replays"] == 3
    assert runs[made.failed]["task"] == "tests.diverging"
    started = [r["started_at"] for r in runs.values()]
    assert started == sorted(started, reverse=True)  # newest first
    code, out, _ = cli(capsys, "runs", "list", *fleet.where())
    assert code == 0
    lines = {line.split()[1]: line for line in out.splitlines() if "│" in line}
    assert "done (ok)" in lines[made.done] and "done (err)" in lines[made.failed]
    assert "suspended" in lines[made.suspended] and "cancelled (err)" in lines[made.cancelled]
    counts = count_runs(fleet.cache)
    assert counts["suspended"] >= 1 and counts["done"] >= 2 and counts["cancelled"] >= 1


def test_filters_by_state_task_and_since(
    fleet: Fleet, made: Made, capsys: pytest.CaptureFixture[str]
) -> None:
    suspended = listed(capsys, fleet, "--state", "suspended")
    assert made.suspended in suspended and {r["state"] for r in suspended.values()} == {"suspended"}
    diverging = listed(capsys, fleet, "--task", "tests.diverging")
    assert made.failed in diverging
    assert {r["task"] for r in diverging.values()} == {"tests.diverging"}
    both = listed(capsys, fleet, "--task", "tests.awaits_nobody", "--state", "cancelled")
    assert made.cancelled in both and made.suspended not in both
    assert {(r["task"], r["state"]) for r in both.values()} == {
        ("tests.awaits_nobody", "cancelled")
    }
    assert {made.done, made.failed, made.suspended} <= set(listed(capsys, fleet, "--since", "1h"))
    assert {made.done, made.failed} <= set(listed(capsys, fleet, "--since", "PT1H"))
    later = datetime.fromtimestamp(time.time() + 3600, UTC).isoformat()
    assert listed(capsys, fleet, "--since", later) == {}
    assert listed(capsys, fleet, "--task", "tests.no_such_task") == {}


def test_paging_over_many_runs_lists_each_once_newest_first(
    redis_url: str, namespace: str, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = RedisCache(redis_url, namespace=namespace)
    runs = Runs(cache.flight)
    made = []
    for i in range(230):  # begun as fast as the script goes: many share a millisecond
        task = "t.even" if i % 2 == 0 else "t.odd"
        begun = runs.begin(f"run-{i:03d}", 0, Resume(task, [i], {}, "q"))
        if i % 3 == 0:
            assert runs.finish(f"run-{i:03d}", begun.epoch, '{"v":1,"status":"ok"}')
        made.append(f"run-{i:03d}")
    where = ["--redis", redis_url, "--namespace", namespace, "--json", "--limit", "50"]
    seen: list[dict] = []
    cursor: list[str] = []
    pages = 0
    while True:
        code, out, err = cli(capsys, "runs", "list", *where, *cursor)
        assert code == 0, err
        page = json.loads(out)
        seen += page["runs"]
        pages += 1
        if page["next_cursor"] is None:
            break
        cursor = ["--cursor", page["next_cursor"]]
    assert pages == 5  # 50, 50, 50, 50, 30: no empty page at the end
    ids = [r["run_id"] for r in seen]
    assert sorted(ids) == sorted(made) and len(set(ids)) == len(ids)
    started = [r["started_at"] for r in seen]
    assert started == sorted(started, reverse=True)
    # a filter checked on the records pages the same way
    wanted = {f"run-{i:03d}" for i in range(0, 230, 2) if i % 3 == 0}
    got: list[str] = []
    next_cursor = None
    while True:
        page = list_runs(cache, task="t.even", state="done", limit=7, cursor=next_cursor)
        got += [r.run_id for r in page.runs]
        if page.next_cursor is None:
            break
        next_cursor = page.next_cursor
    assert sorted(got) == sorted(wanted) and len(got) == len(set(got))
    assert count_runs(cache)["done"] == 77 and count_runs(cache)["running"] == 153
    cache.close()


# ----------------------------------------------------------------------------- show


def test_show_lists_the_steps_in_order_with_hits_and_executions(
    fleet: Fleet, made: Made, capsys: pytest.CaptureFixture[str]
) -> None:
    first = shown(capsys, fleet, made.done)
    tag = made.done_tag
    keys = [f"{tag}:a", f"{tag}:b", f"_run:{made.done}:2"]
    assert [s["position"] for s in first["steps"]] == [0, 1, 2]
    assert [s["key"] for s in first["steps"]] == keys
    assert {s["task"] for s in first["steps"]} == {"tests.work"}
    assert [(s["status"], s["executed"]) for s in first["steps"]] == [("ok", True)] * 3
    assert first["state"] == "done" and first["outcome_status"] == "ok"
    assert first["outcome_text"] == "[1, 1, 1]" and first["replays"] == 3
    again = fleet.module.three_steps.delay(tag)  # a and b are stored: hits this time
    assert result_of(again, timeout=120).value == [1, 1, 2]  # c ran again: its count
    second = shown(capsys, fleet, again.id)
    assert [(s["status"], s["executed"]) for s in second["steps"]] == [
        ("ok", False),
        ("ok", False),
        ("ok", True),
    ]
    code, out, _ = cli(capsys, "runs", "show", again.id, *fleet.where())
    assert code == 0
    rows = [line for line in out.splitlines() if "│" in line]
    assert [row.split("│")[5].strip() for row in rows] == ["hit", "hit", "executed"]


def test_show_says_what_a_suspended_run_waits_on_then_that_it_finished(
    fleet: Fleet, capsys: pytest.CaptureFixture[str]
) -> None:
    key = f"nobody:{uuid.uuid4().hex[:10]}"
    r = fleet.module.awaits_nobody.delay(key)
    wait_until(lambda: waiting_on(fleet.cache, key) == [r.id], "the run to suspend")
    data = shown(capsys, fleet, r.id)
    assert data["state"] == "suspended" and data["waiting_on_keys"] == [key]
    assert [(s["key"], s["status"]) for s in data["steps"]] == [(key, "queued")]
    code, out, _ = cli(capsys, "runs", "show", r.id, *fleet.where())
    assert code == 0 and f"waiting on: {key}" in out and "state: suspended" in out
    local = create_workflow(None, cache=fleet.cache)
    assert local(lambda step: step(lambda: "made here", key=key)).value == "made here"
    assert outcome_of(fleet.cache, r.id, timeout=60).value == "made here"
    data = shown(capsys, fleet, r.id)
    assert data["state"] == "done" and data["waiting_on_keys"] == []
    assert data["steps"][0]["status"] == "ok" and data["outcome_text"] == '"made here"'


def test_show_says_which_event_a_run_waits_for_and_until_when_one_sleeps(
    fleet: Fleet, capsys: pytest.CaptureFixture[str]
) -> None:
    tag = uuid.uuid4().hex[:10]
    waiting = fleet.module.approval.delay(tag)
    wait_until(lambda: state_of(fleet, waiting.id) == "waiting", "a wait")
    data = shown(capsys, fleet, waiting.id)
    assert data["waiting_for_event"] == f"approve:{tag}"
    assert [(s["task"], s["status"]) for s in data["steps"]] == [
        ("tests.work", "ok"),
        ("event", "pending"),
    ]
    code, out, _ = cli(capsys, "runs", "show", waiting.id, *fleet.where())
    assert code == 0 and f"waiting for event: approve:{tag}" in out
    assert send_event(fleet.cache, f"approve:{tag}", {"by": "ops"})
    assert outcome_of(fleet.cache, waiting.id, timeout=60).ok
    assert shown(capsys, fleet, waiting.id)["steps"][1]["status"] == "ok"

    nap = uuid.uuid4().hex[:10]
    sleeping = fleet.module.napping.delay(nap, 600.0)
    asked = time.time()
    wait_until(lambda: state_of(fleet, sleeping.id) == "sleeping", "sleep")
    data = shown(capsys, fleet, sleeping.id)
    assert data["sleeping_until"] is not None and data["sleeping_until"] > asked + 500
    assert [(s["task"], s["status"]) for s in data["steps"]] == [
        ("tests.work", "ok"),
        ("sleep", "pending"),
    ]
    assert cancel_run(fleet.cache, sleeping.id)


# ----------------------------------------------------------------------------- cancel


def test_cancel_asks_on_a_terminal_refuses_elsewhere_without_yes_and_cancels(
    fleet: Fleet, capsys: pytest.CaptureFixture[str]
) -> None:
    key = f"nobody:{uuid.uuid4().hex[:10]}"
    r = fleet.module.awaits_nobody.delay(key)
    wait_until(lambda: waiting_on(fleet.cache, key) == [r.id], "the run to suspend")
    code, out, err = subprocess_cli(fleet, "cancel", r.id)  # stdin is not a terminal
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--yes" in err
    assert state_of(fleet, r.id) == "suspended"

    main_fd, tty = pty.openpty()  # a terminal: it asks, and "y" cancels
    try:
        os.write(main_fd, b"y\n")
        code, out, err = subprocess_cli(fleet, "cancel", r.id, "--reason", "by hand", stdin=tty)
    finally:
        os.close(tty)
        os.close(main_fd)
    assert code == 0, err
    assert "cancel run" in err and f"cancelled run {r.id}" in out
    outcome = result_of(r, timeout=60)  # the reconciler's last delivery reports it
    assert not outcome.ok and "cancelled: by hand" in str(outcome.error)
    data = shown(capsys, fleet, r.id)
    assert data["state"] == "cancelled" and data["outcome_status"] == "err"
    assert "by hand" in data["outcome_text"]

    code, out, err = cli(capsys, "runs", "cancel", r.id, "--yes", *fleet.where())
    assert code == 2 and "nothing to cancel" in err and len(err.strip().splitlines()) == 1

    other = f"nobody:{uuid.uuid4().hex[:10]}"
    r2 = fleet.module.awaits_nobody.delay(other)
    wait_until(lambda: waiting_on(fleet.cache, other) == [r2.id], "the run to suspend")
    code, out, err = cli(capsys, "runs", "cancel", r2.id, "--yes", "--json", *fleet.where())
    assert code == 0 and json.loads(out) == {"run_id": r2.id, "cancelled": True}
    assert not outcome_of(fleet.cache, r2.id, timeout=30).ok


# ----------------------------------------------------------------------------- input


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["list", "--limit", "0"], "--limit"),
        (["list", "--limit", "5000"], "--limit"),
        (["list", "--since", "yesterday"], "--since"),
        (["list", "--since", "P1Y"], "--since"),
        (["list", "--cursor", "not-a-cursor"], "cursor"),
        (["show", "no-such-run"], "no run"),
        (["cancel", "no-such-run", "--yes"], "no run"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    redis_url: str, namespace: str, args: list[str], says: str, capsys
) -> None:
    code, out, err = cli(capsys, "runs", *args, "--redis", redis_url, "--namespace", namespace)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and says in err and "Traceback" not in err


def test_an_unknown_state_is_refused_by_the_parser(redis_url: str, capsys) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["runs", "list", "--state", "exploded", "--redis", redis_url])
    assert exited.value.code == 2 and "invalid choice" in capsys.readouterr().err


def test_hostile_ids_and_names_are_printed_as_text(
    redis_url: str, namespace: str, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = RedisCache(redis_url, namespace=namespace)
    runs = Runs(cache.flight)
    run_id = "r\x1b[2J[bold red]boom[/]"
    task = "t.\x1b]0;title\x07[link=http://x]t[/link]"
    key = "k\x1b[31m[blink]k"
    begun = runs.begin(run_id, 0, Resume(task, [], {}, "q"))
    runs.prepare(run_id, begun.epoch, [f"t.step|{key}"], [key])
    where = ["--redis", redis_url, "--namespace", namespace]
    for args in (["list"], ["show", run_id]):
        code, out, err = cli(capsys, "runs", *args, *where)
        assert code == 0, err
        assert "\x1b" not in out and "\x07" not in out
        assert "[bold red]boom[/]" in out and "\\x1b[2J" in out  # shown, not acted on
        assert "[link=http://x]t[/link]" in out
    assert "k\\x1b[31m[blink]k" in out
    code, out, err = cli(capsys, "runs", "list", *where, "--json")
    assert json.loads(out)["runs"][0]["run_id"] == run_id  # JSON carries the exact text
    cache.close()


# ----------------------------------------------------------------------------- index


def test_finished_runs_leave_every_index_with_their_retention(
    redis_url: str, namespace: str
) -> None:
    cache = RedisCache(redis_url, namespace=namespace)
    runs = Runs(cache.flight, retention=60)
    client = cache.client
    epochs = {
        run_id: runs.begin(run_id, 0, Resume("t.kept", [], {}, "q")).epoch
        for run_id in ("old-done", "old-cancelled", "live")
    }
    assert runs.finish("old-done", epochs["old-done"], '{"v":1,"status":"ok"}')
    assert runs.cancel("old-cancelled", '{"v":1,"status":"err"}')
    assert {r.run_id for r in list_runs(cache, task="t.kept").runs} == {
        "old-done",
        "old-cancelled",
        "live",
    }
    assert runs.forget_finished(runs.now_ms() - 60_000) == 0  # still within the retention
    assert runs.forget_finished(runs.now_ms() + 1) == 2
    assert [m.decode() for m in client.zrange(runs.started_key, 0, -1)] == ["live"]
    assert [m.decode() for m in client.zrange(runs.task_key("t.kept"), 0, -1)] == ["live"]
    assert client.hkeys(runs.task_of_key) == [b"live"]
    assert count_runs(cache)["done"] == 0 and count_runs(cache)["running"] == 1
    assert [r.run_id for r in list_runs(cache).runs] == ["live"]
    cache.close()


def test_a_run_begun_again_after_its_record_expired_keeps_its_start(
    redis_url: str, namespace: str
) -> None:
    cache = RedisCache(redis_url, namespace=namespace)
    runs = Runs(cache.flight)
    begun = runs.begin("again", 0, Resume("t.x", [], {}, "q"))
    assert runs.finish("again", begun.epoch, '{"v":1,"status":"ok"}')
    cache.client.delete(runs.keys("again").run)  # its retention ended before the forget
    runs.begin("again", 0, Resume("t.x", [], {}, "q"))  # a late redelivery starts it anew
    runs.forget_finished(runs.now_ms() + 1)
    assert cache.client.zscore(runs.started_key, "again") is not None
    assert [r.state for r in list_runs(cache).runs] == ["running"]
    assert show_run(cache, "again") is not None
    cache.close()


def test_bad_records_and_outcomes_are_left_out_or_unknown_with_one_warning(
    redis_url: str, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    cache = RedisCache(redis_url, namespace=namespace)
    runs = Runs(cache.flight)
    client = cache.client
    epochs = {
        run_id: runs.begin(run_id, 0, Resume("t.x", [], {}, "q")).epoch
        for run_id in ("fine", "not-a-hash", "odd-fields")
    }
    client.delete(runs.keys("not-a-hash").run)
    client.set(runs.keys("not-a-hash").run, "a string where a record should be")
    client.hset(runs.keys("odd-fields").run, mapping={"state": "exploded", "started": "soon"})
    client.delete(runs.keys("odd-fields").steps)
    client.set(runs.keys("odd-fields").steps, "not a list")
    runs.prepare("fine", epochs["fine"], ["t.step|garbage", "t.step|wrong-type"], ["garbage"])
    client.set(cache.keyspace.for_step("garbage").out, b"\x00 not an envelope")
    client.rpush(cache.keyspace.for_step("wrong-type").out, "a list")
    with caplog.at_level("WARNING", logger="workflow_cache.admin.runs"):
        page = list_runs(cache)
        odd = show_run(cache, "odd-fields")
        fine = show_run(cache, "fine")
    assert [r.run_id for r in page.runs] == ["odd-fields", "fine"]
    assert page.runs[0].state == "unknown" and page.runs[0].started_at is None
    assert odd is not None and odd.steps == ()
    assert fine is not None and [s.status for s in fine.steps] == ["pending", "missing"]
    warned = [r.getMessage() for r in caplog.records]
    assert any("not-a-hash" in w and "not a hash" in w for w in warned)
    assert any("garbage" in w and "not readable" in w for w in warned)
    assert any("wrong-type" in w for w in warned) and any("not a list" in w for w in warned)
    assert show_run(cache, "not-a-hash") is None
    cache.close()
