"""Flows load from Kestra's YAML unmodified, and every bad input gets one clear message."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from workflow_cache.workdir.loader import load_flow, parse_flow
from workflow_cache.workdir.spec import (
    CacheSpec,
    CommandsTask,
    Flow,
    FlowError,
    Runner,
    ScriptTask,
    WorkingDirectory,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "flows"
REFERENCE = Path("/work/shared/reference/kestra-flows")

HEADER = "id: demo\nnamespace: dev\ntasks:\n"


def wd(body: str) -> str:
    """A flow with one WorkingDirectory whose extra lines are ``body`` (indented 4)."""
    return (
        HEADER
        + "  - id: wd\n    type: io.kestra.plugin.core.flow.WorkingDirectory\n"
        + "".join(f"    {line}\n" for line in body.strip("\n").splitlines())
    )


def error_of(text: str) -> str:
    with pytest.raises(FlowError) as caught:
        parse_flow(text, source="flow.yaml")
    return str(caught.value)


@pytest.mark.skipif(not REFERENCE.is_dir(), reason="reference flows not present")
@pytest.mark.parametrize("name", sorted(p.name for p in EXAMPLES.glob("*_*.yaml")))
def test_examples_are_byte_copies_of_the_reference(name: str) -> None:
    reference = REFERENCE / name
    if reference.exists():
        assert (EXAMPLES / name).read_bytes() == reference.read_bytes()


def test_node_example_loads() -> None:
    flow = load_flow(EXAMPLES / "node_cached_dependencies.yaml")
    (task,) = flow.tasks
    assert isinstance(task, WorkingDirectory)
    assert task.cache == CacheSpec(patterns=["node_modules/**"], ttl=timedelta(hours=1))
    (script,) = task.tasks
    assert isinstance(script, ScriptTask)
    assert script.language == "node"
    assert script.before_commands == ["npm install colors"]
    assert script.runner is Runner.PROCESS
    assert 'require("colors")' in script.script


def test_python_example_loads_with_snake_case_attributes() -> None:
    flow = load_flow(EXAMPLES / "python_cached_dependencies.yaml")
    task = flow.tasks[0]
    assert isinstance(task, WorkingDirectory)
    assert task.cache is not None and task.cache.ttl == timedelta(hours=24)
    script = task.tasks[0]
    assert isinstance(script, ScriptTask)
    assert script.warning_on_std_err is False
    assert script.before_commands[1] == "source venv/bin/activate"


def test_working_directory_without_children_is_valid() -> None:
    flow = load_flow(EXAMPLES / "caching_files.yaml")
    task = flow.tasks[0]
    assert isinstance(task, WorkingDirectory)
    assert task.tasks == []
    assert task.cache is not None and task.cache.patterns == ["some_directory/**"]


def test_models_accept_snake_case_and_camel_case_in_python() -> None:
    by_name = ScriptTask(
        id="s",
        type="io.kestra.plugin.scripts.python.Script",
        script="print(1)",
        before_commands=["true"],
        warning_on_std_err=False,
    )
    by_alias = ScriptTask.model_validate(
        {
            "id": "s",
            "type": "io.kestra.plugin.scripts.python.Script",
            "script": "print(1)",
            "beforeCommands": ["true"],
            "warningOnStdErr": False,
        }
    )
    assert by_name == by_alias
    flow = Flow(id="f", namespace="dev", tasks=[WorkingDirectory(id="w", tasks=[by_name])])
    assert flow.model_dump(by_alias=True)["tasks"][0]["tasks"][0]["beforeCommands"] == ["true"]


def test_kestra_top_level_keys_are_accepted() -> None:
    flow = parse_flow(
        "id: demo\nnamespace: company.team\ndescription: hi\nlabels: {env: dev}\n"
        "inputs: []\ntriggers: []\ntasks:\n"
        "  - id: hello\n    type: io.kestra.plugin.scripts.shell.Commands\n"
        "    commands: [echo hi]\n"
    )
    assert flow.description == "hi"
    assert isinstance(flow.tasks[0], CommandsTask)


def test_all_task_types_and_options() -> None:
    text = wd(
        """
cache:
  patterns: [venv/**]
  ttl: P1DT2H
  key: v2
  keyFiles: [requirements.txt]
inputFiles:
  requirements.txt: "pandas==2.2.0"
  nested/config.json: "{}"
outputFiles: [out/*.csv]
tasks:
  - id: a
    type: io.kestra.plugin.scripts.python.Commands
    commands: [python -V]
    env: {COUNT: 3, FLAG: true}
    runner: process
    containerImage: python:3.11
    docker: {pullPolicy: IF_NOT_PRESENT}
    timeout: PT5M
  - id: b
    type: io.kestra.plugin.scripts.node.Commands
    commands: [node -v]
  - id: c
    type: io.kestra.plugin.scripts.shell.Script
    script: echo hi
    disabled: true
"""
    )
    task = parse_flow(text).tasks[0]
    assert isinstance(task, WorkingDirectory)
    assert task.cache is not None
    assert task.cache.ttl == timedelta(days=1, hours=2)
    assert task.cache.key == "v2" and task.cache.key_files == ["requirements.txt"]
    assert task.input_files["nested/config.json"] == "{}"
    first = task.tasks[0]
    assert isinstance(first, CommandsTask)
    assert first.env == {"COUNT": "3", "FLAG": "true"}
    assert first.timeout == timedelta(minutes=5)
    assert [child.language for child in task.tasks] == ["python", "node", "shell"]  # type: ignore[union-attr]
    assert task.tasks[2].disabled


def test_malformed_yaml_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("id: demo\nnamespace: dev\ntasks:\n  - id: a\n   type: x\n")
    with pytest.raises(FlowError) as caught:
        load_flow(path)
    message = str(caught.value)
    assert message.startswith(f"{path}:5:")
    assert "malformed YAML" in message


def test_missing_file_is_a_flow_error(tmp_path: Path) -> None:
    with pytest.raises(FlowError, match="no such flow file"):
        load_flow(tmp_path / "nope.yaml")


def test_unknown_task_type_is_named_with_the_known_ones() -> None:
    message = error_of(HEADER + "  - id: a\n    type: io.kestra.plugin.core.log.Log\n")
    assert message.startswith("flow.yaml:5: tasks[0]:")
    assert "unknown task type 'io.kestra.plugin.core.log.Log'" in message
    assert "io.kestra.plugin.scripts.python.Script" in message
    assert "io.kestra.core.tasks.flows.WorkingDirectory" in message


def test_nested_working_directory_is_refused() -> None:
    message = error_of(
        wd("tasks:\n  - id: inner\n    type: io.kestra.plugin.core.flow.WorkingDirectory")
    )
    assert "tasks[0].tasks[0]" in message
    assert "cannot contain another WorkingDirectory" in message


def test_bad_duration_names_the_field_path() -> None:
    message = error_of(wd("cache:\n  patterns: [a/**]\n  ttl: P1X"))
    assert message.startswith("flow.yaml:8: tasks[0].cache.ttl:")
    assert "'P1X'" in message
    assert "PT1H" in message


@pytest.mark.parametrize(
    ("pattern", "why"),
    [("/etc/**", "absolute"), ("../outside/**", "escapes"), ("", "empty")],
)
def test_patterns_that_leave_the_folder_are_refused_at_load_time(pattern: str, why: str) -> None:
    message = error_of(wd(f"cache:\n  patterns: ['{pattern}']"))
    assert "tasks[0].cache.patterns" in message
    assert why in message


def test_output_files_and_input_names_must_stay_inside() -> None:
    assert "tasks[0].outputFiles" in error_of(wd("outputFiles: [/tmp/x]"))
    message = error_of(wd("inputFiles:\n  ../x.txt: hi"))
    assert "tasks[0].inputFiles" in message and "relative path" in message


def test_unknown_key_inside_a_task_is_named() -> None:
    message = error_of(
        wd(
            "tasks:\n  - id: s\n    type: io.kestra.plugin.scripts.shell.Script\n"
            "    script: echo\n    beforeCommand: [ls]"
        )
    )
    assert message.startswith("flow.yaml:10: tasks[0].tasks[0].beforeCommand:")
    assert "unknown field 'beforeCommand'" in message


def test_unknown_key_in_cache_is_named() -> None:
    message = error_of(wd("cache:\n  pattern: [a/**]"))
    assert "tasks[0].cache.pattern: unknown field 'pattern'" in message
    assert "tasks[0].cache.patterns: this field is required" in message


def test_unknown_top_level_key_is_refused() -> None:
    assert "unknown field 'taks'" in error_of("id: a\nnamespace: dev\ntaks: []\ntasks: []\n")


def test_flow_must_be_a_mapping_with_tasks() -> None:
    assert "must be a YAML mapping" in error_of("- a\n- b\n")
    assert "tasks" in error_of("id: a\nnamespace: dev\n")


def test_script_needs_script_and_commands_need_commands() -> None:
    message = error_of(HEADER + "  - id: a\n    type: io.kestra.plugin.scripts.python.Script\n")
    assert "tasks[0].script: this field is required" in message
    message = error_of(
        HEADER + "  - id: a\n    type: io.kestra.plugin.scripts.shell.Commands\n    commands: []\n"
    )
    assert "tasks[0].commands" in message


def test_bad_runner_and_duplicate_ids() -> None:
    message = error_of(
        HEADER + "  - id: a\n    type: io.kestra.plugin.scripts.shell.Commands\n"
        "    commands: [ls]\n    runner: KUBERNETES\n"
    )
    assert "tasks[0].runner" in message and "PROCESS" in message
    message = error_of(
        wd(
            "tasks:\n  - id: wd\n    type: io.kestra.plugin.scripts.shell.Commands\n"
            "    commands: [ls]"
        )
    )
    assert "task id 'wd' is used twice" in message


def test_ids_must_be_safe_names() -> None:
    assert "task id 'a b'" in error_of(
        HEADER + "  - id: a b\n    type: io.kestra.plugin.scripts.shell.Commands\n"
        "    commands: [ls]\n"
    )
    assert "namespace '../x'" in error_of(
        "id: a\nnamespace: ../x\ntasks:\n  - id: w\n"
        "    type: io.kestra.plugin.core.flow.WorkingDirectory\n"
    )
