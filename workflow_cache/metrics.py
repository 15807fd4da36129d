"""Prometheus metrics of step outcomes, claims, dispatch and archives.

Counters and histograms are made on first use, so ``enable_multiprocess`` can still
switch ``prometheus_client`` to its multi-process mode first: under Celery's prefork
pool every child process writes its samples to files in one folder, and the endpoint
that the worker's main process serves adds them up. Recording is always on and costs
a dictionary lookup and an addition; nothing is served unless a port is configured.

This module reads no environment and knows no upper layer: the folder (the
``metrics_dir`` setting), the port and the names of the messages and tasks to count
are given by the fleet app. ``enable_multiprocess`` is the one place that sets
``PROMETHEUS_MULTIPROC_DIR``, prometheus_client's own variable, which its value
classes read.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

__all__ = [
    "METRIC_NAMES",
    "archive_transfer",
    "claim_acquired",
    "commit",
    "enable_multiprocess",
    "lookup",
    "message_sent",
    "remove_made_dirs",
    "serve",
]

_SECONDS_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800)

METRIC_NAMES = {
    "workflow_cache_step_hits_total": "Step lookups that found a stored outcome.",
    "workflow_cache_step_misses_total": "Step lookups that found nothing stored.",
    "workflow_cache_step_executions_total": "Steps executed and committed, by outcome status.",
    "workflow_cache_step_errors_total": "Executed steps whose outcome was an err.",
    "workflow_cache_step_seconds": "Seconds from a step's claim to its commit.",
    "workflow_cache_claim_waits_total": "Claims that waited for another holder's outcome.",
    "workflow_cache_claim_wait_seconds": "Seconds spent in acquiring a key's claim or outcome.",
    "workflow_cache_claim_takeovers_total": "Claims of a key whose previous claim ended "
    "without an outcome (crashed or released holder).",
    "workflow_cache_commits_refused_total": "Commits refused because the lease was lost.",
    "workflow_cache_step_messages_sent_total": "Step messages sent to workers.",
    "workflow_cache_archive_bytes_total": "Bytes of working-directory files restored or saved.",
    "workflow_cache_archive_seconds": "Seconds spent restoring or saving one archive.",
}

_lock = threading.Lock()
_metrics: dict[str, Any] | None = None
_made_dirs: list[Path] = []
_multiprocess_dir: Path | None = None


def _made() -> dict[str, Any]:
    global _metrics
    if _metrics is None:
        with _lock:
            if _metrics is None:
                _metrics = _make()
    return _metrics


def _make() -> dict[str, Any]:
    from prometheus_client import Counter, Histogram

    def counter(name: str, labels: tuple[str, ...]) -> Counter:
        return Counter(name.removesuffix("_total"), METRIC_NAMES[name], labels)

    def histogram(name: str, labels: tuple[str, ...]) -> Histogram:
        return Histogram(name, METRIC_NAMES[name], labels, buckets=_SECONDS_BUCKETS)

    ns = ("namespace",)
    return {
        "hits": counter("workflow_cache_step_hits_total", ns),
        "misses": counter("workflow_cache_step_misses_total", ns),
        "executions": counter("workflow_cache_step_executions_total", (*ns, "status")),
        "errors": counter("workflow_cache_step_errors_total", ns),
        "step_seconds": histogram("workflow_cache_step_seconds", ns),
        "waits": counter("workflow_cache_claim_waits_total", ns),
        "wait_seconds": histogram("workflow_cache_claim_wait_seconds", ns),
        "takeovers": counter("workflow_cache_claim_takeovers_total", ns),
        "refused": counter("workflow_cache_commits_refused_total", ns),
        "sent": counter("workflow_cache_step_messages_sent_total", (*ns, "queue")),
        "archive_bytes": counter("workflow_cache_archive_bytes_total", ("direction",)),
        "archive_seconds": histogram("workflow_cache_archive_seconds", ("direction",)),
    }


# ----------------------------------------------------------------------------- recording


_children: dict[tuple[str, str], Any] = {}


def _child(metric: str, namespace: str) -> Any:
    """The labelled counter of one namespace, looked up once: lookups are the hot path."""
    child = _children.get((metric, namespace))
    if child is None:
        child = _children[(metric, namespace)] = _made()[metric].labels(namespace)
    return child


def lookup(namespace: str, hits: int, misses: int) -> None:
    """Outcome reads: ``hits`` keys found, ``misses`` not."""
    if hits:
        _child("hits", namespace).inc(hits)
    if misses:
        _child("misses", namespace).inc(misses)


def claim_acquired(namespace: str, seconds: float, *, waited: bool, takeover: bool) -> None:
    """One ``acquire``: how long it took, whether another holder's outcome came back."""
    m = _made()
    m["wait_seconds"].labels(namespace).observe(seconds)
    if waited:
        m["waits"].labels(namespace).inc()
    if takeover:
        m["takeovers"].labels(namespace).inc()


def commit(namespace: str, status: str, seconds: float, *, accepted: bool) -> None:
    """A holder's commit: counted as an execution, or as refused when fenced off."""
    m = _made()
    if not accepted:
        m["refused"].labels(namespace).inc()
        return
    m["executions"].labels(namespace, status).inc()
    m["step_seconds"].labels(namespace).observe(seconds)
    if status == "err":
        m["errors"].labels(namespace).inc()


def message_sent(namespace: str, queue: str) -> None:
    _made()["sent"].labels(namespace, queue).inc()


def archive_transfer(direction: str, nbytes: int, seconds: float) -> None:
    """One archive restored (``direction="restore"``) or saved (``"save"``)."""
    m = _made()
    m["archive_bytes"].labels(direction).inc(max(0, nbytes))
    m["archive_seconds"].labels(direction).observe(max(0.0, seconds))


# ----------------------------------------------------------------------------- serving


def enable_multiprocess(directory: Path | None = None) -> Path:
    """Share samples between the processes of one worker through files in ``directory``.

    Must run before the first sample is recorded (fleet apps call it at import time,
    before the pool forks). Without ``directory``: the folder already in use, else a
    fresh temporary one; an explicit folder loses its sample files (``*.db``), because
    samples of a previous run would be added to this one.
    """
    global _multiprocess_dir
    import prometheus_client.values as values

    if directory is None and _multiprocess_dir is not None:
        return _multiprocess_dir
    if directory is None:
        directory = Path(tempfile.mkdtemp(prefix="workflow-cache-metrics-"))
        _made_dirs.append(directory)  # removed when the worker shuts down
    else:  # only the sample files: the folder is the operator's, whatever else it holds
        directory.mkdir(parents=True, exist_ok=True)
        for stale in directory.glob("*.db"):
            stale.unlink(missing_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)  # for prometheus_client only
    values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]
    _multiprocess_dir = directory
    return directory


def serve(port: int, addr: str = "0.0.0.0") -> int:
    """Serve ``/metrics`` on ``addr:port`` from a background thread; returns the port."""
    from prometheus_client import REGISTRY, CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = REGISTRY
    if _multiprocess_dir is not None:
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(_multiprocess_dir))  # type: ignore[no-untyped-call]
    server, _thread = start_http_server(port, addr=addr, registry=registry)
    return int(server.server_port)


def remove_made_dirs() -> None:
    """Delete the folders :func:`enable_multiprocess` made (at worker shutdown)."""
    for directory in _made_dirs:
        shutil.rmtree(directory, ignore_errors=True)
