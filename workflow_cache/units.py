"""Byte counts for people: one unit system (SI, 1 kB = 1000 B) for every table and bar.

The progress bars (rich's ``DownloadColumn``) count in SI units, so tables, listings
and size options use the same ones; ``KiB``/``MiB``/``GiB`` are accepted as input.
"""

from __future__ import annotations

import re

from rich.filesize import decimal

__all__ = ["SizeError", "human_bytes", "parse_size"]

_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


class SizeError(ValueError):
    """A size that is not a number with an optional unit such as 10GB or 500MiB."""


def human_bytes(count: float) -> str:
    """``1234567`` -> ``"1.2 MB"``, the way the progress bars print it."""
    return decimal(int(count))


def parse_size(text: str, *, name: str = "size") -> int:
    """``"10GB"`` -> 10_000_000_000; ``"512MiB"`` -> 536_870_912; plain numbers are bytes."""
    match = _SIZE.match(str(text))
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _UNITS:
        raise SizeError(
            f"{name} {text!r} is not a size: expected a number of bytes with an optional "
            "unit (kB, MB, GB, TB or KiB, MiB, GiB, TiB), e.g. 10GB"
        )
    return int(float(match.group(1)) * _UNITS[unit])
