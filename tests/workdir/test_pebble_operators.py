"""Pebble's operators people use (``??``, ``???``, ``? :``), ``envs``, and the input types
ARRAY, EMAIL, URI, YAML and SECRET, as Kestra flows write them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.workdir.flowkit import Cli, run_text
from workflow_cache.workdir.expressions import ExpressionError, Expressions, scoped
from workflow_cache.workdir.inputs import InputError
from workflow_cache.workdir.loader import parse_flow

VARIABLES = {
    "inputs": scoped(
        {"none": None, "name": "Ada", "n": 3, "flag": True, "off": False, "empty": ""},
        "inputs",
    )
}


def render(template: str) -> str:
    return Expressions().render(template, ("f",), VARIABLES)


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{{ inputs.none ?? 'fallback' }}", "fallback"),
        ("{{ inputs.missing ?? 'fallback' }}", "fallback"),
        ("{{ inputs.name ?? 'fallback' }}", "Ada"),
        ("{{ inputs.empty ?? 'fallback' }}|", "|"),
        ("{{ inputs.off ?? 'fallback' }}", "false"),
        ("{{ inputs.missing ?? inputs.none ?? 'last' }}", "last"),
        ("{{ inputs.none ??? 'fallback' }}|", "|"),
        ("{{ inputs.missing ??? 'fallback' }}", "fallback"),
        ("{{ inputs.none ?? 'fallback' | upper }}", "FALLBACK"),
        ("{{ 'x-' ~ inputs.missing ?? 'y' }}", "x-y"),
        ("{{ inputs.name ?? inputs.missing.deeper }}", "Ada"),
        ("{{ inputs.flag ? 'yes' : 'no' }}", "yes"),
        ("{{ inputs.off ? 'yes' : 'no' }}", "no"),
        ("{{ inputs.n > 5 ? 'big' : inputs.n > 2 ? 'mid' : 'small' }}", "mid"),
        ("{{ (inputs.flag ? inputs.n : 0) + 1 }}", "4"),
        ("{{ inputs.name | default('x') == 'Ada' ? 'A' : 'B' }}", "A"),
        ("{% if (inputs.none ?? 1) == 1 %}one{% endif %}", "one"),
        ("{% set size = inputs.n > 2 ? 'L' : 'S' %}{{ size }}", "L"),
        ("{{ {'k': inputs.flag ? 1 : 2} | toJson }}", '{"k":1}'),
        ("{{ 'what?' }} and ? outside {{ '??' }}", "what? and ? outside ??"),
        ("{% raw %}{{ a ?? b }}{% endraw %}", "{{ a ?? b }}"),
        ("{# a ? b : c #}ok", "ok"),
    ],
)
def test_coalescing_and_ternary_operators_work_as_in_kestra(template: str, expected: str) -> None:
    assert render(template) == expected


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{{ inputs.flag ? 'yes' }}", "expression syntax error: expected token ':'"),
        ("{{ inputs.name ?? }}", "expression syntax error"),
        ("{{ inputs.missing ? 1 : 2 }}", "unknown variable 'inputs.missing'"),
    ],
)
def test_operator_mistakes_are_one_message(template: str, message: str) -> None:
    with pytest.raises(ExpressionError, match="^f: " + message.replace("(", r"\(")):
        render(template)


ENVS = """id: envs
namespace: dev
tasks:
  - id: show
    type: io.kestra.plugin.scripts.shell.Commands
    commands:
      - echo "{{ envs.region }} {{ envs.missing ?? 'none' }}"
"""


def test_envs_reads_the_env_prefixed_variables_of_the_process_running_the_flow(
    tmp_path: Path,
) -> None:
    summary, lines = run_text(ENVS, tmp_path, env={"ENV_REGION": "eu-west", "PATH": "/usr/bin"})
    assert summary.ok and lines.of("show") == ["eu-west none"]
    cli = Cli(tmp_path)
    cli.env["ENV_REGION"] = "us-east"
    done = cli("run", cli.write("envs.yaml", ENVS))
    assert done.returncode == 0, done.stderr
    assert "[show] us-east none" in done.stderr


INPUTS = """id: typed
namespace: dev
inputs:
  - id: ports
    type: ARRAY
    itemType: INT
  - id: email
    type: EMAIL
  - id: endpoint
    type: URI
  - id: config
    type: YAML
  - id: tags
    type: ARRAY
    itemType: STRING
    defaults: [a, b]
tasks:
  - id: show
    type: io.kestra.plugin.scripts.python.Script
    script: |
      print({{ inputs.ports | toJson }}, {{ inputs.ports[0] + 1 }})
      print({{ inputs.email | toJson }}, {{ inputs.endpoint | toJson }})
      print({{ inputs.config.db.port }}, {{ inputs.config | toJson }})
      print({{ inputs.tags | join('+') | toJson }})
"""

GOOD = {
    "ports": "[8080, 8081]",
    "email": "ada@example.com",
    "endpoint": "https://example.com/data?x=1",
    "config": "db:\n  port: 5432\n  host: localhost\n",
}


def test_array_email_uri_and_yaml_inputs(tmp_path: Path) -> None:
    summary, lines = run_text(INPUTS, tmp_path, inputs=GOOD)
    assert summary.ok, [task.error for task in summary.tasks]
    assert lines.of("show") == [
        "[8080, 8081] 8081",
        "ada@example.com https://example.com/data?x=1",
        "5432 {'db': {'port': 5432, 'host': 'localhost'}}",
        "a+b",
    ]
    comma, _ = run_text(INPUTS, tmp_path, inputs={**GOOD, "ports": "1,2"})
    assert comma.ok


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("ports", "[1, 'x']", "input 'ports' (ARRAY): expected a JSON list"),
        ("ports", '[1, "x"]', "input 'ports' (ARRAY): item 1 (INT): expected an integer, got 'x'"),
        ("ports", "{}", "input 'ports' (ARRAY): item 0 (INT): expected an integer, got '{}'"),
        ("email", "ada.example.com", "input 'email' (EMAIL): expected an email address"),
        ("endpoint", "not a uri", "input 'endpoint' (URI): expected a URI"),
        ("endpoint", "/just/a/path", "input 'endpoint' (URI): expected a URI"),
        ("config", "a: [1", "input 'config' (YAML): expected YAML text"),
    ],
)
def test_bad_values_of_the_new_types_are_one_line(name: str, value: str, message: str) -> None:
    from workflow_cache.workdir.inputs import resolve_inputs

    flow = parse_flow(INPUTS)
    with pytest.raises(InputError) as caught:
        resolve_inputs(flow.inputs, {**GOOD, name: value})
    assert str(caught.value).startswith(message)


def test_an_array_needs_a_known_item_type() -> None:
    from workflow_cache.workdir.errors import FlowError

    text = INPUTS.replace("itemType: INT", "itemType: FILE")
    with pytest.raises(FlowError, match=r"flow>:6: inputs\[0\]\.itemType: itemType 'FILE' is not"):
        parse_flow(text)


def test_new_types_through_the_cli(tmp_path: Path) -> None:
    cli = Cli(tmp_path)
    flow = cli.write("typed.yaml", INPUTS)
    args: list[Any] = ["run", flow]
    for name, value in GOOD.items():
        args += ["--input", f"{name}={value}"]
    done = cli(*args)
    assert done.returncode == 0, done.stderr
    assert "[show] [8080, 8081] 8081" in done.stderr
    bad = cli("run", flow, *args[2:-2], "--input", "config=a: [1")
    assert bad.returncode == 2
    assert "input 'config' (YAML): expected YAML text" in bad.stderr
