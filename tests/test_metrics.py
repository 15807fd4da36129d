"""Prometheus metrics: scraped from a real prefork worker after real steps, and in process."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
import uuid
from pathlib import Path

import pytest
from celery import Celery
from prometheus_client.parser import text_string_to_metric_families

from tests.servers import free_port
from tests.waiting import wait_until
from tests.workers import CeleryWorker, wait_ready
from workflow_cache import RedisCache, create_workflow, metrics
from workflow_cache.distributed import CeleryDispatcher
from workflow_cache.distributed.fleet import fleet_app
from workflow_cache.settings import Settings


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``{(sample name, sorted labels): value}`` from a live /metrics endpoint."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_worker_serves_metrics_summed_over_its_prefork_processes(
    redis_url: str, tmp_path: Path
) -> None:
    tag = uuid.uuid4().hex[:8]
    namespace, queue, port = f"metrics-{tag}", f"steps-{tag}", free_port()
    env = {
        "WORKFLOW_CACHE_BROKER": redis_url,
        "WORKFLOW_CACHE_NAMESPACE": namespace,
        "WORKFLOW_CACHE_STEP_QUEUE": queue,
        "WORKFLOW_CACHE_METRICS_PORT": str(port),
        "WORKFLOW_CACHE_METRICS_ADDR": "127.0.0.1",
        "WORKFLOW_CACHE_METRICS_DIR": str(tmp_path / "prom"),
    }
    log = tmp_path / "worker.log"
    worker = CeleryWorker(
        "tests.celery_app", f"metrics-{tag}", queue, env, pool="prefork", concurrency=2, log=log
    )
    settings = Settings(broker=redis_url, namespace=namespace, step_queue=queue)
    app, cache = fleet_app(f"producer-{tag}", settings)
    control = Celery(broker=redis_url)
    try:
        wait_ready(control, [worker], timeout=30)
        workflow = create_workflow(
            {}, cache=cache, dispatcher=CeleryDispatcher(app, cache, timeout=60)
        )

        def four_steps(step):  # four keys, sent together
            return step.all(
                [app.signature("tests.work", args=(f"{tag}:{i}",)) for i in range(4)],
                keys=[f"w{i}" for i in range(4)],
            )

        first = workflow(four_steps)
        assert first.ok, first.error
        failed = workflow(lambda step: step(app.signature("tests.fails", args=(tag,)), key="f"))
        assert not failed.ok
        again = workflow(four_steps)  # all hits: nothing sent
        assert again.ok

        def executions(samples: dict, status: str) -> float:
            return value(
                samples, "workflow_cache_step_executions_total", namespace=namespace, status=status
            )

        def all_counted() -> dict | None:
            """The last commit may land a moment after the producer's wake-up."""
            samples = scrape(port)
            return samples if executions(samples, "ok") + executions(samples, "err") >= 5 else None

        samples = wait_until(
            all_counted,
            lambda: f"the worker's metrics to count 5 executions; its log:\n{log.read_text()}",
            interval=0.2,
        )
    finally:
        worker.stop()
        control.close()
        cache.clear()
        cache.close()
    assert executions(samples, "ok") == 4 and executions(samples, "err") == 1
    assert value(samples, "workflow_cache_step_errors_total", namespace=namespace) == 1
    assert value(samples, "workflow_cache_claim_wait_seconds_count", namespace=namespace) == 5
    assert value(samples, "workflow_cache_step_seconds_count", namespace=namespace) == 5
    assert value(samples, "workflow_cache_commits_refused_total", namespace=namespace) == 0


def test_hits_misses_messages_and_takeovers_in_process(redis_url: str, namespace: str) -> None:
    """The producer side: lookups, one message per cold key, a takeover after a release."""
    settings = Settings(broker=redis_url, namespace=namespace, step_queue=f"q-{namespace}")
    app, cache = fleet_app(f"inproc-{namespace}", settings)
    from prometheus_client import REGISTRY

    def sample(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, {"namespace": namespace, **labels}) or 0.0

    try:
        workflow = create_workflow({}, cache=cache)
        workflow(lambda step: step(lambda: 1, key="a"))
        workflow(lambda step: step(lambda: 1, key="a"))
        assert sample("workflow_cache_step_misses_total") == 1
        assert sample("workflow_cache_step_hits_total") == 1
        assert sample("workflow_cache_step_executions_total", status="ok") == 1

        claim = cache.acquire("b")
        assert not isinstance(claim, type(None))
        claim.release()  # type: ignore[union-attr]
        second = cache.acquire("b")
        assert sample("workflow_cache_claim_takeovers_total") == 1
        second.release()  # type: ignore[union-attr]

        # a step message is the user's own task carrying the step header
        app.send_task("tests.any", headers={"wfc_step": {"key": "k", "ns": namespace}})
        app.send_task("tests.any")  # not a step: not counted
        assert sample("workflow_cache_step_messages_sent_total", queue=f"q-{namespace}") == 1
    finally:
        cache.clear()
        cache.close()


def test_archive_counters_and_names() -> None:
    from prometheus_client import REGISTRY

    before = REGISTRY.get_sample_value("workflow_cache_archive_bytes_total", {"direction": "save"})
    metrics.archive_transfer("save", 1234, 0.5)
    after = REGISTRY.get_sample_value("workflow_cache_archive_bytes_total", {"direction": "save"})
    assert (after or 0) - (before or 0) == 1234
    exposed = {m.name for m in REGISTRY.collect()}
    for name in metrics.METRIC_NAMES:
        assert name.removesuffix("_total") in exposed, name


@pytest.fixture(autouse=True)
def _redis_cache_import() -> None:
    assert RedisCache  # the metrics are recorded by RedisCache


def test_opentelemetry_spans_per_step_when_installed(redis_url: str, namespace: str) -> None:
    pytest.importorskip("opentelemetry.sdk")
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)  # what an application does; once per process
    cache = RedisCache(redis_url, namespace=namespace)
    try:
        workflow = create_workflow({}, cache=cache)
        workflow(lambda step: step(lambda: 1, key="traced"))
        workflow(lambda step: step(lambda: 1, key="traced"))
    finally:
        cache.clear()
        cache.close()
    spans = exporter.get_finished_spans()
    assert [s.name for s in spans] == ["workflow_cache.step", "workflow_cache.step"]
    ran, hit = spans
    assert ran.attributes["workflow_cache.key"] == "traced"
    assert ran.attributes["workflow_cache.hit"] is False
    assert ran.attributes["workflow_cache.committed"] is True
    assert ran.attributes["workflow_cache.status"] == "ok"
    assert hit.attributes["workflow_cache.hit"] is True
    assert hit.attributes["workflow_cache.namespace"] == namespace


def test_the_metrics_folder_comes_from_the_settings(redis_url: str, tmp_path: Path) -> None:
    """``PROMETHEUS_MULTIPROC_DIR`` is prometheus_client's: set from ``metrics_dir``, not read."""
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    theirs.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("WORKFLOW_CACHE_")}
    env.update(
        {
            "PROMETHEUS_MULTIPROC_DIR": str(theirs),
            "WORKFLOW_CACHE_BROKER": redis_url,
            "WORKFLOW_CACHE_METRICS_PORT": "0",
            "WORKFLOW_CACHE_METRICS_DIR": str(ours),
        }
    )
    code = (
        "import os\n"
        "from workflow_cache import metrics\n"
        "from workflow_cache.distributed.fleet import fleet_app\n"
        "app, cache = fleet_app('metrics-folder')\n"
        "metrics.lookup('folder', 1, 0)\n"
        "print(os.environ['PROMETHEUS_MULTIPROC_DIR'])\n"
        "cache.close()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(ours)
    assert list(ours.glob("*.db")) and not list(theirs.iterdir())


def test_importing_the_package_does_not_import_prometheus() -> None:
    code = "import sys, workflow_cache; print('prometheus_client' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"  # metrics are made on first use
