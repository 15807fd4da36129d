"""Flows sent to real Celery workers over a real Redis broker; workers share one storage folder."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from celery.contrib.testing.worker import start_worker

from workflow_cache.workdir.celery_tasks import RUN_FLOW, make_app, submit_flow
from workflow_cache.workdir.spec import FlowError

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "flows"
FLOW = EXAMPLES / "offline_node_local_package.yaml"

WHERE = """
id: where
namespace: dev
tasks:
  - id: wd
    type: io.kestra.plugin.core.flow.WorkingDirectory
    outputFiles: [where.txt, token.txt]
    cache:
      patterns: [deps/**]
    tasks:
      - id: make
        type: io.kestra.plugin.scripts.shell.Commands
        commands:
          - test -d deps || { mkdir deps; od -An -N8 -tx8 /dev/urandom > deps/token; }
          - cp deps/token token.txt
          - pwd > where.txt
"""


@pytest.fixture
def queue() -> str:
    """A queue of this test only, so no other worker on the shared Redis takes its flows."""
    return f"flows-{uuid.uuid4().hex[:8]}"


def worker_app(redis_url: str, queue: str, storage: Path, work_root: Path) -> Celery:
    return make_app(
        redis_url,
        settings={
            "task_default_queue": queue,
            "workflow_cache_storage": str(storage),
            "workflow_cache_work_root": str(work_root),
            "workflow_cache_outputs": str(work_root / "outputs"),
        },
    )


@contextmanager
def worker(app: Celery, name: str) -> Iterator[None]:
    with start_worker(
        app, pool="solo", perform_ping_check=False, hostname=name, shutdown_timeout=30
    ):
        yield


def cli_command() -> list[str]:
    script = shutil.which("workflow-cache")
    return [script] if script else [sys.executable, "-m", "workflow_cache.cli"]


def test_second_worker_restores_what_the_first_saved(
    redis_url: str, queue: str, tmp_path: Path
) -> None:
    """Two workers, each with its own temp folder, one shared storage folder."""
    storage = tmp_path / "shared-storage"
    producer = make_app(redis_url, settings={"task_default_queue": queue})

    first_app = worker_app(redis_url, queue, storage, tmp_path / "work-a")
    with worker(first_app, "a@test"):
        first = submit_flow(WHERE, app=producer, timeout=120)
        node_first = submit_flow(FLOW.read_text(), app=producer, timeout=120)
    second_app = worker_app(redis_url, queue, storage, tmp_path / "work-b")
    with worker(second_app, "b@test"):
        second = submit_flow(WHERE, app=producer, timeout=120)
        node_second = submit_flow(FLOW.read_text(), app=producer, timeout=120)

    assert first.ok and first.task("wd").saved
    assert second.ok and second.task("wd").cache == "hit"
    first_token, first_where = map(Path, first.task("wd").outputs)
    second_token, second_where = map(Path, second.task("wd").outputs)
    assert first_where.read_text().startswith(str(tmp_path / "work-a" / "wfc-wd-"))
    assert second_where.read_text().startswith(str(tmp_path / "work-b" / "wfc-wd-"))
    assert first_token.is_relative_to(tmp_path / "work-a" / "outputs")
    assert second_token.read_text() == first_token.read_text(), "worker b restored a's files"
    assert node_first.task("working_dir").saved
    assert node_second.task("working_dir").cache == "hit" and node_second.ok
    assert list((tmp_path / "work-a").glob("wfc-*")) == []
    assert list((tmp_path / "work-b").glob("wfc-*")) == []
    assert first.worker and second.worker


def test_cli_sends_the_flow_to_a_worker(redis_url: str, queue: str, tmp_path: Path) -> None:
    storage = tmp_path / "storage"
    app = worker_app(redis_url, queue, storage, tmp_path / "work")
    env = {**os.environ, "WORKFLOW_CACHE_HOME": str(tmp_path / "client-home")}
    env["WORKFLOW_CACHE_BROKER"] = redis_url
    command = [*cli_command(), "run", str(FLOW), "--queue", queue, "--timeout", "120"]
    with worker(app, "cli@test"):
        as_json = subprocess.run(
            [*command, "--json"], env=env, capture_output=True, text=True, timeout=180
        )
        as_table = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)
    assert as_json.returncode == 0, as_json.stderr
    summary = json.loads(as_json.stdout)
    assert summary["worker"] and summary["ok"]
    assert as_table.returncode == 0, as_table.stderr
    assert f"success on {summary['worker']}" in as_table.stdout
    assert "cache hit" in as_table.stdout
    assert not (tmp_path / "client-home").exists(), "nothing ran on the client"


def test_storage_given_by_the_producer_wins(redis_url: str, queue: str, tmp_path: Path) -> None:
    app = worker_app(redis_url, queue, tmp_path / "worker-default", tmp_path / "work")
    producer = make_app(redis_url, settings={"task_default_queue": queue})
    chosen = tmp_path / "chosen"
    with worker(app, "s@test"):
        summary = submit_flow(
            FLOW.read_text(), app=producer, storage=str(chosen), namespace="team", timeout=120
        )
    assert summary.namespace == "team"
    assert (chosen / "team" / "offline_node_local_package").is_dir()
    assert not (tmp_path / "worker-default").exists()


def test_bad_flows_come_back_as_one_message(redis_url: str, queue: str, tmp_path: Path) -> None:
    app = worker_app(redis_url, queue, tmp_path / "storage", tmp_path / "work")
    producer = make_app(redis_url, settings={"task_default_queue": queue})
    with pytest.raises(FlowError, match="malformed YAML"):
        submit_flow("id: [", app=producer, timeout=30)  # refused before it is sent
    with worker(app, "e@test"):
        reply: dict[str, Any] = producer.send_task(RUN_FLOW, args=["tasks: 3"]).get(timeout=60)
    assert "error" in reply and "tasks" in reply["error"]


def test_celery_worker_subprocess(redis_url: str, queue: str, tmp_path: Path) -> None:
    """``celery -A workflow_cache.workdir.celery_tasks worker`` configured only by environment."""
    env = {
        **os.environ,
        "WORKFLOW_CACHE_BROKER": redis_url,
        "WORKFLOW_CACHE_STORAGE": str(tmp_path / "storage"),
        "WORKFLOW_CACHE_WORK_ROOT": str(tmp_path / "work"),
        "WORKFLOW_CACHE_OUTPUTS": str(tmp_path / "outputs"),
    }
    worker_process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "workflow_cache.workdir.celery_tasks",
            "worker",
            "--pool",
            "solo",
            "-Q",
            queue,
            "--hostname",
            "sub@test",
            "--loglevel",
            "WARNING",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        started = time.monotonic()
        client_env = {**env, "WORKFLOW_CACHE_HOME": str(tmp_path / "client")}
        del client_env["WORKFLOW_CACHE_STORAGE"]
        done = subprocess.run(
            [*cli_command(), "run", str(FLOW), "--queue", queue, "--json", "--timeout", "120"],
            env=client_env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert done.returncode == 0, done.stderr
        summary = json.loads(done.stdout)
        assert summary["ok"] and summary["worker"]
        assert (tmp_path / "storage" / "dev" / "offline_node_local_package").is_dir()
        assert time.monotonic() - started < 120
    finally:
        worker_process.terminate()
        try:
            worker_process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker_process.kill()
            worker_process.wait()
