"""What tasks hand to later tasks: output variables, output files and exit codes.

A script publishes variables by printing a Kestra-style line on its own::

    ::{"outputs": {"version": "1.2.3"}}::

which later tasks read as ``{{ outputs.<task>.vars.version }}``. Files matched
by a task's ``outputFiles`` are copied out of its folder and reachable as
``{{ outputs.<task>.outputFiles['name'] }}``: the path of the copy. An
``inputFiles`` value that is exactly such a path (or a FILE input) brings that
file's bytes into the folder, as Kestra does with internal-storage URIs.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workflow_cache.workdir import safefs
from workflow_cache.workdir.errors import FlowError
from workflow_cache.workdir.patterns import selects

MAX_OUTPUT_LINE = 1 << 20
"""Longest ``::{...}::`` line read as outputs; longer lines are printed like any other."""


def parse_output_line(line: str) -> dict[str, Any] | None:
    """The ``outputs`` map of a ``::{"outputs": {...}}::`` line, or ``None`` for other lines.

    Lines in that form carrying only other keys (Kestra's ``metrics``) give ``{}``:
    they are taken out of the log like outputs are.
    """
    text = line.strip()
    if len(text) > MAX_OUTPUT_LINE or not (text.startswith("::{") and text.endswith("}::")):
        return None
    try:
        document = json.loads(text[2:-2])
    except json.JSONDecodeError:
        return None
    if not isinstance(document, dict):
        return None
    outputs = document.get("outputs", {})
    return outputs if isinstance(outputs, dict) else None


@dataclass
class _TaskOutputs:
    vars: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    exit_code: int | None = None


class OutputStore:
    """Outputs of the tasks run so far in one flow run."""

    def __init__(self) -> None:
        self._tasks: dict[str, _TaskOutputs] = {}

    def _of(self, task_id: str) -> _TaskOutputs:
        return self._tasks.setdefault(task_id, _TaskOutputs())

    def record_run(self, task_id: str, exit_code: int, variables: Mapping[str, Any]) -> None:
        outputs = self._of(task_id)
        outputs.exit_code = exit_code
        outputs.vars.update(variables)

    def record_files(
        self,
        owner: str,
        children: Iterable[tuple[str, list[str]]],
        target: Path,
        copied: Iterable[str],
    ) -> None:
        """Register files copied to ``target`` for ``owner``, and for each child that chose them."""
        names = {}
        for path in copied:
            relative = Path(path).relative_to(target).as_posix()
            names[relative] = str(Path(path).resolve())
        self._of(owner).files.update(names)
        for child, patterns in children:
            if patterns:
                chosen = {name: path for name, path in names.items() if selects(patterns, name)}
                self._of(child).files.update(chosen)

    def variables(self) -> dict[str, Any]:
        """``outputs`` as expressions see it: ``{task: {vars, outputFiles, exitCode}}``."""
        found: dict[str, Any] = {}
        for task_id, outputs in self._tasks.items():
            entry: dict[str, Any] = {"vars": dict(outputs.vars)}
            if outputs.files:
                entry["outputFiles"] = dict(outputs.files)
            if outputs.exit_code is not None:
                entry["exitCode"] = outputs.exit_code
            found[task_id] = entry
        return found

    def file_paths(self) -> set[str]:
        return {path for outputs in self._tasks.values() for path in outputs.files.values()}


def split_file_inputs(
    files: Mapping[str, str], known: set[str]
) -> tuple[dict[str, str], dict[str, str]]:
    """``(text contents, name -> path to copy)``: values equal to a known file path are copies."""
    text: dict[str, str] = {}
    copies: dict[str, str] = {}
    for name, content in files.items():
        if content.strip() in known:
            copies[name] = content.strip()
        else:
            text[name] = content
    return text, copies


def copy_file_inputs(folder: Path, copies: Mapping[str, str]) -> None:
    """Copy each file into ``folder`` under its name, never through a symlink in the folder.

    A symlink or file on the way is :class:`~workflow_cache.workdir.safefs.UnsafePathError`
    (an ``OSError``, so a restored folder that holds one is rejected like any unsafe restore);
    a source that cannot be read is a :class:`FlowError` naming the input.
    """
    for name, source in copies.items():
        try:
            src = open(source, "rb")  # noqa: SIM115  (closed below, after the copy)
        except OSError as exc:
            raise FlowError(f"input file {name!r}: cannot copy {source!r}: {exc}") from None
        with src:
            safefs.write_file(folder, name, src)
