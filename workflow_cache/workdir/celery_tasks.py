"""Run flows on Celery workers: the flow travels as YAML text and the summary comes back as JSON.

Workers find storage in this order: the ``storage`` argument of the call, the
app setting ``workflow_cache_storage``, the ``WORKFLOW_CACHE_STORAGE`` variable,
then the local default folder. Workers on many machines need shared storage
(``s3://...`` or a shared file system) to restore each other's entries.
"""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Mapping
from typing import Any

from celery import Celery, Task, shared_task

from workflow_cache.celery_app import RUN_FLOW, celery_app
from workflow_cache.settings import current, redis_backend
from workflow_cache.workdir.flow import FlowSummary, run_flow
from workflow_cache.workdir.inputs import InputError, resolve_inputs
from workflow_cache.workdir.loader import parse_flow
from workflow_cache.workdir.rendering import FlowRenderer
from workflow_cache.workdir.spec import FlowError

log = logging.getLogger("workflow_cache.workdir.celery")


def _setting(app: Celery, name: str) -> str | None:
    """An app setting ``workflow_cache_<name>``, else the ``WORKFLOW_CACHE_<NAME>`` setting."""
    value = app.conf.get(f"workflow_cache_{name}") or getattr(current(), name)
    return None if value is None else str(value) or None


@shared_task(bind=True, name=RUN_FLOW, acks_late=True)  # type: ignore[untyped-decorator]
def run_flow_task(
    self: Task,
    flow_yaml: str,
    source: str = "<flow>",
    storage: str | None = None,
    namespace: str | None = None,
    inputs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run a flow on this worker; return ``{"summary": ...}`` or ``{"error": message}``.

    Bad flows come back as a message rather than an exception, so the producer
    shows the same one-line error it would show for a local run.
    """
    try:
        flow = parse_flow(flow_yaml, source=source)
        if namespace:
            flow = flow.model_copy(update={"namespace": namespace})

        def sink(task_id: str, stream: str, line: str) -> None:
            log.info("[%s] %s", task_id, line)

        summary = run_flow(
            flow,
            storage=storage or _setting(self.app, "storage"),
            work_root=_setting(self.app, "work_root"),
            outputs_dir=_setting(self.app, "outputs"),
            sink=sink,
            inputs=inputs,
        )
    except FlowError as exc:
        return {"error": str(exc)}
    summary.worker = self.request.hostname or socket.gethostname()
    return {"summary": summary.to_dict()}


def make_app(
    broker: str,
    backend: str | None = None,
    settings: Mapping[str, Any] | None = None,
) -> Celery:
    """A Celery app that knows the flow task; the result backend defaults to a Redis broker.

    It has the reliability settings of every app of the library
    (:mod:`workflow_cache.celery_app`); ``settings`` adds app settings.
    """
    app = celery_app(
        "workflow_cache",
        broker=broker,
        backend=redis_backend(broker, backend),
        visibility_timeout=current().visibility_timeout,
        set_as_current=False,
        **(settings or {}),
    )
    return app  # shared tasks such as run_flow_task join every app when it is finalised


def submit_flow(
    flow_yaml: str,
    *,
    app: Celery,
    source: str = "<flow>",
    storage: str | None = None,
    namespace: str | None = None,
    queue: str | None = None,
    timeout: float | None = None,
    inputs: Mapping[str, Any] | None = None,
) -> FlowSummary:
    """Send a flow to the workers, wait for it, and return its summary.

    ``inputs`` travel as JSON; they are checked here too, except that FILE
    inputs name files on the worker, whose existence only the worker can check.
    """
    flow = parse_flow(flow_yaml, source=source)  # refuse bad flows before they reach a queue
    values = resolve_inputs(flow.inputs, inputs, check_files=False)
    FlowRenderer(flow, values).check()
    kwargs: dict[str, Any] = {"source": source, "storage": storage, "namespace": namespace}
    if inputs:
        kwargs["inputs"] = _as_json(dict(inputs))
    result = app.send_task(RUN_FLOW, args=[flow_yaml], kwargs=kwargs, queue=queue)
    try:
        reply = result.get(timeout=timeout, propagate=True, disable_sync_subtasks=False)
    finally:
        result.forget()
    if "error" in reply:
        raise FlowError(reply["error"])
    return FlowSummary.from_dict(reply["summary"])


def _as_json(values: dict[str, Any]) -> dict[str, Any]:
    """Input values as JSON the message can carry (a Path as its text)."""
    try:
        copied: dict[str, Any] = json.loads(json.dumps(values, default=str))
    except (TypeError, ValueError) as exc:
        raise InputError(f"input values cannot be sent as JSON: {exc}") from None
    return copied


_env_app: Celery | None = None


def __getattr__(name: str) -> Any:
    """``celery -A workflow_cache.workdir.celery_tasks worker`` finds ``app`` here.

    The app is built on first use from ``$WORKFLOW_CACHE_BROKER`` (and
    ``$WORKFLOW_CACHE_RESULT_BACKEND``), so importing this module creates no app.
    """
    global _env_app
    if name != "app":
        raise AttributeError(name)
    if _env_app is None:
        configured = current()
        if not configured.broker:
            raise RuntimeError(
                "set WORKFLOW_CACHE_BROKER to the broker URL, e.g. redis://host:6379/0"
            )
        _env_app = make_app(configured.broker, configured.result_backend)
    return _env_app
