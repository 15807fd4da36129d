from __future__ import annotations

import gc
import uuid
from collections.abc import Iterator

import pytest
import redis

from tests.servers import RedisServer
from workflow_cache import settings


@pytest.fixture(autouse=True)
def _settings_read_per_test(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The process's settings are read once; each test reads them on its first use,
    after its own changes to the environment, and leaves none behind.

    The worker-local store is off unless a test turns it on: it would serve
    entries these tests damage in storage, and it lives under the user's home."""
    monkeypatch.setenv("WORKFLOW_CACHE_LOCAL_STORE_BYTES", "0")
    settings.forget()
    yield
    settings.forget()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server
    # Celery result objects unsubscribe from their backend when collected: let that
    # happen while the server still answers, not against a stopped one at exit.
    gc.collect()
    server.stop()


@pytest.fixture(scope="session")
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url


@pytest.fixture
def redis_client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis_server.client()
    yield client
    client.close()


@pytest.fixture
def namespace() -> str:
    """A namespace no other test uses, so tests share one server without sharing keys."""
    return f"test-{uuid.uuid4().hex[:12]}"
