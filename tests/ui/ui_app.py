"""The Celery app of the dashboard tests, run by real ``celery -A tests.ui.ui_app worker``.

Configured at import from ``WORKFLOW_CACHE_*`` (a namespace and queues of the test's
own). Its workflows end the three ways a dashboard must show: done, failed, and
suspended on a step that only a worker started later (on ``LATER_QUEUE``) runs.
"""

from __future__ import annotations

import os

from workflow_cache.distributed import workflow_task
from workflow_cache.distributed.fleet import fleet_app
from workflow_cache.distributed.settings import WorkerSettings

settings = WorkerSettings()
app, cache = fleet_app("wfc_ui_tests", settings)
LATER_QUEUE = os.environ.get("UI_TESTS_LATER_QUEUE", "ui-later")
NOBODY_QUEUE = os.environ.get("UI_TESTS_NOBODY_QUEUE", "ui-nobody")


@app.task(name="ui.echo", shared=False)
def echo(value: object) -> object:
    return value


@workflow_task(app, name="ui.finishes", queue=settings.workflow_queue)
def finishes(step, tag: str) -> str:
    """One dispatched step, then done with its value."""
    return str(step(echo.s(f"{tag} done"), key=f"{tag}:echo"))


@workflow_task(app, name="ui.fails", queue=settings.workflow_queue)
def fails(step, tag: str) -> None:
    """One dispatched step, then the workflow's own code fails."""
    step(echo.s(tag), key=f"{tag}:echo")
    raise ValueError(f"{tag} failed on purpose")


@workflow_task(app, name="ui.waits", queue=settings.workflow_queue)
def waits(step, tag: str) -> str:
    """Suspends on a step sent to ``LATER_QUEUE``, which no worker serves until a test
    starts one; then finishes with the step's value."""
    return str(step(echo.s(f"{tag} later").set(queue=LATER_QUEUE), key=f"{tag}:later"))


@workflow_task(app, name="ui.stuck", queue=settings.workflow_queue)
def stuck(step, tag: str) -> str:
    """Suspends on a step no worker ever runs: only cancelling ends it."""
    return str(step(echo.s(tag).set(queue=NOBODY_QUEUE), key=f"{tag}:never"))
