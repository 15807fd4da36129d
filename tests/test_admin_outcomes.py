"""``workflow-cache steps``: outcomes in a real Redis and a real LocalCache, seen and cleaned."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.servers import free_port
from workflow_cache import LocalCache, RedisCache, create_workflow, err
from workflow_cache.cli import main


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def fill(cache: Any) -> None:
    workflow = create_workflow({}, cache=cache)

    def steps(step: Any) -> None:
        step(lambda: {"id": 1}, key="user:1")
        step(lambda: {"id": 2}, key="user:2", ttl=3600)
        step(lambda: "x" * 1000, key="report:big")

    assert workflow(steps).ok
    failed = workflow(lambda step: step(lambda: err("NOT_FOUND"), key="user:404"))
    assert failed.error == "NOT_FOUND"


@pytest.fixture
def redis_cache(redis_url: str, namespace: str) -> Any:
    cache = RedisCache(redis_url, namespace=namespace)
    fill(cache)
    yield cache
    cache.clear()
    cache.close()


def redis_args(redis_url: str, namespace: str) -> list[str]:
    return ["--redis", redis_url, "--namespace", namespace]


def test_list_pages_filters_and_reports_ttl_and_size(
    redis_cache: RedisCache, redis_url: str, namespace: str, capsys: Any
) -> None:
    where = redis_args(redis_url, namespace)
    code, out, _ = run_cli(["steps", "list", "user:", "--json", *where], capsys)
    assert code == 0
    listed = {e["key"]: e for e in json.loads(out)["entries"]}
    assert set(listed) == {"user:1", "user:2", "user:404"}
    assert listed["user:404"]["status"] == "err" and listed["user:1"]["status"] == "ok"
    assert listed["user:1"]["ttl_seconds"] is None
    assert 3500 < listed["user:2"]["ttl_seconds"] <= 3600
    assert 0 <= listed["user:1"]["age_seconds"] < 60
    raw = redis_cache.client.get(redis_cache.keyspace.out("user:1"))
    assert listed["user:1"]["size"] == len(raw)

    # paged: SCAN cursors until "0"; every key exactly once
    seen: list[str] = []
    cursor = "0"
    for _ in range(100):
        code, out, _ = run_cli(
            ["steps", "list", "--json", "--limit", "1", "--cursor", cursor, *where], capsys
        )
        page = json.loads(out)
        seen += [e["key"] for e in page["entries"]]
        cursor = page["cursor"]
        if cursor == "0":
            break
    assert sorted(seen) == ["report:big", "user:1", "user:2", "user:404"]

    code, out, _ = run_cli(["steps", "list", *where], capsys)
    assert code == 0 and "report:big" in out and "never" in out


def test_show_running_claim_holder_epoch_and_queued_marker(
    redis_cache: RedisCache, redis_url: str, namespace: str, capsys: Any
) -> None:
    where = redis_args(redis_url, namespace)
    code, out, _ = run_cli(["steps", "show", "user:1", "--json", *where], capsys)
    shown = json.loads(out)
    assert code == 0 and shown["value"] == {"id": 1} and shown["holder"] is None

    claim = redis_cache.acquire("slow:1")
    keys = redis_cache.keyspace.for_step("slow:1")
    queued = keys.out[: -len("out")] + "queued"
    redis_cache.client.set(queued, "1", px=60_000)
    try:
        code, out, _ = run_cli(["steps", "show", "slow:1", "--json", *where], capsys)
        shown = json.loads(out)
        assert shown["status"] == "running" and shown["queued"] is True
        assert shown["holder"] == claim.holder.token.rpartition("|")[0]  # type: ignore[union-attr]
        assert shown["epoch"] == claim.holder.epoch  # type: ignore[union-attr]
        assert 0 < shown["lease_seconds"] <= redis_cache.lease
        code, out, _ = run_cli(["steps", "list", "slow", "--json", *where], capsys)
        assert [e["status"] for e in json.loads(out)["entries"]] == ["running"]
    finally:
        claim.release()  # type: ignore[union-attr]
        redis_cache.client.delete(queued)

    code, _, error = run_cli(["steps", "show", "nope", *where], capsys)
    assert code == 2 and "no stored outcome or claim for key 'nope'" in error


def test_delete_by_key_and_prefix_and_clear_with_confirmation(
    redis_cache: RedisCache, redis_url: str, namespace: str, capsys: Any
) -> None:
    where = redis_args(redis_url, namespace)
    assert run_cli(["steps", "delete", "user:1", *where], capsys)[:2] == (0, "deleted 1 outcome\n")
    assert not redis_cache.has("user:1")
    code, _, error = run_cli(["steps", "delete", "user:1", *where], capsys)
    assert code == 2 and "no stored outcome" in error
    code, out, _ = run_cli(["steps", "delete", "--prefix", "user:", *where], capsys)
    assert (code, out) == (0, "deleted 2 outcomes\n")
    assert redis_cache.has("report:big")

    other = RedisCache(redis_cache.url, namespace=f"{namespace}-other")
    other.save("keep", redis_cache.load("report:big"))  # type: ignore[arg-type]
    try:
        # not a terminal and no --yes: refused, nothing deleted
        code, _, error = run_cli(["steps", "clear", *where], capsys)
        assert code == 2 and "add --yes" in error and redis_cache.has("report:big")
        code, out, _ = run_cli(["steps", "clear", "--yes", *where], capsys)
        assert code == 0 and not redis_cache.has("report:big")
        assert other.has("keep")  # another namespace is untouched
    finally:
        other.clear()
        other.close()


def test_stats_count_bytes_and_memory_policy(
    redis_cache: RedisCache, redis_url: str, namespace: str, capsys: Any
) -> None:
    code, out, _ = run_cli(["steps", "stats", "--json", *redis_args(redis_url, namespace)], capsys)
    stats = json.loads(out)
    assert code == 0
    assert (stats["outcomes"], stats["ok"], stats["err"], stats["without_ttl"]) == (4, 3, 1, 3)
    assert stats["bytes"] > 1000 and stats["namespace"] == namespace
    policy = redis_cache.client.config_get("maxmemory-policy")["maxmemory-policy"]
    assert stats["maxmemory_policy"] == policy


def test_invalid_entry_is_listed_not_a_traceback(
    redis_cache: RedisCache, redis_url: str, namespace: str, capsys: Any
) -> None:
    redis_cache.client.set(redis_cache.keyspace.out("planted"), b"\x80not json")
    code, out, _ = run_cli(
        ["steps", "list", "plant", "--json", *redis_args(redis_url, namespace)], capsys
    )
    assert code == 0
    assert [e["status"] for e in json.loads(out)["entries"]] == ["invalid"]


def test_committed_step_leaves_only_its_outcome_in_redis(
    redis_url: str, namespace: str, redis_client: redis.Redis
) -> None:
    cache = RedisCache(redis_url, namespace=namespace)
    try:
        fill(cache)
        names = sorted(k.decode() for k in redis_client.scan_iter(match=f"wfc:{namespace}:*"))
        assert names and all(name.endswith(":out") for name in names), names
        assert len(names) == 4
    finally:
        cache.clear()
        cache.close()


def test_local_cache_list_show_delete_clear(tmp_path: Path, capsys: Any) -> None:
    folder = tmp_path / "steps"
    cache = LocalCache(folder)
    fill(cache)
    cache.close()
    where = ["--local", str(folder)]
    code, out, _ = run_cli(["steps", "list", "user:", "--json", *where], capsys)
    listed = {e["key"]: e for e in json.loads(out)["entries"]}
    assert code == 0 and set(listed) == {"user:1", "user:2", "user:404"}
    assert (
        3500 < listed["user:2"]["ttl_seconds"] <= 3600 and listed["user:1"]["ttl_seconds"] is None
    )
    code, out, _ = run_cli(["steps", "show", "user:404", "--json", *where], capsys)
    assert json.loads(out)["error"] == "NOT_FOUND"
    code, out, _ = run_cli(["steps", "stats", "--json", *where], capsys)
    assert json.loads(out)["outcomes"] == 4
    assert (
        run_cli(["steps", "delete", "--prefix", "user:", *where], capsys)[1]
        == "deleted 3 outcomes\n"
    )
    assert run_cli(["steps", "clear", "--yes", *where], capsys)[0] == 0
    code, out, _ = run_cli(["steps", "list", "--json", *where], capsys)
    assert json.loads(out)["entries"] == []


def test_down_redis_is_one_line_and_exit_2_within_seconds(tmp_path: Path) -> None:
    started = time.monotonic()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "workflow_cache.cli",
            "steps",
            "list",
            "--redis",
            f"redis://127.0.0.1:{free_port()}/0",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot reach Redis" in lines[0], done.stderr
    assert time.monotonic() - started < 30  # generous: the budget is a 2 s connect timeout
