"""OpenTelemetry spans per step, when ``opentelemetry-api`` is installed (else nothing).

A step that runs gets one span from its claim to its commit (or release); a step
served from the cache gets a short span marked as a hit. The application chooses
the tracer provider and exporter, as OpenTelemetry intends for libraries.
"""

from __future__ import annotations

import functools
from typing import Any

SPAN_NAME = "workflow_cache.step"


@functools.cache
def _tracer() -> Any:
    try:
        from opentelemetry import trace
    except ImportError:
        return None
    return trace.get_tracer("workflow_cache")


def start(key: str, namespace: str, **attributes: Any) -> Any:
    """A started span for ``key``, or None when OpenTelemetry is not installed."""
    tracer = _tracer()
    if tracer is None:
        return None
    return tracer.start_span(
        SPAN_NAME,
        attributes={"workflow_cache.key": key, "workflow_cache.namespace": namespace, **attributes},
    )


def end(span: Any, **attributes: Any) -> None:
    if span is not None:
        for name, value in attributes.items():
            span.set_attribute(f"workflow_cache.{name}", value)
        span.end()


def hit(key: str, namespace: str) -> None:
    """A span for a step served from the cache."""
    if _tracer() is not None:
        end(start(key, namespace, **{"workflow_cache.hit": True}))


def recording() -> bool:
    """Whether spans go anywhere: an application has set a tracer provider.

    Until one is set, OpenTelemetry hands out spans that record nothing; a batch of a
    thousand hits skips making a thousand of them. A provider, once set, stays set
    (OpenTelemetry refuses to replace it), so a yes is remembered.
    """
    global _recording
    if _recording:
        return True
    api = _trace_api()
    if api is None:
        return False
    provider = api.get_tracer_provider()
    _recording = not isinstance(provider, api.ProxyTracerProvider | api.NoOpTracerProvider)
    return _recording


_recording = False


@functools.cache
def _trace_api() -> Any:
    if _tracer() is None:
        return None
    from opentelemetry import trace

    return trace
