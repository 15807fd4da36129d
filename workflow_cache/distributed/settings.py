"""Worker configuration from the environment (``WFC_*`` variables), with pydantic-settings."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class WorkerSettings(BaseSettings):
    """Everything a worker or producer needs to join a fleet; one env var per field."""

    model_config = SettingsConfigDict(env_prefix="WFC_", extra="forbid")

    broker_url: str = "redis://localhost:6379/0"
    result_backend: str | None = Field(
        default=None, description="Where workflow results go; defaults to the broker URL."
    )
    cache_url: str | None = Field(
        default=None, description="Redis for step outcomes; defaults to the broker URL."
    )
    namespace: str = "default"
    storage: str | None = Field(
        default=None,
        description="fsspec URL of working-directory archives (s3://bucket/prefix); "
        "defaults to a local folder, which only one machine sees.",
    )
    step_queue: str = "steps"
    workflow_queue: str = "workflows"
    lease: float = Field(default=5.0, gt=0, description="Seconds a claim lives unless renewed.")
    visibility_timeout: int = Field(
        default=3600,
        gt=0,
        description="Seconds before Redis redelivers an unacknowledged task (crashed worker).",
    )

    @property
    def cache(self) -> str:
        return self.cache_url or self.broker_url

    @property
    def backend(self) -> str:
        return self.result_backend or self.broker_url
