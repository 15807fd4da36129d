"""The public API as a type checker reads it; tests/test_typing.py runs mypy --strict on it."""

from typing import Any, assert_type

from workflow_cache import (
    Err,
    LocalCache,
    Ok,
    RedisCache,
    Result,
    Step,
    create_workflow,
    err,
    ok,
)


def narrows_on_ok(result: Result[int, str]) -> int:
    if result.ok:
        assert_type(result, Ok[int])
        assert_type(result.value, int)
        return result.value
    assert_type(result, Err[str])
    assert_type(result.error, str)
    return len(result.error)


def constructors() -> None:
    assert_type(ok(1), Ok[int])
    assert_type(err("NOT_FOUND"), Err[str])
    outcome: Result[int, str] = ok(1) if len("x") else err("no")
    assert_type(outcome.unwrap(), int)


def workflows(cache: RedisCache | LocalCache) -> None:
    workflow = create_workflow({"n": 1}, cache=cache, ttl="PT1H", retries=2)

    def body(step: Step) -> int:
        value: int = step(lambda: 41, key="answer")
        return value + 1

    assert_type(workflow(body), Result[Any, Any])

    async def async_body(step: Step) -> int:
        return 1

    async def caller() -> None:
        assert_type(await workflow(async_body), Result[Any, Any])

    del caller
