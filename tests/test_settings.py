"""One settings model: WORKFLOW_CACHE_* variables, warnings for typos, one documented table."""

from __future__ import annotations

import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from pydantic import ValidationError

from workflow_cache.distributed.fleet import fleet_app
from workflow_cache.distributed.settings import WorkerSettings
from workflow_cache.settings import Settings, SettingsWarning, unknown_variables

ROOT = Path(__file__).resolve().parent.parent


def test_every_field_reads_its_prefixed_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORKFLOW_CACHE_BROKER", "redis://broker:6379/1")
    monkeypatch.setenv("WORKFLOW_CACHE_NAMESPACE", "prod")
    monkeypatch.setenv("WORKFLOW_CACHE_LEASE", "2.5")
    monkeypatch.setenv("WORKFLOW_CACHE_DEFAULT_TTL", "P7D")
    monkeypatch.setenv("WORKFLOW_CACHE_SIGNING_KEY", "s3cret")
    monkeypatch.setenv("WORKFLOW_CACHE_METRICS_PORT", "9808")
    settings = Settings()
    assert (settings.broker_url, settings.cache, settings.backend) == ("redis://broker:6379/1",) * 3
    assert (settings.namespace, settings.lease, settings.metrics_port) == ("prod", 2.5, 9808)
    assert settings.default_ttl == 7 * 86400
    assert settings.signing_key is not None
    assert settings.signing_key.get_secret_value() == "s3cret"
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
