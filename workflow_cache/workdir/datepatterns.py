"""Java date patterns (``yyyy-MM-dd HH:mm``), the form every Kestra flow formats dates with.

Each pattern letter is translated to the field it stands for, rather than to
``strftime``, so the result does not depend on the machine's locale: month and
day names are English, as Kestra prints them by default.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

_MONTHS = [
    *("January", "February", "March", "April", "May", "June"),
    *("July", "August", "September", "October", "November", "December"),
]
_DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]


class DatePatternError(ValueError):
    """A pattern letter that is not supported, or text that does not fit the pattern."""


_TOKEN = re.compile(r"'(?:[^']|'')*'|([A-Za-z])\1*|[^A-Za-z']+")


def _tokens(pattern: str) -> list[tuple[str, str]]:
    """``("letter", "yyyy")`` or ``("text", "-")`` pieces of a Java date pattern."""
    pieces: list[tuple[str, str]] = []
    for match in _TOKEN.finditer(pattern):
        token = match.group(0)
        if token.startswith("'"):
            pieces.append(("text", token[1:-1].replace("''", "'") if token != "''" else "'"))
        elif match.group(1):
            pieces.append(("letter", token))
        else:
            pieces.append(("text", token))
    return pieces


def _offset(moment: datetime, count: int, *, zulu: bool) -> str:
    delta = moment.utcoffset() or timedelta(0)
    if zulu and delta == timedelta(0):
        return "Z"
    minutes = int(delta.total_seconds() // 60)
    sign = "-" if minutes < 0 else "+"
    hours, minutes = divmod(abs(minutes), 60)
    if count == 1:
        return f"{sign}{hours:02d}" + (f"{minutes:02d}" if minutes else "")
    if count == 2:
        return f"{sign}{hours:02d}{minutes:02d}"
    return f"{sign}{hours:02d}:{minutes:02d}"


def format_java(moment: datetime, pattern: str) -> str:
    """Format ``moment`` with a Java ``DateTimeFormatter`` pattern such as ``yyyy-MM-dd``."""
    out: list[str] = []
    for kind, token in _tokens(pattern):
        if kind == "text":
            out.append(token)
            continue
        letter, count = token[0], len(token)
        out.append(_field(moment, letter, count))
    return "".join(out)


def _field(moment: datetime, letter: str, count: int) -> str:
    if letter in "yu":
        return f"{moment.year % 100:02d}" if count == 2 else f"{moment.year:0{count}d}"
    if letter in "ML":
        if count >= 4:
            return _MONTHS[moment.month - 1]
        if count == 3:
            return _MONTHS[moment.month - 1][:3]
        return f"{moment.month:0{count}d}"
    simple = {
        "d": moment.day,
        "D": moment.timetuple().tm_yday,
        "H": moment.hour,
        "k": moment.hour or 24,
        "K": moment.hour % 12,
        "h": moment.hour % 12 or 12,
        "m": moment.minute,
        "s": moment.second,
    }
    if letter in simple:
        return f"{simple[letter]:0{count}d}"
    if letter == "S":
        return f"{moment.microsecond:06d}000"[:count].ljust(count, "0")
    if letter == "E":
        name = _DAYS[moment.weekday()]
        return name if count >= 4 else name[:3]
    if letter == "a":
        return "AM" if moment.hour < 12 else "PM"
    if letter == "G":
        return "AD"
    if letter == "X":
        return _offset(moment, count, zulu=True)
    if letter == "x":
        return _offset(moment, count, zulu=False)
    if letter == "Z":
        return _offset(moment, 3 if count >= 4 else 2, zulu=count == 5)
    if letter == "z":
        return moment.tzname() or "UTC"
    if letter == "V":
        zone = moment.tzinfo
        return getattr(zone, "key", None) or moment.tzname() or "UTC"
    raise DatePatternError(f"pattern letter {letter!r} is not supported")


_PARSE = {
    "y": "%Y",
    "u": "%Y",
    "M": "%m",
    "d": "%d",
    "D": "%j",
    "H": "%H",
    "h": "%I",
    "m": "%M",
    "s": "%S",
    "S": "%f",
    "a": "%p",
    "X": "%z",
    "x": "%z",
    "Z": "%z",
}


def parse_java(text: str, pattern: str) -> datetime:
    """Read ``text`` written with a Java date pattern; a missing zone means UTC."""
    directives: list[str] = []
    for kind, token in _tokens(pattern):
        if kind == "text":
            directives.append(token.replace("%", "%%"))
            continue
        letter, count = token[0], len(token)
        if letter in "yu" and count == 2:
            directives.append("%y")
        elif letter == "M" and count >= 3:
            directives.append("%B" if count >= 4 else "%b")
        elif letter == "E":
            directives.append("%A" if count >= 4 else "%a")
        elif letter in _PARSE:
            directives.append(_PARSE[letter])
        else:
            raise DatePatternError(f"pattern letter {letter!r} cannot be used in existingFormat")
    try:
        parsed = datetime.strptime(text, "".join(directives))
    except ValueError:
        raise DatePatternError(f"{text!r} does not match existingFormat {pattern!r}") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
