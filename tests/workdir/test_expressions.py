"""``{{ }}`` expressions: variables, filters, errors at their line, no re-rendering or injection."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.workdir.flowkit import Cli, run_text, task_of
from workflow_cache.workdir.expressions import ExpressionError, Expressions, scoped
from workflow_cache.workdir.filecache import FileCache
from workflow_cache.workdir.flow import run_flow
from workflow_cache.workdir.spec import CommandsTask, Flow

MOMENT = datetime(2024, 3, 9, 7, 5, 3, 250000, tzinfo=UTC)
VARIABLES: dict[str, Any] = {
    "inputs": scoped(
        {
            "name": "  Ada Lovelace ",
            "empty": "",
            "none": None,
            "items": ["b", "a", "c"],
            "config": {"port": 8080, "tags": ["x"]},
            "flag": True,
            "when": MOMENT,
            "wait": timedelta(hours=1, minutes=30),
            "negative": -4,
        },
        "inputs",
    )
}


def render(text: str) -> str:
    return Expressions().render(text, ("tasks", 0, "script"), VARIABLES)


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{{ inputs.name }}", "  Ada Lovelace "),
        ("{{ inputs.flag }} {{ inputs.none }}|", "true |"),
        ("{{ inputs.items }} {{ inputs.config }}", '["b","a","c"] {"port":8080,"tags":["x"]}'),
        ("{{ inputs.when }}", "2024-03-09T07:05:03.250Z"),
        ("{{ inputs.wait }}", "PT1H30M"),
        ("{{ inputs.missing | default('fallback') }}", "fallback"),
        ("{{ inputs.empty | default('fallback') }}", "fallback"),
        ("{{ inputs.none | default('fallback') }}", "fallback"),
        ("{{ inputs.name | default('fallback') }}", "  Ada Lovelace "),
        ("{{ inputs.name | upper }}", "  ADA LOVELACE "),
        ("{{ inputs.name | lower }}", "  ada lovelace "),
        ("{{ inputs.name | trim }}", "Ada Lovelace"),
        ("{{ 'hello world' | capitalize }}", "Hello world"),
        ("{{ 'hello wide world' | title }}", "Hello Wide World"),
        ("{{ inputs.config | json }}", '{"port":8080,"tags":["x"]}'),
        ("{{ inputs.name | trim | toJson }}", '"Ada Lovelace"'),
        ("{{ inputs.when | toJson }}", '"2024-03-09T07:05:03.250Z"'),
        ("{{ inputs.config.port | string }}{{ inputs.flag | string }}", "8080true"),
        ("{{ inputs.when | date('yyyy-MM-dd HH:mm:ss.SSS') }}", "2024-03-09 07:05:03.250"),
        ("{{ inputs.when | date('EEE d MMM yy, h:mm a') }}", "Sat 9 Mar 24, 7:05 AM"),
        ("{{ inputs.when | date('EEEE MMMM') }}", "Saturday March"),
        ("{{ inputs.when | date(\"yyyy-MM-dd'T'HH:mmXXX\") }}", "2024-03-09T07:05Z"),
        ("{{ inputs.when | date('HH:mm XXX', timeZone='Asia/Kolkata') }}", "12:35 +05:30"),
        ("{{ inputs.when | date('iso_date') }}", "2024-03-09"),
        ("{{ inputs.when | date }}", "2024-03-09T07:05:03.250Z"),
        ("{{ '24/12/2023' | date('yyyy-MM-dd', existingFormat='dd/MM/yyyy') }}", "2023-12-24"),
        ("{{ '2024-01-02T03:04:05Z' | date('dd.MM.yyyy') }}", "02.01.2024"),
        ("{{ 0 | date('yyyy') }}", "1970"),
        ("{{ 'a-b-c' | replace({'-': '+', 'a': 'A'}) }}", "A+b+c"),
        ("{{ 'v1.2.3' | replace({'[0-9]': 'N'}, regexp=true) }}", "vN.N.N"),
        ("{{ inputs.items | length }} {{ inputs.config | length }} {{ 'abc' | length }}", "3 2 3"),
        ("{{ inputs.none | length }}", "0"),
        ("{{ inputs.items | join(', ') }}", "b, a, c"),
        ("{{ inputs.items | first }}{{ inputs.items | last }}", "bc"),
        ("{{ inputs.config | keys }} {{ inputs.config | values | length }}", '["port","tags"] 2'),
        ("{{ inputs.negative | abs }}", "4"),
        ("{% if inputs.flag %}on{% else %}off{% endif %}", "on"),
        ("{% for item in inputs.items %}{{ loop.index }}{{ item }}{% endfor %}", "1b2a3c"),
        ("{# a comment #}x{{ null }}", "x"),
        ("{{ 'a' ~ inputs.config.port }}", "a8080"),
        ("{{ inputs.config['port'] }}", "8080"),
        ("{% if inputs.none is null and inputs.items is not empty %}ok{% endif %}", "ok"),
        ("keeps the last newline: {{ 1 }}\n", "keeps the last newline: 1\n"),
    ],
)
def test_variables_print_and_filters_work_like_kestra(template: str, expected: str) -> None:
    assert render(template) == expected


def test_now_is_the_current_utc_time() -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    shown = datetime.fromisoformat(render("{{ now() | date('iso_sec') }}"))
    assert before <= shown <= datetime.now(UTC)


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{{ inputs.nmae }}", "unknown variable 'inputs.nmae'"),
        ("{{ inputs.config.prot }}", "unknown variable 'inputs.config.prot'"),
        ("{{ inputs.config.prot.deeper }}", "unknown variable 'inputs.config.prot'"),
        ("{{ secrets }}", "unknown variable 'secrets'"),
        ("{{ secret('TOKEN') }}", "unknown function 'secret'"),
        ("{{ inputs.name | upcase }}", "unknown filter 'upcase'; known filters: abs, capitalize"),
        ("{% if inputs.flag is blue %}{% endif %}", "unknown test 'blue'"),
        ("{{ inputs.name @ 'x' }}", "expression syntax error: unexpected char '@'"),
        ("{{ inputs.name | upper( }}", "expression syntax error"),
        ("{{ inputs.name.__class__ }}", "'__class__' cannot be used in an expression"),
        ("{{ inputs.items.append('d') }}", "unknown function 'append'"),
        ("{{ inputs.when | date('QQQ') }}", "date: pattern letter 'Q' is not supported"),
        ("{{ inputs.when | date('HH', timeZone='Mars/Base') }}", "date: unknown time zone"),
        ("{{ 'x' | date }}", "date: 'x' is not an ISO 8601 date"),
        ("{{ 'x' | replace('a', 'b') }}", "replace: expected a map of replacements"),
        ("{{ inputs.nmae | upper }}", "unknown variable 'inputs.nmae'"),
        ("{{ inputs.nmae | length }}", "unknown variable 'inputs.nmae'"),
    ],
)
def test_errors_name_what_is_unknown(template: str, message: str) -> None:
    with pytest.raises(ExpressionError) as caught:
        render(template)
    assert str(caught.value).startswith(f"tasks[0].script: {message}")


def test_a_value_is_never_rendered_twice() -> None:
    variables = {"inputs": scoped({"text": "{{ flow.id }} {% if 1 %}x{% endif %}"}, "inputs")}
    rendered = Expressions().render("{{ inputs.text }}", ("f",), variables)
    assert rendered == "{{ flow.id }} {% if 1 %}x{% endif %}"


def test_text_without_expressions_is_left_alone() -> None:
    text = "printf '%s' {a,b} ${HOME} $((1 + 2)) { echo; }"
    assert Expressions().render(text, ("f",), {}) == text


FLOW = """id: expr
namespace: team.data
revision: 7
labels:
  owner: ada
variables:
  greeting: hello
  raw: "{{ flow.id }}"
inputs:
  - id: name
    type: STRING
    defaults: world
tasks:
  - id: wd
    type: io.kestra.plugin.core.flow.WorkingDirectory
    inputFiles:
      note.txt: "{{ vars.greeting }} {{ inputs.name }}"
    cache:
      patterns: [deps/**]
      key: "{{ inputs.name | lower }}-v1"
    tasks:
      - id: show
        type: io.kestra.plugin.scripts.python.Script
        env:
          WHO: "{{ inputs.name | upper }}"
        beforeCommands:
          - mkdir -p deps && echo "before {{ task.id }}" > deps/stamp
        script: |
          import os
          print(open("note.txt").read())
          print(os.environ["WHO"], open("deps/stamp").read().strip())
          print("flow={{ flow.id }} ns={{ flow.namespace }} rev={{ flow.revision }}")
          print("owner={{ labels.owner }} raw={{ vars.raw }}")
          print("task={{ task.id }} type={{ task.type }}")
          print("execution={{ execution.id }} start={{ execution.startDate }}")
          print("taskrun={{ taskrun.id }} start={{ taskrun.startDate }}")
"""


def test_every_variable_and_rendered_field_in_a_run(tmp_path: Path) -> None:
    storage = tmp_path / "storage"
    summary, lines = run_text(FLOW, tmp_path, cache=FileCache(str(storage)), inputs={"name": "Bo"})
    assert summary.ok, summary
    shown = lines.of("show")
    assert shown[0] == "hello Bo"
    assert shown[1] == "BO before show"
    assert shown[2] == "flow=expr ns=team.data rev=7"
    assert shown[3] == "owner=ada raw={{ flow.id }}", "flow variables are not rendered again"
    assert shown[4] == "task=show type=io.kestra.plugin.scripts.python.Script"
    execution = re.fullmatch(r"execution=([A-Za-z0-9]{22}) start=(\S+)Z", shown[5])
    taskrun = re.fullmatch(r"taskrun=([A-Za-z0-9]{22}) start=(\S+)Z", shown[6])
    assert execution and taskrun and execution.group(1) != taskrun.group(1)
    assert datetime.fromisoformat(execution.group(2)) <= datetime.fromisoformat(taskrun.group(2))
    (entry,) = FileCache(str(storage)).entries()
    assert entry.key.content == "bo-v1", "the cache key is rendered"


def test_unknown_variable_stops_the_flow_before_any_task_with_its_line(tmp_path: Path) -> None:
    text = FLOW.replace('print("owner={{ labels.owner }}', 'print("owner={{ labels.ownr }}')
    cli = Cli(tmp_path)
    flow = cli.write("expr.yaml", text)
    done = cli("run", flow)
    assert done.returncode == 2
    line = text.splitlines().index('          print("owner={{ labels.ownr }} raw={{ vars.raw }}")')
    assert done.stderr.strip() == (
        f"error: {flow}:{line + 1}: tasks[0].tasks[0].script: unknown variable 'labels.ownr'"
    )
    assert "[show]" not in done.stderr, "no task ran"


def test_unknown_filter_in_a_command_is_reported_at_its_line(tmp_path: Path) -> None:
    text = """id: f
namespace: dev
tasks:
  - id: first
    type: io.kestra.plugin.scripts.shell.Commands
    commands:
      - echo first
  - id: second
    type: io.kestra.plugin.scripts.shell.Commands
    commands:
      - echo ok
      - echo "{{ flow.id | shout }}"
"""
    cli = Cli(tmp_path)
    done = cli("run", cli.write("f.yaml", text))
    assert done.returncode == 2
    assert done.stderr.startswith(
        f"error: {cli.cwd / 'f.yaml'}:12: tasks[1].commands[1]: unknown filter 'shout'"
    )
    assert "[first]" not in done.stderr


def test_outputs_of_later_tasks_are_unknown_before_they_run(tmp_path: Path) -> None:
    text = """id: order
namespace: dev
tasks:
  - id: early
    type: io.kestra.plugin.scripts.shell.Commands
    commands:
      - echo "{{ outputs.late.vars.x }}"
  - id: late
    type: io.kestra.plugin.scripts.shell.Commands
    commands: ["true"]
"""
    with pytest.raises(ExpressionError, match=r"flow.yaml:7: .*unknown variable 'outputs.late'"):
        run_text(text, tmp_path)


def test_flows_built_in_code_name_the_field(tmp_path: Path) -> None:
    flow = Flow(
        id="code",
        namespace="dev",
        tasks=[
            CommandsTask(
                id="t",
                type="io.kestra.plugin.scripts.shell.Commands",
                commands=["echo {{ inputs.x }}"],
            )
        ],
    )
    with pytest.raises(ExpressionError, match=r"^tasks\[0\]\.commands\[0\]: unknown variable"):
        run_flow(flow, cache=FileCache(str(tmp_path / "s")), work_root=tmp_path / "w")


HOSTILE = """it's "quoted" $(touch pwned) `touch pwned2` {{ flow.id }} {% raw %} \\ ; rm -rf x"""

INJECTION = """id: inject
namespace: dev
inputs:
  - id: text
    type: STRING
tasks:
  - id: through_env
    type: io.kestra.plugin.scripts.shell.Commands
    env:
      TEXT: "{{ inputs.text }}"
    commands:
      - printf '%s\\n' "$TEXT"
      - test ! -e pwned && test ! -e pwned2 && echo "nothing ran"
  - id: through_json
    type: io.kestra.plugin.scripts.python.Script
    script: |
      text = {{ inputs.text | toJson }}
      print(text)
  - id: through_file
    type: io.kestra.plugin.core.flow.WorkingDirectory
    inputFiles:
      text.txt: "{{ inputs.text }}"
    tasks:
      - id: cat_file
        type: io.kestra.plugin.scripts.shell.Commands
        commands:
          - cat text.txt; echo
          - test ! -e pwned && echo "nothing ran"
"""


def test_hostile_input_arrives_as_written_and_runs_nothing(tmp_path: Path) -> None:
    summary, lines = run_text(INJECTION, tmp_path, inputs={"text": HOSTILE})
    assert summary.ok, summary
    assert lines.of("through_env") == [HOSTILE, "nothing ran"]
    assert lines.of("through_json") == [HOSTILE]
    assert lines.of("cat_file") == [HOSTILE, "nothing ran"]


def test_hostile_input_through_the_cli(tmp_path: Path) -> None:
    cli = Cli(tmp_path)
    summary = cli.run_json(cli.write("inject.yaml", INJECTION), "--input", f"text={HOSTILE}")
    assert summary["ok"]
    assert f"[through_env] {HOSTILE}\n" in summary["stderr"]
    assert f"[through_json] {HOSTILE}\n" in summary["stderr"]
    assert not list(cli.cwd.glob("pwned*"))
    assert task_of(summary, "cat_file")["status"] == "success"


def test_a_value_marked_raw_is_pasted_into_a_command_as_shell_text(tmp_path: Path) -> None:
    """``| raw`` is the dangerous form: the value is shell text, as Kestra pastes it."""
    text = """id: pasted
namespace: dev
inputs:
  - id: text
    type: STRING
tasks:
  - id: pasted
    type: io.kestra.plugin.scripts.shell.Commands
    commands:
      - echo {{ inputs.text | raw }}
      - echo {{ inputs.text }}
"""
    summary, lines = run_text(text, tmp_path, inputs={"text": "$((6 * 7))"})
    assert summary.ok and lines.of("pasted") == ["42", "$((6 * 7))"]
