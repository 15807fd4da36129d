"""The ``steps`` and ``cache prune`` commands of the CLI: parsers and what they print.

``workflow-cache steps`` manages step outcomes, in Redis (``--redis URL`` and
``--namespace``, defaulting to ``WORKFLOW_CACHE_CACHE_URL`` / ``_BROKER`` and
``_NAMESPACE``) or in the local cache (``--local``, the default without Redis).
Every listing takes ``--json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from rich.console import Console
from rich.table import Table

from workflow_cache.units import human_bytes, parse_size

__all__ = ["register_prune", "register_steps", "run_prune", "run_steps"]


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
