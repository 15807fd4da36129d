"""The PROCESS runner: one shell for setup and script, live output, failures and warnings."""

from __future__ import annotations

import os
import shutil
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from workflow_cache.workdir.runner import (
    check_runners,
    docker_problem,
    run_script,
    shell_program,
)
from workflow_cache.workdir.spec import CommandsTask, FlowError, ScriptTask


class Lines:
    """Collects what a script prints, as ``(task_id, stream, line)``."""

    def __init__(self) -> None:
        self.items: list[tuple[str, str, str]] = []

    def __call__(self, task_id: str, stream: str, line: str) -> None:
        self.items.append((task_id, stream, line))

    def text(self, stream: str = "stdout") -> list[str]:
        return [line for _, kind, line in self.items if kind == stream]


def script(language: str, text: str, **options: Any) -> ScriptTask:
    return ScriptTask(
        id=options.pop("id", "task"),
        type=f"io.kestra.plugin.scripts.{language}.Script",
        script=text,
        **options,
    )


def commands(*lines: str, **options: Any) -> CommandsTask:
    return CommandsTask(
        id=options.pop("id", "cmds"),
        type="io.kestra.plugin.scripts.shell.Commands",
        commands=list(lines),
        **options,
    )


def test_python_script_runs_in_the_folder(tmp_path: Path) -> None:
    lines = Lines()
    task = script(
        "python",
        "import os, pathlib\nprint(os.getcwd())\npathlib.Path('made.txt').write_text('x')\n",
    )
    result = run_script(task, tmp_path, sink=lines)
    assert result.ok and result.exit_code == 0
    assert lines.text() == [str(tmp_path)]
    assert (tmp_path / "made.txt").read_text() == "x"
    assert lines.items[0][0] == "task"


def test_before_commands_and_script_share_one_shell(tmp_path: Path) -> None:
    (tmp_path / "vars.sh").write_text("export FROM_SOURCE=sourced\n")
    task = script(
        "python",
        "import os\nprint(os.environ['FROM_SOURCE'], os.environ['FROM_EXPORT'])\n",
        before_commands=["source vars.sh", "export FROM_EXPORT=exported"],
    )
    lines = Lines()
    assert run_script(task, tmp_path, sink=lines).ok
    assert lines.text() == ["sourced exported"]


def test_activated_venv_provides_python(tmp_path: Path) -> None:
    """``source venv/bin/activate`` in beforeCommands decides which ``python`` runs the script."""
    task = script(
        "python",
        "import sys\nprint(sys.prefix)\n",
        before_commands=["python -m venv --without-pip venv", "source venv/bin/activate"],
    )
    lines = Lines()
    assert run_script(task, tmp_path, sink=lines).ok
    assert lines.text() == [str(tmp_path / "venv")]


def test_env_is_merged_with_the_parent_environment(tmp_path: Path) -> None:
    task = commands('echo "$GREETING $HOME_SEEN"', env={"GREETING": "hello"})
    lines = Lines()
    env = {**os.environ, "HOME_SEEN": "inherited"}
    assert run_script(task, tmp_path, sink=lines, env=env).ok
    assert lines.text() == ["hello inherited"]


def test_non_zero_exit_fails_and_set_e_stops_early(tmp_path: Path) -> None:
    task = commands("echo before", "false", "echo after", id="stops")
    lines = Lines()
    result = run_script(task, tmp_path, sink=lines)
    assert not result.ok and result.exit_code == 1
    assert lines.text() == ["before"]

    failing_setup = script("python", "print('never')", before_commands=["exit 7"])
    result = run_script(failing_setup, tmp_path, sink=lines)
    assert result.exit_code == 7
    assert "never" not in lines.text()


def test_python_exception_fails_with_stderr_tail(tmp_path: Path) -> None:
    result = run_script(script("python", "raise SystemExit('boom')"), tmp_path, sink=Lines())
    assert result.exit_code == 1
    assert result.stderr_tail == ["boom"]


def test_warning_on_stderr(tmp_path: Path) -> None:
    noisy = "import sys\nprint('careful', file=sys.stderr)\n"
    lines = Lines()
    result = run_script(script("python", noisy), tmp_path, sink=lines)
    assert result.ok and result.warning
    assert lines.text("stderr") == ["careful"]
    quiet = run_script(script("python", noisy, warning_on_std_err=False), tmp_path, sink=Lines())
    assert quiet.ok and not quiet.warning


def test_output_is_streamed_while_the_script_runs(tmp_path: Path) -> None:
    """The script waits for a file the sink only writes after seeing its first line."""
    gate = tmp_path / "gate"
    seen = threading.Event()

    def sink(task_id: str, stream: str, line: str) -> None:
        if line == "waiting":
            gate.write_text("open")
            seen.set()

    text = (
        "import pathlib, time\nprint('waiting')\n"
        "for _ in range(200):\n"
        "    if pathlib.Path('gate').exists():\n        break\n    time.sleep(0.05)\n"
        "else:\n    raise SystemExit('no live output')\n"
    )
    result = run_script(script("python", text), tmp_path, sink=sink)
    assert seen.is_set() and result.ok


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_node_script(tmp_path: Path) -> None:
    lines = Lines()
    assert run_script(script("node", "console.log(1 + 1)"), tmp_path, sink=lines).ok
    assert lines.text() == ["2"]


def test_shell_script_and_commands(tmp_path: Path) -> None:
    lines = Lines()
    assert run_script(script("shell", "x=4\necho $((x * 2))"), tmp_path, sink=lines).ok
    assert run_script(commands("echo one", "echo two"), tmp_path, sink=lines).ok
    assert lines.text() == ["8", "one", "two"]


def test_timeout_stops_the_whole_process_group(tmp_path: Path) -> None:
    task = commands("sleep 30 & wait", timeout="PT0.5S")
    result = run_script(task, tmp_path, sink=Lines())
    assert result.timed_out and not result.ok
    assert result.seconds < 10


def test_posix_sh_fallback_turns_source_into_dot(tmp_path: Path) -> None:
    """Without bash on PATH the runner uses /bin/sh, where ``source`` is spelled ``.``."""
    task = commands('echo "$VALUE"', before_commands=["source ./vars.sh"])
    assert shell_program(task, None, bash=False).splitlines()[1] == ". ./vars.sh"
    assert shell_program(task, None, bash=True).splitlines()[1] == "source ./vars.sh"
    (tmp_path / "vars.sh").write_text("VALUE=from-dot\n")
    empty_path = tmp_path / "bin"
    empty_path.mkdir()
    lines = Lines()
    result = run_script(task, tmp_path, sink=lines, env={"PATH": str(empty_path)})
    assert result.ok, lines.items
    assert lines.text() == ["from-dot"]


def test_script_file_is_written_inside_the_folder(tmp_path: Path) -> None:
    lines = Lines()
    assert run_script(script("python", "print(__file__)"), tmp_path, sink=lines).ok
    (printed,) = lines.text()
    assert (tmp_path / printed).resolve().is_relative_to(tmp_path)


def test_docker_runner_is_refused_without_docker_on_path(tmp_path: Path) -> None:
    task = script("python", "print(1)", runner="DOCKER", id="in_docker")
    saved = os.environ["PATH"]
    os.environ["PATH"] = str(tmp_path)
    try:
        assert docker_problem() == "the 'docker' command is not installed"
        with pytest.raises(FlowError) as caught:
            check_runners([task])
    finally:
        os.environ["PATH"] = saved
    message = str(caught.value)
    assert "'in_docker'" in message and "runner: PROCESS" in message
    assert "not installed" in message


def test_docker_runner_is_refused_when_the_engine_does_not_answer(tmp_path: Path) -> None:
    """A real ``docker info`` against a socket where no engine listens."""
    if shutil.which("docker") is None:
        pytest.skip("docker CLI is not installed")
    saved = os.environ.get("DOCKER_HOST")
    os.environ["DOCKER_HOST"] = f"unix://{tmp_path}/no-engine.sock"
    try:
        problem = docker_problem()
        with pytest.raises(FlowError, match="no Docker engine can run"):
            check_runners([script("python", "print(1)", runner="DOCKER")])
    finally:
        if saved is None:
            del os.environ["DOCKER_HOST"]
        else:
            os.environ["DOCKER_HOST"] = saved
    assert problem is not None and "docker info" in problem


def test_process_runner_needs_no_docker(tmp_path: Path) -> None:
    check_runners(
        [script("python", "print(1)"), script("python", "x", runner="DOCKER", disabled=True)]
    )


def test_uses_the_python_on_path(tmp_path: Path) -> None:
    """Without a venv, the script runs with whatever ``python`` the PATH names."""
    link_dir = tmp_path / "bin"
    link_dir.mkdir()
    (link_dir / "python").symlink_to(sys.executable)
    env = {**os.environ, "PATH": f"{link_dir}{os.pathsep}{os.environ['PATH']}"}
    lines = Lines()
    assert run_script(
        script("python", "import sys; print(sys.executable)"), tmp_path, sink=lines, env=env
    ).ok
    assert lines.text() == [str(link_dir / "python")]
