"""Deployment files checked without Docker, and examples/distributed.py run for real.

No Docker engine runs the tests, so compose.yaml and workers/Dockerfile are read
as data: compose.yaml is validated against the Compose Specification's JSON schema
(the copy that the check-jsonschema package ships), every image is pinned, and the
settings that single flight depends on (AOF, no eviction), the queues each service
consumes, and ``WORKFLOW_CACHE_*`` names that match ``Settings`` are checked (a typo
there would fall back to a default and split the fleet).
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
import uuid
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from celery import Celery

from tests.workers import CeleryWorker, stop_all, wait_ready
from workflow_cache import RedisCache, metrics
from workflow_cache.settings import PREFIX, Settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "compose.yaml"
DOCKERFILE = ROOT / "workers" / "Dockerfile"
MONITORING = ROOT / "deploy" / "monitoring"
SETTINGS_VARS = set(Settings.variables())
# A pinned image names an exact release: a tag with at least major.minor, or a digest.
PINNED = re.compile(r"^[\w./-]+(:v?\d+\.\d+[\w.-]*)?(@sha256:[0-9a-f]{64})?$")


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


def compose_schema() -> dict[str, Any]:
    vendor = importlib.resources.files("check_jsonschema.builtin_schemas.vendor")
    return json.loads((vendor / "compose-spec.json").read_text(encoding="utf-8"))


def test_compose_file_follows_the_compose_specification(compose: dict[str, Any]) -> None:
    schema = compose_schema()
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = sorted(validator.iter_errors(compose), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors)


def test_the_schema_check_catches_a_broken_file(compose: dict[str, Any]) -> None:
    broken = json.loads(json.dumps(compose))
    broken["services"]["worker"]["depends_on"]["redis"]["condition"] = "whenever"
    broken["services"]["redis"]["healthcheck"]["retries"] = "ten"
    schema = compose_schema()
    validator = jsonschema.validators.validator_for(schema)(schema)
    assert len(list(validator.iter_errors(broken))) >= 2


def test_every_image_is_pinned(services: dict[str, Any]) -> None:
    for name, service in services.items():
        image = str(service.get("image", ""))
        assert image, f"{name} has no image"
        assert ":latest" not in image and PINNED.match(image), f"{name}: {image} is not pinned"
        assert ":" in image or "@" in image, f"{name}: {image} has no tag"
    base = [
        line.split()[1] for line in DOCKERFILE.read_text().splitlines() if line.startswith("FROM")
    ]
    assert base and all(PINNED.match(b) and ":" in b for b in base), base
    assert PINNED.match("redis:7.4.5") and not PINNED.match("redis:7")


def test_compose_has_every_service(services: dict[str, Any]) -> None:
    expected = {"redis", "s3", "bucket", "worker", "workflow-worker", "flower", "producer"}
    assert expected <= set(services)
    assert {"prometheus", "grafana"} <= set(services)
    for name in ("prometheus", "grafana"):
        assert services[name]["profiles"] == ["monitoring"]
    assert not any("minio" in str(s.get("image", "")) for s in services.values())


def test_redis_keeps_what_single_flight_needs_and_asks_for_a_password(
    services: dict[str, Any],
) -> None:
    redis = services["redis"]
    assert str(redis["image"]).startswith("redis:7")
    command = argv(redis["command"])
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"
    assert command[command.index("--requirepass") + 1].startswith("${REDIS_PASSWORD:?")
    assert redis["environment"]["REDISCLI_AUTH"].startswith("${REDIS_PASSWORD:?")
    assert "redis-cli" in argv(redis["healthcheck"]["test"])
    for service in services.values():  # nothing published beyond this machine
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), port


def test_workers_consume_separate_queues_and_answer_a_ping(services: dict[str, Any]) -> None:
    step, flow = argv(services["worker"]["command"]), argv(services["workflow-worker"]["command"])
    for command in (step, flow):
        assert command[:4] == ["celery", "-A", "workers.app", "worker"]
    assert queues(step) == "steps" and queues(flow) == "workflows"
    # scalable with --scale worker=N: no fixed container name, no host port
    assert "container_name" not in services["worker"] and "ports" not in services["worker"]
    for name in ("worker", "workflow-worker"):
        test = " ".join(argv(services[name]["healthcheck"]["test"]))
        assert "celery -A workers.app inspect ping -d celery@$$HOSTNAME" in test


def test_fleet_services_name_real_settings(services: dict[str, Any]) -> None:
    broker = services["worker"]["environment"]["WORKFLOW_CACHE_BROKER"]
    assert broker.startswith("redis://:${REDIS_PASSWORD:?") and broker.endswith("@redis:6379/0")
    for name in ("worker", "workflow-worker", "producer", "bucket"):
        env = services[name]["environment"]
        ours = {key for key in env if key.startswith(PREFIX)}
        assert ours <= SETTINGS_VARS, f"{name}: unknown {sorted(ours - SETTINGS_VARS)}"
        assert not [key for key in env if key.startswith("WFC_")]
        assert env["WORKFLOW_CACHE_BROKER"] == broker
        assert services[name]["build"]["dockerfile"] == "workers/Dockerfile"
        assert services[name]["depends_on"]
    assert services["worker"]["depends_on"]["redis"]["condition"] == "service_healthy"
    assert services["flower"]["environment"]["CELERY_BROKER_URL"] == broker  # same URL


def test_object_store_bucket_is_made_at_start(services: dict[str, Any]) -> None:
    init = services["bucket"]
    assert argv(init["command"]) == ["python", "-m", "workers.make_bucket"]
    assert init["restart"] == "no"
    assert init["depends_on"]["s3"]["condition"] == "service_healthy"
    assert "healthz" in " ".join(argv(services["s3"]["healthcheck"]["test"]))
    env = services["worker"]["environment"]
    assert env["WORKFLOW_CACHE_STORAGE"].startswith("s3://workflow-cache/")
    condition = services["worker"]["depends_on"]["bucket"]["condition"]
    assert condition == "service_completed_successfully"


def test_flower_and_producer(services: dict[str, Any]) -> None:
    flower = services["flower"]
    assert "flower" in argv(flower["command"]) and "127.0.0.1:5555:5555" in flower["ports"]
    assert flower["environment"]["FLOWER_BASIC_AUTH"].startswith("${FLOWER_BASIC_AUTH:?")
    producer = services["producer"]
    assert argv(producer["command"]) == ["python", "examples/distributed.py"]
    assert producer["profiles"] == ["producer"] and producer["restart"] == "no"


def test_the_dashboard_service_publishes_on_loopback_and_needs_its_token(
    services: dict[str, Any],
) -> None:
    ui = services["ui"]
    command = argv(ui["command"])
    assert command[:2] == ["workflow-cache", "ui"]
    assert command[command.index("--host") + 1] == "0.0.0.0"  # inside its container
    assert ui["ports"] == [f"127.0.0.1:{command[command.index('--port') + 1]}:8089"]
    assert ui["environment"]["WORKFLOW_CACHE_UI_TOKEN"].startswith("${WORKFLOW_CACHE_UI_TOKEN:?")
    assert {key for key in ui["environment"] if key.startswith(PREFIX)} <= SETTINGS_VARS
    extras = ui["build"]["args"]["EXTRAS"]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert extras in project["optional-dependencies"]
    assert any("EXTRAS" in run for run in dockerfile()["RUN"])


def test_env_example_sets_every_required_variable(compose: dict[str, Any]) -> None:
    required = set(re.findall(r"\$\{(\w+):\?", COMPOSE.read_text()))
    example = {
        line.split("=", 1)[0]
        for line in (ROOT / ".env.example").read_text().splitlines()
        if "=" in line and not line.startswith("#")
    }
    assert required and required <= example, sorted(required - example)


def test_monitoring_scrapes_the_workers_and_the_dashboard_uses_real_metrics(
    services: dict[str, Any],
) -> None:
    port = services["worker"]["environment"]["WORKFLOW_CACHE_METRICS_PORT"]
    scrape = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    sd = scrape["scrape_configs"][0]["dns_sd_configs"][0]
    assert set(sd["names"]) == {"worker", "workflow-worker"} and str(sd["port"]) == port
    dashboard = json.loads((MONITORING / "grafana/dashboards/workflow-cache.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = set(re.findall(r"workflow_cache_\w+", " ".join(exprs)))
    known = set(metrics.METRIC_NAMES)
    suffixes = ("_bucket", "_count", "_sum")
    assert {
        re.sub(r"_(bucket|count|sum)$", "", n) if n.endswith(suffixes) else n for n in used
    } <= known
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for wanted in ("hit ratio", "executions", "claim wait", "archive throughput"):
        assert wanted in titles
    source = dashboard["panels"][0]["datasource"]["uid"]
    provisioned = yaml.safe_load(
        (MONITORING / "grafana/provisioning/datasources/prometheus.yml").read_text()
    )
    assert provisioned["datasources"][0]["uid"] == source


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
    assert steps["FROM"] == ["python:3.11.13-slim-bookworm"]
    assert any("nodejs" in run and "npm" in run for run in steps["RUN"])  # Node flows run here
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
        stop_all(workers)
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


def test_the_package_ships_py_typed_and_no_workers_package() -> None:
    """workers/ is deployed as a folder; a top-level ``workers`` in site-packages would clash."""
    from setuptools import find_packages

    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages = find_packages(str(ROOT), **tool["packages"]["find"])
    assert "workflow_cache" in packages and "workflow_cache.admin" in packages
    assert not [p for p in packages if p.split(".")[0] != "workflow_cache"], packages
    assert "py.typed" in tool["package-data"]["workflow_cache"]
    assert (ROOT / "workflow_cache" / "py.typed").is_file()
