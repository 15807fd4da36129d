"""Pebble's filters as Kestra users know them, and how values print inside ``{{ }}``.

Values print the way Kestra prints them, not the way Python does: ``true``
rather than ``True``, nothing for a null, JSON for lists and maps, ISO 8601
for dates (``2024-01-31T12:00:00Z``) and durations (``PT1H30M``). The
``date`` filter takes Java's pattern letters (:mod:`.datepatterns`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from jinja2 import Undefined

from workflow_cache.workdir.datepatterns import DatePatternError, format_java, parse_java


class FilterError(ValueError):
    """A filter given a value or an argument it cannot use; the message names the filter."""


class RawText(str):
    """Text marked with ``| raw``: pasted into shell code as it is, the one dangerous form."""

    __slots__ = ()


def raw_filter(value: Any) -> RawText:
    return RawText(to_text(value))


def to_text(value: Any) -> str:
    """How a value prints in a rendered string."""
    if value is None:
        return ""
    if isinstance(value, Undefined):
        return str(value)  # a strict undefined raises here, naming the variable
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, datetime | date | time | timedelta):
        return _iso(value)
    if isinstance(value, Mapping | list | tuple):
        return to_json(value)
    return str(value)


def _iso(value: datetime | date | time | timedelta) -> str:
    if isinstance(value, timedelta):
        return iso_duration(value)
    if isinstance(value, datetime) and value.utcoffset() == timedelta(0):
        value = value.replace(tzinfo=None)
        spec = "seconds" if not value.microsecond else "auto"
        if value.microsecond and value.microsecond % 1000 == 0:
            spec = "milliseconds"
        return value.isoformat(timespec=spec) + "Z"
    return value.isoformat()


def iso_duration(value: timedelta) -> str:
    """``PT1H30M`` for 90 minutes: hours, minutes and seconds, as Java's Duration prints."""
    micros = round(value.total_seconds() * 1_000_000)
    sign = "-" if micros < 0 else ""
    micros = abs(micros)
    hours, rest = divmod(micros, 3_600_000_000)
    minutes, rest = divmod(rest, 60_000_000)
    seconds, fraction = divmod(rest, 1_000_000)
    text = "PT"
    if hours:
        text += f"{sign}{hours}H"
    if minutes:
        text += f"{sign}{minutes}M"
    if seconds or fraction or text == "PT":
        digits = f".{fraction:06d}".rstrip("0") if fraction else ""
        text += f"{sign}{seconds}{digits}S"
    return text


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime | date | time | timedelta):
        return _iso(value)
    if isinstance(value, Undefined):
        return str(value)
    raise TypeError(f"{type(value).__name__} cannot be written as JSON")


def to_json(value: Any) -> str:
    """Compact JSON, as Kestra's ``toJson`` writes it."""
    return json.dumps(value, default=_json_default, ensure_ascii=False, separators=(",", ":"))


_NAMED = {
    "iso_date": "yyyy-MM-dd",
    "iso_local_date": "yyyy-MM-dd",
    "basic_iso_date": "yyyyMMdd",
    "iso_time": "HH:mm:ss",
    "iso_local_time": "HH:mm:ss",
    "iso_local_date_time": "yyyy-MM-dd'T'HH:mm:ss",
    "iso_sec": "yyyy-MM-dd'T'HH:mm:ssXXX",
    "iso_milli": "yyyy-MM-dd'T'HH:mm:ss.SSSXXX",
}
_ISO_NAMES = {"iso", "iso_date_time", "iso_offset_date_time", "iso_instant", "iso_zoned_date_time"}


def _moment(value: Any, existing: str | None) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return datetime.fromtimestamp(value, UTC)
    if isinstance(value, str):
        if existing is not None:
            try:
                return parse_java(value, existing)
            except DatePatternError as exc:
                raise FilterError(f"date: {exc}") from None
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise FilterError(
                f"date: {value!r} is not an ISO 8601 date; give existingFormat='...' to read it"
            ) from None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    raise FilterError(f"date: expected a date, got {type(value).__name__} {to_text(value)!r}")


def date_filter(
    value: Any,
    format: str | None = None,  # Kestra's argument names
    existingFormat: str | None = None,
    timeZone: str | None = None,
    locale: str | None = None,
) -> str:
    """``{{ execution.startDate | date("yyyy-MM-dd") }}``; without a format, ISO 8601."""
    moment = _moment(value, existingFormat)
    if timeZone is not None:
        try:
            moment = moment.astimezone(ZoneInfo(timeZone))
        except (ZoneInfoNotFoundError, ValueError):
            raise FilterError(f"date: unknown time zone {timeZone!r}") from None
    if format is None or format in _ISO_NAMES:
        return _iso(moment)
    try:
        return format_java(moment, _NAMED.get(format, format))
    except DatePatternError as exc:
        raise FilterError(f"date: {exc}") from None


# --- the other filters -----------------------------------------------------------------------


def default_filter(value: Any, fallback: Any = "") -> Any:
    """The fallback when the value is undefined, null or empty, as Pebble's ``default``."""
    if isinstance(value, Undefined) or value is None:
        return fallback
    if isinstance(value, str | list | tuple | Mapping) and len(value) == 0:
        return fallback
    return value


def length_filter(value: Any) -> int:
    if value is None:
        return 0
    if isinstance(value, str | list | tuple | Mapping):
        return len(value)
    return len(to_text(value))


def replace_filter(value: Any, replacements: Any, regexp: bool = False) -> str:
    """``replace({'old': 'new', ...})``; ``regexp=true`` reads the keys as regular expressions."""
    if not isinstance(replacements, Mapping):
        raise FilterError(
            "replace: expected a map of replacements such as replace({'old': 'new'}), "
            f"got {to_text(replacements)!r}"
        )
    text = to_text(value)
    for old, new in replacements.items():
        if regexp:
            try:
                text = re.sub(to_text(old), to_text(new).replace("\\", "\\\\"), text)
            except re.error as exc:
                raise FilterError(f"replace: bad regular expression {old!r}: {exc}") from None
        else:
            text = text.replace(to_text(old), to_text(new))
    return text


def _sequence(name: str, value: Any) -> Any:
    if isinstance(value, str | list | tuple):
        return value
    if isinstance(value, Mapping):
        return list(value.values())
    raise FilterError(f"{name}: expected a list or text, got {to_text(value)!r}")


def first_filter(value: Any) -> Any:
    items = _sequence("first", value)
    return items[0] if items else None


def last_filter(value: Any) -> Any:
    items = _sequence("last", value)
    return items[-1] if items else None


def join_filter(value: Any, separator: str = "") -> str:
    if not isinstance(value, list | tuple):
        raise FilterError(f"join: expected a list, got {to_text(value)!r}")
    return to_text(separator).join(to_text(item) for item in value)


def keys_filter(value: Any) -> list[Any]:
    if not isinstance(value, Mapping):
        raise FilterError(f"keys: expected a map, got {to_text(value)!r}")
    return list(value.keys())


def values_filter(value: Any) -> list[Any]:
    if not isinstance(value, Mapping):
        raise FilterError(f"values: expected a map, got {to_text(value)!r}")
    return list(value.values())


def abs_filter(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise FilterError(f"abs: expected a number, got {to_text(value)!r}")
    return abs(value)


def _text_filter(operation: Callable[[str], str]) -> Callable[[Any], str]:
    return lambda value: operation(to_text(value))


FILTERS: dict[str, Callable[..., Any]] = {
    "default": default_filter,
    "upper": _text_filter(str.upper),
    "lower": _text_filter(str.lower),
    "trim": _text_filter(str.strip),
    "capitalize": _text_filter(lambda text: text[:1].upper() + text[1:]),
    "title": _text_filter(lambda text: re.sub(r"(?<!\S)\S", lambda m: m.group(0).upper(), text)),
    "string": to_text,
    "json": to_json,
    "toJson": to_json,
    "date": date_filter,
    "replace": replace_filter,
    "length": length_filter,
    "join": join_filter,
    "first": first_filter,
    "last": last_filter,
    "keys": keys_filter,
    "values": values_filter,
    "abs": abs_filter,
    "raw": raw_filter,
}
"""Every filter a flow may use, by the name it is written with."""
