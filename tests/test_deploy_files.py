"""Deployment files checked without Docker, and examples/distributed.py run for real.

No Docker engine runs the tests, so compose.yaml and workers/Dockerfile are read
as data: the settings that single flight depends on (AOF, no eviction), the queues
each service consumes, and ``WFC_*`` names that match ``WorkerSettings`` (a typo
there would silently fall back to a default and split the fleet).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
import subprocess
import sys
import tomllib
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from celery import Celery

from tests.workers import CeleryWorker, wait_ready
from workflow_cache import RedisCache
from workflow_cache.distributed.settings import WorkerSettings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "compose.yaml"
DOCKERFILE = ROOT / "workers" / "Dockerfile"
SETTINGS_VARS = {f"WFC_{name.upper()}" for name in WorkerSettings.model_fields}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    return compose["services"]


def argv(command: str | list[str]) -> list[str]:
    """A compose ``command`` as an argument list, whichever form it is written in."""
    return shlex.split(command) if isinstance(command, str) else [str(a) for a in command]


def queues(command: list[str]) -> str:
    return command[command.index("-Q") + 1]


def test_compose_has_every_service(services: dict[str, Any]) -> None:
    expected = {"redis", "minio", "minio-init", "worker", "workflow-worker", "flower", "producer"}
    assert expected <= set(services)


def test_redis_keeps_what_single_flight_needs(services: dict[str, Any]) -> None:
    redis = services["redis"]
    assert str(redis["image"]).startswith("redis:7")
    command = argv(redis["command"])
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"
    assert "redis-cli" in argv(redis["healthcheck"]["test"])


def test_workers_consume_separate_queues(services: dict[str, Any]) -> None:
    step, flow = argv(services["worker"]["command"]), argv(services["workflow-worker"]["command"])
    for command in (step, flow):
        assert command[:4] == ["celery", "-A", "workers.app", "worker"]
    assert queues(step) == "steps" and queues(flow) == "workflows"
    # scalable with --scale worker=N: no fixed container name, no host port
    assert "container_name" not in services["worker"] and "ports" not in services["worker"]
    for module in (a for i, a in enumerate(step) if i and step[i - 1] in ("-I", "--include")):
        assert importlib.util.find_spec(module) is not None, module


def test_fleet_services_name_real_settings(services: dict[str, Any]) -> None:
    for name in ("worker", "workflow-worker", "producer"):
        env = services[name]["environment"]
        wfc = {key for key in env if key.startswith("WFC_")}
        assert wfc <= SETTINGS_VARS, f"{name}: unknown {sorted(wfc - SETTINGS_VARS)}"
        assert env["WORKFLOW_CACHE_BROKER"] == "redis://redis:6379/0"
        assert services[name]["build"]["dockerfile"] == "workers/Dockerfile"
        assert services[name]["depends_on"]
    assert services["worker"]["depends_on"]["redis"]["condition"] == "service_healthy"


def test_object_store_bucket_is_made_at_start(services: dict[str, Any]) -> None:
    init = services["minio-init"]
    script = " ".join(argv(init["command"]))
    assert "mc mb" in script and "workflow-cache" in script
    assert init["restart"] == "no"
    assert init["depends_on"]["minio"]["condition"] == "service_healthy"
    env = services["worker"]["environment"]
    assert env["WORKFLOW_CACHE_STORAGE"].startswith("s3://workflow-cache/")
    condition = services["worker"]["depends_on"]["minio-init"]["condition"]
    assert condition == "service_completed_successfully"


def test_flower_and_producer(services: dict[str, Any]) -> None:
    flower = services["flower"]
    assert "flower" in argv(flower["command"]) and "5555:5555" in flower["ports"]
    producer = services["producer"]
    assert argv(producer["command"]) == ["python", "examples/distributed.py"]
    assert producer["profiles"] == ["producer"] and producer["restart"] == "no"


def dockerfile() -> dict[str, list[str]]:
    """Instructions of workers/Dockerfile, continuation lines joined."""
    instructions: dict[str, list[str]] = {}
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            instructions.setdefault(word.upper(), []).append(rest.strip())
    return instructions


def test_dockerfile_installs_the_package_and_runs_the_worker_app() -> None:
    steps = dockerfile()
    assert steps["FROM"] == ["python:3.11-slim"]
    assert any('pip install ".[s3]"' in run or "pip install .[s3]" in run for run in steps["RUN"])
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "s3" in project["optional-dependencies"]
    assert steps["USER"] and steps["USER"][-1] not in ("root", "0")
    command = json.loads(steps["CMD"][-1])
    module = command[command.index("-A") + 1]
    assert importlib.util.find_spec(module) is not None
    assert (ROOT / Path(*module.split("."))).with_suffix(".py").is_file()
    copied = {args.split()[0] for args in steps["COPY"]}
    assert {"workflow_cache", "workers", "examples", "pyproject.toml"} <= copied


def test_dockerignore_keeps_the_build_context_small() -> None:
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".git" in ignored and "tests" in ignored
    assert not {"workflow_cache", "workers", "examples", "pyproject.toml"} & set(ignored)


def test_the_distributed_example_runs_on_two_real_workers(redis_url: str, tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:8]
    env = {
        "WORKFLOW_CACHE_BROKER": redis_url,
        "WORKFLOW_CACHE_NAMESPACE": f"example-{tag}",
        # queues of its own: other tests' leftover messages never reach these workers
        "WORKFLOW_CACHE_STEP_QUEUE": f"steps-{tag}",
        "WORKFLOW_CACHE_WORKFLOW_QUEUE": f"workflows-{tag}",
    }
    log = tmp_path / "workers.log"
    workers = [
        CeleryWorker("workers.app", f"example-{kind}-{tag}", env[var], env, log=log)
        for kind, var in (
            ("steps", "WORKFLOW_CACHE_STEP_QUEUE"),
            ("flows", "WORKFLOW_CACHE_WORKFLOW_QUEUE"),
        )
    ]
    control = Celery(broker=redis_url)
    try:
        wait_ready(control, workers, timeout=25)
        runs = [
            subprocess.run(
                [sys.executable, "examples/distributed.py", "--timeout", "20"],
                cwd=ROOT,
                env={**os.environ, **env},
                capture_output=True,
                text=True,
                timeout=25,
            )
            for _ in range(2)  # the second run finds user:1 in the cache
        ]
    finally:
        for worker in workers:
            worker.stop()
        control.close()
    for run in runs:
        assert run.returncode == 0, run.stderr + log.read_text()
        assert run.stdout.strip() == "Hello user 1"
    cache = RedisCache(redis_url, namespace=env["WORKFLOW_CACHE_NAMESPACE"])
    try:
        assert cache.has("user:1")  # the step's outcome is where every producer finds it
    finally:
        cache.close()


def test_the_fleet_app_runs_flows_and_shares_their_archives(redis_url: str, tmp_path: Path):
    """``workflow-cache run --broker ... --queue workflows`` on workers.app, with shared storage."""
    tag = uuid.uuid4().hex[:8]
    queue = f"workflows-{tag}"
    storage = tmp_path / "shared-storage"
    env = {
        "WORKFLOW_CACHE_BROKER": redis_url,
        "WORKFLOW_CACHE_NAMESPACE": f"flows-{tag}",
        "WORKFLOW_CACHE_STORAGE": str(storage),
        "WORKFLOW_CACHE_WORKFLOW_QUEUE": queue,
    }
    worker = CeleryWorker("workers.app", f"flows-{tag}", queue, env, log=tmp_path / "worker.log")
    control = Celery(broker=redis_url)
    flow = ROOT / "examples" / "flows" / "offline_node_local_package.yaml"
    command = [
        "workflow-cache",
        "run",
        str(flow),
        "--broker",
        redis_url,
        "--queue",
        queue,
        "--timeout",
        "120",
        "--json",
    ]
    try:
        wait_ready(control, [worker], timeout=25)
        runs = [
            subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=150)
            for _ in range(2)
        ]
    finally:
        worker.stop()
        control.close()
    for run in runs:
        assert run.returncode == 0, run.stdout + run.stderr
    caches = [json.loads(run.stdout)["tasks"][0]["cache"] for run in runs]
    assert caches == ["miss", "hit"]
    assert any(storage.rglob("*.tar.zst"))  # the archive went to WORKFLOW_CACHE_STORAGE
