"""Signed entries: with a signing key, only what a key holder wrote is used.

Step outcomes in real Redis and in the local SQLite file, and cached folders
through real ``workflow-cache run`` subprocesses: unsigned, forged, replayed
and wrongly keyed entries are misses with one warning and are replaced; key
rotation keeps old entries readable while new ones use the new key.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from tests.hostile import KEY, Member, Sandbox, archive_bytes, assert_clean, flow_yaml, plant_entry
from workflow_cache import LocalCache, RedisCache, create_workflow, settings
from workflow_cache.envelope import Envelope, UnsignedEnvelopeError
from workflow_cache.result import ok
from workflow_cache.settings import Settings
from workflow_cache.signing import Signer, key_id

OLD = "old-key-" + "a" * 24
NEW = "new-key-" + "b" * 24
OTHER = "other-key-" + "c" * 22
VARIABLE = "WORKFLOW_CACHE_SIGNING_KEY"
MORE = "WORKFLOW_CACHE_SIGNING_KEYS"


def use_keys(monkeypatch: pytest.MonkeyPatch, key: str | None, more: str | None = None) -> None:
    """Set the signing variables and read the settings again, as a restarted process would."""
    for variable, value in ((VARIABLE, key), (MORE, more)):
        if value is None:
            monkeypatch.delenv(variable, raising=False)
        else:
            monkeypatch.setenv(variable, value)
    settings.reload()


class Counter:
    """A step thunk that records how often it ran."""

    def __init__(self, value: Any) -> None:
        self.value = value
        self.calls = 0

    def __call__(self) -> Any:
        self.calls += 1
        return self.value


def run_step(cache: Any, key: str, thunk: Counter) -> Any:
    return create_workflow({}, cache=cache)(lambda step: step(thunk, key=key))


@pytest.fixture(params=["redis", "local"])
def store(request, tmp_path: Path, monkeypatch) -> Any:
    use_keys(monkeypatch, None)
    if request.param == "local":
        return _Store(LocalCache(tmp_path / "steps"), None, "")
    url = request.getfixturevalue("redis_url")
    client = request.getfixturevalue("redis_client")
    namespace = request.getfixturevalue("namespace")
    return _Store(RedisCache(url, namespace=namespace), client, namespace)


class _Store:
    """The cache under test, and raw access to what it stored."""

    def __init__(self, cache: Any, client: Any, namespace: str) -> None:
        self.cache, self.client, self.namespace = cache, client, namespace

    def raw(self, key: str) -> str | None:
        if self.client is None:
            row = self.cache._db.execute("SELECT value FROM outcomes WHERE key = ?", (key,))
            found = row.fetchone()
            return None if found is None else found[0]
        value = self.client.get(f"wfc:{self.namespace}:{{{key}}}:out")
        return None if value is None else value.decode()

    def plant(self, key: str, text: str) -> None:
        if self.client is None:
            self.cache._db.execute(
                "INSERT OR REPLACE INTO outcomes VALUES (?, ?, NULL)", (key, text)
            )
        else:
            self.client.set(f"wfc:{self.namespace}:{{{key}}}:out", text)


def warnings_about(caplog, key: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and key in r.getMessage()
    ]


def test_signed_outcome_is_a_hit_for_the_same_key(store: _Store, monkeypatch) -> None:
    use_keys(monkeypatch, NEW)
    first = Counter({"n": 1})
    assert run_step(store.cache, "k", first) == ok({"n": 1})
    raw = store.raw("k")
    assert raw is not None and raw.startswith('{"sig":"hmac-sha256:')
    again = Counter({"n": 2})
    assert run_step(store.cache, "k", again) == ok({"n": 1}) and again.calls == 0


@pytest.mark.parametrize("attack", ["unsigned", "forged", "replayed", "wrong-key"])
def test_bad_signature_is_a_miss_with_one_warning_and_is_replaced(
    store: _Store, monkeypatch, caplog, attack: str
) -> None:
    use_keys(monkeypatch, NEW)
    run_step(store.cache, "donor", Counter("donor value"))
    signed = store.raw("donor")
    assert signed is not None
    if attack == "unsigned":
        use_keys(monkeypatch, None)
        run_step(store.cache, "k", Counter("planted"))
        use_keys(monkeypatch, NEW)
    elif attack == "forged":
        store.plant("k", signed.replace("donor value", "planted!!!!"))
    elif attack == "replayed":
        store.plant("k", signed)  # a valid signature, but for another key
    else:
        use_keys(monkeypatch, OTHER)
        run_step(store.cache, "k", Counter("planted"))
        use_keys(monkeypatch, NEW)
    caplog.clear()
    honest = Counter("honest")
    with caplog.at_level(logging.WARNING, logger="workflow_cache"):
        assert run_step(store.cache, "k", honest) == ok("honest")
    assert honest.calls == 1
    assert len(warnings_about(caplog, "'k'")) == 1, caplog.text
    again = Counter("again")
    assert run_step(store.cache, "k", again) == ok("honest") and again.calls == 0


def test_rotation_old_entries_verify_new_entries_use_the_first_key(
    store: _Store, monkeypatch
) -> None:
    use_keys(monkeypatch, OLD)
    run_step(store.cache, "old", Counter("from before"))
    use_keys(monkeypatch, f"{NEW},{OLD}")
    reader = Counter("unused")
    assert run_step(store.cache, "old", reader) == ok("from before") and reader.calls == 0
    run_step(store.cache, "fresh", Counter("after rotation"))
    use_keys(monkeypatch, NEW)  # the old key retired: only new entries still verify
    fresh = Counter("unused")
    assert run_step(store.cache, "fresh", fresh) == ok("after rotation") and fresh.calls == 0
    old = Counter("recomputed")
    assert run_step(store.cache, "old", old) == ok("recomputed") and old.calls == 1


def test_keys_variable_adds_verify_only_keys(store: _Store, monkeypatch) -> None:
    use_keys(monkeypatch, OLD)
    run_step(store.cache, "k", Counter("signed with the old key"))
    use_keys(monkeypatch, NEW, OLD)
    reader = Counter("unused")
    assert run_step(store.cache, "k", reader) == ok("signed with the old key")
    assert reader.calls == 0


def test_forged_outcome_seen_while_claiming_is_replaced(
    redis_url: str, redis_client, namespace: str, monkeypatch
) -> None:
    """The single-flight claim finds a stored outcome: it too must be signed."""
    use_keys(monkeypatch, NEW)
    cache = RedisCache(redis_url, namespace=namespace)
    redis_client.set(f"wfc:{namespace}:{{k}}:out", json.dumps({"v": 1, "status": "ok", "value": 1}))
    claim = cache.acquire("k")
    assert type(claim).__name__ == "RedisClaim"
    claim.release()


@pytest.mark.parametrize("field", ["signing_key", "signing_keys"])
def test_short_signing_key_is_a_validation_error_naming_its_field(
    monkeypatch: pytest.MonkeyPatch, field: str
) -> None:
    """Refused when the settings are read, never printed: not a later refusal by a cache."""
    secret = "short-secret"  # 12 characters
    with pytest.raises(ValidationError) as given:
        Settings(**{field: f"{NEW},{secret}"})
    monkeypatch.setenv(f"WORKFLOW_CACHE_{field.upper()}", secret)
    with pytest.raises(ValidationError) as read:
        settings.reload()
    for caught in (given, read):
        (problem,) = caught.value.errors()
        assert problem["loc"] == (field,)
        assert "at least 16 characters" in problem["msg"]
        assert secret not in str(caught.value) and NEW not in str(caught.value)
        assert str(caught.value).splitlines()[1] == field


def test_a_given_signer_signs_and_verifies_without_any_setting() -> None:
    signer = Signer.from_text(NEW)
    assert not settings.current().signing_key_list  # the process's settings sign nothing
    text = Envelope("ok", value=1).sealed("k", signer=signer)
    assert text.startswith('{"sig":"hmac-sha256:') and NEW not in repr(signer)
    assert Envelope.loads("k", text, signer=signer).value == 1
    with pytest.raises(UnsignedEnvelopeError):
        Envelope.loads("k", Envelope("ok", value=1).sealed("k"), signer=signer)
    with pytest.raises(UnsignedEnvelopeError):
        Envelope.loads("k", text, signer=Signer.from_text(OTHER))


_ONE_STEP = """
import sys
from workflow_cache import RedisCache, create_workflow

url, namespace, key, value = sys.argv[1:]
cache = RedisCache(url, namespace=namespace)
print(create_workflow({}, cache=cache)(lambda step: step(lambda: value, key=key)).value)
"""


def test_a_key_set_only_in_the_env_file_signs_and_refuses(
    redis_url: str, redis_client: Any, namespace: str, tmp_path: Path
) -> None:
    """No signing variable in the environment: the key is in the file WORKFLOW_CACHE_ENV_FILE
    names, and a fresh process signs what it writes and refuses an unsigned outcome."""
    env_file = tmp_path / "workers.env"
    env_file.write_text(f"WORKFLOW_CACHE_SIGNING_KEY={NEW}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("WORKFLOW_CACHE_")}
    env["WORKFLOW_CACHE_ENV_FILE"] = str(env_file)

    def run(key: str, value: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", _ONE_STEP, redis_url, namespace, key, value],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )

    def stored(key: str) -> bytes:
        return redis_client.get(f"wfc:{namespace}:{{{key}}}:out")

    assert run("k", "written").stdout.strip() == "written"
    assert stored("k").startswith(f'{{"sig":"hmac-sha256:{key_id(NEW.encode())}:'.encode())
    redis_client.set(f"wfc:{namespace}:{{planted}}:out", b'{"v":1,"status":"ok","value":"forged"}')
    refused = run("planted", "honest")
    assert refused.stdout.strip() == "honest"
    assert [line for line in refused.stderr.splitlines() if "'planted'" in line], refused.stderr
    assert stored("planted").startswith(b'{"sig":"hmac-sha256:')
    assert run("k", "unused").stdout.strip() == "written"  # its own signed outcome: a hit


# -- cached folders -----------------------------------------------------------------------


@pytest.fixture
def box(tmp_path: Path) -> Sandbox:
    return Sandbox(tmp_path)


def _signed_run(box: Sandbox, key: str = NEW) -> tuple[Path, dict[str, str]]:
    flow = flow_yaml(
        box.root / "f.yaml",
        commands=[
            "mkdir -p cached",
            "cat cached/*.txt 2>/dev/null || true",
            "echo x > cached/a.txt",
        ],
    )
    env = {VARIABLE: key}
    first = box.run(flow, env=env)
    assert_clean(first)
    assert first.task()["saved"]
    return flow, env


def _pointer(box: Sandbox) -> dict[str, Any]:
    return json.loads((box.storage / KEY.name / "entry.json").read_text())


def test_signed_folder_entry_is_a_hit(box: Sandbox) -> None:
    flow, env = _signed_run(box)
    document = _pointer(box)
    assert document["sig"].startswith("hmac-sha256:") and document["digest"].startswith("sha256:")
    again = box.run(flow, env=env)
    assert_clean(again)
    assert again.task()["cache"] == "hit"


@pytest.mark.parametrize("attack", ["archive-swapped", "field-changed", "unsigned", "wrong-key"])
def test_bad_folder_entry_is_a_miss_with_one_warning(box: Sandbox, attack: str) -> None:
    flow, env = _signed_run(box)
    folder = box.storage / KEY.name
    if attack == "archive-swapped":  # keep the signed entry.json, swap the archive's bytes
        archive = folder / _pointer(box)["archive"]
        archive.write_bytes(archive_bytes([Member("cached/evil.txt", b"planted\n")]))
        document = _pointer(box)
        document["size"] = archive.stat().st_size
        (folder / "entry.json").write_text(json.dumps(document))
    elif attack == "field-changed":
        document = _pointer(box)
        document["created_at"] = "2999-01-01T00:00:00+00:00"
        (folder / "entry.json").write_text(json.dumps(document))
    elif attack == "unsigned":
        for path in folder.iterdir():
            path.unlink()
        plant_entry(box.storage, [Member("cached/evil.txt", b"planted\n")])
    else:
        env = {VARIABLE: OTHER}
    run = box.run(flow, env=env)
    assert_clean(run)
    task = run.task()
    assert task["cache"] == "miss", task
    assert "planted" not in run.output
    warnings = [line for line in run.stderr.splitlines() if KEY.name in line]
    assert len(warnings) == 1, run.stderr
    if attack != "field-changed":
        assert task["saved"], "the bad entry was removed and a signed one saved"


def test_folder_entries_survive_key_rotation(box: Sandbox) -> None:
    flow, _ = _signed_run(box, key=OLD)
    run = box.run(flow, env={VARIABLE: f"{NEW},{OLD}"})
    assert_clean(run)
    assert run.task()["cache"] == "hit"


def test_unsigned_entries_are_fine_without_a_key(box: Sandbox) -> None:
    plant_entry(box.storage, [Member("cached/file.txt", b"from the cache\n")])
    run = box.run(flow_yaml(box.root / "f.yaml"))
    assert_clean(run)
    assert run.task()["cache"] == "hit"


def test_bad_signing_key_setting_is_exit_2(box: Sandbox) -> None:
    run = box.run(flow_yaml(box.root / "f.yaml"), env={VARIABLE: "short"})
    assert_clean(run, status=2)
    assert len(run.stderr.strip().splitlines()) == 1 and "16 characters" in run.stderr


def test_async_workflows_sign_and_refuse_like_sync_ones(
    redis_url: str, redis_client: Any, namespace: str, monkeypatch, caplog
) -> None:
    """The redis.asyncio path seals what it writes and refuses an unsigned outcome too."""
    import asyncio

    use_keys(monkeypatch, NEW)
    cache = RedisCache(redis_url, namespace=namespace)
    store = _Store(cache, redis_client, namespace)
    store.plant("planted", '{"v":1,"status":"ok","value":"forged"}')
    fresh, replaced = Counter("fresh"), Counter("real")

    async def flow(step):
        a = await step(fresh, key="k")
        many = await step.all([lambda: "x", replaced], keys=["other", "planted"])
        return [a, *many]

    async def main() -> Any:
        try:
            return await create_workflow({}, cache=cache)(flow)
        finally:
            await cache.aclose()

    with caplog.at_level(logging.WARNING):
        result = asyncio.run(main())
    assert result == ok(["fresh", "x", "real"]) and replaced.calls == 1
    for key in ("k", "other", "planted"):
        assert store.raw(key).startswith('{"sig":"hmac-sha256:')
    assert len(warnings_about(caplog, "planted")) == 1
