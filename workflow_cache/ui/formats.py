"""How the dashboard writes times, durations, sizes and stored values as text.

The page's script (``static/ui.js``) writes the same formats when it refreshes a
page from the JSON API, so a refreshed cell reads like a rendered one.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from typing import Any

from workflow_cache.units import human_bytes

__all__ = ["TEXT_LIMIT", "as_text", "moment", "seconds", "size"]

TEXT_LIMIT = 4000
"""Characters of a stored value or error the dashboard shows; the rest is cut."""


def moment(epoch: Any) -> str:
    """``1700000000.0`` -> ``"2023-11-14 22:13:20"`` (UTC); ``""`` for no time."""
    if not isinstance(epoch, int | float) or isinstance(epoch, bool) or not math.isfinite(epoch):
        return ""
    try:
        return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S")
    except (OverflowError, OSError, ValueError):
        return ""


def seconds(value: Any) -> str:
    """``1.234`` -> ``"1.23 s"``; ``""`` when unknown."""
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        return ""
    return f"{value:.2f} s"


def size(value: Any) -> str:
    """Bytes in SI units, as the CLI prints them."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        return ""
    return human_bytes(value)


def as_text(value: Any, limit: int = TEXT_LIMIT) -> str:
    """A stored value as JSON text (never ``repr``), cut to ``limit`` characters.

    Stored values came from JSON, so they dump back; anything else is shown by type.
    """
    try:
        text = json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True)
    except (TypeError, ValueError):
        text = f"<{type(value).__name__}>"
    if len(text) > limit:
        text = f"{text[:limit]}\n… ({len(text) - limit} more characters not shown)"
    return text
