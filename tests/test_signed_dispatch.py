"""Signed outcomes across the fleet: a worker with the signing key signs what it commits.

One real ``celery worker`` and the producer share ``WORKFLOW_CACHE_SIGNING_KEY``.
A dispatched step's outcome is stored signed; an unsigned outcome planted in
Redis (a writer without the key) is a miss, and the step runs on the worker.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from types import ModuleType

import pytest

from tests.workers import CeleryWorker, configured_test_app, wait_ready
from workflow_cache import create_workflow
from workflow_cache.distributed import CeleryDispatcher

KEY = "k" * 40


@pytest.fixture(scope="module")
def signed_app(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModuleType]:
    env = {
        "WORKFLOW_CACHE_BROKER": redis_url,
        "WORKFLOW_CACHE_NAMESPACE": f"signed-{uuid.uuid4().hex[:8]}",
        "WORKFLOW_CACHE_SIGNING_KEY": KEY,
    }
    log = tmp_path_factory.mktemp("signed") / "worker.log"
    with configured_test_app(env) as module:
        worker = CeleryWorker("tests.celery_app", "signed", "steps", env, log=log)
        try:
            wait_ready(module.app, [worker])
            yield module
        finally:
            worker.stop()


def test_a_dispatched_outcome_is_signed_and_an_unsigned_one_is_a_miss(
    signed_app: ModuleType,
) -> None:
    tag = uuid.uuid4().hex[:10]
    cache = signed_app.cache
    workflow = create_workflow(
        {}, cache=cache, dispatcher=CeleryDispatcher(signed_app.app, cache, timeout=60)
    )

    first = workflow(lambda step: step(signed_app.work.s(tag), key=tag))
    assert first.ok and first.value["count"] == 1
    stored = cache.client.get(cache.keyspace.out(tag))
    assert stored.startswith(b'{"sig":"')  # signed by the worker

    planted = f"{tag}:planted"
    cache.client.set(cache.keyspace.out(planted), b'{"v":1,"status":"ok","value":"forged"}')
    second = workflow(lambda step: step(signed_app.work.s(planted), key=planted))
    assert second.ok and second.value != "forged"  # the planted outcome was refused
    assert signed_app.count(planted) == 1
    assert cache.client.get(cache.keyspace.out(planted)).startswith(b'{"sig":"')
