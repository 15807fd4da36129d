"""Every setting of the library, CLI, flows and fleet: one model, one ``WORKFLOW_CACHE_`` prefix.

``Settings()`` reads ``WORKFLOW_CACHE_<FIELD>`` variables (and a ``.env`` file when
``WORKFLOW_CACHE_ENV_FILE`` names one). A variable that carries the prefix but names no
field is almost always a typo that would otherwise fall back to a default silently, so
it raises a :class:`SettingsWarning` naming the closest valid variable. The variables of
the old ``WFC_`` scheme are no longer read; setting one warns with its new name.
"""

from __future__ import annotations

import difflib
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from workflow_cache.duration import DurationError, to_seconds
from workflow_cache.pacing import DEFAULT_SLICE
from workflow_cache.trust_config import DEFAULT_MAX_RESTORE_BYTES

__all__ = ["PREFIX", "Settings", "SettingsWarning", "unknown_variables"]

PREFIX = "WORKFLOW_CACHE_"
_OLD_PREFIX = "WFC_"
_OLD_NAMES = {"broker_url": "broker"}
"""Fields of the old ``WFC_`` scheme whose name changed in the new one."""
_DEFAULT_BROKER = "redis://localhost:6379/0"


class SettingsWarning(UserWarning):
    """A ``WORKFLOW_CACHE_*`` (or old ``WFC_*``) variable that no setting reads."""


class Settings(BaseSettings):
    """The one settings model; each field is read from ``WORKFLOW_CACHE_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix=PREFIX, extra="ignore", validate_default=True)

    home: Path | None = Field(
        default=None,
        description="Folder of the local caches (steps/ and files/); "
        "default $XDG_CACHE_HOME/workflow-cache or ~/.cache/workflow-cache.",
    )
    broker: str | None = Field(
        default=None,
        description="Celery broker URL. The CLI runs flows on workers when it is set; "
        "workers and producers fall back to redis://localhost:6379/0.",
    )
    result_backend: str | None = Field(
        default=None, description="Celery result backend; default: the broker when it is Redis."
    )
    cache_url: str | None = Field(
        default=None, description="Redis URL of step outcomes; default: the broker."
    )
    namespace: str = Field(default="default", description="Namespace of step outcomes in Redis.")
    default_ttl: float | None = Field(
        default=None,
        description="Cache-wide time-to-live of step outcomes (seconds or ISO 8601 such as "
        "P7D) for steps that give none; default: kept until deleted.",
    )
    storage: str | None = Field(
        default=None,
        description="Folder or fsspec URL (s3://bucket/prefix) of working-directory archives; "
        "default: <home>/files, which only one machine sees.",
    )
    max_storage_bytes: int | None = Field(
        default=None,
        gt=0,
        description="Size cap of the archive storage used by `cache prune` "
        "(least recently restored entries go first); default: no cap.",
    )
    outputs: Path | None = Field(default=None, description="Folder for flows' outputFiles.")
    work_root: Path | None = Field(
        default=None, description="Where flows make fresh task folders; default: a temp folder."
    )
    step_queue: str = Field(default="steps", description="Celery queue of dispatched steps.")
    workflow_queue: str = Field(
        default="workflows", description="Celery queue of enqueued workflows and flows."
    )
    lease: float = Field(default=5.0, gt=0, description="Seconds a claim lives unless renewed.")
    block_timeout: float = Field(
        default=600.0,
        gt=0,
        description="Seconds a blocking workflow task (suspend=False) waits for one step "
        "before failing with an error naming the step and its queue.",
    )
    visibility_timeout: int = Field(
        default=3600,
        gt=0,
        description="Seconds an unacknowledged task must wait before a worker's sweep "
        "redelivers it (crashed machine); the sweep adds up to 100 s (docs/faults.md).",
    )
    redis_connect_timeout: float = Field(
        default=2.0, gt=0, description="Seconds to open a connection to the step cache's Redis."
    )
    redis_socket_timeout: float = Field(
        default=5.0,
        gt=0,
        description="Seconds one step-cache Redis call may wait for its reply "
        "(a hung server is CacheUnavailable after this).",
    )
    async_slice: float = Field(
        default=DEFAULT_SLICE,
        ge=0,
        description="Seconds of one event-loop iteration that a burst of async workflow "
        "starts may take before the rest wait for the next iterations (0: no pacing).",
    )
    signing_key: SecretStr | None = Field(
        default=None,
        description="Secret for HMAC-SHA256 signatures of stored entries (several, comma-"
        "separated, for rotation: the first signs, all verify); entries are signed and "
        "verified when it is set (docs/trust.md).",
    )
    signing_keys: SecretStr | None = Field(
        default=None,
        description="More verifying keys, comma-separated, added after `signing_key` "
        "(a key being retired).",
    )
    max_restore_bytes: int = Field(
        default=DEFAULT_MAX_RESTORE_BYTES,
        gt=0,
        description="The most file bytes one archive restore may write; past it the "
        "restore is a miss.",
    )
    metrics_port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description="Port on which a worker serves Prometheus metrics (/metrics); "
        "default: no endpoint.",
    )
    metrics_addr: str = Field(default="0.0.0.0", description="Address of the metrics endpoint.")
    metrics_dir: Path | None = Field(
        default=None,
        description="Folder where prefork worker processes share their metrics; "
        "default: a fresh temporary folder per worker.",
    )

    @field_validator("default_ttl", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> float | None:
        if value is None or value == "":
            return None
        if isinstance(value, str) and value.replace(".", "", 1).isdigit():
            value = float(value)
        try:
            return to_seconds(value, name="default_ttl")
        except DurationError as exc:
            raise ValueError(str(exc)) from exc

    def model_post_init(self, context: Any, /) -> None:
        for message in unknown_variables(os.environ):
            _warn_once(message)

    @property
    def broker_url(self) -> str:
        """The broker that workers and producers join."""
        return self.broker or _DEFAULT_BROKER

    @property
    def cache(self) -> str:
        """Redis URL of step outcomes."""
        return self.cache_url or self.broker_url

    @property
    def backend(self) -> str:
        """Celery result backend of the fleet."""
        return self.result_backend or self.broker_url

    @classmethod
    def variables(cls) -> dict[str, str]:
        """``{"WORKFLOW_CACHE_HOME": description, ...}`` for every setting."""
        return {
            f"{PREFIX}{name.upper()}": field.description or ""
            for name, field in cls.model_fields.items()
        }


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """One message per prefixed variable no setting reads, naming the closest valid one."""
    known = {name.upper() for name in Settings.model_fields} | {"ENV_FILE"}
    messages = []
    for variable in sorted(environ):
        upper = variable.upper()
        if upper.startswith(PREFIX):
            rest = upper[len(PREFIX) :]
            if rest in known:
                continue
            close = difflib.get_close_matches(rest, sorted(known), n=1, cutoff=0.5)
            hint = f"; did you mean {PREFIX}{close[0]}?" if close else ""
            messages.append(f"unknown setting {variable}{hint}")
        elif upper.startswith(_OLD_PREFIX):
            rest = upper[len(_OLD_PREFIX) :].lower()
            new = _OLD_NAMES.get(rest, rest)
            if new in Settings.model_fields:
                messages.append(f"{variable} is no longer read; use {PREFIX}{new.upper()}")
    return messages


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, SettingsWarning, stacklevel=4)


def load(**overrides: Any) -> Settings:
    """``Settings`` from the environment, with ``.env`` from ``WORKFLOW_CACHE_ENV_FILE``."""
    env_file = os.environ.get(f"{PREFIX}ENV_FILE")
    if env_file:
        return Settings(_env_file=env_file, **overrides)  # type: ignore[call-arg]
    return Settings(**overrides)
