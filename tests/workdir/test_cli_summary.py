"""The run summary table keeps every task name whole, whatever the width of the output."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.workdir.flowkit import Cli

LONG = "node_script_that_installs_the_dependencies_of_the_frontend"

FLOW = f"""id: wide
namespace: dev
tasks:
  - id: working_directory_with_a_long_name
    type: io.kestra.plugin.core.flow.WorkingDirectory
    tasks:
      - id: {LONG}
        type: io.kestra.plugin.scripts.shell.Commands
        commands: ["echo hi"]
"""


@pytest.mark.parametrize("columns", ["80", "40"])
def test_task_names_are_never_broken_when_output_is_not_a_terminal(
    tmp_path: Path, columns: str
) -> None:
    cli = Cli(tmp_path)
    cli.env["COLUMNS"] = columns
    done = cli("run", cli.write("wide.yaml", FLOW))
    assert done.returncode == 0, done.stderr
    rows = [line for line in done.stdout.splitlines() if LONG in line]
    assert len(rows) == 1, done.stdout
    assert "success" in rows[0], "the other columns keep their text too"
    assert any("working_directory_with_a_long_name" in line for line in done.stdout.splitlines())
