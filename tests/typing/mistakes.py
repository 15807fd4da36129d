"""Mistakes a type checker must catch (each line below is one expected error)."""

from workflow_cache import RedisCache, Result, create_workflow, run_flow

create_workflow({}, cahce={})  # E: the keyword is misspelt
RedisCache("redis://localhost:6379/0", namespace=3)  # E: a lazy export is a real class
run_flow(42)  # E: a lazy export is a real function


def no_narrowing(result: Result[int, str]) -> int:
    return result.value  # E: on an err there is no value
