"""Time-to-live values: seconds, ``timedelta`` or ISO 8601 durations such as ``PT1H``.

Durations follow Java's ``Duration`` form (days, hours, minutes, seconds), the
form Kestra flows use. Years and months are refused: their length depends on
the calendar, and a cache lifetime should not. Nothing may exceed
:data:`MAX_DURATION` (100 years): longer values overflow date arithmetic or,
just below that, turn every later comparison with a creation time into an error.
"""

from __future__ import annotations

import math
import re
from datetime import timedelta

_ISO = re.compile(
    r"""
    (?P<sign>[-+])?P
    (?:(?P<weeks>\d+(?:[.,]\d+)?)W)?
    (?:(?P<days>\d+(?:[.,]\d+)?)D)?
    (?:T
        (?:(?P<hours>\d+(?:[.,]\d+)?)H)?
        (?:(?P<minutes>\d+(?:[.,]\d+)?)M)?
        (?:(?P<seconds>\d+(?:[.,]\d+)?)S)?
    )?
    """,
    re.VERBOSE | re.IGNORECASE,
)

TTL = float | int | timedelta | str

MAX_DURATION = timedelta(days=36525)
"""The longest duration accepted anywhere: 100 years."""

_UNIT_SECONDS = {"weeks": 604800, "days": 86400, "hours": 3600, "minutes": 60, "seconds": 1}


class DurationError(ValueError):
    """A duration that is not an ISO 8601 duration (or a number of seconds)."""


def parse_iso_duration(text: str) -> timedelta:
    """Parse ``PT1H``, ``P1D``, ``PT0.5S``...; raise :class:`DurationError` naming the text."""
    match = _ISO.fullmatch(text.strip())
    parts = match.groupdict() if match else {}
    units = {k: v for k, v in parts.items() if k != "sign" and v is not None}
    if not match or not units or text.strip().upper().endswith("T"):
        raise DurationError(
            f"invalid duration {text!r}: expected an ISO 8601 duration such as "
            "'PT1H', 'PT30M', 'P1D' or 'P1DT12H' (days, hours, minutes, seconds)"
        )
    numbers = {k: float(v.replace(",", ".")) for k, v in units.items()}
    _check_bound(sum(_UNIT_SECONDS[k] * n for k, n in numbers.items()), text)
    delta = timedelta(**numbers)
    return -delta if parts["sign"] == "-" else delta


def _check_bound(seconds: float, shown: object) -> None:
    text = repr(shown) if len(repr(shown)) <= 40 else repr(shown)[:37] + "..."
    if math.isnan(seconds):
        raise DurationError(f"duration {text} is not a number")
    if abs(seconds) > MAX_DURATION.total_seconds():
        raise DurationError(
            f"duration {text} is longer than the limit of 100 years ({MAX_DURATION.days} days)"
        )


def to_timedelta(value: TTL | None, *, name: str = "ttl") -> timedelta | None:
    """Normalise a TTL option; ``None`` means "never expires"."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise TypeError(f"{name} must be seconds, a timedelta or an ISO 8601 string, not bool")
    if isinstance(value, timedelta):
        delta = value
    elif isinstance(value, int | float):
        try:
            _check_bound(float(value), value)
        except (DurationError, OverflowError) as exc:
            message = str(exc) if isinstance(exc, DurationError) else "the value is too large"
            raise DurationError(f"{name}: {message}") from None
        delta = timedelta(seconds=value)
    elif isinstance(value, str):
        try:
            delta = parse_iso_duration(value)
        except DurationError as exc:
            raise DurationError(f"{name}: {exc}") from None
    else:
        raise TypeError(
            f"{name} must be seconds, a timedelta or an ISO 8601 string, not {type(value).__name__}"
        )
    if delta <= timedelta(0):
        raise DurationError(f"{name} must be positive, got {value!r}")
    if delta > MAX_DURATION:
        raise DurationError(f"{name}: duration {value!r} is longer than the limit of 100 years")
    return delta


def to_seconds(value: TTL | None, *, name: str = "ttl") -> float | None:
    delta = to_timedelta(value, name=name)
    return None if delta is None else delta.total_seconds()
