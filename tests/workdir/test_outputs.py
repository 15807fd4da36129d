"""Outputs between tasks: ``::{"outputs":...}::`` variables, output files, exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.workdir.flowkit import Cli, run_text, task_of
from workflow_cache.workdir.outputs import copy_file_inputs, parse_output_line
from workflow_cache.workdir.safefs import UnsafePathError

PIPELINE = """id: pipeline
namespace: dev
tasks:
  - id: version
    type: io.kestra.plugin.scripts.python.Script
    script: |
      import json
      print("computing")
      raw = "{" * 2 + " x " + "}" * 2  # an expression as data: never rendered
      outputs = {"version": "1.2.3", "sizes": [1, 2], "raw": raw}
      print("::" + json.dumps({"outputs": outputs}) + "::")
  - id: build
    type: io.kestra.plugin.core.flow.WorkingDirectory
    outputFiles: [dist/*.txt]
    tasks:
      - id: make
        type: io.kestra.plugin.scripts.shell.Commands
        outputFiles: [report.json]
        commands:
          - mkdir -p dist
          - echo "build {{ outputs.version.vars.version }}" > dist/app.txt
          - echo '{"ok":true}' > report.json
          - echo '::{"outputs":{"files":{{ outputs.version.vars.sizes | length }}}}::'
      - id: sibling
        type: io.kestra.plugin.scripts.shell.Commands
        commands:
          - echo "sibling sees {{ outputs.make.vars.files }} and raw={{ outputs.version.vars.raw }}"
  - id: publish
    type: io.kestra.plugin.scripts.shell.Commands
    inputFiles:
      app.txt: "{{ outputs.build.outputFiles['dist/app.txt'] }}"
      report.json: "{{ outputs.make.outputFiles['report.json'] }}"
    commands:
      - cat app.txt report.json
      - >-
        echo "exit={{ outputs.version.exitCode }}
        path={{ outputs.make.outputFiles['report.json'] }}"
"""


def test_variables_and_files_flow_to_later_tasks(tmp_path: Path) -> None:
    summary, lines = run_text(PIPELINE, tmp_path)
    assert summary.ok, summary
    assert lines.of("version") == ["computing"], "output lines are not printed"
    assert summary.task("version").vars == {"version": "1.2.3", "sizes": [1, 2], "raw": "{{ x }}"}
    assert summary.task("make").vars == {"files": 2}
    assert lines.of("sibling") == ["sibling sees 2 and raw={{ x }}"]
    report = tmp_path / "outputs" / "build" / "report.json"
    assert lines.of("publish") == [
        "build 1.2.3",
        '{"ok":true}',
        f"exit=0 path={report.resolve()}",
    ]
    assert sorted(summary.task("build").outputs) == [
        str(tmp_path / "outputs" / "build" / "dist" / "app.txt"),
        str(report),
    ]


def test_the_cli_prints_and_returns_output_variables(tmp_path: Path) -> None:
    cli = Cli(tmp_path)
    flow = cli.write("pipeline.yaml", PIPELINE)
    summary = cli.run_json(flow)
    assert task_of(summary, "version")["vars"]["version"] == "1.2.3"
    assert "[publish] build 1.2.3" in summary["stderr"]
    table = cli("run", flow)
    assert table.returncode == 0, table.stderr
    assert 'version: output version = "1.2.3"' in table.stdout
    assert "make: output files = 2" in table.stdout


def test_output_files_of_a_sibling_are_known_only_after_the_working_directory(
    tmp_path: Path,
) -> None:
    text = """id: early
namespace: dev
tasks:
  - id: wd
    type: io.kestra.plugin.core.flow.WorkingDirectory
    tasks:
      - id: make
        type: io.kestra.plugin.scripts.shell.Commands
        outputFiles: [a.txt]
        commands: ["echo a > a.txt"]
      - id: read
        type: io.kestra.plugin.scripts.shell.Commands
        commands: ["echo {{ outputs.make.outputFiles['a.txt'] }}"]
"""
    summary, _ = run_text(text, tmp_path)
    assert not summary.ok
    assert summary.task("read").status == "failed"
    assert summary.task("read").error == (
        "flow.yaml:13: tasks[0].tasks[1].commands[0]: unknown variable 'outputs.make.outputFiles'"
    )


def test_a_missing_output_variable_fails_the_task_that_reads_it(tmp_path: Path) -> None:
    text = """id: missing
namespace: dev
tasks:
  - id: quiet
    type: io.kestra.plugin.scripts.shell.Commands
    commands: ["echo nothing to say"]
  - id: reader
    type: io.kestra.plugin.scripts.shell.Commands
    commands:
      - echo "{{ outputs.quiet.vars.answer }}"
  - id: never
    type: io.kestra.plugin.scripts.shell.Commands
    commands: ["echo never"]
"""
    cli = Cli(tmp_path)
    done = cli("run", cli.write("missing.yaml", text), "--json")
    assert done.returncode == 1
    summary = json.loads(done.stdout)
    reader = task_of(summary, "reader")
    assert reader["status"] == "failed"
    assert reader["error"].endswith(
        "missing.yaml:10: tasks[1].commands[0]: unknown variable 'outputs.quiet.vars.answer'"
    )
    assert task_of(summary, "never")["status"] == "skipped"


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('::{"outputs":{"a":1}}::', {"a": 1}),
        ('  ::{"outputs": {"a": "b"}}::  ', {"a": "b"}),
        ('::{"metrics":[{"name":"rows","type":"counter","value":3}]}::', {}),
        ("::{not json}::", None),
        ('::{"outputs":[1]}::', None),
        ('::["outputs"]::', None),
        ('echo ::{"outputs":{"a":1}}::', None),
        ("plain line", None),
    ],
)
def test_output_lines(line: str, expected: dict[str, object] | None) -> None:
    assert parse_output_line(line) == expected


def test_malformed_output_lines_are_printed_like_any_other(tmp_path: Path) -> None:
    text = """id: odd
namespace: dev
tasks:
  - id: odd
    type: io.kestra.plugin.scripts.shell.Commands
    commands:
      - echo '::{not json}::'
"""
    summary, lines = run_text(text, tmp_path)
    assert summary.ok and summary.task("odd").vars == {}
    assert lines.of("odd") == ["::{not json}::"]


def test_an_input_file_copy_does_not_follow_a_restored_symlink(tmp_path: Path) -> None:
    """A cached folder may hold a symlink where an input file goes; the copy replaces it."""
    outside = tmp_path / "outside.txt"
    outside.write_text("untouched")
    text = f"""id: links
namespace: dev
tasks:
  - id: make
    type: io.kestra.plugin.scripts.shell.Commands
    outputFiles: [data.txt]
    commands: ["echo fresh > data.txt"]
  - id: wd
    type: io.kestra.plugin.core.flow.WorkingDirectory
    cache:
      patterns: [link.txt]
    inputFiles:
      link.txt: "{{{{ outputs.make.outputFiles['data.txt'] }}}}"
    tasks:
      - id: use
        type: io.kestra.plugin.scripts.shell.Commands
        commands:
          - cat link.txt
          - rm link.txt && ln -s {outside} link.txt
"""
    first, _ = run_text(text, tmp_path)
    assert first.ok and first.task("wd").saved
    second, lines = run_text(text, tmp_path)
    assert second.ok and second.task("wd").cache == "hit"
    assert lines.of("use") == ["fresh"]
    assert outside.read_text() == "untouched"


def test_an_input_file_copy_never_writes_through_a_symlinked_folder(tmp_path: Path) -> None:
    folder = tmp_path / "folder"
    folder.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (folder / "data").symlink_to(outside)
    source = tmp_path / "source.txt"
    source.write_text("payload")
    # an OSError, so a restored folder holding such a symlink is rejected as unsafe
    with pytest.raises(UnsafePathError, match=r"'data': a symlink or a file stands"):
        copy_file_inputs(folder, {"data/x.txt": str(source)})
    assert list(outside.iterdir()) == []
    copy_file_inputs(folder, {"deep/er/x.txt": str(source)})
    assert (folder / "deep" / "er" / "x.txt").read_text() == "payload"
