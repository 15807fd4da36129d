"""The environment settings of the trust boundary, read in one place.

``WORKFLOW_CACHE_SIGNING_KEY`` (or ``WORKFLOW_CACHE_SIGNING_KEYS``): one key, or
several separated by commas for rotation; the first signs, every one verifies.
``WORKFLOW_CACHE_MAX_RESTORE_BYTES``: the most file bytes one restore may write.
They are fields of the one settings model (``settings.py``, documented in
docs/operations.md); this module reads the same variables on the hot path, at
each use and without building the model, because every read of a stored
outcome asks for the keys.
"""

from __future__ import annotations

import os
from functools import lru_cache

SIGNING_KEY_VARIABLES = ("WORKFLOW_CACHE_SIGNING_KEY", "WORKFLOW_CACHE_SIGNING_KEYS")
MAX_RESTORE_VARIABLE = "WORKFLOW_CACHE_MAX_RESTORE_BYTES"
DEFAULT_MAX_RESTORE_BYTES = 10 << 30  # 10 GiB, the size limit of a GitHub Actions cache entry
MIN_KEY_LENGTH = 16


class TrustConfigError(ValueError):
    """A signing key or restore limit in the environment that cannot be used."""


def signing_keys() -> tuple[bytes, ...]:
    """The configured signing keys, the signing one first; empty when signing is off.

    Asked on every read of a stored outcome, so on POSIX it looks the variables
    up in ``os.environ``'s own mapping (one dict lookup each, no re-encoding).
    """
    if _RAW_ENVIRON is not None:
        found = [_RAW_ENVIRON.get(name) for name in _RAW_NAMES]
        if found[0] is None and found[1] is None:
            return ()
        return _parse_keys(tuple(os.fsdecode(value or b"") for value in found))
    return _parse_keys(tuple(os.environ.get(variable, "") for variable in SIGNING_KEY_VARIABLES))


def _raw_environ() -> dict[bytes, bytes] | None:
    data = getattr(os.environ, "_data", None)
    return data if os.name == "posix" and isinstance(data, dict) else None


_RAW_ENVIRON = _raw_environ()
_RAW_NAMES = tuple(os.fsencode(variable) for variable in SIGNING_KEY_VARIABLES)


@lru_cache(maxsize=8)
def _parse_keys(values: tuple[str, ...]) -> tuple[bytes, ...]:
    keys: list[bytes] = []
    for variable, value in zip(SIGNING_KEY_VARIABLES, values, strict=True):
        for text in value.split(","):
            text = text.strip()
            if not text:
                continue
            if len(text) < MIN_KEY_LENGTH:
                raise TrustConfigError(
                    f"{variable}: a signing key must have at least {MIN_KEY_LENGTH} characters "
                    "(for example the output of 'python -c \"import secrets; "
                    "print(secrets.token_hex(32))\"')"
                )
            key = text.encode()
            if key not in keys:
                keys.append(key)
    return tuple(keys)


def max_restore_bytes() -> int:
    """The cap on file bytes one restore writes (default 10 GiB)."""
    text = os.environ.get(MAX_RESTORE_VARIABLE, "").strip()
    if not text:
        return DEFAULT_MAX_RESTORE_BYTES
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise TrustConfigError(
            f"{MAX_RESTORE_VARIABLE} must be a positive whole number of bytes, got {text!r}"
        )
    return value
