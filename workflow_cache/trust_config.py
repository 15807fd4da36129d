"""The rules of the trust settings: what makes a signing key usable, and the restore cap's default.

The settings model (``settings.py``) applies them once, when it is loaded, so a
bad key is a validation error naming its variable; the signer
(``signing.py``) and the file cache are then given checked values and read no
environment themselves.
"""

from __future__ import annotations

__all__ = ["DEFAULT_MAX_RESTORE_BYTES", "MIN_KEY_LENGTH", "TrustConfigError", "parse_keys"]

DEFAULT_MAX_RESTORE_BYTES = 10 << 30  # 10 GiB, the size limit of a GitHub Actions cache entry
MIN_KEY_LENGTH = 16


class TrustConfigError(ValueError):
    """A signing key that cannot be used (too short)."""


def parse_keys(*lists: str | None) -> tuple[bytes, ...]:
    """The keys of comma-separated ``lists``, in order and without repeats.

    The first key signs, every key verifies (rotation). Empty items are skipped,
    so an empty list means signing is off; a key shorter than
    :data:`MIN_KEY_LENGTH` raises :class:`TrustConfigError`, whose message never
    contains the key.
    """
    keys: list[bytes] = []
    for text in lists:
        for item in (text or "").split(","):
            item = item.strip()
            if not item:
                continue
            if len(item) < MIN_KEY_LENGTH:
                raise TrustConfigError(
                    f"a signing key must have at least {MIN_KEY_LENGTH} characters "
                    "(for example the output of 'python -c \"import secrets; "
                    "print(secrets.token_hex(32))\"')"
                )
            key = item.encode()
            if key not in keys:
                keys.append(key)
    return tuple(keys)
