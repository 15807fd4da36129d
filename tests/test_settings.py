"""One settings model: WORKFLOW_CACHE_* variables, warnings for typos, one documented table."""

from __future__ import annotations

import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from pydantic import ValidationError

from workflow_cache import paths, settings
from workflow_cache.celery_app import RELIABILITY, reliability
from workflow_cache.defaults import DEFAULT_BROKER
from workflow_cache.distributed.fleet import fleet_app
from workflow_cache.distributed.settings import WorkerSettings
from workflow_cache.settings import Settings, SettingsWarning, unknown_variables
from workflow_cache.workdir.celery_tasks import make_app, run_flow_task

ROOT = Path(__file__).resolve().parent.parent


def test_every_field_reads_its_prefixed_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORKFLOW_CACHE_BROKER", "redis://broker:6379/1")
    monkeypatch.setenv("WORKFLOW_CACHE_NAMESPACE", "prod")
    monkeypatch.setenv("WORKFLOW_CACHE_LEASE", "2.5")
    monkeypatch.setenv("WORKFLOW_CACHE_DEFAULT_TTL", "P7D")
    monkeypatch.setenv("WORKFLOW_CACHE_SIGNING_KEY", "s3cret-0123456789")
    monkeypatch.setenv("WORKFLOW_CACHE_METRICS_PORT", "9808")
    settings = Settings()
    assert (settings.broker_url, settings.cache, settings.backend) == ("redis://broker:6379/1",) * 3
    assert (settings.namespace, settings.lease, settings.metrics_port) == ("prod", 2.5, 9808)
    assert settings.default_ttl == 7 * 86400
    assert settings.signing_key is not None
    assert settings.signing_key.get_secret_value() == "s3cret-0123456789"
    assert settings.signing_key_list == (b"s3cret-0123456789",)
    assert "s3cret" not in repr(settings)  # a secret never shows in logs
    assert WorkerSettings is Settings  # the fleet's old name is the same model


def test_default_ttl_accepts_seconds_and_refuses_nonsense() -> None:
    assert Settings(default_ttl="90").default_ttl == 90
    assert Settings(default_ttl="PT1H").default_ttl == 3600
    with pytest.raises(ValidationError, match="default_ttl"):
        Settings(default_ttl="P1X")


def test_fleet_uses_the_cache_wide_default_ttl(redis_url: str, namespace: str) -> None:
    _app, cache = fleet_app(
        f"ttl-{namespace}", Settings(broker=redis_url, namespace=namespace, default_ttl="PT2H")
    )
    try:
        assert cache.default_ttl == 7200
    finally:
        cache.close()


def test_unknown_variable_names_the_closest_valid_one(monkeypatch: pytest.MonkeyPatch) -> None:
    messages = unknown_variables(
        {
            "WORKFLOW_CACHE_BROKR": "x",
            "WORKFLOW_CACHE_NAMESPACE": "ok",
            "WFC_BROKER_URL": "y",
            "WFC_LEASE": "3",
            "WORKFLOW_CACHE_ZZZZZZZZZZ": "z",
            "OTHER": "w",
        }
    )
    assert messages == [
        "WFC_BROKER_URL is no longer read; use WORKFLOW_CACHE_BROKER",
        "WFC_LEASE is no longer read; use WORKFLOW_CACHE_LEASE",
        "unknown setting WORKFLOW_CACHE_BROKR; did you mean WORKFLOW_CACHE_BROKER?",
        "unknown setting WORKFLOW_CACHE_ZZZZZZZZZZ",
    ]
    monkeypatch.setenv("WORKFLOW_CACHE_NAMESPAC", "typo")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Settings()
    texts = [str(w.message) for w in caught if issubclass(w.category, SettingsWarning)]
    assert texts == [
        "unknown setting WORKFLOW_CACHE_NAMESPAC; did you mean WORKFLOW_CACHE_NAMESPACE?"
    ]


def test_cli_warns_about_a_typo_and_refuses_a_bad_value(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "WORKFLOW_CACHE_HOME": str(tmp_path)}
    command = [sys.executable, "-m", "workflow_cache.cli", "cache", "list", "--json"]
    typo = subprocess.run(
        command, env={**env, "WORKFLOW_CACHE_STORGE": "/x"}, capture_output=True, text=True
    )
    assert typo.returncode == 0, typo.stderr
    assert typo.stderr.strip() == (
        "warning: unknown setting WORKFLOW_CACHE_STORGE; did you mean WORKFLOW_CACHE_STORAGE?"
    )
    bad = subprocess.run(
        command, env={**env, "WORKFLOW_CACHE_LEASE": "soon"}, capture_output=True, text=True
    )
    assert bad.returncode == 2
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and "setting WORKFLOW_CACHE_LEASE" in lines[0] and "'soon'" in lines[0]


def test_the_settings_table_documents_every_variable() -> None:
    text = (ROOT / "docs" / "operations.md").read_text()
    documented = set(re.findall(r"^\| `(WORKFLOW_CACHE_\w+)` \|", text, flags=re.MULTILINE))
    assert documented == set(Settings.variables())


def test_an_unknown_keyword_is_a_type_error_naming_the_closest_field() -> None:
    with pytest.raises(TypeError, match=r"'namespce'; did you mean 'namespace'\?"):
        Settings(namespce="prod")
    with pytest.raises(TypeError, match=r"unexpected keyword argument 'zzzzzz'$"):
        Settings(zzzzzz=1)


def test_the_fleet_s_old_broker_url_keyword_names_broker(redis_url: str) -> None:
    """It used to be ignored silently, and the app joined redis://localhost:6379/0."""
    with pytest.raises(TypeError, match=r"'broker_url'; did you mean 'broker'\?"):
        WorkerSettings(broker_url=redis_url)
    assert WorkerSettings(broker=redis_url).broker_url == redis_url


def test_backend_and_cache_fall_back_to_the_broker_only_when_it_is_redis() -> None:
    redis_broker = Settings(broker="redis://broker:6379/1")
    assert redis_broker.backend == redis_broker.cache == redis_broker.configured_cache
    assert redis_broker.backend == "redis://broker:6379/1"
    amqp = Settings(broker="amqp://guest@rabbit//")
    assert amqp.backend is None and amqp.configured_cache is None
    assert amqp.cache == DEFAULT_BROKER
    chosen = Settings(
        broker="amqp://guest@rabbit//", result_backend="rpc://", cache_url="redis://c:6379/2"
    )
    assert (chosen.backend, chosen.cache, chosen.configured_cache) == (
        "rpc://",
        "redis://c:6379/2",
        "redis://c:6379/2",
    )
    nothing = Settings()
    assert (nothing.backend, nothing.cache, nothing.configured_cache) == (
        DEFAULT_BROKER,
        DEFAULT_BROKER,
        None,
    )


def test_the_env_file_is_read_and_its_typos_warn(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env_file = tmp_path / "settings.env"
    env_file.write_text("WORKFLOW_CACHE_NAMESPACE=from-file\nWORKFLOW_CACHE_LEAS=3\n")
    monkeypatch.setenv("WORKFLOW_CACHE_ENV_FILE", str(env_file))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert Settings().namespace == "from-file"
    texts = [str(w.message) for w in caught if issubclass(w.category, SettingsWarning)]
    assert texts == ["unknown setting WORKFLOW_CACHE_LEAS; did you mean WORKFLOW_CACHE_LEASE?"]
    monkeypatch.setenv("WORKFLOW_CACHE_NAMESPACE", "from-environment")
    assert Settings().namespace == "from-environment"  # the environment wins over the file
    monkeypatch.setenv("WORKFLOW_CACHE_ENV_FILE", str(tmp_path / "missing.env"))
    with pytest.raises(FileNotFoundError, match=r"missing\.env"):
        Settings()


def test_the_process_settings_are_read_once_until_reloaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WORKFLOW_CACHE_HOME", str(tmp_path / "first"))
    assert paths.steps_dir() == tmp_path / "first" / "steps"
    monkeypatch.setenv("WORKFLOW_CACHE_HOME", str(tmp_path / "second"))
    assert settings.current().home == tmp_path / "first"  # kept: no read per use
    assert settings.reload().home == tmp_path / "second"
    assert paths.files_dir() == tmp_path / "second" / "files"
    assert settings.reload(namespace="given").namespace == "given"
    assert settings.current().namespace == "given"


def test_home_defaults_to_the_xdg_cache_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("WORKFLOW_CACHE_HOME", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert Settings().home == tmp_path / "workflow-cache"
    monkeypatch.setenv("WORKFLOW_CACHE_HOME", "")  # empty: not set
    assert Settings().home == tmp_path / "workflow-cache"


def test_fleet_and_flow_apps_have_the_same_reliability(redis_url: str, namespace: str) -> None:
    fleet, cache = fleet_app(
        f"reliable-{namespace}",
        Settings(broker=redis_url, namespace=namespace, visibility_timeout=1234),
    )
    try:
        flows = make_app(redis_url, settings={"task_default_queue": "flows"})
        expected = reliability(1234)
        for app in (fleet, flows):
            assert {name: app.conf[name] for name in RELIABILITY} == expected
        assert expected["task_acks_late"] and expected["task_reject_on_worker_lost"]
        assert expected["worker_prefetch_multiplier"] == 1
        assert expected["accept_content"] == ["json"]
        assert run_flow_task.acks_late
        assert flows.conf.task_default_queue == "flows"
    finally:
        cache.close()
