"""Read a flow from YAML and turn every mistake into one message naming file, line and field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from pydantic_core import ErrorDetails

from workflow_cache.workdir.inputs import INPUT_TAGS, INPUT_TYPES
from workflow_cache.workdir.sourcemap import SourceMap
from workflow_cache.workdir.spec import (
    COMMANDS_TYPES,
    KNOWN_TASK_TYPES,
    SCRIPT_TYPES,
    WORKING_DIRECTORY_TYPES,
    Flow,
    FlowError,
)

_TAGS = {"WorkingDirectory", "Script", "Commands", *INPUT_TAGS}


def load_flow(path: str | Path) -> Flow:
    """Load the flow in ``path``; raise :class:`FlowError` for anything the user must fix."""
    source = Path(path)
    try:
        text = source.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FlowError(f"{source}: no such flow file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise FlowError(f"{source}: cannot read the flow file: {exc}") from None
    return parse_flow(text, source=str(source))


def parse_flow(text: str, *, source: str = "<flow>") -> Flow:
    """Parse YAML text into a :class:`Flow`; ``source`` names it in error messages."""
    try:
        data = yaml.safe_load(text)
        root = yaml.compose(text)
    except yaml.YAMLError as exc:
        raise FlowError(_yaml_message(exc, source)) from None
    if not isinstance(data, dict):
        raise FlowError(
            f"{source}: a flow must be a YAML mapping with 'id', 'namespace' and 'tasks', "
            f"got {type(data).__name__}"
        )
    try:
        flow = Flow.model_validate(data)
    except ValidationError as exc:
        raise FlowError(_validation_message(exc, data, root, source)) from None
    return flow.with_source(SourceMap.from_yaml(root, source))


def _yaml_message(exc: yaml.YAMLError, source: str) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
    detail = f"{problem} ({context})" if context else problem
    return f"{where}: malformed YAML: {detail}"


def _validation_message(
    exc: ValidationError, data: dict[str, Any], root: yaml.Node | None, source: str
) -> str:
    lines = []
    for error in exc.errors():
        loc = [part for part in error["loc"] if part not in _TAGS]
        field = _format_loc(loc)
        at_type = error["type"] in ("unknown_task_type", "unknown_input_type") and isinstance(
            _value_at(data, loc), dict
        )
        line = _line_of(root, [*loc, "type"] if at_type else loc)
        where = f"{source}:{line}" if line else source
        lines.append(f"{where}: {field}: {_describe(error, loc, data)}")
    return "\n".join(dict.fromkeys(lines))


def _describe(error: ErrorDetails, loc: list[int | str], data: dict[str, Any]) -> str:
    kind = error["type"]
    if kind == "unknown_input_type":
        found = _value_at(data, loc)
        type_name = found.get("type") if isinstance(found, dict) else None
        what = f"unknown input type {type_name!r}" if type_name else "an input needs a 'type'"
        return f"{what}; supported input types: " + ", ".join(INPUT_TYPES)
    if kind == "unknown_task_type":
        found = _value_at(data, loc)
        type_name = found.get("type") if isinstance(found, dict) else None
        is_child = loc.count("tasks") > 1
        known = SCRIPT_TYPES + COMMANDS_TYPES if is_child else KNOWN_TASK_TYPES
        if type_name is None:
            what = "a task needs a 'type'"
        elif is_child and type_name in WORKING_DIRECTORY_TYPES:
            what = "a WorkingDirectory cannot contain another WorkingDirectory"
        else:
            what = f"unknown task type {type_name!r}"
        return f"{what}; known types here: " + ", ".join(known)
    if kind == "extra_forbidden":
        return f"unknown field {loc[-1]!r}; check its spelling (fields are camelCase in YAML)"
    if kind == "missing":
        return "this field is required"
    message = error["msg"]
    for prefix in ("Value error, ", "Assertion failed, "):
        message = message.removeprefix(prefix)
    return message


def _format_loc(loc: list[int | str]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "flow"


def _value_at(data: Any, loc: list[int | str]) -> Any:
    for part in loc:
        try:
            data = data[part]
        except (KeyError, IndexError, TypeError):
            return None
    return data


def _line_of(node: yaml.Node | None, loc: list[int | str]) -> int | None:
    """Follow ``loc`` through the YAML node tree to report the line a user should look at."""
    if node is None:
        return None
    line = node.start_mark.line + 1
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if key.value == part:
                    line, node = key.start_mark.line + 1, value
                    break
            else:
                return line
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if part >= len(node.value):
                return line
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            return line
    return line
