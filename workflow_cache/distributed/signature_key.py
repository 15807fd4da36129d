"""A step key derived from a signature: task name, arguments and an explicit version, hashed.

Opt-in (``step(sig, key=signature_key(sig, version="2"))``): the key changes whenever
the inputs do, and the version is how the code's author says "results of the old code
no longer count". Options such as queue or priority are not part of it: they change
where a task runs, not what it returns.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from workflow_cache.distributed.canvas import require_task

PREFIX = "sig"


def signature_key(sig: Any, *, version: str | int | None = None) -> str:
    """``sig:<task name>[@<version>]:<sha256 of name, args, kwargs and version>``.

    Arguments must be JSON (as a JSON-serialized Celery message's are); dict order does
    not matter. A ``TypeError`` names the argument that is not.
    """
    task = require_task(sig)
    if version is not None and not isinstance(version, str | int):
        raise TypeError(f"version must be a str or int, not {type(version).__name__}")
    data = {
        "task": task.task,
        "args": list(task.args),
        "kwargs": dict(task.kwargs),
        "version": version,
    }
    try:
        text = json.dumps(data, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"signature_key({task.task}): arguments must be JSON values ({exc})"
        ) from None
    digest = hashlib.sha256(text.encode()).hexdigest()
    label = task.task if version is None else f"{task.task}@{version}"
    return f"{PREFIX}:{label}:{digest}"
