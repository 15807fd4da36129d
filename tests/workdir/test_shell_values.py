"""Values in shell text are data: hostile input is printed exactly and runs nothing.

Each hostile value tries to run ``touch <marker>`` (an absolute path in the test's
folder) in every way the shell offers; the flows write what they received to
files that ``outputFiles`` copies out, compared byte for byte, and the marker
must not exist afterwards. The same flows with ordinary values give what
Kestra's plain text insertion (``| raw``) gives.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.workdir.flowkit import Cli, run_text
from workflow_cache.workdir.errors import FlowError

MARKER = "MARKER"


def hostile_values(marker: Path) -> list[str]:
    """Values holding every shell construct that could run ``touch marker``."""
    touch = f"touch {marker}"
    return [
        f"$({touch})",
        f"`{touch}`",
        f"it's '$({touch})'",
        f'say "hi" "$({touch})"',
        f"a; {touch}",
        f"a && {touch} || {touch}",
        f"line one\n{touch}\nline three",
        "*",
        "{{ flow.id }} {% raw %}",
        f"$(({touch}))",
        f"a[$({touch})]",
        f"EOF\n{touch}\nEOF",
        f"\\ \\\\ ${{HOME}} $HOME | {touch} > x < y & {touch}",
    ]


FLOW = """id: hostile_shell
namespace: dev
inputs:
  - id: value
    type: STRING
tasks:
  - id: wd
    type: io.kestra.plugin.core.flow.WorkingDirectory
    outputFiles: ["*.txt"]
    tasks:
      - id: quoted
        type: io.kestra.plugin.scripts.shell.Commands
        commands:
          - printf '%s' "{{ inputs.value }}" > quoted.txt
          - 'echo "got: {{ inputs.value }}"'
      - id: unquoted
        type: io.kestra.plugin.scripts.shell.Commands
        commands:
          - printf '%s\\n' {{ inputs.value }} > unquoted.txt
      - id: single
        type: io.kestra.plugin.scripts.shell.Commands
        commands:
          - printf '%s' 'value= {{ inputs.value }}' > single.txt
      - id: heredocs
        type: io.kestra.plugin.scripts.shell.Commands
        beforeCommands:
          - |
            cat > quoted_heredoc.txt <<'EOF'
            {{ inputs.value }} $HOME `x`
            EOF
        commands:
          - |
            cat > heredoc.txt <<EOF
            {{ inputs.value }}
            EOF
      - id: script
        type: io.kestra.plugin.scripts.shell.Script
        script: |
          value="{{ inputs.value }}"
          printf '%s' "$value" > script.txt
      - id: python
        type: io.kestra.plugin.scripts.python.Script
        env:
          VALUE: "{{ inputs.value }}"
        script: |
          import os
          literal = {{ inputs.value | toJson }}
          assert literal == os.environ["VALUE"]
          open("python.txt", "w", newline="").write(literal)
      - id: node
        type: io.kestra.plugin.scripts.node.Script
        script: |
          const fs = require("fs");
          fs.writeFileSync("node.txt", {{ inputs.value | toJson }});
"""


def expected_files(value: str) -> dict[str, str]:
    return {
        "quoted.txt": value,
        "unquoted.txt": "".join(word + "\n" for word in value.split()),
        "single.txt": f"value= {value}",
        "quoted_heredoc.txt": f"{value} $HOME `x`\n",
        "heredoc.txt": f"{value}\n",
        "script.txt": value,
        "python.txt": value,
        "node.txt": value,
    }


def assert_received(outputs: Path, value: str) -> None:
    for name, text in expected_files(value).items():
        got = (outputs / "wd" / name).read_bytes()
        assert got == text.encode(), f"{name}: {got!r} != {text!r}"


@pytest.mark.parametrize("index", range(len(hostile_values(Path("m")))))
def test_hostile_values_through_run_flow_are_printed_exactly_and_run_nothing(
    tmp_path: Path, index: int
) -> None:
    marker = tmp_path / MARKER
    value = hostile_values(marker)[index]
    summary, lines = run_text(FLOW, tmp_path, inputs={"value": value})
    assert summary.ok, [task.error for task in summary.tasks]
    assert_received(tmp_path / "outputs", value)
    assert lines.of("quoted") == f"got: {value}".split("\n")
    assert not marker.exists()
    assert not list(tmp_path.glob("work/**/x")), "no redirection ran"


def test_hostile_values_through_the_cli_are_printed_exactly_and_run_nothing(
    tmp_path: Path,
) -> None:
    cli = Cli(tmp_path)
    flow = cli.write("hostile.yaml", FLOW)
    marker = tmp_path / MARKER
    for value in hostile_values(marker):
        done = cli("run", flow, "--input", f"value={value}")
        assert done.returncode == 0, done.stderr + done.stdout
        assert_received(cli.cwd / "outputs", value)
        printed = [line for line in done.stderr.splitlines() if line.startswith("[quoted] ")]
        assert [line.removeprefix("[quoted] ") for line in printed] == f"got: {value}".split("\n")
        assert not marker.exists(), value
        assert not (cli.cwd / "x").exists()


def test_the_issue_example_prints_the_payload(tmp_path: Path) -> None:
    cli = Cli(tmp_path)
    flow = cli.write(
        "payload.yaml",
        """id: payload
namespace: dev
inputs:
  - id: payload
    type: STRING
tasks:
  - id: echo
    type: io.kestra.plugin.scripts.shell.Commands
    commands: ['echo "got: {{ inputs.payload }}"', "echo got: {{ inputs.payload }}"]
""",
    )
    payload = f"$(touch {tmp_path}/pwned) `touch {tmp_path}/pwned2`"
    done = cli("run", flow, "--input", f"payload={payload}")
    assert done.returncode == 0, done.stderr
    assert f"[echo] got: {payload}\n" in done.stderr
    assert done.stderr.count(f"[echo] got: {payload}\n") == 2
    assert not list(tmp_path.glob("pwned*"))


ORDINARY = ["hello", "hello world", "Ada Lovelace  1815", "a-b_c.txt", "42", "", "x=1 y=2"]

KESTRA = """id: same_as_kestra
namespace: dev
inputs:
  - id: value
    type: STRING
    required: false
tasks:
  - id: wd
    type: io.kestra.plugin.core.flow.WorkingDirectory
    outputFiles: ["*.txt"]
    tasks:
      - id: both
        type: io.kestra.plugin.scripts.shell.Commands
        commands:
          - printf '[%s]' {{ inputs.value }} > safe_unquoted.txt
          - printf '[%s]' {{ inputs.value | raw }} > kestra_unquoted.txt
          - printf '[%s]' "v={{ inputs.value }}" > safe_quoted.txt
          - printf '[%s]' "v={{ inputs.value | raw }}" > kestra_quoted.txt
          - printf '[%s]' 'v={{ inputs.value }}' > safe_single.txt
          - printf '[%s]' 'v={{ inputs.value | raw }}' > kestra_single.txt
          - for w in {{ inputs.value }}; do printf '<%s>' "$w"; done > safe_loop.txt
          - for w in {{ inputs.value | raw }}; do printf '<%s>' "$w"; done > kestra_loop.txt
          - V={{ inputs.value | length }}; printf '%s' "$V" > safe_assign.txt
          - V={{ inputs.value | length | raw }}; printf '%s' "$V" > kestra_assign.txt
"""


@pytest.mark.parametrize("value", ORDINARY)
def test_ordinary_values_give_what_kestra_gives(tmp_path: Path, value: str) -> None:
    summary, _ = run_text(KESTRA, tmp_path, inputs={"value": value})
    assert summary.ok, [task.error for task in summary.tasks]
    folder = tmp_path / "outputs" / "wd"
    for form in ("unquoted", "quoted", "single", "loop", "assign"):
        safe = (folder / f"safe_{form}.txt").read_bytes()
        kestra = (folder / f"kestra_{form}.txt").read_bytes()
        assert safe == kestra, form


def one_command(command: str, inputs: str = "") -> str:
    return f"""id: one
namespace: dev
inputs:
  - id: value
    type: STRING
{inputs}tasks:
  - id: run
    type: io.kestra.plugin.scripts.shell.Commands
    commands:
      - echo started
      - {json.dumps(command)}
"""


@pytest.mark.parametrize(
    ("command", "message"),
    [
        ("echo `echo {{ inputs.value }}`", "inside backticks cannot be placed safely"),
        ("echo ${X:-{{ inputs.value }}}", "inside ${...} cannot be placed safely"),
        ("echo \\{{ inputs.value }}", "a backslash right before {{ }}"),
        (
            "{% filter upper %}echo {{ inputs.value }}{% endfilter %}",
            "a value went through a {% filter %} block",
        ),
    ],
)
def test_a_context_that_cannot_be_placed_safely_stops_the_flow_before_it_runs(
    tmp_path: Path, command: str, message: str
) -> None:
    cli = Cli(tmp_path)
    flow = cli.write("flow.yaml", one_command(command))
    done = cli("run", flow, "--input", "value=x")
    assert done.returncode == 2
    assert "flow.yaml:11: tasks[0].commands[1]:" in done.stderr
    assert message in done.stderr
    assert "started" not in done.stderr
    assert "Traceback" not in done.stderr


def test_arithmetic_takes_integers_and_refuses_anything_else(tmp_path: Path) -> None:
    marker = tmp_path / MARKER
    flow = one_command("echo $(( {{ inputs.value }} + 1 )); [[ {{ inputs.value }} -lt 100 ]]")
    summary, lines = run_text(flow, tmp_path, inputs={"value": "41"})
    assert summary.ok and lines.of("run") == ["started", "42"]
    refused = "tasks[0].commands[1]: a value used in shell arithmetic must be an integer"
    with pytest.raises(FlowError, match=re.escape(refused)):
        run_text(flow, tmp_path, inputs={"value": f"a[$(touch {marker})]"})
    assert not marker.exists()


def test_a_value_known_only_at_run_time_is_checked_when_its_task_runs(tmp_path: Path) -> None:
    marker = tmp_path / MARKER
    text = """id: late
namespace: dev
tasks:
  - id: make
    type: io.kestra.plugin.scripts.shell.Commands
    commands: ["echo '::{\\"outputs\\": {\\"n\\": \\"a[$(touch MARKER)]\\"}}::'"]
  - id: use
    type: io.kestra.plugin.scripts.shell.Commands
    commands: ["echo $(( {{ outputs.make.vars.n }} + 1 ))"]
""".replace("MARKER", str(marker))
    summary, lines = run_text(text, tmp_path)
    assert summary.task("make").status == "success"
    assert summary.task("use").status == "failed"
    assert "must be an integer" in (summary.task("use").error or "")
    assert lines.of("use") == [] and not marker.exists()


def test_comments_and_assignments_take_values_as_data(tmp_path: Path) -> None:
    marker = tmp_path / MARKER
    value = f"a\ntouch {marker}"
    flow = one_command("# {{ inputs.value }}\nNAME={{ inputs.value }} && printf '%s' \"$NAME\"")
    summary, lines = run_text(flow, tmp_path, inputs={"value": value})
    assert summary.ok and lines.of("run") == ["started", "a", f"touch {marker}"]
    assert not marker.exists()


def test_a_value_where_a_command_name_goes_names_one_program(tmp_path: Path) -> None:
    marker = tmp_path / MARKER
    flow = one_command('{{ inputs.value }} 2>/dev/null || echo "no program named that"')
    summary, lines = run_text(flow, tmp_path, inputs={"value": f"touch {marker}"})
    assert summary.ok and lines.of("run") == ["started", "no program named that"]
    assert not marker.exists()
    summary, lines = run_text(flow, tmp_path, inputs={"value": "true"})
    assert summary.ok and lines.of("run") == ["started"]


def test_values_from_outputs_and_loops_are_data_too(tmp_path: Path) -> None:
    marker = tmp_path / MARKER
    text = """id: chain
namespace: dev
tasks:
  - id: make
    type: io.kestra.plugin.scripts.python.Script
    script: |
      import json
      items = ["*", "; touch MARKER"]
      print("::" + json.dumps({"outputs": {"v": "$(touch MARKER)", "items": items}}) + "::")
  - id: use
    type: io.kestra.plugin.scripts.shell.Commands
    commands:
      - echo {{ outputs.make.vars.v }}
      - "{% for item in outputs.make.vars['items'] %}printf '%s|' {{ item }}; {% endfor %}echo"
      - "{% set line %}echo {{ outputs.make.vars.v }}{% endset %}echo {{ line }}"
""".replace("MARKER", str(marker))
    summary, lines = run_text(text, tmp_path)
    assert summary.ok, [task.error for task in summary.tasks]
    assert lines.of("use") == [
        f"$(touch {marker})",
        f"*|;|touch|{marker}|",
        f"echo $(touch {marker})",
    ]
    assert not marker.exists()


def test_a_value_in_a_script_field_is_text_for_that_language(tmp_path: Path) -> None:
    """Python and Node scripts get values as written: the guide's toJson pattern keeps them data."""
    marker = tmp_path / MARKER
    value = f"\"\"\"'); import os; os.system('touch {marker}'); print('"
    text = """id: py
namespace: dev
inputs:
  - id: value
    type: STRING
tasks:
  - id: py
    type: io.kestra.plugin.scripts.python.Script
    script: |
      value = {{ inputs.value | toJson }}
      print(value)
"""
    summary, lines = run_text(text, tmp_path, inputs={"value": value})
    assert summary.ok and lines.of("py") == [value]
    assert not marker.exists()


def test_flows_built_in_code_are_placed_the_same_way(tmp_path: Path) -> None:
    from workflow_cache.workdir.flow import run_flow
    from workflow_cache.workdir.spec import CommandsTask, Flow

    flow = Flow(
        id="code",
        namespace="dev",
        inputs=[{"id": "value", "type": "STRING"}],
        tasks=[
            CommandsTask(
                id="t",
                type="io.kestra.plugin.scripts.shell.Commands",
                commands=["echo `echo {{ inputs.value }}`"],
            )
        ],
    )
    with pytest.raises(FlowError, match=r"tasks\[0\]\.commands\[0\]: \{\{ \}\} inside backticks"):
        run_flow(flow, inputs={"value": "x"}, work_root=tmp_path, sink=lambda *line: None)
