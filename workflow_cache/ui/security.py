"""The dashboard's guard: who may ask, what the browser may run, and forged form posts.

Each response also says how long the app took to start it (``Server-Timing: app``),
the figure ``benchmarks/bench_ui.py`` reads.

Every response carries a Content-Security-Policy that allows scripts from the
dashboard's own origin only (no inline script, no ``eval``), so a stored value that
slipped past escaping still could not run. With a token configured, each request
must carry it, as ``Authorization: Bearer <token>`` (scripts, curl) or as the
session cookie that ``POST /login`` sets (browsers); without one the dashboard
serves loopback only and answers only requests addressed to a loopback name, so a
web page that rebinds its own host name to 127.0.0.1 cannot read it. Forms that
change anything carry a CSRF token derived from a per-browser cookie.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Awaitable, Callable, MutableMapping
from http.cookies import SimpleCookie
from typing import Any

from workflow_cache.ui.config import is_loopback

__all__ = [
    "CSP",
    "CSRF_COOKIE",
    "SESSION_COOKIE",
    "Guard",
    "csrf_ok",
    "csrf_token",
    "new_csrf_cookie",
    "session_value",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SESSION_COOKIE = "wfc_ui_session"
CSRF_COOKIE = "wfc_ui_csrf"

_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
]
_UNAUTHORIZED_PAGE = (
    b"<!doctype html><meta charset=utf-8><title>401 Unauthorized</title>"
    b"<p>This dashboard needs its token: <a href=/login>sign in</a>.</p>"
)


def session_value(token: str) -> str:
    """The cookie a signed-in browser carries: derived from the token, not the token."""
    return hmac.new(token.encode(), b"workflow-cache ui session", hashlib.sha256).hexdigest()


def new_csrf_cookie() -> str:
    return secrets.token_urlsafe(24)


def csrf_token(secret: bytes, cookie: str) -> str:
    """The token a form must send back: bound to this browser's CSRF cookie."""
    return hmac.new(secret, cookie.encode(), hashlib.sha256).hexdigest()


def csrf_ok(secret: bytes, cookie: str | None, token: str | None) -> bool:
    if not cookie or not token:
        return False
    return hmac.compare_digest(csrf_token(secret, cookie), token)


def cookies(scope: Scope) -> dict[str, str]:
    jar: SimpleCookie = SimpleCookie()
    for name, value in scope.get("headers", []):
        if name == b"cookie":
            try:
                jar.load(value.decode("latin-1"))
            except Exception:  # a malformed Cookie header counts as no cookie
                continue
    return {key: morsel.value for key, morsel in jar.items()}


def _header(scope: Scope, wanted: bytes) -> str | None:
    for name, value in scope.get("headers", []):
        if name == wanted:
            return str(value.decode("latin-1"))
    return None


class Guard:
    """ASGI middleware: security headers on every response, then the token and host checks."""

    def __init__(self, app: App, *, token: str | None) -> None:
        self.app = app
        self.token = token
        self.session = session_value(token) if token else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = str(scope.get("path", ""))
        static = path.startswith("/static/")
        started = time.perf_counter()

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.extend(_HEADERS)
                spent = (time.perf_counter() - started) * 1000
                headers.append((b"server-timing", f"app;dur={spent:.2f}".encode()))
                if not static:
                    headers.append((b"cache-control", b"no-store"))
                message["headers"] = headers
            await send(message)

        refusal = self.refusal(scope, path)
        if refusal is not None:
            status, content_type, body = refusal
            await send_with_headers(
                {
                    "type": "http.response.start",
                    "status": status,
                    "headers": [
                        (b"content-type", content_type),
                        (b"content-length", str(len(body)).encode()),
                    ],
                }
            )
            await send_with_headers({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send_with_headers)

    def refusal(self, scope: Scope, path: str) -> tuple[int, bytes, bytes] | None:
        """``(status, content type, body)`` of a refused request; None lets it through."""
        if self.token is None:
            host = (_header(scope, b"host") or "").rpartition(":")
            name = host[0] if host[1] and not host[2].endswith("]") else "".join(host)
            if not is_loopback(name):
                return 403, b"text/plain; charset=utf-8", b"this dashboard answers loopback only"
            return None
        if path == "/login" or path.startswith("/static/"):  # the sign-in form and assets
            return None
        if self.authorized(scope):
            return None
        if path.startswith("/api/"):
            return 401, b"application/json", b'{"error": "unauthorized"}'
        return 401, b"text/html; charset=utf-8", _UNAUTHORIZED_PAGE

    def authorized(self, scope: Scope) -> bool:
        assert self.token is not None and self.session is not None
        given = _header(scope, b"authorization") or ""
        scheme, _, value = given.partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(
            value.strip().encode(), self.token.encode()
        ):
            return True
        cookie = cookies(scope).get(SESSION_COOKIE, "")
        return hmac.compare_digest(cookie.encode(), self.session.encode())
