"""HMAC-SHA256 signatures over what the cache writes, so readers can tell who wrote it.

Anyone who can write to Redis or to archive storage could otherwise plant an
outcome or a folder that every worker then uses. With signing keys configured
(see :mod:`workflow_cache.trust_config`) writers sign and readers verify; an
entry that is unsigned, forged or signed with an unknown key is refused.

A signature is ``hmac-sha256:<key id>:<hex digest>``. The key id (the first
hex digits of the key's SHA-256) only picks which key to try; it reveals
nothing usable about the key. The signed message binds a purpose (what kind of
entry) and a context (which key or storage name), so a valid signature cannot
be replayed onto another kind of entry or another name.
"""

from __future__ import annotations

import hashlib
import hmac
from functools import lru_cache

from workflow_cache.trust_config import signing_keys

__all__ = ["SignatureError", "enabled", "sign", "signing_keys", "verify"]

SCHEME = "hmac-sha256"
_TOKEN_LIMIT = 200


class SignatureError(ValueError):
    """An entry whose signature is missing, forged or made with a key this reader lacks."""


@lru_cache(maxsize=32)
def key_id(key: bytes) -> str:
    return hashlib.sha256(key).hexdigest()[:8]


def enabled() -> bool:
    """Whether signing keys are configured (then unsigned entries are refused)."""
    return bool(signing_keys())


def _message(purpose: str, context: str, payload: bytes) -> bytes:
    head = purpose.encode()
    name = context.encode("utf-8", "surrogatepass")
    return len(head).to_bytes(4, "big") + head + len(name).to_bytes(8, "big") + name + payload


def sign(purpose: str, context: str, payload: bytes) -> str | None:
    """The signature of ``payload`` with the first configured key; None when signing is off."""
    keys = signing_keys()
    if not keys:
        return None
    digest = hmac.new(keys[0], _message(purpose, context, payload), hashlib.sha256).hexdigest()
    return f"{SCHEME}:{key_id(keys[0])}:{digest}"


def verify(purpose: str, context: str, payload: bytes, token: object) -> None:
    """Raise :class:`SignatureError` unless ``token`` signs ``payload`` with a configured key."""
    keys = signing_keys()
    if not isinstance(token, str) or not token:
        raise SignatureError("it is not signed")
    scheme, _, rest = token[:_TOKEN_LIMIT].partition(":")
    wanted, _, digest = rest.partition(":")
    if scheme != SCHEME or not digest:
        raise SignatureError("its signature is malformed")
    message = _message(purpose, context, payload)
    for key in sorted(keys, key=lambda k: key_id(k) != wanted):  # the named key first
        expected = hmac.new(key, message, hashlib.sha256).hexdigest()
        if hmac.compare_digest(expected, digest):
            return
    if wanted not in {key_id(key) for key in keys}:
        raise SignatureError(f"it is signed with a key this reader does not have (id {wanted})")
    raise SignatureError("its signature does not match its content (forged or altered)")
