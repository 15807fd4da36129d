"""Which fields of a flow are rendered, with which variables, and when.

Kestra renders a task's properties just before the task runs, so a task sees
the outputs of the tasks before it. The rendered fields are ``script``,
``commands``, ``beforeCommands``, ``env`` values, ``containerImage``,
``inputFiles`` contents and the cache ``key``. Before anything runs,
:meth:`FlowRenderer.check` renders every field once with the outputs of earlier
tasks stubbed, so a misspelt variable or filter, or a missing secret, stops the
flow before its first task rather than halfway through.

Shell text (``commands``, ``beforeCommands``, a shell ``script``) gets its
values through environment variables added to the task's ``env``
(:mod:`.shellvalues`), so a value is never read as shell code.
"""

from __future__ import annotations

import secrets
import string
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from workflow_cache.workdir.expressions import Expressions, Pending, Scope, scoped
from workflow_cache.workdir.flowsecrets import FlowSecrets
from workflow_cache.workdir.inputs import FileInput
from workflow_cache.workdir.outputs import OutputStore
from workflow_cache.workdir.shellvalues import ShellValues
from workflow_cache.workdir.sourcemap import Loc
from workflow_cache.workdir.spec import Flow, ScriptLike, ScriptTask, WorkingDirectory

_ALPHABET = string.ascii_letters + string.digits
ENV_PREFIX = "ENV_"
"""The worker's variables that ``envs`` shows, as in Kestra: ``ENV_X`` is ``envs.x``."""

AnyTask = WorkingDirectory | ScriptLike


def new_id() -> str:
    """A 22-character random id, the shape of Kestra's execution and task-run ids."""
    return "".join(secrets.choice(_ALPHABET) for _ in range(22))


class FlowRenderer:
    """The variables of one flow run and the rendering of each task's fields.

    ``environ`` is the environment of the process that runs the flow, for
    ``envs``; ``secrets`` reads ``secret('NAME')``. Without them (a producer
    checking a flow that workers will run) both are known only on the worker and
    render as stubs.
    """

    def __init__(
        self,
        flow: Flow,
        inputs: Mapping[str, Any],
        *,
        execution_id: str | None = None,
        start: datetime | None = None,
        environ: Mapping[str, str] | None = None,
        secrets: FlowSecrets | None = None,
    ) -> None:
        self.flow = flow
        self.inputs = dict(inputs)
        self.outputs = OutputStore()
        self.expressions = Expressions(flow.source)
        self.execution = {"id": execution_id or new_id(), "startDate": start or datetime.now(UTC)}
        self._locs: dict[str, Loc] = {}
        self._parents: dict[str, str] = {}
        for index, task in enumerate(flow.tasks):
            self._locs[task.id] = ("tasks", index)
            if isinstance(task, WorkingDirectory):
                for number, child in enumerate(task.tasks):
                    self._locs[child.id] = ("tasks", index, "tasks", number)
                    self._parents[child.id] = task.id
        self._static = {
            "flow": scoped(_flow_variables(flow), "flow"),
            "execution": scoped(
                {**self.execution, "originalId": self.execution["id"]}, "execution"
            ),
            "inputs": scoped(self.inputs, "inputs"),
            "vars": scoped(flow.variables or {}, "vars"),
            "labels": scoped(_labels(flow.labels), "labels"),
            "envs": Pending() if environ is None else scoped(_envs(environ), "envs"),
            "secret": _stub_secret if secrets is None else secrets.read,
        }

    def render(self, task: AnyTask) -> AnyTask:
        """``task`` with its fields rendered against the outputs recorded so far."""
        return self._render(task, scoped(self.outputs.variables(), "outputs"))

    def check(self) -> None:
        """Render every enabled task once with earlier outputs stubbed; raise at the first error."""
        done: list[str] = []
        for task in self.flow.tasks:
            if task.disabled:
                continue
            self._render(task, _stubs(done))
            inner = list(done)
            if isinstance(task, WorkingDirectory):
                for child in task.tasks:
                    if not child.disabled:
                        self._render(child, _stubs(inner))
                        inner.append(child.id)
            done = [*inner, task.id]

    def file_paths(self) -> set[str]:
        """Paths an ``inputFiles`` value may name to copy a file: FILE inputs and output files."""
        paths = self.outputs.file_paths()
        for spec in self.flow.inputs or []:
            value = self.inputs.get(spec.id)
            if isinstance(spec, FileInput) and isinstance(value, str):
                paths.add(value)
        return paths

    def _render(self, task: AnyTask, outputs: Scope) -> AnyTask:
        variables = {
            **self._static,
            "outputs": outputs,
            "task": scoped({"id": task.id, "type": task.type}, "task"),
            "taskrun": scoped(
                {"id": new_id(), "startDate": datetime.now(UTC), "attemptsCount": 1}, "taskrun"
            ),
        }
        base = self._locs[task.id]

        def render(text: str, *where: int | str) -> str:
            return self.expressions.render(text, (*base, *where), variables)

        shell = ShellValues()

        def render_shell(text: str, *where: int | str) -> str:
            return self.expressions.render(text, (*base, *where), variables, shell=shell)

        update: dict[str, Any] = {}
        if task.input_files:
            update["input_files"] = {
                name: render(text, "inputFiles", name) for name, text in task.input_files.items()
            }
        if isinstance(task, WorkingDirectory):
            if task.cache is not None and task.cache.key is not None:
                key = render(task.cache.key, "cache", "key")
                update["cache"] = task.cache.model_copy(update={"key": key})
            return task.model_copy(update=update)
        update["before_commands"] = [
            render_shell(command, "beforeCommands", index)
            for index, command in enumerate(task.before_commands)
        ]
        env = {name: render(value, "env", name) for name, value in task.env.items()}
        if task.container_image is not None:
            update["container_image"] = render(task.container_image, "containerImage")
        if isinstance(task, ScriptTask):
            shell_script = task.language == "shell"
            update["script"] = (render_shell if shell_script else render)(task.script, "script")
        else:
            update["commands"] = [
                render_shell(command, "commands", index)
                for index, command in enumerate(task.commands)
            ]
        update["env"] = {**env, **shell.env}
        return task.model_copy(update=update)


def _stub_secret(name: Any) -> Pending:
    """``secret()`` where the secrets are the worker's: checked when the worker runs the flow."""
    return Pending()


def _envs(environ: Mapping[str, str]) -> dict[str, str]:
    return {
        name.removeprefix(ENV_PREFIX).lower(): value
        for name, value in environ.items()
        if name.startswith(ENV_PREFIX) and len(name) > len(ENV_PREFIX)
    }


def _stubs(task_ids: list[str]) -> Scope:
    return Scope({task_id: Pending() for task_id in task_ids}, "outputs")


def _flow_variables(flow: Flow) -> dict[str, Any]:
    found: dict[str, Any] = {"id": flow.id, "namespace": flow.namespace}
    if flow.revision is not None:
        found["revision"] = flow.revision
    return found


def _labels(labels: Any) -> dict[str, Any]:
    """Kestra accepts labels as a map or as a list of ``{key, value}``; both read as a map."""
    if isinstance(labels, dict):
        return labels
    found: dict[str, Any] = {}
    for item in labels or []:
        if isinstance(item, dict) and "key" in item:
            found[str(item["key"])] = item.get("value")
    return found
