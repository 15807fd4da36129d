"""A step's value is the same whether it ran or was read back, in sync and async workflows."""

from __future__ import annotations

import asyncio
import warnings
from datetime import UTC, datetime
from pathlib import Path

import pytest

from workflow_cache import LocalCache, NotStorableError, RedisCache, create_workflow

CASES = [
    ((1, "a"), [1, "a"]),
    ({1: "a", 2: (3, 4)}, {"1": "a", "2": [3, 4]}),
    ({"nested": [(1, 2)]}, {"nested": [[1, 2]]}),
    ("plain", "plain"),
]


@pytest.fixture(params=["dict", "local", "redis"])
def cache(request, tmp_path: Path, redis_url: str, namespace: str):  # type: ignore[no-untyped-def]
    if request.param == "dict":
        yield {}
        return
    if request.param == "local":
        yield LocalCache(tmp_path / "steps")
        return
    made = RedisCache(redis_url, namespace=namespace)
    yield made
    made.clear()
    made.close()


def run(workflow, fn, is_async: bool):  # type: ignore[no-untyped-def]
    if not is_async:
        return workflow(lambda step: fn(step))

    async def body(step):  # type: ignore[no-untyped-def]
        return await fn(step)

    return asyncio.run(workflow(body))


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize(("value", "stored"), CASES)
def test_a_miss_returns_what_a_later_hit_returns(cache, is_async, value, stored) -> None:  # type: ignore[no-untyped-def]
    workflow = create_workflow(cache=cache)
    calls = []

    def thunk():  # type: ignore[no-untyped-def]
        calls.append(1)
        return value

    miss = run(workflow, lambda step: step(thunk, key="v"), is_async)
    hit = run(workflow, lambda step: step(thunk, key="v"), is_async)
    assert calls == [1]
    assert miss.value == hit.value == stored
    assert type(miss.value) is type(hit.value) is type(stored)


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_step_all_misses_and_hits_agree(cache, is_async) -> None:  # type: ignore[no-untyped-def]
    workflow = create_workflow(cache=cache)
    thunks = [lambda i=i: (i, {i: i}) for i in range(3)]
    keys = [f"all:{i}" for i in range(3)]
    miss = run(workflow, lambda step: step.all(thunks, keys=keys), is_async)
    hit = run(workflow, lambda step: step.all(thunks, keys=keys), is_async)
    assert miss.value == hit.value == [[i, {str(i): i}] for i in range(3)]


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_returns_restores_the_richer_type_on_both_paths(cache, is_async) -> None:  # type: ignore[no-untyped-def]
    workflow = create_workflow(cache=cache)
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)

    def fn(step):  # type: ignore[no-untyped-def]
        return step(lambda: (when, 1), key="when", returns=tuple[datetime, int])

    miss = run(workflow, fn, is_async)
    hit = run(workflow, fn, is_async)
    assert miss.value == hit.value == (when, 1)
    assert isinstance(miss.value, tuple) and isinstance(hit.value, tuple)


def test_values_json_cannot_hold_are_refused_on_the_first_run(cache) -> None:  # type: ignore[no-untyped-def]
    workflow = create_workflow(cache=cache)
    for key, value in [("set", {1}), ("when", datetime(2026, 1, 1)), ("nan", float("nan"))]:

        def fn(step, key=key, value=value):  # type: ignore[no-untyped-def]
            return step(lambda: value, key=key)

        with pytest.raises(NotStorableError, match=repr(key)):
            workflow(lambda step: fn(step))
        assert (not cache.has(key)) if hasattr(cache, "has") else (key not in cache)


def test_a_forgotten_await_is_a_type_error_naming_await() -> None:
    workflow = create_workflow(cache={})

    async def forgot(step):  # type: ignore[no-untyped-def]
        return step(lambda: 1, key="one")

    async def forgot_in_a_list(step):  # type: ignore[no-untyped-def]
        return [step(lambda: 1, key="a"), step(lambda: 2, key="b")]

    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # the coroutines are closed, not leaked
        for fn in (forgot, forgot_in_a_list):
            with pytest.raises(TypeError, match="await") as caught:
                asyncio.run(workflow(fn))
            assert "coroutine" in str(caught.value)


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_a_keyed_step_returning_a_coroutine_is_a_type_error_naming_await(cache, is_async) -> None:  # type: ignore[no-untyped-def]
    workflow = create_workflow(cache=cache)

    async def one() -> int:
        return 1

    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # the coroutines are closed, not leaked
        for thunk in (lambda: [one()], lambda: {"a": one()}):
            with pytest.raises(TypeError, match="await") as caught:
                run(workflow, lambda step, thunk=thunk: step(thunk, key="co"), is_async)
            assert not isinstance(caught.value, NotStorableError)
            assert "step 'co' returned <coroutine" in str(caught.value)
    assert (not cache.has("co")) if hasattr(cache, "has") else ("co" not in cache)


def test_steps_without_a_cache_keep_their_value_as_returned() -> None:
    workflow = create_workflow()
    assert workflow(lambda step: step(lambda: (1, 2), key="k")).value == (1, 2)


@pytest.mark.parametrize(
    ("value", "returns"),
    [
        ((1, "a"), tuple[int, str]),
        ({1: "a"}, dict[int, str]),
        ({1, 2}, set[int]),
        (b"raw", bytes),
        (datetime(2026, 1, 1, tzinfo=UTC), datetime),
    ],
)
def test_returns_gives_back_what_json_alone_cannot(value, returns) -> None:  # type: ignore[no-untyped-def]
    workflow = create_workflow(cache={})
    fn = lambda step: step(lambda: value, key="k", returns=returns)  # noqa: E731
    first, second = workflow(fn).value, workflow(fn).value
    assert first == second == value and type(first) is type(second) is type(value)
