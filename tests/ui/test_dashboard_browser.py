"""The dashboard in a real browser: the system Chromium driven by Playwright, against real
Redis and real ``celery worker`` subprocesses. Pages are watched with Playwright's
``expect`` (it retries until the page shows the text), never with sleeps."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import pytest

from tests.waiting import wait_until
from tests.workers import wait_ready
from workflow_cache.admin.runs import show_run

expect = pytest.importorskip("playwright.sync_api").expect

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOT = ROOT / "docs" / "dashboard.png"
LONG = 60_000  # ms: a busy machine may take a while to run a step and resume a run


def _q(text: str) -> str:
    return urllib.parse.quote(text, safe="")


def _get(url: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def _post(url: str, fields: dict[str, str], **headers: str) -> tuple[int, bytes]:
    body = urllib.parse.urlencode(fields).encode()
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def _run_row(page, run_id: str):
    return page.locator("#runs tbody tr").filter(has=page.get_by_role("link", name=run_id))


def test_finished_suspended_and_failed_runs_are_listed_with_their_states(
    fleet, dashboard, page
) -> None:
    tag = uuid.uuid4().hex[:8]
    finished = fleet.module.finishes.delay(f"{tag}-ok").id
    failed = fleet.module.fails.delay(f"{tag}-bad").id
    suspended = fleet.module.stuck.delay(f"{tag}-wait").id
    fleet.wait_state(finished, "done")
    fleet.wait_state(failed, "done")
    fleet.wait_state(suspended, "suspended")

    page.goto(f"{dashboard}/runs")
    for run_id, state, outcome, task in (
        (finished, "done", "ok", "ui.finishes"),
        (failed, "done", "err", "ui.fails"),
        (suspended, "suspended", "", "ui.stuck"),
    ):
        row = _run_row(page, run_id)
        expect(row).to_have_count(1)
        cells = row.locator("td")
        expect(cells.nth(1)).to_have_text(task)
        expect(cells.nth(2)).to_have_text(state)
        expect(cells.nth(3)).to_have_text(outcome)
    page.goto(f"{dashboard}/runs?state=suspended")
    expect(_run_row(page, suspended)).to_have_count(1)
    expect(_run_row(page, finished)).to_have_count(0)

    page.goto(f"{dashboard}/runs")
    expect(_run_row(page, failed)).to_have_count(1)
    page.locator("body[data-refreshed]").wait_for()  # the screenshot shows a refreshed page
    SCREENSHOT.parent.mkdir(exist_ok=True)
    page.locator("body").screenshot(path=str(SCREENSHOT))
    assert SCREENSHOT.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_suspended_run_shows_its_key_and_turns_finished_without_a_reload(
    fleet, dashboard, page
) -> None:
    tag = uuid.uuid4().hex[:8]
    run_id = fleet.module.waits.delay(tag).id
    fleet.wait_state(run_id, "suspended")

    page.goto(f"{dashboard}/runs")
    page.get_by_role("link", name=run_id).click()
    page.wait_for_url(f"{dashboard}/runs/{run_id}")
    expect(page.locator("#run-state")).to_have_text("suspended")
    expect(page.locator("#waits li")).to_have_text([f"{tag}:later"])
    expect(page.locator("#cancel")).to_be_visible()
    page.evaluate("window.sameDocument = true")  # gone if the page were loaded again

    later = fleet.worker(f"ui-later-{tag}", fleet.env["UI_TESTS_LATER_QUEUE"])
    try:
        wait_ready(fleet.module.app, [later])
        expect(page.locator("#run-state")).to_have_text("done", timeout=LONG)
    finally:
        later.stop()
    expect(page.locator("#outcome")).to_have_text(json.dumps(f"{tag} later"))
    expect(page.locator("#waits li")).to_have_count(0)
    expect(page.locator("#cancel")).to_be_hidden()
    expect(page.locator("#steps tbody tr td:nth-child(4)")).to_have_text(["ok"])
    assert page.evaluate("window.sameDocument") is True


def test_cancel_in_the_browser_cancels_the_run(fleet, dashboard, page) -> None:
    run_id = fleet.module.stuck.delay(uuid.uuid4().hex[:8]).id
    fleet.wait_state(run_id, "suspended")

    page.goto(f"{dashboard}/runs/{_q(run_id)}")
    page.locator("#cancel").click()
    expect(page.locator(".question")).to_contain_text(run_id)
    assert fleet.state(run_id) == "suspended"  # asking is not doing
    page.locator("#confirm").click()
    page.wait_for_url(f"{dashboard}/runs/{run_id}")
    expect(page.locator("#run-state")).to_have_text("cancelled")
    detail = show_run(fleet.cache, run_id)
    assert detail is not None and detail.summary.state == "cancelled"
    assert detail.summary.outcome_status == "err"
    assert "cancelled from the dashboard" in (detail.outcome_text or "")
    expect(page.locator("#cancel")).to_be_hidden()


HOSTILE = '<img src=x onerror="window.pwned = 1; alert(1)"><script>window.pwned = 2</script>'


def test_a_hostile_step_value_is_shown_as_text_and_runs_nothing(
    fleet, dashboard, page, dialogs
) -> None:
    key = f"hostile-{uuid.uuid4().hex[:8]}-<b onmouseover=alert(3)>"
    fleet.cache.set(key, HOSTILE)

    page.goto(f"{dashboard}/steps/{_q(key)}")
    expect(page.locator("h1 code")).to_have_text(key)
    expect(page.locator("#value")).to_have_text(json.dumps(HOSTILE, indent=2))
    page.locator("body[data-refreshed]").wait_for()  # the script rewrote the page once
    expect(page.locator("#value")).to_have_text(json.dumps(HOSTILE, indent=2))
    assert page.locator("main img, main script, main b").count() == 0
    page.locator("h1").hover()
    assert page.evaluate("window.pwned") is None
    assert dialogs == []


def test_the_pages_forbid_inline_script_and_frames(dashboard) -> None:
    status, headers, body = _get(f"{dashboard}/")
    assert status == 200
    policy = headers["content-security-policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy
    assert "frame-ancestors 'none'" in policy
    assert headers["x-content-type-options"] == "nosniff"
    assert b"<script>" not in body and b"onclick" not in body
    assert b'<script src="/static/ui.js" defer></script>' in body


def test_a_post_without_its_csrf_token_is_refused(fleet, dashboard) -> None:
    key = f"kept-{uuid.uuid4().hex[:8]}"
    fleet.cache.set(key, 1)
    for fields, cookie in (
        ({"key": key, "confirm": "yes"}, ""),
        ({"key": key, "confirm": "yes", "csrf": "0" * 64}, "wfc_ui_csrf=made-up"),
    ):
        status, _ = _post(f"{dashboard}/actions/delete-step", fields, Cookie=cookie)
        assert status == 403
    assert fleet.cache.get(key) is not None


def test_delete_in_the_browser_asks_then_deletes_the_outcome(fleet, dashboard, page) -> None:
    key = f"doomed-{uuid.uuid4().hex[:8]}"
    fleet.cache.set(key, {"n": 1})
    page.goto(f"{dashboard}/steps/{_q(key)}")
    page.locator("#delete").click()
    expect(page.locator(".question")).to_contain_text(key)
    assert fleet.cache.get(key) is not None
    page.locator("#confirm").click()
    page.wait_for_url(f"{dashboard}/steps")
    assert fleet.cache.get(key) is None


def test_read_only_hides_the_buttons_and_refuses_the_actions(
    fleet, read_only_dashboard, page
) -> None:
    run_id = fleet.module.stuck.delay(uuid.uuid4().hex[:8]).id
    fleet.wait_state(run_id, "suspended")
    key = f"ro-{uuid.uuid4().hex[:8]}"
    fleet.cache.set(key, 1)

    page.goto(f"{read_only_dashboard}/runs/{_q(run_id)}")
    expect(page.locator("#run-state")).to_have_text("suspended")
    expect(page.locator(".badge")).to_have_text("read-only")
    assert page.locator("#cancel").count() == 0
    page.goto(f"{read_only_dashboard}/steps/{_q(key)}")
    expect(page.locator("#value")).to_have_text("1")
    assert page.locator("#delete").count() == 0
    status, _, _ = _get(f"{read_only_dashboard}/actions/cancel-run?run_id={_q(run_id)}")
    assert status == 403
    status, _ = _post(
        f"{read_only_dashboard}/actions/cancel-run", {"run_id": run_id, "confirm": "yes"}
    )
    assert status == 403
    assert fleet.state(run_id) == "suspended"


def test_the_runs_cli_json_agrees_with_the_api(fleet, dashboard) -> None:
    for tag in ("a", "b"):
        fleet.wait_state(fleet.module.finishes.delay(f"{uuid.uuid4().hex[:6]}-{tag}").id, "done")
    command = [
        sys.executable,
        "-m",
        "workflow_cache.cli",
        "runs",
        "list",
        "--json",
        "--limit",
        "50",
        "--redis",
        fleet.env["WORKFLOW_CACHE_BROKER"],
        "--namespace",
        fleet.env["WORKFLOW_CACHE_NAMESPACE"],
    ]

    def agree() -> bool:
        listed = subprocess.run(command, capture_output=True, text=True, check=True, cwd=ROOT)
        _, _, served = _get(f"{dashboard}/api/runs?limit=50")
        cli, api = json.loads(listed.stdout), json.loads(served)
        return cli == api and len(api["runs"]) >= 2

    # A live run may change state between the two reads; the two agree once it has.
    wait_until(agree, "runs list --json and /api/runs to list the same runs")
