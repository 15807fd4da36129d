"""The overview's hit ratio and executions, added up from workers' ``/metrics`` endpoints.

The counters live in the workers' processes, not in Redis, so the dashboard reads
them the way Prometheus does. A worker's answer is untrusted text: it is read up to
a size cap and parsed by prometheus_client; an endpoint that does not answer, or
answers nonsense, is counted as unreachable with one warning line.
"""

from __future__ import annotations

import logging
import urllib.request
from dataclasses import dataclass, field

__all__ = ["MAX_SCRAPE_BYTES", "Counters", "scrape_counters"]

log = logging.getLogger(__name__)

MAX_SCRAPE_BYTES = 4 * 1024 * 1024
TIMEOUT = 2.0


@dataclass
class Counters:
    hits: float = 0.0
    misses: float = 0.0
    executions: dict[str, float] = field(default_factory=dict)
    answered: int = 0
    unreachable: int = 0


def scrape_counters(urls: tuple[str, ...], namespace: str) -> Counters:
    """The namespace's lookups and executions summed over every endpoint that answers."""
    from prometheus_client.parser import text_string_to_metric_families

    counters = Counters()
    for url in urls:
        try:
            with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
                raw = response.read(MAX_SCRAPE_BYTES + 1)
            if len(raw) > MAX_SCRAPE_BYTES:
                raise ValueError(f"more than {MAX_SCRAPE_BYTES} bytes")
            found = Counters()
            for family in text_string_to_metric_families(raw.decode("utf-8")):
                for sample in family.samples:
                    if sample.labels.get("namespace") != namespace:
                        continue
                    if sample.name == "workflow_cache_step_hits_total":
                        found.hits += sample.value
                    elif sample.name == "workflow_cache_step_misses_total":
                        found.misses += sample.value
                    elif sample.name == "workflow_cache_step_executions_total":
                        status = str(sample.labels.get("status", ""))
                        found.executions[status] = found.executions.get(status, 0) + sample.value
        except Exception as exc:  # untrusted endpoint: any failure is "unreachable"
            log.warning("metrics endpoint %s unreadable: %s", url, type(exc).__name__)
            counters.unreachable += 1
            continue
        counters.hits += found.hits
        counters.misses += found.misses
        for status, count in found.executions.items():
            counters.executions[status] = counters.executions.get(status, 0) + count
        counters.answered += 1
    return counters
