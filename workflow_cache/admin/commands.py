"""The ``steps``, ``runs`` and ``cache prune`` commands of the CLI: parsers and output.

``workflow-cache steps`` manages step outcomes, in Redis (``--redis URL`` and
``--namespace``, defaulting to ``WORKFLOW_CACHE_CACHE_URL`` / ``_BROKER`` and
``_NAMESPACE``) or in the local cache (``--local``, the default without Redis).
``workflow-cache runs`` lists, shows and cancels workflow runs from the runs index, with
the same Redis options. Every listing takes ``--json``. Text read from Redis is printed
with control characters escaped and never as rich markup: a hostile value shows as text.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from rich.console import Console
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from workflow_cache.units import human_bytes, parse_size

__all__ = [
    "register_prune",
    "register_runs",
    "register_steps",
    "run_prune",
    "run_runs",
    "run_steps",
]


class UsageError(ValueError):
    """Bad input: printed as one line, exit status 2."""


# ----------------------------------------------------------------------------- parsers


def register_steps(commands: Any) -> None:
    steps = commands.add_parser(
        "steps",
        help="list, show, delete or clear stored step outcomes",
        description="Manage stored step outcomes in Redis or in the local cache.",
    )
    actions = steps.add_subparsers(dest="action", required=True, metavar="ACTION")

    listing = actions.add_parser("list", help="list outcomes whose key starts with PREFIX")
    listing.add_argument("prefix", nargs="?", default="")
    listing.add_argument("--limit", type=int, help="one page of about this many keys")
    listing.add_argument("--cursor", default="0", help="where the previous page ended")
    _where(listing, json_output=True)

    show = actions.add_parser("show", help="show one outcome, its ttl and any running claim")
    show.add_argument("key")
    _where(show, json_output=True)

    delete = actions.add_parser("delete", help="delete one outcome or every one under --prefix")
    delete.add_argument("key", nargs="?")
    delete.add_argument("--prefix", help="delete every outcome whose key starts with this")
    _where(delete)

    clear = actions.add_parser("clear", help="delete every outcome of the namespace")
    clear.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    _where(clear)

    stats = actions.add_parser("stats", help="counts, bytes and the Redis memory policy")
    stats.add_argument("prefix", nargs="?", default="")
    _where(stats, json_output=True)


def _where(parser: argparse.ArgumentParser, *, json_output: bool = False) -> None:
    parser.add_argument(
        "--redis",
        metavar="URL",
        help="Redis of the outcomes ($WORKFLOW_CACHE_CACHE_URL, else a redis:// "
        "$WORKFLOW_CACHE_BROKER)",
    )
    parser.add_argument("--namespace", help="namespace in Redis ($WORKFLOW_CACHE_NAMESPACE)")
    parser.add_argument(
        "--local",
        nargs="?",
        const="",
        metavar="DIR",
        help="the local cache instead of Redis (default folder: $WORKFLOW_CACHE_HOME/steps)",
    )
    if json_output:
        parser.add_argument("--json", action="store_true", help="print JSON")


def register_prune(actions: Any, storage_option: Any) -> None:
    prune = actions.add_parser(
        "prune",
        help="remove expired entries, orphaned archives and entries over a size cap",
        description="Remove old entries, orphaned archives, and the least recently "
        "restored entries while storage is over --max-size.",
    )
    prune.add_argument("--max-age", help="remove entries older than this (ISO 8601, e.g. P30D)")
    prune.add_argument(
        "--max-size",
        help="keep archives under this total, e.g. 10GB ($WORKFLOW_CACHE_MAX_STORAGE_BYTES)",
    )
    prune.add_argument(
        "--grace",
        default="PT1H",
        help="archives no entry names are removed once this old (PT1H): a save may be in flight",
    )
    prune.add_argument("--dry-run", action="store_true", help="report, remove nothing")
    prune.add_argument("--json", action="store_true", help="print the report as JSON")
    storage_option(prune)


# ----------------------------------------------------------------------------- steps


def _open(args: argparse.Namespace) -> Any:
    from workflow_cache.admin.outcomes import LocalOutcomes, RedisOutcomes
    from workflow_cache.settings import current

    settings = current()
    url = args.redis
    if url is None and args.local is None:
        url = settings.configured_cache
    if url is not None and args.local is None:
        from workflow_cache.cache.redis import RedisCache

        namespace = args.namespace or settings.namespace
        return RedisOutcomes(RedisCache(url, namespace=namespace, socket_timeout=3.0))
    if args.namespace:
        raise UsageError("--namespace applies to Redis; the local cache has no namespaces")
    from workflow_cache.cache.local import LocalCache

    return LocalOutcomes(LocalCache(args.local or None))


def run_steps(args: argparse.Namespace, out: Console, err: Console) -> int:
    outcomes = _open(args)
    try:
        return _STEP_ACTIONS[args.action](outcomes, args, out, err)
    finally:
        outcomes.close()


def _list(outcomes: Any, args: argparse.Namespace, out: Console, err: Console) -> int:
    if args.limit is not None:
        if args.limit < 1:
            raise UsageError(f"--limit must be at least 1, got {args.limit}")
        page = outcomes.page(args.prefix, args.cursor, args.limit)
        entries, cursor = page.entries, page.cursor
    else:
        entries, cursor = list(outcomes.all(args.prefix)), "0"
    if args.json:
        out.print_json(json.dumps({"entries": [e.to_dict() for e in entries], "cursor": cursor}))
        return 0
    table = Table(title=f"{len(entries)} step outcome(s) in {outcomes.where}", title_justify="left")
    table.add_column("key", overflow="fold")
    for column in ("status", "age", "ttl", "size"):
        table.add_column(column, justify="left" if column == "status" else "right", no_wrap=True)
    for e in entries:
        table.add_row(
            e.key,
            e.status,
            _duration(e.age_seconds),
            "never"
            if e.ttl_seconds is None and e.status in ("ok", "err")
            else _duration(e.ttl_seconds),
            human_bytes(e.size) if e.size else "",
        )
    out.print(table)
    if cursor != "0":
        out.print(f"more: --cursor {cursor}")
    return 0


def _show(outcomes: Any, args: argparse.Namespace, out: Console, err: Console) -> int:
    info = outcomes.show(args.key)
    if info is None:
        raise UsageError(f"no stored outcome or claim for key {args.key!r} in {outcomes.where}")
    data = info.to_dict(full=True)
    if args.json:
        out.print_json(json.dumps(data, default=str))
        return 0
    for name, value in data.items():
        if value is None or value is False:
            continue
        if name == "created_at":
            value = datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        elif name in ("age_seconds", "ttl_seconds", "lease_seconds"):
            value = _duration(value)
        elif name == "size":
            value = human_bytes(value)
        elif not isinstance(value, str):
            value = json.dumps(value)
        out.print(f"{name}: {value}", markup=False)
    if info.ttl_seconds is None and info.status in ("ok", "err"):
        out.print("ttl: never expires")
    return 0


def _delete(outcomes: Any, args: argparse.Namespace, out: Console, err: Console) -> int:
    if bool(args.key) == bool(args.prefix):
        raise UsageError("steps delete needs exactly one of KEY or --prefix PREFIX")
    if args.prefix:
        count = outcomes.delete_prefix(args.prefix)
    elif outcomes.delete(args.key):
        count = 1
    else:
        raise UsageError(f"no stored outcome for key {args.key!r} in {outcomes.where}")
    out.print(f"deleted {count} outcome{'' if count == 1 else 's'}")
    return 0


def _clear(outcomes: Any, args: argparse.Namespace, out: Console, err: Console) -> int:
    if not args.yes:
        if not sys.stdin.isatty():
            raise UsageError(f"steps clear deletes every outcome in {outcomes.where}; add --yes")
        answer = err.input(f"delete every outcome in {outcomes.where}? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            out.print("nothing deleted")
            return 1
    count = outcomes.clear()
    out.print(f"deleted {count} key{'' if count == 1 else 's'}")
    return 0


def _stats(outcomes: Any, args: argparse.Namespace, out: Console, err: Console) -> int:
    data = outcomes.stats(args.prefix).to_dict()
    if args.json:
        out.print_json(json.dumps(data))
        return 0
    for name, value in data.items():
        if name in ("bytes", "disk_bytes", "redis_used_memory", "redis_maxmemory") and value:
            value = human_bytes(value)
        out.print(f"{name}: {value}", markup=False)
    return 0


_STEP_ACTIONS = {
    "list": _list,
    "show": _show,
    "delete": _delete,
    "clear": _clear,
    "stats": _stats,
}


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.1f}s"


# ----------------------------------------------------------------------------- prune


def run_prune(args: argparse.Namespace, out: Console) -> int:
    from workflow_cache.admin.archives import prune
    from workflow_cache.duration import to_timedelta
    from workflow_cache.settings import current
    from workflow_cache.workdir.filecache import FileCache

    max_age = to_timedelta(args.max_age, name="--max-age") if args.max_age else None
    grace = to_timedelta(args.grace, name="--grace")
    max_bytes = (
        parse_size(args.max_size, name="--max-size")
        if args.max_size
        else current().max_storage_bytes
    )
    started = time.perf_counter()
    report = prune(
        FileCache(args.storage),
        max_age=max_age,
        max_bytes=max_bytes,
        grace=grace or timedelta(0),
        dry_run=args.dry_run,
    )
    if args.json:
        out.print_json(json.dumps(report.to_dict()))
        return 0
    verb = "would remove" if args.dry_run else "removed"
    out.print(
        f"{verb} {len(report.expired)} expired, {len(report.evicted)} over the size cap, "
        f"{len(report.corrupt)} corrupt, {len(report.orphans)} orphaned object(s): "
        f"{human_bytes(report.freed_bytes)}; kept {report.kept_entries} entr"
        f"{'y' if report.kept_entries == 1 else 'ies'} ({human_bytes(report.kept_bytes)}) "
        f"in {time.perf_counter() - started:.2f}s"
    )
    for label, names in (("expired", report.expired), ("evicted", report.evicted)):
        for name in names:
            out.print(f"{label}: {name}", markup=False)
    return 0


# ----------------------------------------------------------------------------- runs


def register_runs(commands: Any) -> None:
    from workflow_cache.distributed.run_states import STATES

    runs = commands.add_parser(
        "runs",
        help="list, show or cancel workflow runs",
        description="See workflow runs from the runs index in Redis, and cancel them.",
    )
    actions = runs.add_subparsers(dest="action", required=True, metavar="ACTION")

    listing = actions.add_parser("list", help="runs newest first, one page at a time")
    listing.add_argument("--state", choices=STATES, help="only runs in this state")
    listing.add_argument("--task", help="only runs of this workflow task (its Celery name)")
    listing.add_argument(
        "--since",
        metavar="WHEN",
        help="only runs started since (with --state alone: that entered it since): "
        "an ISO 8601 time (2026-01-31T12:00Z) or a duration ago (1h, 30m, PT1H, P1D)",
    )
    listing.add_argument("--limit", type=int, default=50, help="runs per page (50)")
    listing.add_argument("--cursor", help="where the previous page ended (printed after it)")
    _redis_where(listing)

    show = actions.add_parser("show", help="one run: its steps in order, waits and outcome")
    show.add_argument("run_id", metavar="RUN_ID")
    _redis_where(show)

    cancel = actions.add_parser("cancel", help="end a live run as cancelled")
    cancel.add_argument("run_id", metavar="RUN_ID")
    cancel.add_argument("--reason", help="said in the run's error outcome")
    cancel.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    _redis_where(cancel)


def _redis_where(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--redis",
        metavar="URL",
        help="Redis of the runs ($WORKFLOW_CACHE_CACHE_URL, else a redis:// "
        "$WORKFLOW_CACHE_BROKER, else the default broker)",
    )
    parser.add_argument("--namespace", help="namespace in Redis ($WORKFLOW_CACHE_NAMESPACE)")
    parser.add_argument("--json", action="store_true", help="print JSON")


def run_runs(args: argparse.Namespace, out: Console, err: Console) -> int:
    from workflow_cache.cache.redis import RedisCache
    from workflow_cache.settings import current

    settings = current()
    cache = RedisCache(
        args.redis or settings.cache,
        namespace=args.namespace or settings.namespace,
        socket_timeout=3.0,
    )
    try:
        return _RUN_ACTIONS[args.action](cache, args, out, err)
    finally:
        cache.close()


def _runs_list(cache: Any, args: argparse.Namespace, out: Console, err: Console) -> int:
    from workflow_cache.admin.runs import MAX_LIMIT, list_runs

    if not 1 <= args.limit <= MAX_LIMIT:
        raise UsageError(f"--limit must be between 1 and {MAX_LIMIT}, got {args.limit}")
    since = parse_since(args.since) if args.since else None
    try:
        page = list_runs(
            cache,
            state=args.state,
            task=args.task,
            since=since,
            limit=args.limit,
            cursor=args.cursor,
        )
    except ValueError as exc:  # a cursor that is not one of ours
        raise UsageError(str(exc)) from None
    if args.json:
        out.print_json(json.dumps(page.to_dict()))
        return 0
    table = Table(title=f"{len(page.runs)} run(s) in {_safe(repr(cache))}", title_justify="left")
    table.add_column("run", overflow="fold")
    table.add_column("task", overflow="fold")
    for column in ("state", "started (UTC)", "in state", "replays", "batch"):
        table.add_column(column, justify="left" if column == "state" else "right", no_wrap=True)
    now = time.time()
    for run in page.runs:
        state = run.state if run.outcome_status is None else f"{run.state} ({run.outcome_status})"
        table.add_row(
            Text(_safe(run.run_id)),
            Text(_safe(run.task)),
            Text(state, style=_STATE_STYLE.get(run.outcome_status or run.state, "")),
            _moment(run.started_at),
            _duration(None if run.updated_at is None else now - run.updated_at),
            str(run.replays),
            str(run.batch),
        )
    _print_wide(out, table)
    if page.next_cursor is not None:
        out.print(Text(f"more: --cursor {page.next_cursor}"))
    return 0


def _runs_show(cache: Any, args: argparse.Namespace, out: Console, err: Console) -> int:
    from workflow_cache.admin.runs import show_run

    detail = show_run(cache, args.run_id)
    if detail is None:
        raise UsageError(
            f"no run {_safe(args.run_id)!r} in {cache!r} (see 'workflow-cache runs list')"
        )
    if args.json:
        out.print_json(json.dumps(detail.to_dict()))
        return 0
    run = detail.summary
    fields: list[tuple[str, str | None]] = [
        ("run", run.run_id),
        ("task", run.task or "?"),
        ("state", run.state),
        ("started", _moment(run.started_at) + " UTC" if run.started_at else None),
        ("in state since", _moment(run.updated_at) + " UTC" if run.updated_at else None),
        ("replays", str(run.replays)),
        ("batch", str(run.batch)),
        ("held by", detail.lease_holder),
        ("waiting on", ", ".join(detail.waiting_on_keys) or None),
        ("waiting for event", detail.waiting_for_event),
        (
            "sleeping until",
            _moment(detail.sleeping_until) + " UTC" if detail.sleeping_until else None,
        ),
        ("outcome", run.outcome_status),
        ("outcome text", detail.outcome_text),
    ]
    for name, value in fields:
        if value is not None:
            out.print(Text(f"{name}: {_safe(value)}"))
    table = Table(title=f"{len(detail.steps)} step(s), in order", title_justify="left")
    table.add_column("#", justify="right", no_wrap=True)
    table.add_column("task", overflow="fold")
    table.add_column("key", overflow="fold")
    for column in ("status", "hit/executed", "duration", "worker"):
        table.add_column(column, no_wrap=column != "worker")
    for step in detail.steps:
        table.add_row(
            str(step.position),
            Text(_safe(step.task)),
            Text(_safe(step.key)),
            Text(step.status, style=_STATE_STYLE.get(step.status, "")),
            {True: "executed", False: "hit", None: ""}[step.executed],
            "" if step.duration is None else f"{step.duration:.3f}s",
            Text(_safe(step.worker or "")),
        )
    if detail.steps:
        _print_wide(out, table)
    else:
        out.print("no steps recorded yet")
    return 0


def _runs_cancel(cache: Any, args: argparse.Namespace, out: Console, err: Console) -> int:
    from workflow_cache.admin.runs import show_run
    from workflow_cache.distributed.cancel import cancel_run
    from workflow_cache.distributed.run_states import LIVE

    detail = show_run(cache, args.run_id)
    shown = _safe(args.run_id)
    if detail is None:
        raise UsageError(f"no run {shown!r} in {cache!r} (see 'workflow-cache runs list')")
    if detail.summary.state not in LIVE:
        raise UsageError(f"run {shown!r} is {detail.summary.state}: nothing to cancel")
    if not args.yes:
        if not sys.stdin.isatty():
            raise UsageError(f"runs cancel ends run {shown!r}; add --yes to confirm")
        answer = err.input(Text(f"cancel run {shown} ({_safe(detail.summary.task)})? [y/N] "))
        if answer.strip().lower() not in ("y", "yes"):
            out.print("nothing cancelled")
            return 1
    cancelled = cancel_run(cache, args.run_id, args.reason)
    if args.json:
        out.print_json(json.dumps({"run_id": args.run_id, "cancelled": cancelled}))
    elif cancelled:
        out.print(Text(f"cancelled run {shown}"))
    else:
        out.print(Text(f"run {shown} finished meanwhile: nothing cancelled"))
    return 0 if cancelled else 1


_RUN_ACTIONS = {"list": _runs_list, "show": _runs_show, "cancel": _runs_cancel}
_STATE_STYLE = {
    "err": "red",
    "cancelled": "red",
    "ok": "green",
    "running": "cyan",
    "suspended": "yellow",
    "waiting": "yellow",
    "sleeping": "yellow",
    "missing": "dim",
}
_SHORT = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_SHORT_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_since(text: str, *, now: float | None = None) -> float:
    """``--since``: an ISO 8601 time, or a duration before now (``1h``, ``PT1H``); epoch s."""
    from workflow_cache.duration import to_seconds

    now = time.time() if now is None else now
    value = text.strip()
    short = _SHORT.match(value.lower())
    if short:
        seconds = to_seconds(float(short.group(1)) * _SHORT_UNITS[short.group(2)], name="--since")
        return now - (seconds or 0.0)
    if value[:1] in ("P", "p"):
        return now - (to_seconds(value, name="--since") or 0.0)
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise UsageError(
            f"--since {text!r}: expected an ISO 8601 time (2026-01-31T12:00Z) or a "
            "duration ago (1h, 30m, PT1H, P1D)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _print_wide(out: Console, table: Table) -> None:
    """A table at its full width when printed to a file or a pipe: ids are not cut."""
    if not out.is_terminal:
        needed = Measurement.get(out, out.options.update(width=1 << 12), table).maximum
        out.width = max(out.width, needed)
    out.print(table)


def _moment(epoch: float | None) -> str:
    return "" if epoch is None else datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _safe(text: str) -> str:
    """Text from Redis made inert for a terminal: control characters (ANSI escapes among
    them) and other unprintables shown as escapes; it is printed as ``Text``, never markup."""
    if text.isprintable():
        return text
    return "".join(
        ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text
    )
