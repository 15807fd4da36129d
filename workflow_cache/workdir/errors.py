"""The one error type of flows: its message is meant for the user as it is."""

from __future__ import annotations


class FlowError(Exception):
    """A flow that cannot be loaded or run; the message is meant for the user as it is."""
