"""Run one script task in a folder and stream its output line by line.

``beforeCommands`` and the script share ONE shell, so ``source venv/bin/activate``
changes the ``python`` the script runs with, exactly as in Kestra's PROCESS runner.
The shell stops at the first failing command (``set -e``). Lines of the form
``::{"outputs": {...}}::`` are read as the task's output variables instead of
being printed.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from workflow_cache.workdir.outputs import parse_output_line
from workflow_cache.workdir.spec import CommandsTask, FlowError, Runner, ScriptLike, ScriptTask

OutputSink = Callable[[str, str, str], None]
"""Receives ``(task_id, stream, line)`` for every line a script prints; stream is stdout/stderr."""

SCRIPTS_DIR = ".workflow-cache/scripts"
"""Where script files are written inside the working folder (removed before saving)."""

_SUFFIX = {"python": ".py", "node": ".js", "shell": ".sh"}
_DEFAULT_IMAGE = {"python": "python:3.11-slim", "node": "node:20-slim", "shell": "ubuntu:24.04"}
_SOURCE = re.compile(r"^(\s*)source(\s+)", re.MULTILINE)
_TAIL_LINES = 20


@dataclass
class ScriptResult:
    """How one script ended: exit code, time, and whether stderr output turned it into a warning."""

    task_id: str
    exit_code: int
    seconds: float
    warning: bool = False
    timed_out: bool = False
    stderr_tail: list[str] = field(default_factory=list)
    outputs: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out


def print_sink(task_id: str, stream: str, line: str) -> None:
    """Default sink: prefix each line with the task id so interleaved tasks stay readable."""
    print(f"[{task_id}] {line}", flush=True)


def docker_problem() -> str | None:
    """Why no Docker engine can run here, or ``None`` when ``docker info`` answers."""
    exe = shutil.which("docker")
    if exe is None:
        return "the 'docker' command is not installed"
    try:
        probe = subprocess.run(
            [exe, "info", "--format", "{{.ServerVersion}}"],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"'docker info' did not answer ({exc})"
    if probe.returncode != 0:
        lines = [line for line in probe.stderr.strip().splitlines() if line.strip()]
        reason = lines[-1] if lines else f"exit code {probe.returncode}"
        return f"'docker info' failed: {reason}"
    return None


def check_runners(tasks: list[ScriptLike]) -> None:
    """Refuse a DOCKER task before anything runs, instead of failing halfway through a flow."""
    docker_tasks = [task.id for task in tasks if task.runner is Runner.DOCKER and not task.disabled]
    if not docker_tasks:
        return
    problem = docker_problem()
    if problem is not None:
        names = ", ".join(repr(name) for name in docker_tasks)
        raise FlowError(
            f"task {names} uses 'runner: DOCKER' but no Docker engine can run on this machine: "
            f"{problem}. Start a Docker engine, or set 'runner: PROCESS' on the task to run "
            "the script directly on this machine."
        )


def shell_program(task: ScriptLike, script_path: str | None, *, bash: bool) -> str:
    """The text one shell runs: ``set -e``, the setup commands, then the script or commands."""
    lines = ["set -e", *task.before_commands]
    if isinstance(task, ScriptTask):
        assert script_path is not None
        interpreter = {"python": "python", "node": "node"}.get(
            task.language, "bash" if bash else "sh"
        )
        lines.append(f"{interpreter} {shlex.quote(script_path)}")
    else:
        lines.extend(task.commands)
    program = "\n".join(lines) + "\n"
    return program if bash else _SOURCE.sub(r"\1.\2", program)


def write_script(task: ScriptLike, folder: Path) -> str | None:
    """Write a Script task's text into the folder; return its path relative to the folder."""
    if not isinstance(task, ScriptTask):
        return None
    relative = f"{SCRIPTS_DIR}/{task.id}{_SUFFIX.get(task.language, '')}"
    target = folder / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(task.script, encoding="utf-8")
    return relative


def run_script(
    task: ScriptLike,
    folder: Path,
    *,
    sink: OutputSink | None = None,
    env: Mapping[str, str] | None = None,
) -> ScriptResult:
    """Run ``task`` with ``folder`` as its current directory; output goes to ``sink`` live."""
    if not isinstance(task, ScriptTask | CommandsTask):
        raise TypeError(f"not a script task: {task!r}")
    sink = sink or print_sink
    script_path = write_script(task, folder)
    base_env = dict(os.environ if env is None else env)
    base_env.setdefault("PYTHONUNBUFFERED", "1")
    if task.runner is Runner.DOCKER:
        command = _docker_command(task, folder, script_path)
    else:
        bash = shutil.which("bash", path=base_env.get("PATH"))
        shell = [bash, "-c"] if bash else ["/bin/sh", "-c"]
        command = [*shell, shell_program(task, script_path, bash=bash is not None)]
    run_env = {**base_env, **task.env}
    timeout = task.timeout.total_seconds() if task.timeout else None
    return _execute(task, command, folder, run_env, sink, timeout)


def _docker_command(task: ScriptLike, folder: Path, script_path: str | None) -> list[str]:
    """Bind-mount the folder so files the container writes stay in it and can be cached."""
    image = task.container_image or _DEFAULT_IMAGE.get(task.language, "ubuntu:24.04")
    command = ["docker", "run", "--rm", "-v", f"{folder.resolve()}:/workdir", "-w", "/workdir"]
    if hasattr(os, "getuid"):
        command += ["--user", f"{os.getuid()}:{os.getgid()}", "-e", "HOME=/tmp"]
    for name in task.env:  # the value comes from docker's own environment, not its arguments
        command += ["-e", name]
    program = shell_program(task, script_path, bash=False)
    return [*command, image, "/bin/sh", "-c", program]


def _execute(
    task: ScriptLike,
    command: list[str],
    folder: Path,
    env: dict[str, str],
    sink: OutputSink,
    timeout: float | None,
) -> ScriptResult:
    started = time.monotonic()
    lock = threading.Lock()
    stderr_seen = threading.Event()
    tail: deque[str] = deque(maxlen=_TAIL_LINES)
    outputs: dict[str, Any] = {}

    def pump(pipe: IO[bytes], stream: str) -> None:
        for raw in iter(pipe.readline, b""):
            line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
            published = parse_output_line(line)
            if published is not None:
                with lock:
                    outputs.update(published)
                continue
            with lock:
                if stream == "stderr":
                    stderr_seen.set()
                    tail.append(line)
                sink(task.id, stream, line)
        pipe.close()

    try:
        process = subprocess.Popen(
            command,
            cwd=folder,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
    except OSError as exc:
        raise FlowError(f"task {task.id!r}: cannot start {command[0]!r}: {exc}") from None
    assert process.stdout is not None and process.stderr is not None
    readers = [
        threading.Thread(target=pump, args=(process.stdout, "stdout"), daemon=True),
        threading.Thread(target=pump, args=(process.stderr, "stderr"), daemon=True),
    ]
    for reader in readers:
        reader.start()
    timed_out = False
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        _stop(process)
    except BaseException:
        _stop(process)
        raise
    for reader in readers:
        reader.join()
    return ScriptResult(
        task_id=task.id,
        exit_code=process.returncode,
        seconds=time.monotonic() - started,
        warning=task.warning_on_std_err and stderr_seen.is_set(),
        timed_out=timed_out,
        stderr_tail=list(tail),
        outputs=outputs,
    )


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Stop the whole process group: the shell and everything it started."""
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue
