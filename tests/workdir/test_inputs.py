"""Flow inputs: each type, defaults, required, bad values; from run_flow, --input and --inputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.workdir.flowkit import Cli, run_text, task_of
from workflow_cache.workdir.inputs import InputError, parse_assignments, resolve_inputs
from workflow_cache.workdir.loader import parse_flow
from workflow_cache.workdir.spec import FlowError

ALL_TYPES = """
id: typed
namespace: dev
inputs:
  - id: text
    type: STRING
    defaults: world
  - id: count
    type: INT
    min: 1
    max: 10
    defaults: 3
  - id: ratio
    type: FLOAT
    defaults: 0.5
  - id: loud
    type: BOOLEAN
    defaults: false
  - id: flag
    type: BOOL
    required: false
  - id: when
    type: DATETIME
    defaults: "2024-01-31T12:00:00+01:00"
  - id: day
    type: DATE
    defaults: "2024-02-29"
  - id: at
    type: TIME
    defaults: "08:30:00"
  - id: wait
    type: DURATION
    defaults: PT90M
  - id: config
    type: JSON
    defaults: '{"retries": 2, "hosts": ["a", "b"]}'
  - id: env
    type: SELECT
    values: [dev, prod]
    defaults: dev
  - id: regions
    type: MULTISELECT
    values: [eu, us, ap]
    defaults: [eu]
  - id: data
    type: FILE
    required: false
tasks:
  - id: show
    type: io.kestra.plugin.scripts.shell.Commands
    commands:
      - echo "text={{ inputs.text }}"
      - echo "count={{ inputs.count }} next={{ inputs.count + 1 }}"
      - echo "ratio={{ inputs.ratio }}"
      - echo "loud={{ inputs.loud }} flag={{ inputs.flag }}"
      - echo "when={{ inputs.when }}"
      - echo "day={{ inputs.day }} at={{ inputs.at }}"
      - echo "wait={{ inputs.wait }}"
      - echo "retries={{ inputs.config.retries }} host={{ inputs.config.hosts[1] }}"
      - echo "env={{ inputs.env }} regions={{ inputs.regions | join(',') }}"
      - echo "data={{ inputs.data }}"
"""


def values(lines: list[str]) -> dict[str, str]:
    found = {}
    for line in lines:
        for part in line.split(" "):
            name, _, value = part.partition("=")
            found[name] = value
    return found


def test_defaults_of_every_type_reach_the_script(tmp_path: Path) -> None:
    summary, lines = run_text(ALL_TYPES, tmp_path)
    assert summary.ok
    assert values(lines.of("show")) == {
        "text": "world",
        "count": "3",
        "next": "4",
        "ratio": "0.5",
        "loud": "false",
        "flag": "",
        "when": "2024-01-31T11:00:00Z",
        "day": "2024-02-29",
        "at": "08:30:00",
        "wait": "PT1H30M",
        "retries": "2",
        "host": "b",
        "env": "dev",
        "regions": "eu",
        "data": "",
    }


def test_given_values_are_converted_to_their_type(tmp_path: Path) -> None:
    data = tmp_path / "data.csv"
    data.write_text("a,b\n")
    given = {
        "text": "there",
        "count": "7",
        "ratio": "2.25",
        "loud": "true",
        "flag": True,
        "when": "2024-06-01T00:00:00Z",
        "day": "2023-12-24",
        "at": "23:59:59",
        "wait": "P1DT1H",
        "config": {"retries": 5, "hosts": ["x", "y"]},
        "env": "prod",
        "regions": ["us", "ap"],
        "data": str(data),
    }
    summary, lines = run_text(ALL_TYPES, tmp_path, inputs=given)
    assert summary.ok
    shown = values(lines.of("show"))
    assert shown["text"] == "there" and shown["count"] == "7" and shown["next"] == "8"
    assert shown["ratio"] == "2.25" and shown["loud"] == "true" and shown["flag"] == "true"
    assert shown["when"] == "2024-06-01T00:00:00Z"
    assert (shown["day"], shown["at"]) == ("2023-12-24", "23:59:59")
    assert shown["wait"] == "PT25H"
    assert (shown["retries"], shown["host"]) == ("5", "y")
    assert (shown["env"], shown["regions"]) == ("prod", "us,ap")
    assert shown["data"] == str(data.resolve())


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("count", "seven", "input 'count' (INT): expected an integer, got 'seven'"),
        ("count", "11", "input 'count' (INT): 11 is more than the maximum 10"),
        ("count", "0", "input 'count' (INT): 0 is less than the minimum 1"),
        ("ratio", "half", "input 'ratio' (FLOAT): expected a number, got 'half'"),
        ("loud", "maybe", "input 'loud' (BOOLEAN): expected true or false, got 'maybe'"),
        ("when", "2024-01-01T10:00:00", "input 'when' (DATETIME): expected a date and time"),
        ("day", "31/01/2024", "input 'day' (DATE): expected a date such as 2024-01-31"),
        ("at", "25:00", "input 'at' (TIME): expected a time of day"),
        ("wait", "P1X", "input 'wait' (DURATION): invalid duration 'P1X'"),
        ("config", "{retries: 2", "input 'config' (JSON): expected JSON text"),
        ("env", "staging", "input 'env' (SELECT): 'staging' is not one of 'dev', 'prod'"),
        ("regions", "eu,mars", "input 'regions' (MULTISELECT): 'mars' is not one of"),
        ("data", "/no/such/file.csv", "input 'data' (FILE): no such file: '/no/such/file.csv'"),
        ("nmae", "x", "unknown input 'nmae'; the flow declares: at, config, count"),
    ],
)
def test_a_bad_value_is_one_line_naming_the_input(
    tmp_path: Path, name: str, value: str, expected: str
) -> None:
    with pytest.raises(InputError) as caught:
        run_text(ALL_TYPES, tmp_path, inputs={name: value})
    assert str(caught.value).startswith(expected)
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "work").exists(), "nothing ran"


def test_a_missing_required_input_is_named(tmp_path: Path) -> None:
    text = ALL_TYPES.replace("    defaults: world\n", "")
    with pytest.raises(InputError, match=r"^input 'text' \(STRING\) is required"):
        run_text(text, tmp_path)


def test_string_validator_select_custom_values_and_legacy_name() -> None:
    flow = parse_flow(
        """
id: v
namespace: dev
inputs:
  - name: code
    type: STRING
    validator: "[A-Z]{3}"
  - id: size
    type: SELECT
    values: [s, m]
    allowCustomValue: true
tasks:
  - id: t
    type: io.kestra.plugin.scripts.shell.Commands
    commands: ["true"]
"""
    )
    assert resolve_inputs(flow.inputs, {"code": "ABC", "size": "xl"}) == {
        "code": "ABC",
        "size": "xl",
    }
    with pytest.raises(InputError, match="'abcd' does not match the validator"):
        resolve_inputs(flow.inputs, {"code": "abcd", "size": "s"})


@pytest.mark.parametrize(
    ("declaration", "message"),
    [
        ("{id: a, type: TOKEN}", "inputs[0]: unknown input type 'TOKEN'; supported input types"),
        ("{id: a}", "inputs[0]: an input needs a 'type'"),
        ("{id: a, type: INT, defaults: many}", "defaults of input 'a': expected an integer"),
        ("{id: a, type: SELECT, values: []}", "inputs[0].values"),
        ("{id: a, type: STRING, validator: '('}", "is not a regular expression"),
        ("{id: a, type: STRING, colour: red}", "inputs[0].colour: unknown field 'colour'"),
        ("{id: 'a b', type: STRING}", "input id 'a b' must start with a letter or digit"),
    ],
)
def test_bad_declarations_are_refused_when_the_flow_loads(declaration: str, message: str) -> None:
    text = f"""id: d
namespace: dev
inputs:
  - {declaration}
tasks:
  - id: t
    type: io.kestra.plugin.scripts.shell.Commands
    commands: ["true"]
"""
    with pytest.raises(FlowError) as caught:
        parse_flow(text, source="d.yaml")
    assert message in str(caught.value)
    assert str(caught.value).startswith("d.yaml:4: ")


def test_duplicate_input_ids_are_refused() -> None:
    text = """id: d
namespace: dev
inputs:
  - {id: a, type: STRING}
  - {id: a, type: INT}
tasks:
  - {id: t, type: io.kestra.plugin.scripts.shell.Commands, commands: ["true"]}
"""
    with pytest.raises(FlowError, match="input id 'a' is declared twice"):
        parse_flow(text)


def test_parse_assignments_keeps_everything_after_the_first_equals() -> None:
    assert parse_assignments(["a=1", "b=x=y", "c="]) == {"a": "1", "b": "x=y", "c": ""}
    with pytest.raises(InputError, match="--input expects NAME=VALUE, got 'oops'"):
        parse_assignments(["oops"])


GREET = """id: greet
namespace: dev
inputs:
  - id: name
    type: STRING
    defaults: world
  - id: times
    type: INT
    defaults: 1
tasks:
  - id: hello
    type: io.kestra.plugin.scripts.shell.Commands
    commands:
      - echo "hello {{ inputs.name }} from {{ flow.id }} x{{ inputs.times }}"
"""


def test_cli_input_options_and_inputs_file(tmp_path: Path) -> None:
    cli = Cli(tmp_path)
    flow = cli.write("greet.yaml", GREET)
    plain = cli.run_json(flow)
    assert "hello world from greet x1" in plain["stderr"]

    given = cli.run_json(flow, "--input", "name=Ada", "--input", "times=2")
    assert "hello Ada from greet x2" in given["stderr"]

    cli.write("inputs.json", json.dumps({"name": "file", "times": 4}))
    from_file = cli.run_json(flow, "--inputs", "inputs.json")
    assert "hello file from greet x4" in from_file["stderr"]
    both = cli.run_json(flow, "--inputs", "inputs.json", "--input", "times=5")
    assert "hello file from greet x5" in both["stderr"], "--input wins over the file"
    assert task_of(both, "hello")["status"] == "success"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--input", "times=many"], "error: input 'times' (INT): expected an integer, got 'many'"),
        (["--input", "nmae=x"], "error: unknown input 'nmae'; the flow declares: name, times"),
        (["--input", "name"], "error: --input expects NAME=VALUE, got 'name'"),
        (["--inputs", "missing.json"], "error: missing.json: no such inputs file"),
        (["--inputs", "list.json"], "error: list.json: inputs must be a JSON object"),
        (["--inputs", "broken.json"], "error: broken.json:1: not JSON"),
    ],
)
def test_cli_bad_inputs_exit_2_with_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    cli = Cli(tmp_path)
    flow = cli.write("greet.yaml", GREET)
    cli.write("list.json", "[1, 2]")
    cli.write("broken.json", "{name: 1")
    done = cli("run", flow, *args)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().startswith(message)
    assert len(done.stderr.strip().splitlines()) == 1
    assert "Traceback" not in done.stderr
    assert "hello" not in done.stderr, "nothing ran"


def test_file_input_is_copied_into_the_folder_by_input_files(tmp_path: Path) -> None:
    data = tmp_path / "rows.bin"
    data.write_bytes(b"\x00\x01binary\xff\n")
    text = """id: files
namespace: dev
inputs:
  - id: rows
    type: FILE
tasks:
  - id: wd
    type: io.kestra.plugin.core.flow.WorkingDirectory
    inputFiles:
      data/rows.bin: "{{ inputs.rows }}"
      path.txt: "path={{ inputs.rows }}"
    tasks:
      - id: check
        type: io.kestra.plugin.scripts.shell.Commands
        commands:
          - od -An -tx1 data/rows.bin | tr -d ' \\n'; echo
          - cat path.txt
"""
    summary, lines = run_text(text, tmp_path, inputs={"rows": str(data)})
    assert summary.ok, summary
    assert lines.of("check") == ["000162696e617279ff0a", f"path={data.resolve()}"]
