"""The Celery app of bench_scale.py's workers: a no-op step and a one-step workflow.

Configured from the same ``WORKFLOW_CACHE_*`` variables as ``workers/app.py``. Unlike
the other bench apps it records nothing in Redis, so that every command the servers
count is one the library (or Celery) sent.
"""

from __future__ import annotations

from typing import Any

from workflow_cache.distributed import workflow_task
from workflow_cache.distributed.fleet import fleet_app
from workflow_cache.settings import current

settings = current()
app, cache = fleet_app("wfc_scale", settings)


@app.task(name="scale.noop", shared=False)
def noop(value: Any) -> Any:
    """A body that costs nothing: what a step costs Redis is then the path's own cost."""
    return value


def _one_step(step: Any, tag: str) -> Any:
    return step(noop.s(tag), key=tag)


flow = workflow_task(app, _one_step, name="scale.flow", queue=settings.workflow_queue)
