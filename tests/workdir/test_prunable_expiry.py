"""An entry records the ttl it was saved under: ``cache prune`` removes it once that ttl has
passed and counts it as expired, ``cache list``/``show`` say when it expires, and the flow's
current ttl still decides at restore time."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.workdir.flowkit import Cli, run_text
from workflow_cache import settings
from workflow_cache.admin.archives import prune
from workflow_cache.workdir import entrydoc
from workflow_cache.workdir.entrykey import POINTER
from workflow_cache.workdir.filecache import FileCache


def flow(ttl: str | None) -> str:
    ttl_line = f"\n      ttl: {ttl}" if ttl else ""
    return f"""id: expiry
namespace: dev
tasks:
  - id: wd
    type: io.kestra.plugin.core.flow.WorkingDirectory
    cache:
      patterns: [deps/**]{ttl_line}
    tasks:
      - id: install
        type: io.kestra.plugin.scripts.shell.Commands
        commands: ["test -d deps || {{ mkdir deps; echo built > deps/x; }}"]
"""


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2024, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def test_prune_removes_an_entry_whose_recorded_ttl_has_passed(tmp_path: Path) -> None:
    clock = Clock()
    cache = FileCache(str(tmp_path / "storage"), clock=clock)
    summary, _ = run_text(flow("PT1S"), tmp_path, cache=cache)
    assert summary.task("wd").saved
    (entry,) = cache.entries()
    assert entry.ttl == timedelta(seconds=1)
    assert entry.expires_at == clock.now + timedelta(seconds=1)

    report = prune(cache, now=clock.now)
    assert report.expired == [] and report.kept_entries == 1, "not yet"
    report = prune(cache, now=clock.now + timedelta(seconds=1))
    assert report.expired == [entry.name] and report.kept_entries == 0
    assert report.freed_bytes == entry.size
    assert cache.entries() == []


def test_the_flows_current_ttl_still_decides_at_restore_time(tmp_path: Path) -> None:
    clock = Clock()
    cache = FileCache(str(tmp_path / "storage"), clock=clock)
    run_text(flow("PT1S"), tmp_path, cache=cache)
    clock.now += timedelta(minutes=10)
    summary, _ = run_text(flow("PT1H"), tmp_path, cache=cache)
    assert summary.task("wd").cache == "hit", "the flow now says one hour: still valid"
    (entry,) = cache.entries()
    assert entry.ttl == timedelta(seconds=1), "a restore does not rewrite the entry"
    assert prune(cache, now=clock.now, dry_run=True).expired == [entry.name]


def test_entries_saved_without_a_ttl_are_kept_unless_max_age_says_otherwise(
    tmp_path: Path,
) -> None:
    clock = Clock()
    cache = FileCache(str(tmp_path / "storage"), clock=clock)
    run_text(flow(None), tmp_path, cache=cache)
    (entry,) = cache.entries()
    assert entry.ttl is None and entry.expires_at is None
    later = clock.now + timedelta(days=3650)
    assert prune(cache, now=later).expired == []
    assert prune(cache, now=later, max_age=timedelta(days=30)).expired == [entry.name]


@pytest.fixture
def signing_key(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("WORKFLOW_CACHE_SIGNING_KEY", "a-signing-key-of-some-length")
    settings.reload()
    yield
    monkeypatch.delenv("WORKFLOW_CACHE_SIGNING_KEY")
    settings.reload()


def test_the_recorded_ttl_is_signed_and_older_signed_entries_still_verify(
    tmp_path: Path, signing_key: None
) -> None:
    cache = FileCache(str(tmp_path / "storage"))
    run_text(flow("PT1H"), tmp_path, cache=cache)
    (entry,) = cache.entries()
    pointer = tmp_path / "storage" / entry.name / POINTER
    document = json.loads(pointer.read_text())
    assert document["ttl"] == 3600.0 and document["sig"]

    stretched = {**document, "ttl": 3600.0 * 24 * 365}
    with pytest.raises(entrydoc.EntryError, match="signature"):
        entrydoc.parse(entry.name, json.dumps(stretched).encode())

    older = {name: value for name, value in document.items() if name not in ("ttl", "sig")}
    resigned = json.loads(entrydoc.build(entry.name, older))
    assert "ttl" not in resigned
    parsed = entrydoc.parse(entry.name, json.dumps(resigned).encode())
    assert parsed.ttl is None, "an entry written before ttls were recorded still verifies"


def test_cli_lists_shows_and_prunes_by_the_recorded_ttl(tmp_path: Path) -> None:
    cli = Cli(tmp_path)
    storage = str(tmp_path / "storage")
    path = cli.write("expiry.yaml", flow("PT1S"))
    done = cli("run", path, "--storage", storage)
    assert done.returncode == 0, done.stderr

    (listed,) = json.loads(cli("cache", "list", "--storage", storage, "--json").stdout)
    assert listed["ttl"] == "PT1S"
    created = datetime.fromisoformat(listed["created_at"])
    expires = datetime.fromisoformat(listed["expires_at"])
    assert expires == created + timedelta(seconds=1)
    table = cli("cache", "list", "--storage", storage).stdout
    assert "expires (UTC)" in table
    assert expires.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") in table
    shown = cli("cache", "show", listed["name"], "--storage", storage).stdout
    assert f"expires_at: {expires.isoformat()}" in shown and "ttl: PT1S" in shown

    while datetime.now(UTC) < expires:  # until the recorded ttl has passed, by the clock
        time.sleep(0.05)
    pruned = cli("cache", "prune", "--storage", storage)
    assert pruned.returncode == 0, pruned.stderr
    assert "removed 1 expired" in pruned.stdout
    assert json.loads(cli("cache", "list", "--storage", storage, "--json").stdout) == []


def test_cli_show_says_when_no_ttl_was_recorded(tmp_path: Path) -> None:
    cli = Cli(tmp_path)
    storage = str(tmp_path / "storage")
    assert cli("run", cli.write("f.yaml", flow(None)), "--storage", storage).returncode == 0
    (listed,) = json.loads(cli("cache", "list", "--storage", storage, "--json").stdout)
    assert listed["ttl"] is None and listed["expires_at"] is None
    shown = cli("cache", "show", listed["name"], "--storage", storage).stdout
    assert "expires_at: no ttl was recorded when it was saved" in shown
    assert "no ttl" in cli("cache", "list", "--storage", storage).stdout
