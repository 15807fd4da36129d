"""Run a flow: fresh folders, cache restore and save around WorkingDirectory children.

For each WorkingDirectory the order is: fresh folder, restore (ttl read from the
spec being run, so raising or lowering it takes effect at once), input files,
children in order, save when every child succeeded and no valid entry was
restored, output files copied out, folder removed.

A restored folder is untrusted (docs/trust.md): it is checked before use
(:mod:`~workflow_cache.workdir.restored`), input files are written without
following symlinks, output files that are symlinks leaving the folder are not
copied, and a restore the run cannot use safely is a cache miss.

Secret values (:mod:`~workflow_cache.workdir.flowsecrets`) are masked in script
output, the summary and error messages; an entry whose files hold one is not
saved, and a cache key holding one is refused.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from workflow_cache import settings
from workflow_cache.workdir import safefs
from workflow_cache.workdir.entrykey import EntryKey
from workflow_cache.workdir.fallback import restore_fallback
from workflow_cache.workdir.filecache import FileCache
from workflow_cache.workdir.flowsecrets import FlowSecrets, without_secrets
from workflow_cache.workdir.inputs import SecretInput, resolve_inputs
from workflow_cache.workdir.outputs import copy_file_inputs, split_file_inputs
from workflow_cache.workdir.patterns import match_files
from workflow_cache.workdir.rendering import FlowRenderer
from workflow_cache.workdir.restored import (
    ORIGIN_FILE,
    UnsafeRestoreError,
    relocate_from,
    take_origin,
)
from workflow_cache.workdir.runner import (
    SCRIPTS_DIR,
    OutputSink,
    check_runners,
    print_sink,
    run_script,
)
from workflow_cache.workdir.spec import (
    CacheSpec,
    Flow,
    FlowError,
    ScriptLike,
    WorkingDirectory,
)

log = logging.getLogger("workflow_cache.flow")


@dataclass
class TaskSummary:
    """What one task did: its outcome, and for a WorkingDirectory what the cache did."""

    task_id: str
    kind: str
    parent: str | None = None
    status: str = "success"
    cache: str = "off"
    cache_reason: str = ""
    restored_files: int = 0
    restored_bytes: int = 0
    restore_seconds: float = 0.0
    saved: bool = False
    save_reason: str = ""
    saved_files: int = 0
    saved_bytes: int = 0
    save_seconds: float = 0.0
    run_seconds: float = 0.0
    outputs: list[str] = field(default_factory=list)
    vars: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    error: str | None = None


@dataclass
class FlowSummary:
    """The outcome of a flow run; plain data so it travels as JSON from Celery workers."""

    flow_id: str
    namespace: str
    ok: bool = True
    seconds: float = 0.0
    tasks: list[TaskSummary] = field(default_factory=list)
    worker: str | None = None

    def task(self, task_id: str) -> TaskSummary:
        for summary in self.tasks:
            if summary.task_id == task_id:
                return summary
        raise KeyError(task_id)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FlowSummary:
        tasks = [TaskSummary(**item) for item in data.get("tasks", [])]
        return cls(**{**data, "tasks": tasks})


def run_flow(
    flow: Flow,
    *,
    cache: FileCache | None = None,
    storage: str | None = None,
    work_root: str | Path | None = None,
    outputs_dir: str | Path | None = None,
    sink: OutputSink | None = None,
    env: Mapping[str, str] | None = None,
    inputs: Mapping[str, Any] | None = None,
    secrets_file: str | Path | None = None,
) -> FlowSummary:
    """Run every task of ``flow`` in order and stop at the first failure.

    ``cache`` (or ``storage``, an fsspec URL; default the local folder) holds the
    archives; ``work_root`` is where fresh folders are made (default the system
    temp dir); ``outputs_dir`` receives ``outputFiles`` (default ``./outputs``).
    ``inputs`` gives values to the flow's declared inputs. ``env`` is the
    environment scripts start from (default this process's), where ``envs`` and
    ``secret('NAME')`` (``SECRET_NAME``, base64) are read too; ``secrets_file``
    (default: the ``secrets_file`` setting) holds more ``SECRET_NAME=<base64>`` lines.
    Bad input (an input value, an unknown variable or filter in an expression, a
    missing secret) raises :class:`FlowError` before any script runs; a failing
    script only marks the summary as failed.
    """
    environ = dict(os.environ if env is None else env)
    if secrets_file is None:
        secrets_file = settings.current().secrets_file
    secrets = FlowSecrets(environ, secrets_file)
    try:
        values = resolve_inputs(flow.inputs, inputs)
        for spec in flow.inputs or []:
            if isinstance(spec, SecretInput) and isinstance(values.get(spec.id), str):
                secrets.add(values[spec.id])
        renderer = FlowRenderer(flow, values, environ=environ, secrets=secrets)
        renderer.check()
        check_runners(flow.script_tasks())
    except FlowError as exc:
        raise type(exc)(secrets.mask(str(exc))) from None
    runner = _FlowRun(
        flow,
        cache=cache,
        storage=storage,
        work_root=Path(work_root) if work_root else None,
        outputs_dir=Path(outputs_dir) if outputs_dir else Path.cwd() / "outputs",
        sink=sink or print_sink,
        env=without_secrets(environ),
        renderer=renderer,
        secrets=secrets,
    )
    return runner.run()


class _FlowRun:
    """State of one run: the lazily opened cache and the summaries built so far."""

    def __init__(
        self,
        flow: Flow,
        *,
        cache: FileCache | None,
        storage: str | None,
        work_root: Path | None,
        outputs_dir: Path,
        sink: OutputSink,
        env: Mapping[str, str],
        renderer: FlowRenderer,
        secrets: FlowSecrets,
    ) -> None:
        self.flow = flow
        self.renderer = renderer
        self.secrets = secrets
        self._cache = cache
        self._storage = storage
        self.work_root = work_root
        self.outputs_dir = outputs_dir
        self.env = env

        def masked(task_id: str, stream: str, line: str) -> None:
            sink(task_id, stream, secrets.mask(line))

        self.sink = masked
        self.summary = FlowSummary(flow_id=flow.id, namespace=flow.namespace)

    @property
    def cache(self) -> FileCache:
        if self._cache is None:
            self._cache = FileCache(self._storage)
        return self._cache

    def run(self) -> FlowSummary:
        started = time.monotonic()
        for task in self.flow.tasks:
            if not self.summary.ok or task.disabled:
                self._skip(task, None)
                if isinstance(task, WorkingDirectory):
                    for child in task.tasks:
                        self._skip(child, task.id)
                continue
            if isinstance(task, WorkingDirectory):
                self._working_directory(task)
            else:
                self._standalone(task)
        self.summary.seconds = time.monotonic() - started
        if self.secrets.used:
            for summary in self.summary.tasks:
                _mask_summary(summary, self.secrets)
        return self.summary

    def _skip(self, task: WorkingDirectory | ScriptLike, parent: str | None) -> None:
        self.summary.tasks.append(
            TaskSummary(task_id=task.id, kind=_kind(task), parent=parent, status="skipped")
        )

    def _fresh_folder(self, task_id: str) -> Path:
        if self.work_root is not None:
            self.work_root.mkdir(parents=True, exist_ok=True)
        made = tempfile.mkdtemp(prefix=f"wfc-{task_id}-", dir=self.work_root)
        return Path(made).resolve()

    def _standalone(self, task: ScriptLike) -> None:
        """A script outside any WorkingDirectory gets its own folder and no cache."""
        folder = self._fresh_folder(task.id)
        try:
            summary = self._script(task, folder, parent=None)
            if summary.status != "failed":
                summary.outputs = self._collect(task, folder)
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def _script(self, task: ScriptLike, folder: Path, parent: str | None) -> TaskSummary:
        summary = TaskSummary(task_id=task.id, kind=_kind(task), parent=parent)
        self.summary.tasks.append(summary)
        try:
            task = self.renderer.render(task)  # type: ignore[assignment]
            self._inputs(folder, task)
        except FlowError as exc:
            summary.status, summary.error = "failed", str(exc)
            self.summary.ok = False
            return summary
        result = run_script(task, folder, sink=self.sink, env=self.env)
        self.renderer.outputs.record_run(task.id, result.exit_code, result.outputs)
        summary.vars = result.outputs
        summary.run_seconds = result.seconds
        if result.timed_out:
            summary.status = "failed"
            summary.error = f"timed out after {task.timeout}"
        elif result.exit_code != 0:
            summary.status = "failed"
            detail = f": {result.stderr_tail[-1]}" if result.stderr_tail else ""
            summary.error = f"exit code {result.exit_code}{detail}"
        elif result.warning:
            summary.status = "warning"
            summary.warnings.append("the script wrote to stderr (warningOnStdErr is true)")
        if summary.status == "failed":
            self.summary.ok = False
        return summary

    def _working_directory(self, task: WorkingDirectory) -> None:
        summary = TaskSummary(task_id=task.id, kind=_kind(task))
        self.summary.tasks.append(summary)
        folder = self._fresh_folder(task.id)
        started = time.monotonic()
        try:
            task = self.renderer.render(task)  # type: ignore[assignment]
            self._inputs(folder, task)
            key = self._restore(task, folder, summary) if task.cache else None
            failed = self._children(task, folder)
            if failed:
                summary.status = "failed"
                summary.error = f"task {failed!r} failed"
                summary.save_reason = "not saved: a child task failed"
            elif key is not None and task.cache is not None:
                self._save(key, task.cache, folder, summary)
            if not failed:
                summary.outputs = self._collect(task, folder)
        except FlowError as exc:
            summary.status = "failed"
            summary.error = str(exc)
            self.summary.ok = False
        finally:
            summary.run_seconds = time.monotonic() - started
            shutil.rmtree(folder, ignore_errors=True)
        if any(child.status == "warning" for child in self._children_of(task.id)):
            summary.status = "warning" if summary.status == "success" else summary.status

    def _children_of(self, parent: str) -> list[TaskSummary]:
        return [item for item in self.summary.tasks if item.parent == parent]

    def _children(self, task: WorkingDirectory, folder: Path) -> str | None:
        """Run the children in order; return the id of the one that failed, if any."""
        failed: str | None = None
        for child in task.tasks:
            if failed is not None or child.disabled:
                self._skip(child, task.id)
                continue
            if self._script(child, folder, parent=task.id).status == "failed":
                failed = child.id
        safefs.remove_tree(folder, SCRIPTS_DIR)
        return failed

    def _key(self, task: WorkingDirectory, spec: CacheSpec, folder: Path) -> EntryKey:
        """The entry's key; lock files and ``cache.key`` make a separate entry per content."""
        key = EntryKey(self.flow.namespace, self.flow.id, task.id)
        if spec.key_files:
            missing = [name for name in spec.key_files if not (folder / name).is_file()]
            if missing:
                raise FlowError(
                    f"task {task.id!r}: cache.keyFiles {missing} do not exist in the working "
                    "folder; list files written by inputFiles"
                )
            key = key.with_files(folder, spec.key_files)
        if spec.key is not None:
            if self.secrets.holds_secret(spec.key):
                raise FlowError(
                    f"task {task.id!r}: cache.key holds a secret value; the key is stored in "
                    "the entry's name for anyone who lists the cache: use another value"
                )
            content = spec.key if key.content is None else f"{spec.key}-{key.content}"
            key = EntryKey(key.namespace, key.flow, key.task, content)
        return key

    def _restore(self, task: WorkingDirectory, folder: Path, summary: TaskSummary) -> EntryKey:
        assert task.cache is not None
        key = self._key(task, task.cache, folder)
        try:
            result = self.cache.restore(key, folder, task.cache.ttl)
            if not result.hit and task.cache.fallback:
                result = restore_fallback(self.cache, key, folder, task.cache.ttl, result)
        except Exception as exc:  # a broken entry must never stop the run
            _empty(folder)
            self._inputs(folder, task)
            summary.cache = "miss"
            summary.cache_reason = f"restore failed: {exc}"
            summary.warnings.append(f"cache restore failed, running without it: {exc}")
            log.warning("task %s: cache restore failed, running without it: %s", task.id, exc)
            return key
        summary.restore_seconds = result.seconds
        summary.cache_reason = result.reason
        if result.hit:
            try:
                origin = take_origin(folder)
                relocate_from(folder, origin)
                self._inputs(folder, task)
            except (UnsafeRestoreError, OSError) as exc:
                self._reject(task, key, folder, summary, exc)
                return key
            summary.cache = "partial" if result.reason.startswith("fallback") else "hit"
            hidden = None if origin is None else len(origin.encode())
            summary.restored_files = result.files - (hidden is not None)
            summary.restored_bytes = result.bytes - (hidden or 0)
        else:
            summary.cache = "expired" if result.reason == "expired" else "miss"
            if result.reason == "corrupt":
                summary.warnings.append("the cache entry could not be restored; ran without it")
        return key

    def _reject(
        self,
        task: WorkingDirectory,
        key: EntryKey,
        folder: Path,
        summary: TaskSummary,
        problem: Exception,
    ) -> None:
        """A restored folder the run cannot use safely: remove the entry, run without it."""
        reason = f"restored folder rejected: {problem}"
        log.warning("task %s: %s; removing the entry, running without it", task.id, reason)
        _empty(folder)
        self._inputs(folder, task)
        summary.cache = "miss"
        summary.cache_reason = reason
        summary.warnings.append(f"{reason}; ran without it")
        try:
            self.cache.delete(key)
        except (OSError, ValueError) as exc:
            log.warning("task %s: cannot remove the rejected entry: %s", task.id, exc)

    def _save(self, key: EntryKey, spec: CacheSpec, folder: Path, summary: TaskSummary) -> None:
        if summary.cache == "hit":
            summary.save_reason = "not saved: a valid entry was restored"
            return
        matched = match_files(folder, spec.patterns)
        if not matched:
            summary.save_reason = "not saved: no files matched the cache patterns"
            return
        holder = self.secrets.file_holding_secret(folder, matched)
        if holder is not None:
            summary.save_reason = f"not saved: {holder} holds a secret value"
            summary.warnings.append(
                f"the cache entry was not saved: {holder} holds a secret value, and archives "
                "are readable by every run that restores them"
            )
            return
        safefs.write_file(folder, ORIGIN_FILE, str(folder).encode())
        try:
            result = self.cache.save(key, folder, [*spec.patterns, ORIGIN_FILE], ttl=spec.ttl)
        except Exception as exc:  # the work is done; a failed save only costs the next run
            summary.save_reason = f"save failed: {exc}"
            summary.warnings.append(f"cache save failed: {exc}")
            log.warning("task %s: cache save failed: %s", summary.task_id, exc)
            return
        finally:
            safefs.remove_tree(folder, ORIGIN_FILE)
        summary.saved = result.saved
        summary.save_reason = result.reason
        if result.saved:  # report the user's files, not the origin marker
            summary.saved_files = result.files - 1
            summary.saved_bytes = result.bytes - len(str(folder).encode())
        summary.save_seconds = result.seconds

    def _collect(self, task: WorkingDirectory | ScriptLike, folder: Path) -> list[str]:
        """Copy files matching ``outputFiles`` (the task's and its children's) out of the folder."""
        patterns = list(task.output_files)
        if isinstance(task, WorkingDirectory):
            for child in task.tasks:
                patterns.extend(child.output_files)
        if not patterns:
            return []
        target = self.outputs_dir / task.id
        copied = []
        for relative in match_files(folder, patterns):
            source = folder / relative
            if source.is_symlink() and not safefs.is_inside(folder, source):
                log.warning("not copying output %s: it is a symlink out of the folder", relative)
                continue
            if not source.is_file():
                continue
            destination = target / relative
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination, follow_symlinks=True)
            copied.append(str(destination))
        children = task.tasks if isinstance(task, WorkingDirectory) else []
        self.renderer.outputs.record_files(
            task.id, [(child.id, child.output_files) for child in children], target, copied
        )
        return copied

    def _inputs(self, folder: Path, task: WorkingDirectory | ScriptLike) -> None:
        """Write ``inputFiles``: text as it is, a FILE input or output file path as a copy."""
        text, copies = split_file_inputs(task.input_files, self.renderer.file_paths())
        _write_inputs(folder, text)
        copy_file_inputs(folder, copies)


def _mask_summary(summary: TaskSummary, secrets: FlowSecrets) -> None:
    """Mask secret values in everything the summary shows."""
    summary.vars = secrets.mask_data(summary.vars)
    summary.warnings = [secrets.mask(text) for text in summary.warnings]
    summary.cache_reason = secrets.mask(summary.cache_reason)
    summary.save_reason = secrets.mask(summary.save_reason)
    if summary.error is not None:
        summary.error = secrets.mask(summary.error)


def _kind(task: WorkingDirectory | ScriptLike) -> str:
    return type(task).__name__.removesuffix("Task")


def _write_inputs(folder: Path, files: Mapping[str, str]) -> None:
    """Write input files; a symlink on the way is refused, one at the name is replaced."""
    for name, content in files.items():
        safefs.write_file(folder, name, content.encode("utf-8"))


def _empty(folder: Path) -> None:
    """Remove whatever a failed restore left behind, so the run starts from a clean folder."""
    for child in folder.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


def relocate(folder: Path) -> int:
    """Rewrite absolute paths of the folder an entry was built in to this run's folder.

    Every run gets a fresh folder, but tools write absolute paths: a venv's
    ``bin/pip`` starts with ``#!/old/folder/venv/bin/python`` and its ``activate``
    sets ``VIRTUAL_ENV`` to the old folder. Text files and symlinks naming the old
    folder are rewritten so a restored venv works where it lands. Returns the
    number of paths changed; an unusable origin marker is
    :class:`~workflow_cache.workdir.restored.UnsafeRestoreError`.
    """
    return relocate_from(folder, take_origin(folder))
