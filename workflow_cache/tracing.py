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
    thousand hits skips making a thousand of them.
    """
    if _tracer() is None:
        return False
    from opentelemetry import trace

    provider = trace.get_tracer_provider()
    return not isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider)
