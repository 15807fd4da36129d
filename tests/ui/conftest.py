"""The dashboard under test: real Redis, real ``celery worker`` subprocesses, the app served
by uvicorn on a free loopback port, and the system Chromium driven by Playwright."""

from __future__ import annotations

import importlib
import shutil
import socket
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from types import ModuleType

import pytest

from tests.waiting import wait_until
from tests.workers import CeleryWorker, wait_ready
from workflow_cache.admin.runs import show_run
from workflow_cache.ui.config import UiConfig

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@dataclass
class Fleet:
    """The test app configured for a namespace and queues of its own, one worker on them."""

    module: ModuleType
    env: dict[str, str]
    logs: Path

    @property
    def cache(self):  # the app's RedisCache
        return self.module.cache

    def worker(self, name: str, queues: str) -> CeleryWorker:
        return CeleryWorker(
            "tests.ui.ui_app", name, queues, self.env, log=self.logs / f"{name}.log"
        )

    def state(self, run_id: str) -> str | None:
        detail = show_run(self.cache, run_id)
        return None if detail is None else detail.summary.state

    def wait_state(self, run_id: str, *states: str) -> str:
        return wait_until(
            lambda: (s := self.state(run_id)) in states and s,
            lambda: f"run {run_id} to be {'/'.join(states)} (it is {self.state(run_id)})",
        )


@pytest.fixture(scope="module")
def fleet(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    suffix = uuid.uuid4().hex[:8]
    env = {
        "WORKFLOW_CACHE_BROKER": redis_url,
        "WORKFLOW_CACHE_NAMESPACE": f"ui-{suffix}",
        "WORKFLOW_CACHE_STEP_QUEUE": f"ui-steps-{suffix}",
        "WORKFLOW_CACHE_WORKFLOW_QUEUE": f"ui-flows-{suffix}",
        "WORKFLOW_CACHE_LEASE": "1.5",
        "WORKFLOW_CACHE_STORAGE": str(tmp_path_factory.mktemp("ui-archives")),
        "UI_TESTS_LATER_QUEUE": f"ui-later-{suffix}",
        "UI_TESTS_NOBODY_QUEUE": f"ui-nobody-{suffix}",
    }
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        module = importlib.reload(importlib.import_module("tests.ui.ui_app"))
        fleet = Fleet(module, env, tmp_path_factory.mktemp("ui-workers"))
        worker = fleet.worker("ui-main", f"ui-flows-{suffix},ui-steps-{suffix}")
        try:
            wait_ready(module.app, [worker])
            yield fleet
        finally:
            worker.stop()
            module.cache.close()


@contextmanager
def serving(config: UiConfig) -> Iterator[str]:
    """``config``'s dashboard served by uvicorn in a thread; yields its base URL."""
    import uvicorn

    from workflow_cache.ui.app import create_app

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(create_app(config), log_level="warning", access_log=False)
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started, "the dashboard to start serving")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


@pytest.fixture(scope="module")
def ui_config(fleet: Fleet) -> UiConfig:
    return UiConfig(
        redis_url=fleet.env["WORKFLOW_CACHE_BROKER"],
        namespace=fleet.env["WORKFLOW_CACHE_NAMESPACE"],
        storage=fleet.env["WORKFLOW_CACHE_STORAGE"],
        poll_seconds=0.5,
    )


@pytest.fixture(scope="module")
def dashboard(ui_config: UiConfig) -> Iterator[str]:
    with serving(ui_config) as url:
        yield url


@pytest.fixture(scope="module")
def read_only_dashboard(ui_config: UiConfig) -> Iterator[str]:
    with serving(replace(ui_config, read_only=True)) as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if CHROMIUM is None:
        pytest.skip("no system Chromium (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM)
        yield launched
        launched.close()


@pytest.fixture
def dialogs() -> list[str]:
    """Messages of the dialogs (alert, confirm) the page opened; each was dismissed."""
    return []


@pytest.fixture
def page(browser, dialogs: list[str]) -> Iterator[object]:
    """A fresh browser context (no cookies) with one page."""
    context = browser.new_context(viewport={"width": 1280, "height": 760})
    opened = context.new_page()

    def dialog(d) -> None:
        dialogs.append(d.message)
        d.dismiss()

    opened.on("dialog", dialog)
    yield opened
    context.close()
