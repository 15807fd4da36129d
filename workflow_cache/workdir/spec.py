"""The shape of a flow: pydantic models that read Kestra-style YAML unmodified.

Field names are camelCase in YAML (``beforeCommands``) and snake_case in Python
(``before_commands``); both are accepted when building models in code. Unknown
keys inside a task are refused, so a typo such as ``pattern:`` fails loudly
instead of silently disabling the cache.
"""

from __future__ import annotations

import re
from datetime import timedelta
from enum import StrEnum
from pathlib import PurePosixPath
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    PrivateAttr,
    Tag,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from workflow_cache.duration import DurationError, to_timedelta
from workflow_cache.workdir.errors import FlowError as FlowError
from workflow_cache.workdir.inputs import FlowInput
from workflow_cache.workdir.patterns import PatternError, validate_patterns
from workflow_cache.workdir.sourcemap import SourceMap

WORKING_DIRECTORY_TYPES = (
    "io.kestra.plugin.core.flow.WorkingDirectory",
    "io.kestra.core.tasks.flows.WorkingDirectory",
)
PYTHON_SCRIPT_TYPES = ("io.kestra.plugin.scripts.python.Script",)
PYTHON_COMMANDS_TYPES = ("io.kestra.plugin.scripts.python.Commands",)
NODE_SCRIPT_TYPES = ("io.kestra.plugin.scripts.node.Script",)
NODE_COMMANDS_TYPES = ("io.kestra.plugin.scripts.node.Commands",)
SHELL_SCRIPT_TYPES = ("io.kestra.plugin.scripts.shell.Script",)
SHELL_COMMANDS_TYPES = ("io.kestra.plugin.scripts.shell.Commands",)

SCRIPT_TYPES = PYTHON_SCRIPT_TYPES + NODE_SCRIPT_TYPES + SHELL_SCRIPT_TYPES
COMMANDS_TYPES = PYTHON_COMMANDS_TYPES + NODE_COMMANDS_TYPES + SHELL_COMMANDS_TYPES
KNOWN_TASK_TYPES = WORKING_DIRECTORY_TYPES + SCRIPT_TYPES + COMMANDS_TYPES

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
_NAMESPACE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def _checked_id(kind: str, value: str) -> str:
    if not _ID.match(value):
        raise ValueError(
            f"{kind} id {value!r} must start with a letter or digit and contain only "
            "letters, digits, '_' and '-'"
        )
    return value


def _scalar_text(value: Any) -> Any:
    """YAML turns ``1`` and ``true`` into numbers and booleans; env values must stay text."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return value


def _text_list(value: Any) -> Any:
    if isinstance(value, list):
        return [_scalar_text(item) for item in value]
    return value


def _text_mapping(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _scalar_text(item) for key, item in value.items()}
    return value


def _ttl(value: Any) -> Any:
    """Parse ISO 8601 durations with the project's parser so every ttl error reads alike."""
    if value is None or isinstance(value, timedelta):
        return value
    if isinstance(value, str | int | float) and not isinstance(value, bool):
        try:
            return to_timedelta(value, name="ttl")
        except DurationError as exc:
            raise ValueError(str(exc).removeprefix("ttl: ")) from None
    raise ValueError(f"expected an ISO 8601 duration such as 'PT1H', got {value!r}")


def _patterns(value: list[str]) -> list[str]:
    try:
        return validate_patterns(value)
    except PatternError as exc:
        raise ValueError(str(exc)) from None


TextMap = Annotated[dict[str, str], BeforeValidator(_text_mapping)]
TextList = Annotated[list[str], BeforeValidator(_text_list)]
Duration = Annotated[timedelta | None, BeforeValidator(_ttl)]


class Runner(StrEnum):
    """Where a script runs: on this machine (PROCESS) or in a container (DOCKER)."""

    PROCESS = "PROCESS"
    DOCKER = "DOCKER"


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        validate_default=True,
    )


class _Task(_Model):
    """Properties every task has; ``disabled`` tasks are skipped, as in Kestra."""

    id: str
    description: str | None = None
    disabled: bool = False
    timeout: Duration = None
    input_files: TextMap = Field(default_factory=dict)
    output_files: list[str] = Field(default_factory=list)

    @field_validator("id")
    @classmethod
    def _check_id(cls, value: str) -> str:
        return _checked_id("task", value)

    @field_validator("input_files")
    @classmethod
    def _check_input_names(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            path = PurePosixPath(name)
            if not name or path.is_absolute() or ".." in path.parts or name.endswith("/"):
                raise ValueError(
                    f"input file name {name!r} must be a relative path inside the working folder"
                )
        return value

    @field_validator("output_files")
    @classmethod
    def _check_outputs(cls, value: list[str]) -> list[str]:
        return _patterns(value) if value else value


class _ScriptBase(_Task):
    """What the script plugins share: setup commands, environment and runner choice."""

    before_commands: TextList = Field(default_factory=list)
    env: TextMap = Field(default_factory=dict)
    runner: Runner = Runner.PROCESS
    warning_on_std_err: bool = True
    container_image: str | None = None
    docker: dict[str, Any] | None = None

    @field_validator("runner", mode="before")
    @classmethod
    def _upper_runner(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value


class ScriptTask(_ScriptBase):
    """A Python, Node or shell ``Script``: the ``script`` text is written to a file and run."""

    type: Literal[SCRIPT_TYPES]  # type: ignore[valid-type]
    script: str

    @property
    def language(self) -> str:
        return _language(self.type)


class CommandsTask(_ScriptBase):
    """A ``Commands`` task: each command runs in one shell after ``beforeCommands``."""

    type: Literal[COMMANDS_TYPES]  # type: ignore[valid-type]
    commands: TextList = Field(min_length=1)

    @property
    def language(self) -> str:
        return _language(self.type)


def _language(type_name: str) -> str:
    return type_name.split(".")[-2]


ScriptLike = ScriptTask | CommandsTask


def _task_tag(value: Any) -> str | None:
    """Group the Kestra type names by model so errors carry the model's name, not a union."""
    type_name = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    if type_name in WORKING_DIRECTORY_TYPES:
        return "WorkingDirectory"
    if type_name in SCRIPT_TYPES:
        return "Script"
    if type_name in COMMANDS_TYPES:
        return "Commands"
    return None


ChildTask = Annotated[
    Annotated[ScriptTask, Tag("Script")] | Annotated[CommandsTask, Tag("Commands")],
    Discriminator(
        _task_tag,
        custom_error_type="unknown_task_type",
        custom_error_message="unknown task type",
    ),
]


class CacheSpec(_Model):
    """Files kept between runs: glob ``patterns``, a lifetime and an optional content key.

    ``key`` is any text (for example a version) and ``keyFiles`` lists files of the
    folder (lock files) whose contents are hashed; both make a separate entry, so a
    changed lock file starts a fresh cache instead of restoring stale packages.
    With ``fallback``, a run whose exact entry is missing starts from the newest
    valid entry of the same task instead (a partial hit) and saves its own after.
    """

    patterns: list[str] = Field(min_length=1)
    ttl: Duration = None
    key: str | None = None
    key_files: list[str] = Field(default_factory=list)
    fallback: bool = False

    @field_validator("patterns")
    @classmethod
    def _check_patterns(cls, value: list[str]) -> list[str]:
        return _patterns(value)

    @field_validator("key", mode="before")
    @classmethod
    def _key_text(cls, value: Any) -> Any:
        return _scalar_text(value)

    @field_validator("key_files")
    @classmethod
    def _check_key_files(cls, value: list[str]) -> list[str]:
        for name in value:
            if isinstance(name, str) and name.startswith("!"):
                raise ValueError(f"key file {name!r}: keyFiles name files, they do not exclude")
        return _patterns(value) if value else value


class WorkingDirectory(_Task):
    """Child scripts share one fresh folder; ``cache`` keeps some of its files between runs."""

    type: Literal[WORKING_DIRECTORY_TYPES] = WORKING_DIRECTORY_TYPES[0]  # type: ignore[valid-type]
    tasks: list[ChildTask] = Field(default_factory=list)
    cache: CacheSpec | None = None

    @field_validator("tasks", mode="before")
    @classmethod
    def _none_is_empty(cls, value: Any) -> Any:
        return [] if value is None else value


Task = Annotated[
    Annotated[WorkingDirectory, Tag("WorkingDirectory")]
    | Annotated[ScriptTask, Tag("Script")]
    | Annotated[CommandsTask, Tag("Commands")],
    Discriminator(
        _task_tag,
        custom_error_type="unknown_task_type",
        custom_error_message="unknown task type",
    ),
]


class Flow(_Model):
    """A flow: tasks run in order under ``namespace``/``id``.

    ``inputs``, ``variables`` and ``labels`` are what its expressions can read.
    Kestra's other top-level keys are accepted so its flows load unmodified;
    they do not change what runs here.
    """

    id: str
    namespace: str
    tasks: list[Task] = Field(min_length=1)
    revision: int | None = None
    description: str | None = None
    labels: dict[str, Any] | list[Any] | None = None
    inputs: list[FlowInput] | None = None
    outputs: list[Any] | None = None
    variables: dict[str, Any] | None = None
    triggers: list[Any] | None = None
    errors: list[Any] | None = None
    finally_: list[Any] | None = Field(default=None, alias="finally")
    after_execution: list[Any] | None = None
    plugin_defaults: list[Any] | None = None
    task_defaults: list[Any] | None = None
    concurrency: dict[str, Any] | None = None
    retry: dict[str, Any] | None = None
    sla: list[Any] | None = None
    worker_group: dict[str, Any] | None = None
    disabled: bool = False
    deleted: bool = False
    tenant_id: str | None = None
    _source: SourceMap = PrivateAttr(default_factory=SourceMap)

    @field_validator("id")
    @classmethod
    def _check_id(cls, value: str) -> str:
        return _checked_id("flow", value)

    @field_validator("namespace")
    @classmethod
    def _check_namespace(cls, value: str) -> str:
        if not _NAMESPACE.match(value):
            raise ValueError(
                f"namespace {value!r} must start with a letter or digit and contain only "
                "letters, digits, '.', '_' and '-'"
            )
        return value

    @model_validator(mode="after")
    def _unique_ids(self) -> Flow:
        seen: set[str] = set()
        for task in self.all_tasks():
            if task.id in seen:
                raise ValueError(f"task id {task.id!r} is used twice; task ids must be unique")
            seen.add(task.id)
        names: set[str] = set()
        for spec in self.inputs or []:
            if spec.id in names:
                raise ValueError(f"input id {spec.id!r} is declared twice; ids must be unique")
            names.add(spec.id)
        return self

    @property
    def source(self) -> SourceMap:
        """Where each field was written in the YAML file (empty for flows built in code)."""
        return self._source

    def with_source(self, source: SourceMap) -> Flow:
        self._source = source
        return self

    def all_tasks(self) -> list[WorkingDirectory | ScriptLike]:
        """Every task, children included, in the order they run."""
        found: list[WorkingDirectory | ScriptLike] = []
        for task in self.tasks:
            found.append(task)
            if isinstance(task, WorkingDirectory):
                found.extend(task.tasks)
        return found

    def script_tasks(self) -> list[ScriptLike]:
        return [task for task in self.all_tasks() if not isinstance(task, WorkingDirectory)]
