"""The overview, step and archive pages in the browser, and their JSON twins."""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import pytest

from workflow_cache.workdir.entrykey import EntryKey
from workflow_cache.workdir.filecache import FileCache

expect = pytest.importorskip("playwright.sync_api").expect


def _json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def test_the_overview_counts_runs_per_state_and_refreshes_them(fleet, dashboard, page) -> None:
    before = {row["state"]: row["count"] for row in _json(f"{dashboard}/api/overview")["runs"]}
    page.goto(dashboard)
    suspended = page.locator("#runs-by-state tbody tr").filter(
        has=page.get_by_role("link", name="suspended", exact=True)
    )
    expect(suspended.locator("td").nth(1)).to_have_text(str(before["suspended"]))
    run_id = fleet.module.stuck.delay(uuid.uuid4().hex[:8]).id
    fleet.wait_state(run_id, "suspended")
    # the count comes from the index on every refresh: the page shows the new run by itself
    expect(suspended.locator("td").nth(1)).to_have_text(str(before["suspended"] + 1))
    suspended.get_by_role("link").click()
    page.wait_for_url(f"{dashboard}/runs?state=suspended")
    expect(page.get_by_role("link", name=run_id)).to_be_visible()


def test_a_step_outcome_is_listed_under_its_prefix_and_shown(fleet, dashboard, page) -> None:
    prefix = f"listed-{uuid.uuid4().hex[:8]}"
    fleet.cache.set(f"{prefix}:a", {"rows": 3})
    fleet.cache.set(f"{prefix}:b", [1, 2])
    seen: set[str] = set()
    cursor = "0"
    while True:  # one SCAN per page: follow the cursor as the page's Next link does
        query = urllib.parse.urlencode({"prefix": prefix, "cursor": cursor, "limit": 200})
        data = _json(f"{dashboard}/api/steps?{query}")
        seen.update(step["key"] for step in data["steps"])
        cursor = data["next_cursor"]
        if cursor is None:
            break
    assert seen == {f"{prefix}:a", f"{prefix}:b"}
    page.goto(f"{dashboard}/steps/{urllib.parse.quote(prefix + ':a', safe='')}")
    expect(page.locator("#step-status")).to_have_text("ok")
    expect(page.locator("#value")).to_have_text(json.dumps({"rows": 3}, indent=2))


def test_archives_are_listed_shown_and_deleted(fleet, dashboard, page, tmp_path: Path) -> None:
    files = FileCache(fleet.env["WORKFLOW_CACHE_STORAGE"])
    flow = f"flow{uuid.uuid4().hex[:6]}"
    (tmp_path / "node_modules").mkdir()
    (tmp_path / "node_modules" / "a.js").write_text("x" * 5000)
    saved = files.save(EntryKey("ui", flow, "build"), tmp_path, ["node_modules/**"])
    assert saved.saved
    name = f"ui/{flow}/build"

    page.goto(f"{dashboard}/archives?prefix=ui/{flow}")
    row = page.locator("#archives tbody tr").filter(has=page.get_by_role("link", name=name))
    expect(row.locator("td").nth(2)).to_have_text("1")  # files
    expect(row.locator("td").nth(3)).to_have_text("5.0 kB")  # file bytes
    row.get_by_role("link", name=name).click()
    page.wait_for_url(f"{dashboard}/archives/{urllib.parse.quote(name, safe='')}")
    expect(page.locator("ul[data-rows=patterns] li")).to_have_text(["node_modules/**"])
    page.locator("#delete").click()
    assert files.show(name) is not None
    page.locator("#confirm").click()
    page.wait_for_url(f"{dashboard}/archives")
    assert files.show(name) is None
