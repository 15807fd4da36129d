"""The ``workflow-cache ui`` subcommand: its options, the bind check, and serving the app.

The dashboard binds 127.0.0.1 unless told otherwise; any other address needs
``WORKFLOW_CACHE_UI_TOKEN``, or the command refuses with one line and exit status 2.
"""

from __future__ import annotations

import argparse
import socket
from typing import Any

from rich.console import Console
from rich.markup import escape

from workflow_cache.cache.clients import redact
from workflow_cache.ui.config import UiConfig, UnsafeBind

__all__ = ["register_ui", "run_ui"]

EXIT_USAGE = 2


def register_ui(commands: Any) -> None:
    ui = commands.add_parser(
        "ui",
        help="serve the web dashboard of runs, step outcomes and archives",
        description="Serve a web dashboard of runs, step outcomes and archives "
        "(needs the ui extra: pip install 'workflow-cache[ui]').",
    )
    ui.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    ui.add_argument("--port", type=int, default=8089, help="port to bind (8089; 0: any free)")
    ui.add_argument(
        "--read-only", action="store_true", help="hide and refuse cancel and delete actions"
    )
    ui.add_argument(
        "--redis",
        metavar="URL",
        help="Redis of runs and outcomes ($WORKFLOW_CACHE_CACHE_URL, else a redis:// "
        "$WORKFLOW_CACHE_BROKER)",
    )
    ui.add_argument("--namespace", help="namespace in Redis ($WORKFLOW_CACHE_NAMESPACE)")
    ui.add_argument(
        "--storage",
        default=None,  # filled from the settings model
        help="where archives live ($WORKFLOW_CACHE_STORAGE, default: the local cache folder)",
    )
    ui.add_argument(
        "--metrics",
        metavar="URL",
        action="append",
        default=[],
        help="a worker's /metrics endpoint whose counters the overview adds up (repeatable)",
    )


def run_ui(args: argparse.Namespace, out: Console, err: Console) -> int:
    from workflow_cache.settings import current

    settings = current()
    token = settings.ui_token.get_secret_value() if settings.ui_token else None
    config = UiConfig(
        redis_url=args.redis or settings.cache,
        namespace=args.namespace or settings.namespace,
        storage=args.storage,
        host=args.host,
        port=args.port,
        read_only=args.read_only,
        token=token,
        metrics_urls=tuple(args.metrics),
    )
    try:
        config.check_bind()
    except UnsafeBind as exc:
        err.print(f"[bold red]error:[/] {escape(str(exc))}", markup=True, highlight=False)
        return EXIT_USAGE
    try:
        import uvicorn

        from workflow_cache.ui.app import create_app
    except ImportError as exc:
        err.print(
            f"[bold red]error:[/] the dashboard needs the ui extra ({escape(exc.name or '?')} "
            "is missing): pip install 'workflow-cache[ui]'",
            markup=True,
            highlight=False,
        )
        return EXIT_USAGE
    app = create_app(config)
    family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # accepted connections inherit it: a response's head and body leave at once, instead of
    # the body waiting out the client's delayed ACK (40 ms per request on a kept-alive link)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((config.host.strip("[]"), config.port))
        sock.listen(2048)  # connections wait in the backlog from the moment the URL is printed
    except OSError as exc:
        sock.close()
        err.print(
            f"[bold red]error:[/] cannot bind {escape(config.host)}:{config.port}: "
            f"{escape(exc.strerror or str(exc))}",
            markup=True,
            highlight=False,
        )
        return EXIT_USAGE
    port = sock.getsockname()[1]
    shown = f"[{config.host.strip('[]')}]" if family == socket.AF_INET6 else config.host
    out.print(
        f"dashboard on http://{shown}:{port}/ for namespace {config.namespace!r} on "
        f"{redact(config.redis_url)}" + (" (read-only)" if config.read_only else ""),
        markup=False,
        highlight=False,
    )
    out.file.flush()
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    server.run(sockets=[sock])
    return 0
