"""Workflows and steps: the behaviour of the reference page, in Python, on a dict cache."""

from __future__ import annotations

import asyncio
import warnings
from datetime import timedelta

import pytest

from tests.waiting import wait_until_async
from workflow_cache import (
    CachingSkippedWarning,
    Result,
    StepEvent,
    UnexpectedError,
    create_workflow,
    err,
    ok,
)


class Users:
    """A fake database that counts how often each user is fetched."""

    def __init__(self) -> None:
        self.fetches: list[str] = []

    def fetch_user(self, user_id: str) -> Result:
        self.fetches.append(user_id)
        if user_id == "999":
            return err("NOT_FOUND")
        return ok({"id": user_id, "name": f"user {user_id}"})


@pytest.fixture
def users() -> Users:
    return Users()


# -- enabling the cache and keys ------------------------------------------------------


def test_same_key_twice_in_one_run_executes_once(users: Users) -> None:
    workflow = create_workflow({}, cache={})

    def run(step):
        user = step(lambda: users.fetch_user("1"), key="user:1")
        same_user = step(lambda: users.fetch_user("1"), key="user:1")
        return user, same_user

    result = workflow(run)
    assert result.ok
    assert result.value[0] == result.value[1] == {"id": "1", "name": "user 1"}
    assert users.fetches == ["1"]


def test_cache_persists_across_runs(users: Users) -> None:
    workflow = create_workflow({}, cache={})
    first = workflow(lambda step: step(lambda: users.fetch_user("1"), key="user:1"))
    second = workflow(lambda step: step(lambda: users.fetch_user("1"), key="user:1"))
    assert first.value == second.value == {"id": "1", "name": "user 1"}
    assert users.fetches == ["1"]


def test_different_keys_run_separately(users: Users) -> None:
    workflow = create_workflow({}, cache={})

    def run(step):
        return [step(lambda i=i: users.fetch_user(i), key=f"user:{i}") for i in ("1", "2")]

    assert [u["id"] for u in workflow(run).value] == ["1", "2"]
    assert users.fetches == ["1", "2"]


def test_steps_without_key_always_run(users: Users) -> None:
    workflow = create_workflow({}, cache={})
    for _ in range(3):
        workflow(lambda step: step(lambda: users.fetch_user("1")))
    assert users.fetches == ["1", "1", "1"]


def test_without_a_cache_keyed_steps_run_every_time(users: Users) -> None:
    workflow = create_workflow({})
    for _ in range(2):
        workflow(lambda step: step(lambda: users.fetch_user("1"), key="user:1"))
    assert users.fetches == ["1", "1"]


def test_deps_are_passed_when_the_function_takes_two_parameters(users: Users) -> None:
    workflow = create_workflow({"fetch_user": users.fetch_user}, cache={})
    result = workflow(lambda step, deps: step(lambda: deps["fetch_user"]("7"), key="user:7"))
    assert result.value["id"] == "7"
    one_param = workflow(lambda step: "no deps needed")
    assert one_param.value == "no deps needed"


# -- thunks ---------------------------------------------------------------------------


def test_a_plain_value_is_used_but_not_cached_and_warns_once(users: Users) -> None:
    cache: dict = {}
    workflow = create_workflow({}, cache=cache)
    with pytest.warns(CachingSkippedWarning, match="user:1") as record:
        workflow(lambda step: step(users.fetch_user("1"), key="user:1"))
        workflow(lambda step: step(users.fetch_user("1"), key="user:1"))
    assert len(record) == 1
    assert users.fetches == ["1", "1"]  # evaluated by the caller both times
    assert cache == {}


def test_a_plain_err_value_still_ends_the_workflow() -> None:
    workflow = create_workflow({})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CachingSkippedWarning)
        result = workflow(lambda step: step(err("BAD"), key="k"))
    assert result.error == "BAD"


def test_a_thunk_returning_a_plain_value_is_ok() -> None:
    workflow = create_workflow({}, cache={})
    assert workflow(lambda step: step(lambda: 41) + 1).value == 42


def test_workflow_returning_a_result_keeps_it() -> None:
    workflow = create_workflow({})
    assert workflow(lambda step: err("mine")).error == "mine"
    assert workflow(lambda step: ok(3)).value == 3


# -- errors ---------------------------------------------------------------------------


def test_err_ends_the_workflow_early(users: Users) -> None:
    workflow = create_workflow({}, cache={})
    after: list[str] = []

    def run(step):
        step(lambda: users.fetch_user("999"), key="user:999")
        after.append("ran")
        return "unreachable"

    result = workflow(run)
    assert not result.ok and result.error == "NOT_FOUND"
    assert after == []


def test_err_is_cached_by_default_and_retried_after_delete(users: Users) -> None:
    cache: dict = {}
    workflow = create_workflow({}, cache=cache)

    def run(step):
        return step(lambda: users.fetch_user("999"), key="user:999")

    assert workflow(run).error == "NOT_FOUND"
    assert workflow(run).error == "NOT_FOUND"
    assert users.fetches == ["999"]
    del cache["user:999"]
    assert workflow(run).error == "NOT_FOUND"
    assert users.fetches == ["999", "999"]
    cache.clear()
    workflow(run)
    assert users.fetches == ["999", "999", "999"]


def test_cache_errors_false_per_workflow(users: Users) -> None:
    workflow = create_workflow({}, cache={}, cache_errors=False)
    for _ in range(2):
        workflow(lambda step: step(lambda: users.fetch_user("999"), key="user:999"))
    assert users.fetches == ["999", "999"]


def test_cache_errors_false_per_step_overrides_the_workflow(users: Users) -> None:
    workflow = create_workflow({}, cache={})

    def run(step):
        return step(lambda: users.fetch_user("999"), key="user:999", cache_errors=False)

    workflow(run)
    workflow(run)
    assert users.fetches == ["999", "999"]


def test_an_exception_becomes_unexpected_error_with_traceback() -> None:
    workflow = create_workflow({}, cache={})

    def explode():
        raise ConnectionResetError("peer went away")

    result = workflow(lambda step: step(explode, key="x"))
    assert not result.ok
    error = result.error
    assert isinstance(error, UnexpectedError)
    assert error.type == "ConnectionResetError"
    assert error.message == "peer went away"
    assert "in explode" in error.traceback and "peer went away" in error.traceback


def test_exceptions_are_not_cached_by_default() -> None:
    cache: dict = {}
    calls: list[int] = []
    workflow = create_workflow({}, cache=cache)

    def flaky():
        calls.append(1)
        if len(calls) == 1:
            raise TimeoutError("first try times out")
        return "second try works"

    assert isinstance(workflow(lambda step: step(flaky, key="f")).error, UnexpectedError)
    assert "f" not in cache
    assert workflow(lambda step: step(flaky, key="f")).value == "second try works"
    assert len(calls) == 2


def test_exceptions_can_be_cached_when_asked() -> None:
    calls: list[int] = []
    workflow = create_workflow({}, cache={}, cache_exceptions=True)

    def broken():
        calls.append(1)
        raise KeyError("missing")

    first = workflow(lambda step: step(broken, key="b"))
    second = workflow(lambda step: step(broken, key="b"))
    assert calls == [1]
    assert second.error == first.error
    assert isinstance(second.error, UnexpectedError) and second.error.type == "KeyError"


def test_an_exception_in_the_workflow_body_propagates() -> None:
    workflow = create_workflow({})

    def run(step):
        raise RuntimeError("a bug in the workflow itself")

    with pytest.raises(RuntimeError, match="bug in the workflow"):
        workflow(run)


def test_except_exception_in_the_body_does_not_swallow_an_err() -> None:
    workflow = create_workflow({})

    def run(step):
        try:
            step(lambda: err("STOP"))
        except Exception:
            return "swallowed"
        return "continued"

    assert workflow(run).error == "STOP"


# -- ttl ------------------------------------------------------------------------------


@pytest.mark.parametrize("ttl", [3600, 3600.0, timedelta(hours=1), "PT1H", "PT60M"])
def test_ttl_forms_are_stored_as_seconds(ttl) -> None:
    cache: dict = {}
    create_workflow({}, cache=cache)(lambda step: step(lambda: 1, key="k", ttl=ttl))
    assert cache["k"]["ttl"] == 3600.0


def test_workflow_ttl_is_the_default_for_its_steps() -> None:
    cache: dict = {}
    workflow = create_workflow({}, cache=cache, ttl="PT5M")
    workflow(lambda step: (step(lambda: 1, key="a"), step(lambda: 2, key="b", ttl=10)))
    assert cache["a"]["ttl"] == 300.0
    assert cache["b"]["ttl"] == 10.0


def test_an_expired_entry_is_a_miss_and_is_removed() -> None:
    cache: dict = {}
    calls: list[int] = []
    workflow = create_workflow({}, cache=cache)

    def run(step):
        return step(lambda: calls.append(1) or len(calls), key="k", ttl=60)

    assert workflow(run).value == 1
    assert workflow(run).value == 1
    cache["k"]["created_at"] -= 61  # as if stored a minute ago
    assert workflow(run).value == 2
    assert calls == [1, 1]


@pytest.mark.parametrize("bad", ["P1X", "1 hour", -5, 0])
def test_a_bad_ttl_is_a_clear_error(bad) -> None:
    with pytest.raises(ValueError, match="ttl"):
        create_workflow({}, cache={})(lambda step: step(lambda: 1, key="k", ttl=bad))


# -- options and keys -----------------------------------------------------------------


def test_unknown_options_are_type_errors_naming_them() -> None:
    with pytest.raises(TypeError, match="cahce"):
        create_workflow({}, cahce={})
    workflow = create_workflow({}, cache={})
    with pytest.raises(TypeError, match=r"cache.*create_workflow"):
        workflow(lambda step: 1, cache={})
    with pytest.raises(TypeError, match="tll"):
        workflow(lambda step: step(lambda: 1, key="k", tll=5))
    with pytest.raises(TypeError, match="kyes"):
        workflow(lambda step: step.all([lambda: 1], kyes=["k"]))


@pytest.mark.parametrize("key", [1, b"user:1", ("user", 1)])
def test_non_string_keys_are_refused(key) -> None:
    with pytest.raises(TypeError, match="non-empty string"):
        create_workflow({}, cache={})(lambda step: step(lambda: 1, key=key))


def test_empty_key_is_refused() -> None:
    with pytest.raises(ValueError, match="non-empty string"):
        create_workflow({}, cache={})(lambda step: step(lambda: 1, key=""))


def test_a_cache_without_the_needed_methods_is_refused() -> None:
    class Half:
        def get(self, key): ...

    with pytest.raises(TypeError, match="lacks set, has, delete"):
        create_workflow({}, cache=Half())


# -- events ---------------------------------------------------------------------------


def test_on_event_sees_start_miss_success_then_start_hit(users: Users) -> None:
    events: list[StepEvent] = []
    workflow = create_workflow({}, cache={}, on_event=events.append)
    run = lambda step: step(lambda: users.fetch_user("1"), key="user:1")  # noqa: E731
    workflow(run)
    workflow(run)
    assert [(e.kind, e.key, e.outcome) for e in events] == [
        ("start", "user:1", None),
        ("cache_miss", "user:1", None),
        ("success", "user:1", "ok"),
        ("start", "user:1", None),
        ("cache_hit", "user:1", "ok"),
    ]
    assert all(e.duration >= 0 for e in events)


def test_on_event_reports_errors(users: Users) -> None:
    events: list[StepEvent] = []
    workflow = create_workflow({}, on_event=events.append)
    workflow(lambda step: step(lambda: users.fetch_user("999")))
    assert [(e.kind, e.key, e.outcome) for e in events] == [
        ("start", None, None),
        ("error", None, "err"),
    ]


# -- async ----------------------------------------------------------------------------


def test_async_workflow_is_awaited_and_steps_are_awaited() -> None:
    calls: list[str] = []
    workflow = create_workflow({"prefix": "hello"}, cache={})

    async def fetch(name: str) -> Result:
        await asyncio.sleep(0)
        calls.append(name)
        return ok(name)

    async def run(step, deps):
        name = await step(lambda: fetch("ada"), key="name:ada")
        again = await step(lambda: fetch("ada"), key="name:ada")
        return f"{deps['prefix']} {name} {again}"

    assert asyncio.run(workflow(run)).value == "hello ada ada"
    assert asyncio.run(workflow(run)).value == "hello ada ada"
    assert calls == ["ada"]


def test_async_concurrent_steps_with_one_key_run_once() -> None:
    calls: list[int] = []
    workflow = create_workflow({}, cache={})

    async def slow():
        calls.append(1)
        await asyncio.sleep(0.05)
        return "done"

    async def run(step):
        return await asyncio.gather(*(step(slow, key="shared") for _ in range(10)))

    assert asyncio.run(workflow(run)).value == ["done"] * 10
    assert calls == [1]


def test_async_err_ends_the_workflow() -> None:
    workflow = create_workflow({}, cache={})
    after: list[int] = []

    async def run(step):
        await step(lambda: err("NOPE"), key="e")
        after.append(1)

    assert asyncio.run(workflow(run)).error == "NOPE"
    assert after == []


def test_async_thunk_in_a_sync_workflow_is_finished() -> None:
    async def compute():
        return 5

    assert create_workflow({})(lambda step: step(compute) * 2).value == 10


# -- step.all -------------------------------------------------------------------------


def test_step_all_returns_values_in_order_and_skips_hits() -> None:
    calls: list[int] = []
    workflow = create_workflow({}, cache={})

    def square(i: int) -> int:
        calls.append(i)
        return i * i

    def run(step):
        return step.all(
            [lambda i=i: square(i) for i in range(5)], keys=[f"sq:{i}" for i in range(5)]
        )

    workflow(lambda step: step(lambda: square(2), key="sq:2"))
    assert workflow(run).value == [0, 1, 4, 9, 16]
    assert workflow(run).value == [0, 1, 4, 9, 16]
    assert sorted(calls) == [0, 1, 2, 3, 4]


def test_step_all_stops_at_the_first_err_in_a_sync_workflow() -> None:
    ran: list[int] = []

    def work(i: int):
        ran.append(i)
        return err(f"bad {i}") if i == 1 else ok(i)

    result = create_workflow({})(lambda step: step.all([lambda i=i: work(i) for i in range(4)]))
    assert result.error == "bad 1"
    assert ran == [0, 1]


def test_step_all_in_async_runs_misses_concurrently() -> None:
    running = 0
    peak = 0

    async def work(i: int) -> int:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        # each miss stays until all eight run at once: only concurrent misses get past
        await wait_until_async(lambda: peak == 8, f"all 8 misses running (miss {i} is)")
        running -= 1
        return i

    async def run(step):
        return await step.all(
            [lambda i=i: work(i) for i in range(8)], keys=[f"w:{i}" for i in range(8)]
        )

    assert asyncio.run(create_workflow({}, cache={})(run)).value == list(range(8))
    assert peak == 8


def test_step_all_reads_keys_in_one_batched_call() -> None:
    class CountingCache(dict):
        pass

    calls: list[list[str]] = []

    class Batched:
        def __init__(self) -> None:
            self.data: dict = {}

        def get(self, key):
            raise AssertionError("step.all must not read keys one by one")

        def get_many(self, keys):
            calls.append(list(keys))
            return [self.data.get(k) for k in keys]

        def set(self, key, value):
            self.data[key] = value

        def has(self, key):
            return key in self.data

        def delete(self, key):
            return self.data.pop(key, None) is not None

    workflow = create_workflow({}, cache=Batched())
    keys = [f"k:{i}" for i in range(20)]
    run = lambda step: step.all([lambda i=i: i for i in range(20)], keys=keys)  # noqa: E731
    assert workflow(run).value == list(range(20))
    assert workflow(run).value == list(range(20))
    assert calls == [keys, keys]


def test_step_all_checks_lengths() -> None:
    with pytest.raises(ValueError, match="2 thunks but 1 keys"):
        create_workflow({})(lambda step: step.all([lambda: 1, lambda: 2], keys=["a"]))
