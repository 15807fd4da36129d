"""Caches: dicts, Map-like objects (sync and async), LocalCache and RedisCache."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pydantic
import pytest
import redis
import redis.asyncio

from tests.servers import RedisServer, free_port
from tests.waiting import wait_until
from workflow_cache import NotStorableError, create_workflow, err, ok
from workflow_cache.cache.claims import CacheUnavailable
from workflow_cache.cache.local import LocalCache
from workflow_cache.cache.redis import RedisCache


class Counter:
    def __init__(self) -> None:
        self.n = 0

    def __call__(self, value: object = "value") -> object:
        self.n += 1
        return value


# -- Map-like user caches -------------------------------------------------------------


class SyncJsonRedisCache:
    """The reference page's Redis-backed cache, in Python, with json.dumps/loads."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.client, self.prefix = client, prefix

    def get(self, key):
        value = self.client.get(self.prefix + key)
        return json.loads(value) if value else None

    def set(self, key, value):
        self.client.set(self.prefix + key, json.dumps(value))

    def has(self, key):
        return self.client.exists(self.prefix + key) > 0

    def delete(self, key):
        return self.client.delete(self.prefix + key) > 0


class AsyncJsonRedisCache:
    def __init__(self, client: redis.asyncio.Redis, prefix: str) -> None:
        self.client, self.prefix = client, prefix

    async def get(self, key):
        value = await self.client.get(self.prefix + key)
        return json.loads(value) if value else None

    async def set(self, key, value):
        await self.client.set(self.prefix + key, json.dumps(value))

    async def has(self, key):
        return await self.client.exists(self.prefix + key) > 0

    async def delete(self, key):
        return await self.client.delete(self.prefix + key) > 0


def test_json_redis_cache_with_sync_methods(redis_client, namespace) -> None:
    count = Counter()
    cache = SyncJsonRedisCache(redis_client, namespace + ":")
    workflow = create_workflow({}, cache=cache)
    run = lambda step: step(lambda: count({"id": 1}), key="user:1")  # noqa: E731
    assert workflow(run).value == {"id": 1}
    assert workflow(run).value == {"id": 1}
    assert count.n == 1
    stored = json.loads(redis_client.get(namespace + ":user:1"))
    assert stored["status"] == "ok" and stored["value"] == {"id": 1}
    cache.delete("user:1")
    workflow(run)
    assert count.n == 2


def test_json_redis_cache_with_async_methods_in_an_async_workflow(redis_url, namespace) -> None:
    count = Counter()

    async def main() -> tuple:
        client = redis.asyncio.Redis.from_url(redis_url)
        cache = AsyncJsonRedisCache(client, namespace + ":")
        workflow = create_workflow({}, cache=cache)

        async def run(step):
            return await step(lambda: count("v"), key="k")

        first, second = await workflow(run), await workflow(run)
        missing = await cache.has("other")
        await client.aclose()
        return first, second, missing

    first, second, missing = asyncio.run(main())
    assert first.value == second.value == "v"
    assert count.n == 1
    assert missing is False


def test_async_cache_methods_in_a_sync_workflow(redis_url, namespace) -> None:
    count = Counter()

    class LoopLocalAsyncCache:
        """An async cache that keeps data in memory, so it works on any event loop."""

        def __init__(self) -> None:
            self.data: dict = {}

        async def get(self, key):
            await asyncio.sleep(0)
            return self.data.get(key)

        async def set(self, key, value):
            self.data[key] = value

        async def has(self, key):
            return key in self.data

        async def delete(self, key):
            return self.data.pop(key, None) is not None

    cache = LoopLocalAsyncCache()
    workflow = create_workflow({}, cache=cache)
    workflow(lambda step: step(lambda: count(1), key="k"))
    workflow(lambda step: step(lambda: count(1), key="k"))
    assert count.n == 1
    assert set(cache.data) == {"k"}


def test_async_has_returning_false_is_not_truthy() -> None:
    """An unawaited coroutine is truthy; a miss reported by an async cache must stay a miss."""

    class AsyncEmpty:
        async def get(self, key):
            return None

        async def set(self, key, value):
            pass

        async def has(self, key):
            return False

        async def delete(self, key):
            return False

    count = Counter()
    workflow = create_workflow({}, cache=AsyncEmpty())

    async def run(step):
        return await step(lambda: count(3), key="k")

    assert asyncio.run(workflow(run)).value == 3
    assert asyncio.run(workflow(run)).value == 3
    assert count.n == 2


# -- values ---------------------------------------------------------------------------


class User(pydantic.BaseModel):
    id: int
    name: str


def test_pydantic_models_come_back_as_models_with_returns(redis_url, namespace) -> None:
    cache = RedisCache(redis_url, namespace=namespace)
    count = Counter()
    workflow = create_workflow({}, cache=cache)

    def run(step):
        return step(lambda: count(User(id=1, name="Ada")), key="user:1", returns=User)

    assert workflow(run).value == User(id=1, name="Ada")
    again = workflow(run).value
    assert isinstance(again, User) and again == User(id=1, name="Ada")
    assert count.n == 1
    without = workflow(lambda step: step(lambda: None, key="user:1")).value
    assert without == {"id": 1, "name": "Ada"}


@pytest.mark.parametrize("make_cache", ["dict", "redis"])
def test_a_value_json_cannot_hold_is_refused_and_nothing_is_stored(
    make_cache, redis_url, namespace
) -> None:
    cache = {} if make_cache == "dict" else RedisCache(redis_url, namespace=namespace)
    workflow = create_workflow({}, cache=cache)
    with pytest.raises(NotStorableError, match=r"'report:1'.*Path"):
        workflow(lambda step: step(lambda: {"file": Path("/tmp/x")}, key="report:1"))
    assert (not cache) if isinstance(cache, dict) else not cache.has("report:1")


def test_a_failed_store_keeps_the_previous_outcome(redis_url, namespace) -> None:
    cache = RedisCache(redis_url, namespace=namespace)
    cache.set("k", "old")
    with pytest.raises(NotStorableError):
        cache.set("k", {1, 2})
    assert cache.get("k") == ok("old")


# -- RedisCache -----------------------------------------------------------------------


def test_redis_cache_stores_the_json_envelope_with_ttl(redis_client, redis_url, namespace):
    cache = RedisCache(redis_url, namespace=namespace)
    workflow = create_workflow({}, cache=cache)
    workflow(lambda step: step(lambda: {"id": 1}, key="user:1", ttl="PT1H"))
    raw_key = f"wfc:{namespace}:{{user:1}}:out"
    envelope = json.loads(redis_client.get(raw_key))
    assert envelope["v"] == 1 and envelope["status"] == "ok"
    assert envelope["value"] == {"id": 1} and envelope["error"] is None
    assert envelope["ttl"] == 3600.0 and envelope["created_at"] > 0
    assert 3590_000 < redis_client.pttl(raw_key) <= 3600_000


def test_redis_cache_default_ttl_applies(redis_client, redis_url, namespace) -> None:
    cache = RedisCache(redis_url, namespace=namespace, default_ttl=120)
    create_workflow({}, cache=cache)(lambda step: step(lambda: 1, key="k"))
    assert 110_000 < redis_client.pttl(f"wfc:{namespace}:{{k}}:out") <= 120_000


def test_redis_cache_err_outcome_round_trips(redis_url, namespace) -> None:
    cache = RedisCache(redis_url, namespace=namespace)
    count = Counter()
    workflow = create_workflow({}, cache=cache)
    run = lambda step: step(lambda: count(err({"code": 404})), key="user:999")  # noqa: E731
    assert workflow(run).error == {"code": 404}
    assert workflow(run).error == {"code": 404}
    assert count.n == 1
    assert cache.delete("user:999") is True
    workflow(run)
    assert count.n == 2


def test_redis_cache_clear_removes_only_its_namespace(redis_client, redis_url, namespace):
    mine = RedisCache(redis_url, namespace=namespace)
    other = RedisCache(redis_url, namespace=namespace + "-other")
    for i in range(1200):
        mine.set(f"k:{i}", i)
    other.set("k:1", "kept")
    redis_client.set("unrelated", "kept")
    assert mine.clear() == 1200
    assert mine.get("k:1") is None
    assert other.get("k:1") == ok("kept")
    assert redis_client.get("unrelated") == b"kept"


def test_redis_cache_uses_scan_not_keys(redis_client, redis_url, namespace) -> None:
    def calls(name: str) -> int:
        stats = redis_client.info("commandstats")
        return stats.get(f"cmdstat_{name}", {}).get("calls", 0)

    cache = RedisCache(redis_url, namespace=namespace)
    cache.set("a", 1)
    keys_before, scan_before = calls("keys"), calls("scan")
    cache.clear()
    assert calls("keys") == keys_before
    assert calls("scan") > scan_before


def test_step_all_through_redis_is_one_mget(redis_client, redis_url, namespace) -> None:
    def calls(name: str) -> int:
        return redis_client.info("commandstats").get(f"cmdstat_{name}", {}).get("calls", 0)

    cache = RedisCache(redis_url, namespace=namespace)
    workflow = create_workflow({}, cache=cache)
    keys = [f"n:{i}" for i in range(50)]
    run = lambda step: step.all([lambda i=i: i for i in range(50)], keys=keys)  # noqa: E731
    workflow(run)
    mget, get = calls("mget"), calls("get")
    assert workflow(run).value == list(range(50))
    assert calls("mget") == mget + 1
    assert calls("get") == get


def test_redis_cache_uses_one_connection_pool(redis_url, namespace) -> None:
    cache = RedisCache(redis_url, namespace=namespace)
    workflow = create_workflow({}, cache=cache)
    for i in range(30):
        workflow(lambda step, i=i: step(lambda: i, key=f"c:{i}"))
    pool = cache.client.connection_pool
    assert len(pool._available_connections) + len(pool._in_use_connections) == 1


def test_redis_cache_password_in_url(tmp_path) -> None:
    server = RedisServer(tmp_path, password="s3cret")
    try:
        cache = RedisCache(server.url, namespace="auth")
        cache.set("k", "v")
        assert cache.get("k") == ok("v")
        wrong = RedisCache(server.url.replace("s3cret", "wrong"), namespace="auth")
        with pytest.raises(redis.AuthenticationError):
            wrong.get("k")
    finally:
        server.stop()


def test_unreachable_redis_is_a_clear_error_not_a_hang() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    cache = RedisCache(url, namespace="x", connect_timeout=0.5)
    with pytest.raises(CacheUnavailable, match=f"127.0.0.1:{url.split(':')[2]}"):
        create_workflow({}, cache=cache)(lambda step: step(lambda: 1, key="k"))


def test_a_foreign_value_under_a_key_is_a_clear_error(redis_client, redis_url, namespace):
    redis_client.set(f"wfc:{namespace}:{{k}}:out", "not json")
    cache = RedisCache(redis_url, namespace=namespace)
    with pytest.raises(ValueError, match="'k' is not valid JSON"):
        create_workflow({}, cache=cache)(lambda step: step(lambda: 1, key="k"))
    assert redis_client.get(f"wfc:{namespace}:{{k}}:out") == b"not json"


# -- sharing across processes ---------------------------------------------------------

CHILD = textwrap.dedent(
    """
    import sys
    from workflow_cache import create_workflow
    from workflow_cache.cache.local import LocalCache
    from workflow_cache.cache.redis import RedisCache

    kind, where, marker = sys.argv[1:4]
    cache = RedisCache(where, namespace="shared") if kind == "redis" else LocalCache(where)

    def work():
        with open(marker, "a") as f:
            f.write("ran\\n")
        return {"answer": 42}

    result = create_workflow({}, cache=cache)(lambda step: step(work, key="answer"))
    print(result.value["answer"])
    """
)


def _child(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, *args], capture_output=True, text=True, timeout=60, check=True
    )
    return done.stdout.strip()


def test_two_processes_share_a_redis_cache(redis_url, redis_client, tmp_path) -> None:
    RedisCache(redis_url, namespace="shared").clear()
    marker = tmp_path / "ran.txt"
    assert _child("redis", redis_url, str(marker)) == "42"
    assert _child("redis", redis_url, str(marker)) == "42"
    assert marker.read_text() == "ran\n"


def test_local_cache_survives_process_restarts(tmp_path) -> None:
    marker = tmp_path / "ran.txt"
    store = str(tmp_path / "store")
    assert _child("local", store, str(marker)) == "42"
    assert _child("local", store, str(marker)) == "42"
    assert marker.read_text() == "ran\n"
    assert LocalCache(store).get("answer") == ok({"answer": 42})


def test_local_cache_delete_clear_and_ttl(tmp_path) -> None:
    cache = LocalCache(tmp_path, default_ttl="PT1H")
    count = Counter()
    workflow = create_workflow({}, cache=cache)
    run = lambda step: step(lambda: count(1), key="k")  # noqa: E731
    workflow(run)
    workflow(run)
    assert count.n == 1
    assert cache.load("k").ttl == 3600.0
    assert cache.delete("k") is True and not cache.has("k")
    workflow(run)
    assert count.n == 2
    assert cache.clear() == 1


RACER = textwrap.dedent(
    """
    import sys, time, redis
    from workflow_cache import RedisCache, create_workflow

    url, namespace = sys.argv[1], sys.argv[2]
    counter = redis.Redis.from_url(url, socket_timeout=None)  # it blocks in BLPOP

    def report():
        counter.incr(f"{namespace}:executions")
        time.sleep(0.5)
        return {"rows": 1200, "by": sys.argv[3]}

    cache = RedisCache(url, namespace=namespace, lease=2)
    counter.incr(f"{namespace}:ready")
    counter.blpop([f"{namespace}:go"], timeout=60)  # all racers reach the key together
    result = create_workflow({}, cache=cache)(lambda step: step(report, key="report"))
    print(result.value["by"])
    """
)


def test_producer_processes_racing_a_local_thunk_run_it_once(redis_url, redis_client, namespace):
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, redis_url, namespace, str(i)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(8)
    ]
    ready = f"{namespace}:ready"
    wait_until(lambda: int(redis_client.get(ready) or 0) == 8, "8 racers ready at the start line")
    redis_client.rpush(f"{namespace}:go", *["go"] * 8)
    outputs = [racer.communicate(timeout=60)[0].strip() for racer in racers]
    assert all(racer.returncode == 0 for racer in racers)
    assert int(redis_client.get(f"{namespace}:executions")) == 1
    assert len(set(outputs)) == 1  # every process got the one execution's outcome


def test_redis_cache_over_tls_with_rediss_url(tmp_path) -> None:
    """``rediss://`` with the CA in the URL: a real TLS redis-server on loopback."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    port = free_port()
    server = subprocess.Popen(
        [
            "redis-server",
            "--port",
            "0",
            "--tls-port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--tls-cert-file",
            str(cert),
            "--tls-key-file",
            str(key),
            "--tls-ca-cert-file",
            str(cert),
            "--tls-auth-clients",
            "no",
            "--save",
            "",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={cert}"
    try:
        cache = RedisCache(url, namespace="tls")
        wait_until(
            cache.client.ping,
            f"the TLS redis-server on port {port} to answer PING",
            ignoring=(redis.ConnectionError,),
        )
        count = Counter()
        workflow = create_workflow({}, cache=cache)
        for _ in range(2):
            assert workflow(lambda step: step(lambda: count("secret"), key="k")).value == "secret"
        assert count.n == 1
        plain = RedisCache(
            f"redis://127.0.0.1:{port}/0", namespace="tls", connect_timeout=0.5, socket_timeout=0.5
        )
        with pytest.raises(CacheUnavailable):
            plain.get("k")  # the server speaks only TLS
        cache.close()
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:secret@127.0.0.1:1/0", "redis://***@127.0.0.1:1/0"),
        ("redis://127.0.0.1:1/0?password=secret&db=1", "redis://127.0.0.1:1/0?password=***&db=1"),
    ],
)
def test_an_unreachable_redis_names_it_without_its_password(url: str, shown: str) -> None:
    cache = RedisCache(url, namespace="x", connect_timeout=0.5)
    with pytest.raises(CacheUnavailable) as caught:
        cache.get("k")
    assert shown in str(caught.value) and "secret" not in str(caught.value)
    assert "secret" not in repr(cache)
