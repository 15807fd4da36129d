"""The ``workflow-cache`` command: run flows locally or on Celery workers, and manage cached files.

Exit codes: 0 success, 1 a task failed, 2 the input was wrong (flow, option or
storage). Errors are one message on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from datetime import UTC
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.measure import Measurement
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from workflow_cache.admin.commands import register_prune, register_runs, register_steps
from workflow_cache.admin.reach import reachable
from workflow_cache.ui.command import register_ui
from workflow_cache.units import human_bytes

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
_MOMENT = "%Y-%m-%d %H:%M:%S"


class CliError(Exception):
    """Bad input the user can fix: printed as one line and exit code 2."""


def _version() -> str:
    try:
        return version("workflow-cache")
    except PackageNotFoundError:
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="workflow-cache",
        description="Run Kestra-style flows with cached working directories.",
    )
    parser.add_argument("--version", action="version", version=f"workflow-cache {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run a flow file", description="Run a flow file.")
    run.add_argument("flow", type=Path, help="the flow's YAML file")
    run.add_argument(
        "--input",
        dest="input_pairs",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a value for one of the flow's inputs (repeatable)",
    )
    run.add_argument(
        "--inputs",
        dest="inputs_file",
        type=Path,
        metavar="FILE.json",
        help="input values from a JSON object; --input wins over it",
    )
    _storage_option(run)
    run.add_argument("--namespace", help="run the flow under this namespace instead of its own")
    run.add_argument(
        "--outputs",
        type=Path,
        help="folder for outputFiles ($WORKFLOW_CACHE_OUTPUTS, else ./outputs)",
    )
    run.add_argument("--work-dir", type=Path, help="where fresh task folders are made (temp dir)")
    run.add_argument(
        "--broker",
        default=None,  # filled from the settings model
        help="send the flow to Celery workers on this broker ($WORKFLOW_CACHE_BROKER)",
    )
    run.add_argument(
        "--result-backend",
        default=None,  # filled from the settings model
        help="Celery result backend (default: the broker, when it is Redis)",
    )
    run.add_argument("--queue", help="Celery queue to send the flow to")
    run.add_argument("--timeout", type=float, help="seconds to wait for a worker's answer")
    run.add_argument(
        "--secrets-file",
        type=Path,
        metavar="FILE",
        help="SECRET_<NAME>=<base64> lines for secret('NAME') "
        "($WORKFLOW_CACHE_SECRETS_FILE; the SECRET_* variables are read too)",
    )
    run.add_argument("--json", action="store_true", help="print the summary as JSON")

    cache = commands.add_parser("cache", help="list, show or delete cached folders")
    actions = cache.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="list entries, optionally under a key prefix")
    listing.add_argument("prefix", nargs="?", default="")
    _storage_option(listing)
    listing.add_argument("--json", action="store_true", help="print entries as JSON")
    show = actions.add_parser("show", help="show one entry")
    show.add_argument("name")
    _storage_option(show)
    show.add_argument("--json", action="store_true", help="print the entry as JSON")
    delete = actions.add_parser("delete", help="delete one entry, a prefix, or everything")
    delete.add_argument("name", nargs="?")
    delete.add_argument("--prefix", help="delete every entry whose key starts with this")
    delete.add_argument("--all", action="store_true", help="delete every entry (with --yes)")
    delete.add_argument("--yes", action="store_true", help="do not ask before --all")
    _storage_option(delete)
    register_prune(actions, _storage_option)
    register_steps(commands)
    register_runs(commands)
    register_ui(commands)
    return parser


def _storage_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--storage",
        default=None,  # filled from the settings model
        help="where archives live: a folder or fsspec URL such as s3://bucket/prefix "
        "($WORKFLOW_CACHE_STORAGE, default: the local cache folder)",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Console-script entry point; returns the exit code."""
    args = build_parser().parse_args(argv)
    out = Console(highlight=False, soft_wrap=True)
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    try:
        _apply_settings(args, err)
        if args.command == "run":
            return _run(args, out, err)
        if args.command == "steps":
            from workflow_cache.admin.commands import run_steps

            return run_steps(args, out, err)
        if args.command == "runs":
            from workflow_cache.admin.commands import run_runs

            return run_runs(args, out, err)
        if args.command == "ui":
            from workflow_cache.ui.command import run_ui

            return run_ui(args, out, err)
        if args.action == "prune":
            from workflow_cache.admin.commands import run_prune

            return run_prune(args, out)
        return _cache(args, out)
    except KeyboardInterrupt:
        err.print("interrupted")
        return 130
    except Exception as exc:
        message = _user_message(exc)
        if message is None:
            raise
        err.print(f"[bold red]error:[/] {escape(message)}", markup=True, highlight=False)
        return EXIT_USAGE


def _apply_settings(args: argparse.Namespace, err: Console) -> None:
    """Read the process's settings now and fill options left out from them; misspelt
    variables warn here, and a bad value stops the command before it starts."""
    from workflow_cache.settings import SettingsWarning, reload

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", SettingsWarning)
        settings = reload()
    for warning in caught:
        if issubclass(warning.category, SettingsWarning):
            err.print(f"[yellow]warning:[/] {warning.message}", markup=True)
    for name, setting in (
        ("broker", "broker"),
        ("result_backend", "result_backend"),
        ("storage", "storage"),
        ("work_dir", "work_root"),
        ("outputs", "outputs"),
    ):
        if hasattr(args, name) and getattr(args, name) is None:
            setattr(args, name, getattr(settings, setting))
    if hasattr(args, "outputs") and args.outputs is None:
        args.outputs = Path("outputs")


def _user_message(exc: Exception) -> str | None:
    """The one-line message for errors a user can act on; ``None`` for real bugs."""
    from pydantic import ValidationError

    from workflow_cache.admin.commands import UsageError
    from workflow_cache.duration import DurationError
    from workflow_cache.settings import error_line
    from workflow_cache.workdir.patterns import PatternError
    from workflow_cache.workdir.spec import FlowError

    if isinstance(exc, FlowError | CliError | PatternError | DurationError | UsageError):
        return str(exc)
    if isinstance(exc, ValidationError):  # a WORKFLOW_CACHE_* variable with a bad value
        return error_line(exc)
    if isinstance(exc, OSError | ValueError | TimeoutError | ConnectionError):
        return f"{type(exc).__name__}: {exc}"
    module = type(exc).__module__
    if module.startswith(("kombu", "celery", "redis", "fsspec", "botocore", "s3fs")):
        return f"{type(exc).__name__}: {exc}"
    return None


def _run(args: argparse.Namespace, out: Console, err: Console) -> int:
    from workflow_cache.workdir.inputs import load_inputs_file, parse_assignments
    from workflow_cache.workdir.loader import load_flow

    flow = load_flow(args.flow)
    args.inputs = load_inputs_file(args.inputs_file) if args.inputs_file else {}
    args.inputs.update(parse_assignments(args.input_pairs))
    run = _run_remote if args.broker else _run_local
    summary = run(args, flow, out, err)
    if args.json:
        out.print_json(json.dumps(summary.to_dict()))
    else:
        _summary_table(summary, out)
    return EXIT_OK if summary.ok else EXIT_FAILED


def _run_local(args: argparse.Namespace, flow: Any, out: Console, err: Console) -> Any:
    from workflow_cache.workdir.filecache import CacheRestoreWarning, FileCache
    from workflow_cache.workdir.flow import run_flow

    warnings.simplefilter("ignore", CacheRestoreWarning)  # already logged as one line
    if args.namespace:
        flow = flow.model_copy(update={"namespace": args.namespace})
    colors = {"stdout": "", "stderr": "yellow"}

    def sink(task_id: str, stream: str, line: str) -> None:
        progress.stop()  # a bar never stays on screen between script lines
        style = colors.get(stream, "")
        err.print(f"[dim]\\[{task_id}][/] ", end="", markup=True)
        err.print(line, style=style or None, markup=False, highlight=False)

    progress = _SlowProgress(err)
    cache = FileCache(args.storage, progress_factory=progress.track)
    try:
        return run_flow(
            flow,
            cache=cache,
            work_root=args.work_dir,
            outputs_dir=args.outputs,
            sink=sink,
            inputs=args.inputs,
            secrets_file=args.secrets_file,
        )
    finally:
        progress.stop()


class _SlowProgress:
    """Rich progress bars for archive work, shown only once it has taken a moment.

    Quick restores stay silent; a venv of hundreds of megabytes shows a bar.
    """

    def __init__(self, console: Console, delay: float = 0.5) -> None:
        self._console = console
        self._delay = delay
        self._progress: Progress | None = None

    def track(self, label: str, total: int | None) -> Callable[[int], None]:
        started = time.monotonic()
        done = 0
        task: TaskID | None = None
        shown_on: Progress | None = None

        def advance(delta: int) -> None:
            nonlocal done, task, shown_on
            done += delta
            if total is not None and done >= total:
                self.stop()  # finished: cleared before anything else is printed
                return
            if time.monotonic() - started < self._delay:
                return
            bars = self._bars()
            if task is None or shown_on is not bars:  # first time, or after a stop
                task, shown_on = bars.add_task(label, total=total, completed=done), bars
            else:
                bars.update(task, completed=done)

        return advance

    def _bars(self) -> Progress:
        if self._progress is None:
            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeElapsedColumn(),
                console=self._console,
                transient=True,
            )
            self._progress.start()
        return self._progress

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def _run_remote(args: argparse.Namespace, flow: Any, out: Console, err: Console) -> Any:
    from workflow_cache.workdir.celery_tasks import make_app, submit_flow

    if args.secrets_file is not None:
        raise CliError(
            "--secrets-file is read where the flow runs: give the workers "
            "$WORKFLOW_CACHE_SECRETS_FILE (or SECRET_<NAME> variables) instead"
        )
    app = make_app(args.broker, args.result_backend)
    if app.conf.result_backend is None:
        raise CliError(
            "the broker is not Redis, so give --result-backend (or $WORKFLOW_CACHE_RESULT_BACKEND) "
            "for the summary to come back"
        )
    text = args.flow.read_text(encoding="utf-8")
    reachable(app)
    err.print(
        "[dim]running on the workers: script output goes to the worker's log, "
        "not to this terminal[/]",
        markup=True,
    )
    try:
        return submit_flow(
            text,
            app=app,
            source=str(args.flow),
            storage=args.storage,
            namespace=args.namespace,
            queue=args.queue,
            timeout=args.timeout,
            inputs=args.inputs,
        )
    except RuntimeError as exc:  # Celery gave up reconnecting to its result store
        raise CliError(f"lost the connection to the broker or result backend: {exc}") from None


def _summary_table(summary: Any, out: Console) -> None:
    title = f"{summary.namespace}.{summary.flow_id}: " + ("success" if summary.ok else "FAILED")
    if summary.worker:
        title += f" on {summary.worker}"
    table = Table(title=title, title_justify="left")
    names = [f"  {task.task_id}" if task.parent else task.task_id for task in summary.tasks]
    table.add_column("task", no_wrap=True, min_width=max(map(len, names), default=4))
    for column in ("status", "cache", "files", "size", "restore", "run", "save"):
        table.add_column(
            column, justify="left" if column in {"status", "cache"} else "right", no_wrap=True
        )
    for task, name in zip(summary.tasks, names, strict=True):
        cached = task.cache if task.kind == "WorkingDirectory" else ""
        files = task.restored_files or task.saved_files
        size = task.restored_bytes or task.saved_bytes
        status = {"failed": "[red]failed[/]", "warning": "[yellow]warning[/]"}.get(
            task.status, task.status
        )
        table.add_row(
            name,
            status,
            cached,
            str(files) if files else "",
            _size(size) if size else "",
            _seconds(task.restore_seconds),
            _seconds(task.run_seconds),
            _seconds(task.save_seconds) if task.saved else "",
        )
    if not out.is_terminal:  # a file or a pipe: the table at its full width, nothing cut
        needed = Measurement.get(out, out.options.update(width=1 << 12), table).maximum
        out.width = max(out.width, needed)
    out.print(table)
    for task in summary.tasks:
        for warning in task.warnings:
            out.print(f"[yellow]warning[/] {task.task_id}: {warning}")
        if task.error:
            out.print(f"[red]error[/] {task.task_id}: {task.error}")
        elif task.kind == "WorkingDirectory" and task.cache != "off":
            out.print(
                f"{task.task_id}: cache {task.cache} ({task.cache_reason}); {task.save_reason}"
            )
        for path in task.outputs:
            out.print(f"{task.task_id}: output {path}")
        for name, value in task.vars.items():
            out.print(f"{task.task_id}: output {name} = {json.dumps(value)}", markup=False)
    out.print(f"total {summary.seconds:.2f}s")


def _seconds(value: float) -> str:
    return f"{value:.2f}s" if value else ""


def _size(count: float) -> str:
    """SI units, as the progress bars count (``workflow_cache.units``)."""
    return human_bytes(count)


def _cache(args: argparse.Namespace, out: Console) -> int:
    from workflow_cache.workdir.filecache import FileCache

    cache = FileCache(args.storage)
    if args.action == "list":
        entries = cache.entries(args.prefix)
        if args.json:
            out.print_json(json.dumps([_entry_dict(entry) for entry in entries]))
            return EXIT_OK
        table = Table(title=f"{len(entries)} cached folder(s)", title_justify="left")
        table.add_column("name", overflow="fold")
        table.add_column("created (UTC)", no_wrap=True)
        table.add_column("expires (UTC)", no_wrap=True)
        for column in ("files", "size", "archive"):
            table.add_column(column, justify="right", no_wrap=True)
        for entry in entries:
            expires = entry.expires_at
            table.add_row(
                entry.name,
                entry.created_at.astimezone(UTC).strftime(_MOMENT),
                "no ttl" if expires is None else expires.astimezone(UTC).strftime(_MOMENT),
                str(entry.files),
                _size(entry.bytes),
                _size(entry.size),
            )
        out.print(table)
        return EXIT_OK
    if args.action == "show":
        shown = cache.show(args.name)
        if shown is None:
            raise CliError(f"no cache entry named {args.name!r} (see 'workflow-cache cache list')")
        data = _entry_dict(shown)
        if args.json:
            out.print_json(json.dumps(data))
        else:
            for name, value in data.items():
                if name == "expires_at" and value is None:
                    value = "no ttl was recorded when it was saved"
                if value is None:
                    continue  # e.g. no content key
                if isinstance(value, list):
                    value = ", ".join(str(v) for v in value)
                elif name in ("bytes", "archive_size"):
                    value = f"{_size(value)} ({value} B)"
                out.print(f"{name}: {value}", markup=False)
        return EXIT_OK
    chosen = sum(bool(choice) for choice in (args.name, args.prefix, args.all))
    if chosen != 1:
        raise CliError("cache delete needs exactly one of NAME, --prefix PREFIX or --all")
    if args.all:
        _confirm_all(args, cache.storage.url)
        count = cache.clear()
    elif args.prefix:
        count = cache.delete_prefix(args.prefix)
    elif not cache.delete_name(args.name):
        raise CliError(f"no cache entry named {args.name!r} (see 'workflow-cache cache list')")
    else:
        count = 1
    out.print(f"deleted {count} entr{'y' if count == 1 else 'ies'}")
    return EXIT_OK


def _confirm_all(args: argparse.Namespace, where: str) -> None:
    """``--all`` deletes every entry: it needs ``--yes``, or a "y" typed at a terminal."""
    if args.yes:
        return
    if not sys.stdin.isatty():
        raise CliError("cache delete --all removes every entry; add --yes to confirm")
    answer = input(f"delete every cache entry in {where}? [y/N] ")
    if answer.strip().lower() not in ("y", "yes"):
        raise CliError("nothing deleted")


def _entry_dict(entry: Any) -> dict[str, Any]:
    from workflow_cache.workdir.filters import iso_duration

    expires = entry.expires_at
    return {
        "name": entry.name,
        "namespace": entry.key.namespace,
        "flow": entry.key.flow,
        "task": entry.key.task,
        "content": entry.key.content,
        "created_at": entry.created_at.isoformat(),
        "ttl": None if entry.ttl is None else iso_duration(entry.ttl),
        "expires_at": None if expires is None else expires.isoformat(),
        "files": entry.files,
        "bytes": entry.bytes,
        "archive_size": entry.size,
        # the folder's own bookkeeping file is saved too, but is not a user pattern
        "patterns": [p for p in entry.patterns if not p.startswith(".workflow-cache/")],
    }


if __name__ == "__main__":
    sys.exit(main())
