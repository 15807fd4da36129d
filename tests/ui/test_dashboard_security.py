"""Who may reach the dashboard: ``workflow-cache ui`` run as a real subprocess.

Beyond loopback it refuses to start without ``WORKFLOW_CACHE_UI_TOKEN`` (one line, exit
status 2); with a token, a request without it gets 401, in a script and in the browser
until the user signs in; a loopback dashboard answers only loopback host names.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "ui-token-for-the-tests-0123456789"


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WORKFLOW_CACHE_")}
    return {**env, **extra}


def _status(url: str, **headers: str) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


@contextmanager
def ui_process(tmp_path: Path, *args: str, **env: str) -> Iterator[str]:
    """``workflow-cache ui --port 0 ARGS`` until the block ends; yields its loopback URL."""
    log = tmp_path / "ui.out"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "workflow_cache.cli", "ui", "--port", "0", *args],
            cwd=ROOT,
            env=_env(**env),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        found = wait_until(
            lambda: (
                proc.poll() is None
                and re.search(r"http://[^/\s]+:(\d+)/", log.read_text(errors="replace"))
            ),
            lambda: f"the dashboard to say where it serves: {log.read_text(errors='replace')}",
        )
        yield f"http://127.0.0.1:{found.group(1)}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_a_non_loopback_bind_without_a_token_refuses_to_start(redis_url: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "workflow_cache.cli", "ui", "--host", "0.0.0.0", "--port", "0"],
        cwd=ROOT,
        env=_env(WORKFLOW_CACHE_CACHE_URL=redis_url),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "WORKFLOW_CACHE_UI_TOKEN" in lines[0], done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""


def test_with_a_token_requests_without_it_get_401(redis_url: str, tmp_path: Path) -> None:
    with ui_process(
        tmp_path,
        "--host",
        "0.0.0.0",
        WORKFLOW_CACHE_CACHE_URL=redis_url,
        WORKFLOW_CACHE_UI_TOKEN=TOKEN,
    ) as url:
        for path in ("/", "/runs", "/api/overview", "/api/runs", "/steps/x"):
            assert _status(url + path)[0] == 401, path
            assert _status(url + path, Authorization="Bearer wrong")[0] == 401, path
        status, body = _status(url + "/api/runs", Authorization=f"Bearer {TOKEN}")
        assert status == 200 and b'"runs"' in body
        assert _status(url + "/static/ui.js")[0] == 200  # the assets hold no data


def test_the_browser_signs_in_with_the_token(redis_url: str, tmp_path: Path, page) -> None:
    expect = pytest.importorskip("playwright.sync_api").expect
    with ui_process(
        tmp_path, WORKFLOW_CACHE_CACHE_URL=redis_url, WORKFLOW_CACHE_UI_TOKEN=TOKEN
    ) as url:
        response = page.goto(f"{url}/runs")
        assert response is not None and response.status == 401
        page.goto(f"{url}/login")
        page.locator("input[name=token]").fill("not the token")
        page.locator("button[type=submit]").click()
        expect(page.locator(".error")).to_contain_text("not this dashboard's token")
        page.locator("input[name=token]").fill(TOKEN)
        page.locator("button[type=submit]").click()
        page.wait_for_url(f"{url}/")
        expect(page.locator("h1")).to_have_text("Overview")
        response = page.goto(f"{url}/runs")
        assert response is not None and response.status == 200
        cookies = page.context.cookies()
        assert TOKEN not in str(cookies)  # the session cookie is derived, not the token


def test_a_loopback_dashboard_answers_loopback_names_only(redis_url: str, tmp_path: Path) -> None:
    with ui_process(tmp_path, WORKFLOW_CACHE_CACHE_URL=redis_url) as url:
        assert _status(url + "/api/overview")[0] == 200
        port = url.rpartition(":")[2]
        assert _status(url + "/api/overview", Host=f"localhost:{port}")[0] == 200
        # a page of another site whose name now resolves to 127.0.0.1 (DNS rebinding)
        assert _status(url + "/api/overview", Host=f"attacker.example:{port}")[0] == 403
