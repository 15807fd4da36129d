"""Defaults that the settings model and the modules below it share, so neither imports the other.

``pacing`` needs its default slice at import time, before (and without) loading
pydantic-settings; the settings model needs it as a field default.
"""

from __future__ import annotations

__all__ = ["DEFAULT_ASYNC_SLICE", "DEFAULT_BROKER"]

DEFAULT_ASYNC_SLICE = 0.001
"""Seconds of one event-loop iteration that a burst of async workflow starts may take."""

DEFAULT_BROKER = "redis://localhost:6379/0"
"""The broker (and step cache) of producers and workers that are given none."""
