"""Every setting of the library, CLI, flows and fleet: one model, one ``WORKFLOW_CACHE_`` prefix.

``Settings`` is the only code that reads ``WORKFLOW_CACHE_<FIELD>`` variables and the
``.env`` file that ``WORKFLOW_CACHE_ENV_FILE`` names; every other module is given
values (the signer its keys, the file cache its restore cap, a pacer its slice).
:func:`current` is the process's settings, read once on first use; :func:`reload`
reads them again (tests that change the environment, the CLI at start), and what was
made from the old ones (the process's signer) is made again on its next use.

A variable that carries the prefix but names no field is almost always a typo that
would otherwise fall back to a default silently, so it raises a
:class:`SettingsWarning` naming the closest valid variable; a keyword that names no
field is a ``TypeError`` naming the closest one. The variables of the old ``WFC_``
scheme are no longer read; setting one warns with its new name.
"""

from __future__ import annotations

import difflib
import inspect
import os
import threading
import warnings
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from workflow_cache.defaults import DEFAULT_ASYNC_SLICE, DEFAULT_BROKER
from workflow_cache.duration import DurationError, to_seconds
from workflow_cache.trust_config import DEFAULT_MAX_RESTORE_BYTES, parse_keys

__all__ = [
    "ENV_FILE_VARIABLE",
    "PREFIX",
    "Settings",
    "SettingsWarning",
    "current",
    "error_line",
    "forget",
    "load",
    "on_reload",
    "redis_backend",
    "reload",
    "unknown_variables",
    "use",
]

PREFIX = "WORKFLOW_CACHE_"
ENV_FILE_VARIABLE = f"{PREFIX}ENV_FILE"
_OLD_PREFIX = "WFC_"
_RENAMED = {"broker_url": "broker"}
"""Old names of fields (the ``WFC_`` scheme, the fleet's old keyword) and their new ones."""
_REDIS_SCHEMES = ("redis://", "rediss://")
_SECRETS = frozenset({"signing_key", "signing_keys", "ui_token"})
_INIT_OPTIONS = frozenset(
    name for name in inspect.signature(BaseSettings.__init__).parameters if name.startswith("_")
)
"""pydantic-settings' own keywords (``_env_file``, ...), which are not fields."""


class SettingsWarning(UserWarning):
    """A ``WORKFLOW_CACHE_*`` (or old ``WFC_*``) variable that no setting reads."""


def _default_home() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "workflow-cache"


class Settings(BaseSettings):
    """The one settings model; each field is read from ``WORKFLOW_CACHE_<FIELD>``."""

    model_config = SettingsConfigDict(
        env_prefix=PREFIX,
        env_ignore_empty=True,  # an empty variable (``KEY=`` in a .env file) is no setting
        extra="ignore",
        validate_default=True,
        hide_input_in_errors=True,  # no secret in an error's text
    )

    home: Path = Field(
        default_factory=_default_home,
        description="Folder of the local caches (steps/ and files/); "
        "default $XDG_CACHE_HOME/workflow-cache or ~/.cache/workflow-cache.",
    )
    broker: str | None = Field(
        default=None,
        description="Celery broker URL. The CLI runs flows on workers when it is set; "
        f"workers and producers fall back to {DEFAULT_BROKER}.",
    )
    result_backend: str | None = Field(
        default=None, description="Celery result backend; default: the broker when it is Redis."
    )
    cache_url: str | None = Field(
        default=None,
        description="Redis URL of step outcomes; default: the broker when it is Redis "
        f"(else {DEFAULT_BROKER}; the `steps` command: the local cache).",
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
    secrets_file: Path | None = Field(
        default=None,
        description="File of SECRET_<NAME>=<base64> lines that secret('NAME') in flows reads, "
        "besides the SECRET_<NAME> variables of the environment.",
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
    run_retention: float = Field(
        default=7 * 24 * 3600.0,
        gt=0,
        description="Seconds a finished (or cancelled) workflow run's record and outcome "
        "are kept; a live run's record never expires.",
    )
    reconcile_interval: float = Field(
        default=1.0,
        gt=0,
        description="Seconds between two looks of the fleet's run reconciler (one worker "
        "per interval) at the runs that are due: lapsed leases, lost resumes.",
    )
    run_recheck: float = Field(
        default=2.0,
        gt=0,
        description="Seconds after a run suspends (or is resumed) before the reconciler "
        "checks it from state; each further check waits twice as long, up to 60 s.",
    )
    continue_inline: bool = Field(
        default=True,
        description="A worker whose step commit resumes a run carries the run on in the "
        "same slot when it serves the workflow's queue (no resume message); false: always "
        "send the resume as a message.",
    )
    receipt_after: float = Field(
        default=0.05,
        ge=0,
        description="Seconds a step message a worker received may wait for a pool slot before "
        "the worker records that it holds it (the reconciler then knows it lost if the worker "
        "dies); a message started sooner costs no record (0: record every message at once).",
    )
    suspend_after: float = Field(
        default=0.0,
        ge=0,
        description="Seconds a workflow delivery that sent dispatched steps waits in its slot "
        "for them before it suspends; steps done by then cost no resume (0, the default: "
        "suspend at once and hold no slot).",
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
        default=DEFAULT_ASYNC_SLICE,
        ge=0,
        description="Seconds of one event-loop iteration that a burst of async workflow "
        "starts, or of callers woken by answered reads and scripts, may take before the "
        "rest wait for the next iterations (0: no pacing).",
    )
    signing_key: SecretStr | None = Field(
        default=None,
        description="Secret for HMAC-SHA256 signatures of stored entries (several, comma-"
        "separated, for rotation: the first signs, all verify), each at least 16 characters; "
        "entries are signed and verified when it is set (docs/trust.md).",
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
    ui_token: SecretStr | None = Field(
        default=None,
        description="Token the web dashboard (`workflow-cache ui`) asks of every request; "
        "required to bind any address but loopback.",
    )
    local_store_bytes: int = Field(
        default=5 << 30,
        ge=0,
        description="File bytes of unpacked cache entries a worker keeps under <home>/local "
        "so a restore links files instead of writing them (least recently used go first); "
        "0: no local store.",
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

    def __init__(self, **values: Any) -> None:
        """Refuse a keyword that names no field (``TypeError``) and read the ``.env`` file."""
        for name in values:
            if name not in type(self).model_fields and name not in _INIT_OPTIONS:
                raise TypeError(_unknown_keyword(type(self).__name__, name))
        env_file = os.environ.get(ENV_FILE_VARIABLE)
        if env_file and "_env_file" not in values:
            if not Path(env_file).is_file():
                raise FileNotFoundError(f"{ENV_FILE_VARIABLE} names {env_file}, which is no file")
            values["_env_file"] = env_file
        super().__init__(**values)

    @field_validator("home", mode="after")
    @classmethod
    def _expand_home(cls, value: Path) -> Path:
        return value.expanduser()

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

    @field_validator("signing_key", "signing_keys", mode="after")
    @classmethod
    def _usable_keys(cls, value: SecretStr | None) -> SecretStr | None:
        parse_keys(None if value is None else value.get_secret_value())
        return value

    def model_post_init(self, context: Any, /) -> None:
        names: Iterable[str] = os.environ
        env_file = os.environ.get(ENV_FILE_VARIABLE)
        if env_file:
            from dotenv import dotenv_values  # pydantic-settings' own .env reader

            names = [*os.environ, *dotenv_values(env_file)]
        for message in unknown_variables(dict.fromkeys(names, "")):
            _warn_once(message)

    @property
    def broker_url(self) -> str:
        """The broker that workers and producers join."""
        return self.broker or DEFAULT_BROKER

    @property
    def configured_cache(self) -> str | None:
        """The Redis of step outcomes these settings name (``cache_url``, else a Redis
        broker); None when they name none (the ``steps`` command then uses the local cache)."""
        if self.cache_url:
            return self.cache_url
        broker = self.broker or ""
        return broker if broker.startswith(_REDIS_SCHEMES) else None

    @property
    def cache(self) -> str:
        """Redis URL of step outcomes: :attr:`configured_cache`, else the default broker's."""
        return self.configured_cache or DEFAULT_BROKER

    @property
    def backend(self) -> str | None:
        """Celery result backend: ``result_backend``, else the broker when it is Redis."""
        return redis_backend(self.broker_url, self.result_backend)

    @property
    def signing_key_list(self) -> tuple[bytes, ...]:
        """The signing keys, the one that signs first; empty when signing is off."""
        first, more = self.signing_key, self.signing_keys
        return parse_keys(
            None if first is None else first.get_secret_value(),
            None if more is None else more.get_secret_value(),
        )

    @classmethod
    def variables(cls) -> dict[str, str]:
        """``{"WORKFLOW_CACHE_HOME": description, ...}`` for every setting."""
        return {
            f"{PREFIX}{name.upper()}": field.description or ""
            for name, field in cls.model_fields.items()
        }


def redis_backend(broker: str, backend: str | None = None) -> str | None:
    """``backend`` when given, else ``broker`` when it is Redis, else None (no backend)."""
    if backend:
        return backend
    return broker if broker.startswith(_REDIS_SCHEMES) else None


def _unknown_keyword(owner: str, name: str) -> str:
    fields = sorted(Settings.model_fields)
    close = _RENAMED.get(name) or next(
        iter(difflib.get_close_matches(name, fields, n=1, cutoff=0.5)), None
    )
    hint = f"; did you mean {close!r}?" if close else ""
    return f"{owner}() got an unexpected keyword argument {name!r}{hint}"


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
            new = _RENAMED.get(rest, rest)
            if new in Settings.model_fields:
                messages.append(f"{variable} is no longer read; use {PREFIX}{new.upper()}")
    return messages


def error_line(exc: ValidationError) -> str:
    """One line for the first bad setting, naming its variable; a secret's value never shows."""
    first = exc.errors()[0]
    name = "_".join(str(part) for part in first["loc"])
    line = f"setting {PREFIX}{name.upper()}: {first['msg'].removeprefix('Value error, ')}"
    return line if name in _SECRETS else f"{line} (got {first.get('input')!r})"


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, SettingsWarning, stacklevel=5)


def load(**overrides: Any) -> Settings:
    """Settings read now from the environment (and the ``.env`` file); not kept.

    Most code wants :func:`current`, the process's settings.
    """
    return Settings(**overrides)


_current: Settings | None = None
_lock = threading.Lock()
_listeners: list[Callable[[], None]] = []


def current() -> Settings:
    """The process's settings: read on first use, then kept until :func:`reload`."""
    found = _current
    if found is not None:
        return found
    with _lock:
        return _current if _current is not None else _replace(Settings())


def reload(**overrides: Any) -> Settings:
    """Read the process's settings again, now (``overrides`` win over the environment).

    For tests that change the environment and for the CLI at start; what was made from
    the old settings (the process's signer) is made again when next used.
    """
    settings = Settings(**overrides)
    with _lock:
        return _replace(settings)


def use(settings: Settings) -> Settings:
    """Make ``settings`` the process's (a fleet app's own settings, a test's)."""
    with _lock:
        return _replace(settings)


def forget() -> None:
    """Drop the process's settings: the next :func:`current` reads them again."""
    global _current
    with _lock:
        _current = None
        _notify()


def on_reload(listener: Callable[[], None]) -> None:
    """Call ``listener`` whenever the process's settings are replaced (once per listener)."""
    if listener not in _listeners:
        _listeners.append(listener)


def _replace(settings: Settings) -> Settings:
    global _current
    _current = settings
    _notify()
    return settings


def _notify() -> None:
    for listener in _listeners:
        listener()
