"""Tampered step outcomes in real Redis and in the local SQLite file, and absurd durations.

Every bad stored value is an ``EnvelopeError`` that names the key (never a raw
``ValueError``/``KeyError``/``RecursionError``); the local cache never unpickles;
durations past 100 years are one-line errors, in the API and in the CLI.
"""

from __future__ import annotations

import json
import pickle
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from tests.hostile import Sandbox, assert_clean, flow_yaml
from tests.waiting import wait_until
from workflow_cache import EnvelopeError, LocalCache, RedisCache, create_workflow
from workflow_cache.duration import DurationError, to_timedelta
from workflow_cache.envelope import MAX_BYTES, MAX_DEPTH, Envelope, NotStorableError
from workflow_cache.result import ok


def _nested(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth - 1):
        value = [value]
    return value


GOOD = {"v": 1, "status": "ok", "value": 1, "error": None, "created_at": 1.0, "ttl": None}
TAMPERED: dict[str, str] = {
    "created_at-text": json.dumps({**GOOD, "created_at": "yesterday"}),
    "created_at-bool": json.dumps({**GOOD, "created_at": True}),
    "ttl-text": json.dumps({**GOOD, "ttl": "60"}),
    "ttl-list": json.dumps({**GOOD, "ttl": [60]}),
    "ttl-huge": json.dumps({**GOOD, "ttl": 1e300}),
    "ttl-infinity": json.dumps({**GOOD, "ttl": float("inf")}),
    "unexpected-without-fields": json.dumps(
        {**GOOD, "status": "err", "value": None, "error": {}, "unexpected": True}
    ),
    "unexpected-text": json.dumps({**GOOD, "status": "err", "error": "boom", "unexpected": True}),
    "unexpected-bool-text": json.dumps({**GOOD, "unexpected": "yes"}),
    "status-other": json.dumps({**GOOD, "status": "maybe"}),
    "v-true": json.dumps({**GOOD, "v": True}),
    "not-an-object": "[1, 2, 3]",
    "nested-100000": '{"v":1,"status":"ok","value":' + "[" * 100_000 + "]" * 100_000 + "}",
    "nested-just-too-deep": json.dumps({**GOOD, "value": _nested(MAX_DEPTH)}),
    "not-json": "{not json",
    "not-utf8": '{"v":1,"status":"ok","value":"\udcff"}',
}


def _run_step(cache: Any, key: str = "k") -> Any:
    return create_workflow({}, cache=cache)(lambda step: step(lambda: 1, key=key))


@pytest.mark.parametrize("name", sorted(TAMPERED))
def test_tampered_redis_envelope_is_an_envelope_error_naming_the_key(
    name: str, redis_client, redis_url: str, namespace: str
) -> None:
    text = TAMPERED[name]
    raw = text.encode("utf-8", "surrogateescape") if name == "not-utf8" else text.encode()
    key = f"tampered:{name}"
    redis_client.set(f"wfc:{namespace}:{{{key}}}:out", raw)
    cache = RedisCache(redis_url, namespace=namespace)
    with pytest.raises(EnvelopeError, match=f"key '{key}'") as caught:
        _run_step(cache, key)
    assert type(caught.value).__mro__.index(EnvelopeError) <= 1
    assert len(str(caught.value).splitlines()) == 1
    assert redis_client.get(f"wfc:{namespace}:{{{key}}}:out") == raw  # not clobbered


@pytest.mark.parametrize("name", sorted(set(TAMPERED) - {"not-utf8"}))
def test_tampered_local_row_is_an_envelope_error_naming_the_key(name: str, tmp_path: Path) -> None:
    cache = LocalCache(tmp_path)
    _plant_row(cache, "k", TAMPERED[name])
    with pytest.raises(EnvelopeError, match="key 'k'"):
        _run_step(cache)


def _plant_row(cache: LocalCache, key: str, value: Any) -> None:
    with sqlite3.connect(cache.path) as db:
        db.execute("INSERT OR REPLACE INTO outcomes VALUES (?, ?, NULL)", (key, value))


class _Boom:
    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (Path(self.marker),))  # type: ignore[attr-defined]


def test_local_cache_never_unpickles_a_planted_row(tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    payload = _Boom()
    payload.marker = str(marker)  # type: ignore[attr-defined]
    blob = pickle.dumps(payload)
    cache = LocalCache(tmp_path / "steps")
    for key, value in {"blob": blob, "number": 42, "real": 4.5}.items():
        _plant_row(cache, key, value)  # numbers turn into text through the column's affinity
        expected = "JSON text only" if key == "blob" else "not a workflow-cache envelope"
        with pytest.raises(EnvelopeError, match=f"key '{key}'.*{expected}"):
            cache.get(key)
        with pytest.raises(EnvelopeError, match=f"key '{key}'"):
            _run_step(cache, key)
    assert not marker.exists()
    # A process reading the same file later does not run it either.
    again = LocalCache(tmp_path / "steps")
    with pytest.raises(EnvelopeError):
        again.get("blob")
    assert not marker.exists()


def test_local_cache_file_that_is_a_fifo_is_refused_without_hanging(tmp_path: Path) -> None:
    import os

    (tmp_path / "steps").mkdir()
    os.mkfifo(tmp_path / "steps" / "outcomes.sqlite3")
    with pytest.raises(EnvelopeError, match="not a regular file"):
        LocalCache(tmp_path / "steps")


def test_local_cache_still_round_trips(tmp_path: Path) -> None:
    cache = LocalCache(tmp_path)
    assert _run_step(cache) == ok(1)
    assert cache.get("k") == ok(1) and cache.has("k")
    cache.set("short", "v", ttl=0.05)
    wait_until(lambda: cache.get("short") is None, "the 0.05 s entry to expire")
    assert not cache.has("short")
    assert cache.delete("k") and not cache.has("k")


def test_values_that_could_not_be_read_back_are_not_written(tmp_path: Path) -> None:
    cache = LocalCache(tmp_path)
    deep: Any = []
    for _ in range(MAX_DEPTH + 1):
        deep = [deep]
    with pytest.raises(NotStorableError, match="nested more than"):
        cache.set("deep", deep)
    with pytest.raises(NotStorableError, match="bytes of JSON"):
        Envelope("ok", value="x" * (MAX_BYTES + 1)).dumps("big")
    assert cache.get("deep") is None


@pytest.mark.parametrize("ttl", ["P99999999999D", 1e300, float("inf"), float("nan"), "P999999999D"])
def test_absurd_durations_are_one_line_errors(ttl: Any, redis_url: str) -> None:
    with pytest.raises(DurationError) as caught:
        to_timedelta(ttl)
    assert len(str(caught.value).splitlines()) == 1
    with pytest.raises(DurationError):
        RedisCache(redis_url, default_ttl=ttl)
    assert to_timedelta("P36525D").days == 36525  # 100 years is still fine


@pytest.mark.parametrize("ttl", ["P99999999999D", "1.0e+300", ".inf", "P999999999D"])
def test_absurd_flow_ttl_is_exit_2_with_one_line(tmp_path: Path, ttl: str) -> None:
    box = Sandbox(tmp_path)
    flow = flow_yaml(tmp_path / "f.yaml", ttl=ttl)
    run = box.run(flow)
    assert_clean(run, status=2)
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "ttl" in lines[0], run.stderr
    assert "100 years" in lines[0] or "too large" in lines[0]
