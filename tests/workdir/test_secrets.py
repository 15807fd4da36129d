"""Secrets: ``secret('NAME')`` and ``SECRET`` inputs reach scripts, and are masked everywhere.

The value never appears in script output, the summary (table or JSON), output
variables, error messages or the listing of cached entries; an entry whose files
hold it is not saved; a missing secret stops the run before anything runs.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from tests.workdir.flowkit import Cli, run_text, task_of
from workflow_cache.workdir.errors import FlowError
from workflow_cache.workdir.filecache import FileCache

TOKEN = "tok-3f9a#Secret value"
PASSWORD = "hunter2-very-secret"


def encoded(value: str) -> str:
    return base64.b64encode(value.encode()).decode()


FLOW = """id: secrets
namespace: dev
inputs:
  - id: password
    type: SECRET
tasks:
  - id: wd
    type: io.kestra.plugin.core.flow.WorkingDirectory
    cache:
      patterns: [deps/**]
    tasks:
      - id: use
        type: io.kestra.plugin.scripts.shell.Commands
        env:
          TOKEN: "{{ secret('API_TOKEN') }}"
        commands:
          - echo "token=$TOKEN"
          - echo "password={{ inputs.password }}"
          - echo "expression={{ secret('API_TOKEN') }}" >&2
          - mkdir -p deps && printf '%s' "$TOKEN" > deps/config
          - |
            echo '::{"outputs": {"leak": "'"$TOKEN"'", "fine": "public"}}::'
            echo '::{"metrics": [{"name": "m", "value": 1, "tags": {"t": "'"$TOKEN"'"}}]}::'
          - echo "inherited=$(env | grep -c '^SECRET_' || true)"
  - id: fail
    type: io.kestra.plugin.scripts.shell.Commands
    commands:
      - echo "failing with {{ secret('API_TOKEN') }}" >&2; exit 3
"""


def test_secrets_reach_scripts_and_are_masked_in_every_output(tmp_path: Path) -> None:
    cli = Cli(tmp_path)
    cli.env["SECRET_API_TOKEN"] = encoded(TOKEN)
    flow = cli.write("flow.yaml", FLOW)
    done = cli("run", flow, "--input", f"password={PASSWORD}")
    assert done.returncode == 1, done.stderr  # the last task fails on purpose
    for text in (done.stdout, done.stderr):
        assert TOKEN not in text and PASSWORD not in text
    assert "[use] token=******" in done.stderr
    assert "[use] password=******" in done.stderr
    assert "[use] expression=******" in done.stderr
    assert "[use] inherited=0" in done.stderr, "scripts do not inherit SECRET_* variables"
    assert "leak" in done.stdout and '"******"' in done.stdout
    assert "fail: exit code 3: failing with ******" in done.stdout
    assert "not saved: deps/config holds a secret value" in done.stdout

    as_json = cli("run", flow, "--json", "--input", f"password={PASSWORD}")
    summary = json.loads(as_json.stdout)
    assert TOKEN not in as_json.stdout and PASSWORD not in as_json.stdout
    assert task_of(summary, "use")["vars"] == {"leak": "******", "fine": "public"}
    assert task_of(summary, "fail")["error"] == "exit code 3: failing with ******"
    assert not task_of(summary, "wd")["saved"]

    listing = cli("cache", "list", "--json")
    assert listing.returncode == 0 and json.loads(listing.stdout) == []


def test_a_cache_key_holding_a_secret_is_refused(tmp_path: Path) -> None:
    text = """id: keyed
namespace: dev
tasks:
  - id: wd
    type: io.kestra.plugin.core.flow.WorkingDirectory
    cache:
      patterns: [deps/**]
      key: "v1-{{ secret('API_TOKEN') }}"
    tasks:
      - id: make
        type: io.kestra.plugin.scripts.shell.Commands
        commands: ["mkdir -p deps && echo x > deps/x"]
"""
    storage = tmp_path / "storage"
    summary, _ = run_text(
        text,
        tmp_path,
        cache=FileCache(str(storage)),
        env={"SECRET_API_TOKEN": encoded(TOKEN), "PATH": "/usr/bin:/bin"},
    )
    assert not summary.ok
    error = summary.task("wd").error or ""
    assert "cache.key holds a secret value" in error and TOKEN not in error
    assert FileCache(str(storage)).entries() == []


def test_a_missing_secret_is_one_line_naming_it_and_nothing_runs(tmp_path: Path) -> None:
    cli = Cli(tmp_path)
    cli.env.pop("SECRET_API_TOKEN", None)
    flow = cli.write("flow.yaml", FLOW)
    done = cli("run", flow, "--input", f"password={PASSWORD}")
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: ") and lines[0].endswith(
        "flow.yaml:15: tasks[0].tasks[0].env.TOKEN: secret 'API_TOKEN' is not set: "
        "set SECRET_API_TOKEN in the environment of the worker (base64-encoded)"
    )
    assert "SECRET_API_TOKEN" in lines[0]
    assert "[use]" not in done.stderr


def test_secrets_come_from_a_file_named_by_the_option_or_the_setting(tmp_path: Path) -> None:
    secrets = tmp_path / "secrets.env"
    secrets.write_text(f"# Kestra's .env_encoded lines\n\nSECRET_API_TOKEN={encoded(TOKEN)}\n")
    text = """id: from_file
namespace: dev
tasks:
  - id: show
    type: io.kestra.plugin.scripts.python.Script
    script: |
      token = {{ secret('API_TOKEN') | toJson }}
      print(len(token), token)
"""
    cli = Cli(tmp_path)
    flow = cli.write("flow.yaml", text)
    by_option = cli("run", flow, "--secrets-file", secrets)
    assert by_option.returncode == 0, by_option.stderr
    assert f"[show] {len(TOKEN)} ******" in by_option.stderr
    cli.env["WORKFLOW_CACHE_SECRETS_FILE"] = str(secrets)
    by_setting = cli("run", flow)
    assert by_setting.returncode == 0, by_setting.stderr
    assert f"[show] {len(TOKEN)} ******" in by_setting.stderr
    assert TOKEN not in by_option.stderr + by_setting.stderr


def test_a_broken_secret_or_file_is_named_never_shown(tmp_path: Path) -> None:
    text = """id: broken
namespace: dev
tasks:
  - id: t
    type: io.kestra.plugin.scripts.shell.Commands
    commands: ["echo {{ secret('API_TOKEN') }}"]
"""
    with pytest.raises(FlowError, match="secret 'API_TOKEN': SECRET_API_TOKEN is not base64"):
        run_text(text, tmp_path, env={"SECRET_API_TOKEN": "not base64!"})
    bad = tmp_path / "bad.env"
    bad.write_text(f"{TOKEN}\n")
    with pytest.raises(FlowError) as caught:
        run_text(text, tmp_path, env={}, secrets_file=bad)
    assert "bad.env:1: expected a line SECRET_<NAME>=<base64 value>" in str(caught.value)
    assert TOKEN not in str(caught.value)


def test_errors_that_quote_a_secret_value_mask_it(tmp_path: Path) -> None:
    text = """id: quoted
namespace: dev
inputs:
  - id: pin
    type: SECRET
    validator: "[0-9]{4}"
tasks:
  - id: t
    type: io.kestra.plugin.scripts.shell.Commands
    commands: ["echo {{ secret('API_TOKEN') | date }}"]
"""
    env = {"SECRET_API_TOKEN": encoded(TOKEN)}
    with pytest.raises(FlowError) as caught:
        run_text(text, tmp_path, env=env, inputs={"pin": "1234"})
    assert "date: '******' is not an ISO 8601 date" in str(caught.value)
    with pytest.raises(FlowError) as refused:
        run_text(text, tmp_path, env=env, inputs={"pin": "12345-not-a-pin"})
    assert "input 'pin' (SECRET): the value does not match the validator" in str(refused.value)
    assert "12345-not-a-pin" not in str(refused.value)


def test_producers_leave_secrets_to_the_worker(tmp_path: Path) -> None:
    """A producer checking a flow for workers does not need the workers' secrets."""
    from workflow_cache.workdir.loader import parse_flow
    from workflow_cache.workdir.rendering import FlowRenderer

    flow = parse_flow(FLOW)
    FlowRenderer(flow, {"password": "x"}).check()  # no secrets, no environment here: fine


def test_the_example_flow_of_inputs_and_secrets(tmp_path: Path) -> None:
    example = Path(__file__).resolve().parents[2] / "examples" / "flows" / "inputs_and_secrets.yaml"
    cli = Cli(tmp_path)
    cli.env["SECRET_API_TOKEN"] = encoded(TOKEN)
    done = cli("run", example, "--input", "greeting=hi $(whoami)")
    assert done.returncode == 0, done.stderr
    assert "[notify] hi $(whoami)\n" in done.stderr
    assert "[notify] to ada@example.com via https://example.com/notify\n" in done.stderr
    assert "[notify] to grace@example.com via https://example.com/notify\n" in done.stderr
    assert "[notify] authorised with ******\n" in done.stderr
    assert "[notify] debug off\n" in done.stderr
    assert TOKEN not in done.stderr + done.stdout
