"""Secrets on Celery workers: read from the worker's environment or secrets file, masked in
the worker's log and in the summary sent back; the producer never needs them."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

TOKEN = "worker-only-token-7f3a"
FROM_FILE = "value-from-the-secrets-file"

FLOW = """id: remote_secret
namespace: dev
tasks:
  - id: use
    type: io.kestra.plugin.scripts.shell.Commands
    env:
      TOKEN: "{{ secret('API_TOKEN') }}"
    commands:
      - echo "token=$TOKEN file={{ secret('OTHER') }}"
      - |
        echo '::{"outputs": {"leak": "'"$TOKEN"'"}}::'
"""


def encoded(value: str) -> str:
    return base64.b64encode(value.encode()).decode()


def cli_command() -> list[str]:
    script = shutil.which("workflow-cache")
    return [script] if script else [sys.executable, "-m", "workflow_cache.cli"]


def test_a_worker_reads_its_secrets_and_masks_them(redis_url: str, tmp_path: Path) -> None:
    queue = f"secrets-{uuid.uuid4().hex[:8]}"
    secrets_file = tmp_path / "worker-secrets.env"
    secrets_file.write_text(f"SECRET_OTHER={encoded(FROM_FILE)}\n")
    worker_env = {
        **os.environ,
        "WORKFLOW_CACHE_BROKER": redis_url,
        "WORKFLOW_CACHE_STORAGE": str(tmp_path / "storage"),
        "WORKFLOW_CACHE_WORK_ROOT": str(tmp_path / "work"),
        "WORKFLOW_CACHE_OUTPUTS": str(tmp_path / "outputs"),
        "WORKFLOW_CACHE_SECRETS_FILE": str(secrets_file),
        "SECRET_API_TOKEN": encoded(TOKEN),
    }
    flow = tmp_path / "flow.yaml"
    flow.write_text(FLOW)
    missing = tmp_path / "missing.yaml"
    missing.write_text(FLOW.replace("secret('OTHER')", "secret('NOT_THERE')"))
    client_env = {
        name: value
        for name, value in worker_env.items()
        if not name.startswith("SECRET_") and name != "WORKFLOW_CACHE_SECRETS_FILE"
    }
    client_env["WORKFLOW_CACHE_HOME"] = str(tmp_path / "client")
    log = (tmp_path / "worker.log").open("w+")
    worker = subprocess.Popen(
        [
            *[sys.executable, "-m", "celery", "-A", "workflow_cache.workdir.celery_tasks"],
            *["worker", "--pool", "solo", "-Q", queue, "--hostname", "secrets@test"],
            *["--loglevel", "INFO"],
        ],
        env=worker_env,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        run = [*cli_command(), "run", "--queue", queue, "--timeout", "120"]
        done = subprocess.run(
            [*run, str(flow), "--json"], env=client_env, capture_output=True, text=True, timeout=180
        )
        refused = subprocess.run(
            [*run, str(missing)], env=client_env, capture_output=True, text=True, timeout=180
        )
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
    log.seek(0)
    worker_log = log.read()
    log.close()
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["tasks"][0]["vars"] == {"leak": "******"}
    assert TOKEN not in done.stdout + done.stderr and FROM_FILE not in done.stdout
    assert "[use] token=****** file=******" in worker_log
    assert TOKEN not in worker_log and FROM_FILE not in worker_log
    assert refused.returncode == 2
    assert "secret 'NOT_THERE' is not set" in refused.stderr
    assert "in the secrets file" in refused.stderr
