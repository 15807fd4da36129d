"""Inputs travel with a flow to a real Celery worker; bad ones are refused before sending."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import redis
from celery.contrib.testing.worker import start_worker

from tests.workdir.flowkit import Cli, task_of
from workflow_cache.workdir.celery_tasks import make_app, submit_flow
from workflow_cache.workdir.inputs import InputError
from workflow_cache.workdir.spec import FlowError

FLOW = """id: remote_inputs
namespace: dev
inputs:
  - id: name
    type: STRING
  - id: times
    type: INT
    defaults: 1
  - id: data
    type: FILE
    required: false
tasks:
  - id: hello
    type: io.kestra.plugin.scripts.python.Script
    env:
      NAME: "{{ inputs.name }}"
    script: |
      import json, os
      outputs = {"name": os.environ["NAME"], "times": {{ inputs.times }}}
      print("::" + json.dumps({"outputs": outputs}) + "::")
  - id: copy
    type: io.kestra.plugin.core.flow.WorkingDirectory
    inputFiles:
      data.txt: "{{ inputs.data | default('none') }}"
    tasks:
      - id: show
        type: io.kestra.plugin.scripts.shell.Commands
        commands:
          - echo "::{\\"outputs\\":{\\"data\\":\\"$(cat data.txt)\\"}}::"
"""


@pytest.fixture
def queue() -> str:
    return f"inputs-{uuid.uuid4().hex[:8]}"


def test_inputs_reach_the_worker(redis_url: str, queue: str, tmp_path: Path) -> None:
    data = tmp_path / "data.txt"
    data.write_text("from a file")
    app = make_app(
        redis_url,
        settings={
            "task_default_queue": queue,
            "workflow_cache_storage": str(tmp_path / "storage"),
            "workflow_cache_work_root": str(tmp_path / "work"),
            "workflow_cache_outputs": str(tmp_path / "outputs"),
        },
    )
    producer = make_app(redis_url, settings={"task_default_queue": queue})
    with start_worker(app, pool="solo", perform_ping_check=False, shutdown_timeout=30):
        summary = submit_flow(
            FLOW,
            app=producer,
            inputs={"name": "it's $(id)", "times": "3", "data": Path(data)},
            timeout=120,
        )
        # A FILE input names a file on the worker: only the worker can say it is missing.
        with pytest.raises(FlowError, match="input 'data' \\(FILE\\): no such file"):
            submit_flow(
                FLOW,
                app=producer,
                inputs={"name": "x", "data": str(tmp_path / "nope")},
                timeout=120,
            )
    assert summary.ok, summary
    assert summary.task("hello").vars == {"name": "it's $(id)", "times": 3}
    assert summary.task("show").vars == {"data": "from a file"}


def test_bad_inputs_are_refused_before_sending(
    redis_url: str, queue: str, redis_client: redis.Redis
) -> None:
    producer = make_app(redis_url, settings={"task_default_queue": queue})
    with pytest.raises(InputError, match="input 'name' \\(STRING\\) is required"):
        submit_flow(FLOW, app=producer, timeout=5)
    with pytest.raises(InputError, match="input 'times' \\(INT\\): expected an integer"):
        submit_flow(FLOW, app=producer, inputs={"name": "a", "times": "x"}, timeout=5)
    bad = FLOW.replace("{{ inputs.times }}", "{{ inputs.tims }}")
    with pytest.raises(FlowError, match=r"unknown variable 'inputs\.tims'"):
        submit_flow(bad, app=producer, inputs={"name": "a"}, timeout=5)
    assert redis_client.llen(queue) == 0, "nothing was sent"


def test_cli_sends_inputs_to_a_worker_subprocess(
    redis_url: str, queue: str, tmp_path: Path
) -> None:
    cli = Cli(tmp_path)
    flow = cli.write("remote.yaml", FLOW)
    env = {
        **cli.env,
        "WORKFLOW_CACHE_BROKER": redis_url,
        "WORKFLOW_CACHE_STORAGE": str(tmp_path / "storage"),
        "WORKFLOW_CACHE_WORK_ROOT": str(tmp_path / "work"),
        "WORKFLOW_CACHE_OUTPUTS": str(tmp_path / "outputs"),
    }
    worker = subprocess.Popen(
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
            "--loglevel",
            "WARNING",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        cli.env = {**env, "WORKFLOW_CACHE_HOME": str(tmp_path / "client")}
        cli.env.pop("WORKFLOW_CACHE_STORAGE")
        cli.write("inputs.json", json.dumps({"name": "json file", "times": 2}))
        summary = cli.run_json(
            flow, "--queue", queue, "--timeout", "120", "--inputs", "inputs.json"
        )
        assert summary["ok"] and summary["worker"]
        assert task_of(summary, "hello")["vars"] == {"name": "json file", "times": 2}
        assert task_of(summary, "show")["vars"] == {"data": "none"}
        done = cli("run", flow, "--queue", queue, "--timeout", "30", "--input", "times=1")
        assert done.returncode == 2
        assert "input 'name' (STRING) is required" in done.stderr
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
