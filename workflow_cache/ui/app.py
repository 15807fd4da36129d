"""The dashboard's pages, JSON API and actions, as one Starlette app.

Each page renders the same dictionary its ``/api/...`` twin returns (``reads.py``);
the page's script polls that API and rewrites the page's bound cells as text. A
button that changes something is a link to a confirmation page whose form posts
the action with a CSRF token; ``read_only`` hides the links and refuses the posts.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import parse_qs, quote, urlencode

import jinja2
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from workflow_cache.cache.clients import redact
from workflow_cache.distributed.run_states import STATES
from workflow_cache.ui import formats
from workflow_cache.ui.config import UiConfig
from workflow_cache.ui.reads import Reads
from workflow_cache.ui.security import (
    CSRF_COOKIE,
    SESSION_COOKIE,
    Guard,
    cookies,
    csrf_ok,
    csrf_token,
    new_csrf_cookie,
    session_value,
)

__all__ = ["ACTIONS", "create_app"]

log = logging.getLogger(__name__)

MAX_FORM_BYTES = 64 * 1024


def _fmt(value: Any, kind: str = "") -> str:
    """One bound cell's text; ``static/ui.js`` has the same table (``FORMATS``)."""
    if kind == "time":
        return formats.moment(value)
    if kind == "seconds":
        return formats.seconds(value)
    if kind == "bytes":
        return formats.size(value)
    if kind == "ratio":
        return "" if not isinstance(value, int | float) else f"{value * 100:.1f} %"
    if kind == "executed":
        return {True: "executed", False: "hit"}.get(value, "") if isinstance(value, bool) else ""
    if kind == "yes":
        return "yes" if value is True else ""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _pick(item: Any, path: str) -> Any:
    """The value at a dotted path (``"."``: the item), as ``pick`` in ``static/ui.js``."""
    if path == ".":
        return item
    value = item
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def _templates() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("workflow_cache.ui", "templates"),
        autoescape=True,  # every template, whatever its name: all data is untrusted
        undefined=jinja2.StrictUndefined,
    )
    env.filters["fmt"] = _fmt
    env.globals["pick"] = _pick
    env.filters["q"] = lambda value: quote(str(value), safe="")
    return env


class Action:
    """One change a user may make: what it acts on, its question, and how it is done."""

    def __init__(
        self,
        field: str,
        question: str,
        button: str,
        do: Callable[[Reads, str], bool],
        after: Callable[[str, bool], str],
    ) -> None:
        self.field = field
        self.question = question
        self.button = button
        self.do = do
        self.after = after


ACTIONS = {
    "cancel-run": Action(
        "run_id",
        "Cancel run {target}? It ends with an error outcome saying it was cancelled.",
        "Yes, cancel the run",
        lambda reads, target: reads.cancel(target),
        lambda target, done: f"/runs/{quote(target, safe='')}",
    ),
    "delete-step": Action(
        "key",
        "Delete the stored outcome of step {target}? The next run of the step executes it.",
        "Yes, delete the outcome",
        lambda reads, target: reads.delete_step(target),
        lambda target, done: "/steps",
    ),
    "delete-archive": Action(
        "name",
        "Delete the archive entry {target}? The next run of its task saves it again.",
        "Yes, delete the entry",
        lambda reads, target: reads.delete_archive(target),
        lambda target, done: "/archives",
    ),
}


def create_app(config: UiConfig, reads: Reads | None = None) -> Starlette:
    """The dashboard for ``config`` (``reads``: an existing view of the same data)."""
    view = reads or Reads(config)
    env = _templates()
    secret = secrets.token_bytes(32)
    where = f"{config.namespace} on {redact(config.redis_url)}"

    def page(
        request: Request,
        template: str,
        status: int = 200,
        api: str = "",
        **values: Any,
    ) -> HTMLResponse:
        csrf_cookie = cookies(request.scope).get(CSRF_COOKIE)
        fresh = csrf_cookie is None
        if csrf_cookie is None:
            csrf_cookie = new_csrf_cookie()
        html = env.get_template(template).render(
            where=where,
            read_only=config.read_only,
            signed_in=config.token is not None,
            api=api,
            poll=config.poll_seconds,
            csrf=csrf_token(secret, csrf_cookie),
            **values,
        )
        response = HTMLResponse(html, status_code=status)
        if fresh:
            response.set_cookie(CSRF_COOKIE, csrf_cookie, httponly=True, samesite="strict")
        return response

    def message(request: Request, status: int, title: str, text: str) -> HTMLResponse:
        return page(request, "message.html", status=status, title=title, text=text)

    def guarded(
        endpoint: Callable[[Request], Response],
    ) -> Callable[[Request], Response]:
        """Redis or storage out of reach is a 503 with one line, never a traceback."""

        def call(request: Request) -> Response:
            try:
                return endpoint(request)
            except Exception as exc:
                line = _line(exc)
                log.warning("dashboard %s: %s", request.url.path, line)
                if request.url.path.startswith("/api/"):
                    return JSONResponse({"error": line}, status_code=503)
                return message(request, 503, "Unavailable", line)

        return call

    def json_or_404(data: Any, what: str) -> Response:
        if data is None:
            return JSONResponse({"error": f"no such {what}"}, status_code=404)
        return JSONResponse(data)

    # ------------------------------------------------------------------ reads

    def runs_query(request: Request) -> dict[str, Any]:
        q = request.query_params
        since = q.get("since")
        try:
            since_value = float(since) if since else None
        except ValueError:
            since_value = None
        return {
            "state": q.get("state") if q.get("state") in STATES else None,
            "task": q.get("task") or None,
            "since": since_value,
            "limit": _int(q.get("limit")),
            "cursor": q.get("cursor") or None,
        }

    @guarded
    def api_overview(request: Request) -> Response:
        return JSONResponse(overview())

    def overview() -> dict[str, Any]:
        data = view.overview()
        counts = data["runs"]
        data["runs"] = [{"state": s, "count": int(counts.get(s, 0))} for s in STATES]
        data["runs_total"] = sum(row["count"] for row in data["runs"])
        statuses = data["steps"]["by_status"]
        data["steps"] = {
            **data["steps"],
            "by_status": [{"status": s, "count": n} for s, n in statuses.items()],
        }
        return data

    @guarded
    def overview_page(request: Request) -> Response:
        return page(
            request, "overview.html", api="/api/overview", title="Overview", data=overview()
        )

    @guarded
    def api_runs(request: Request) -> Response:
        return JSONResponse(view.runs(**runs_query(request)))

    @guarded
    def runs_page(request: Request) -> Response:
        query = runs_query(request)
        data = view.runs(**query)
        kept = {k: v for k, v in request.query_params.items() if k != "cursor" and v}
        next_query = urlencode({**kept, "cursor": data["next_cursor"] or ""})
        return page(
            request,
            "runs.html",
            api=f"/api/runs?{urlencode(request.query_params)}",
            title="Runs",
            data=data,
            states=STATES,
            state=query["state"] or "",
            task=query["task"] or "",
            next_query=next_query,
        )

    @guarded
    def api_run(request: Request) -> Response:
        return json_or_404(view.run(request.path_params["run_id"]), "run")

    @guarded
    def run_page(request: Request) -> Response:
        run_id = request.path_params["run_id"]
        data = view.run(run_id)
        if data is None:
            return message(request, 404, "No such run", f"No run {run_id!r} in {where}.")
        return page(
            request,
            "run.html",
            api=f"/api/runs/{quote(run_id, safe='')}",
            title=f"Run {run_id}",
            data=data,
            run_id=run_id,
        )

    @guarded
    def api_steps(request: Request) -> Response:
        q = request.query_params
        return JSONResponse(
            view.steps(q.get("prefix", ""), q.get("cursor", "0"), _int(q.get("limit")))
        )

    @guarded
    def steps_page(request: Request) -> Response:
        q = request.query_params
        prefix = q.get("prefix", "")
        data = view.steps(prefix, q.get("cursor", "0"), _int(q.get("limit")))
        next_query = urlencode({"prefix": prefix, "cursor": data["next_cursor"] or ""})
        return page(
            request,
            "steps.html",
            api=f"/api/steps?{urlencode(q)}",
            title="Steps",
            data=data,
            prefix=prefix,
            next_query=next_query,
        )

    @guarded
    def api_step(request: Request) -> Response:
        return json_or_404(view.step(request.path_params["key"]), "step outcome")

    @guarded
    def step_page(request: Request) -> Response:
        key = request.path_params["key"]
        data = view.step(key)
        if data is None:
            return message(request, 404, "No such step", f"No outcome or claim for {key!r}.")
        return page(
            request,
            "step.html",
            api=f"/api/steps/{quote(key, safe='')}",
            title=f"Step {key}",
            data=data,
            key=key,
        )

    @guarded
    def api_archives(request: Request) -> Response:
        q = request.query_params
        return JSONResponse(
            view.archives(q.get("prefix", ""), _int(q.get("offset")) or 0, _int(q.get("limit")))
        )

    @guarded
    def archives_page(request: Request) -> Response:
        q = request.query_params
        prefix = q.get("prefix", "")
        data = view.archives(prefix, _int(q.get("offset")) or 0, _int(q.get("limit")))
        next_query = urlencode({"prefix": prefix, "offset": data["next_offset"] or 0})
        return page(
            request,
            "archives.html",
            api=f"/api/archives?{urlencode(q)}",
            title="Archives",
            data=data,
            prefix=prefix,
            next_query=next_query,
        )

    @guarded
    def api_archive(request: Request) -> Response:
        return json_or_404(view.archive(request.path_params["name"]), "archive entry")

    @guarded
    def archive_page(request: Request) -> Response:
        name = request.path_params["name"]
        data = view.archive(name)
        if data is None:
            return message(request, 404, "No such entry", f"No readable archive entry {name!r}.")
        return page(
            request,
            "archive.html",
            api=f"/api/archives/{quote(name, safe='')}",
            title=f"Archive {name}",
            data=data,
            name=name,
        )

    # ------------------------------------------------------------------ actions

    def confirm_page(request: Request) -> Response:
        action = ACTIONS.get(request.path_params["action"])
        if action is None:
            return message(request, 404, "No such action", "This dashboard has no such action.")
        if config.read_only:
            return message(request, 403, "Read-only", "This dashboard is read-only.")
        target = request.query_params.get(action.field, "")
        if not target:
            return message(request, 400, "Nothing chosen", f"The action needs {action.field}.")
        return page(
            request,
            "confirm.html",
            title="Confirm",
            action=request.path_params["action"],
            field=action.field,
            target=target,
            question=action.question.format(target="\u201c" + target + "\u201d"),
            button=action.button,
            back=action.after(target, False),
        )

    async def act(request: Request) -> Response:
        action = ACTIONS.get(request.path_params["action"])
        if action is None:
            return message(request, 404, "No such action", "This dashboard has no such action.")
        if config.read_only:
            return message(request, 403, "Read-only", "This dashboard is read-only.")
        form = await _form(request)
        if form is None:
            return message(request, 413, "Too large", "The form was too large.")
        if not csrf_ok(secret, cookies(request.scope).get(CSRF_COOKIE), form.get("csrf")):
            return message(
                request, 403, "Refused", "The form's CSRF token is missing or wrong: reload it."
            )
        target = form.get(action.field, "")
        if not target or form.get("confirm") != "yes":
            return message(request, 400, "Not confirmed", "The action was not confirmed.")
        try:
            done = await run_in_threadpool(action.do, view, target)
        except Exception as exc:
            line = _line(exc)
            log.warning("dashboard action %s on %r: %s", request.url.path, target, line)
            return message(request, 503, "Failed", line)
        log.info("dashboard action %s on %r: %s", request.url.path, target, done)
        if not done:
            return message(
                request,
                409,
                "Nothing done",
                f"{target!r} was not changed: it is finished already or no longer there.",
            )
        return RedirectResponse(action.after(target, True), status_code=303)

    # ------------------------------------------------------------------ sign-in

    def login_form(request: Request) -> Response:
        if config.token is None:
            return RedirectResponse("/", status_code=303)
        return page(request, "login.html", title="Sign in", failed=False)

    async def login(request: Request) -> Response:
        if config.token is None:
            return RedirectResponse("/", status_code=303)
        form = await _form(request) or {}
        given = form.get("token", "")
        if not secrets.compare_digest(given.encode(), config.token.encode()):
            return page(request, "login.html", status=401, title="Sign in", failed=True)
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(
            SESSION_COOKIE,
            session_value(config.token),
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    routes = [
        Route("/", overview_page),
        Route("/runs", runs_page),
        Route("/runs/{run_id:path}", run_page),
        Route("/steps", steps_page),
        Route("/steps/{key:path}", step_page),
        Route("/archives", archives_page),
        Route("/archives/{name:path}", archive_page),
        Route("/actions/{action}", confirm_page, methods=["GET"]),
        Route("/actions/{action}", act, methods=["POST"]),
        Route("/login", login_form, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/api/overview", api_overview),
        Route("/api/runs", api_runs),
        Route("/api/runs/{run_id:path}", api_run),
        Route("/api/steps", api_steps),
        Route("/api/steps/{key:path}", api_step),
        Route("/api/archives", api_archives),
        Route("/api/archives/{name:path}", api_archive),
        Mount("/static", StaticFiles(packages=[("workflow_cache.ui", "static")]), name="static"),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        view.close()

    app = Starlette(
        routes=routes,
        middleware=[Middleware(Guard, token=config.token)],
        lifespan=lifespan,
    )
    app.state.reads = view
    return app


async def _form(request: Request) -> dict[str, str] | None:
    """A url-encoded form's first value per field; None when it is over the size cap."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            return None
    fields = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
    return {name: values[0] for name, values in fields.items()}


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text else None
    except ValueError:
        return None


def _line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__
