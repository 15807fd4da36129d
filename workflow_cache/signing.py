"""HMAC-SHA256 signatures over what the cache writes, so readers can tell who wrote it.

Anyone who can write to Redis or to archive storage could otherwise plant an
outcome or a folder that every worker then uses. With signing keys configured
writers sign and readers verify; an entry that is unsigned, forged or signed
with an unknown key is refused.

A :class:`Signer` holds checked keys. The process's own is :func:`default`: the
keys of the process-wide settings (``settings.current()``), made once on first
use and made again after ``settings.reload()``. Every read of a stored outcome
asks for it, so it is one global lookup, never a read of the environment.

A signature is ``hmac-sha256:<key id>:<hex digest>``. The key id (the first
hex digits of the key's SHA-256) only picks which key to try; it reveals
nothing usable about the key. The signed message binds a purpose (what kind of
entry) and a context (which key or storage name), so a valid signature cannot
be replayed onto another kind of entry or another name.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from functools import lru_cache

from workflow_cache.trust_config import MIN_KEY_LENGTH, TrustConfigError, parse_keys

__all__ = ["SignatureError", "Signer", "default", "enabled", "sign", "signing_keys", "verify"]

SCHEME = "hmac-sha256"
_TOKEN_LIMIT = 200


class SignatureError(ValueError):
    """An entry whose signature is missing, forged or made with a key this reader lacks."""


@lru_cache(maxsize=32)
def key_id(key: bytes) -> str:
    return hashlib.sha256(key).hexdigest()[:8]


def _message(purpose: str, context: str, payload: bytes) -> bytes:
    head = purpose.encode()
    name = context.encode("utf-8", "surrogatepass")
    return len(head).to_bytes(4, "big") + head + len(name).to_bytes(8, "big") + name + payload


class Signer:
    """Signs with the first key and verifies with any; no keys: signing is off.

    ``Signer.from_text("new-key,old-key")`` takes the comma-separated form of the
    settings. Its repr shows key ids, never keys.
    """

    __slots__ = ("enabled", "keys")

    def __init__(self, keys: Iterable[bytes] = ()) -> None:
        self.keys: tuple[bytes, ...] = tuple(dict.fromkeys(keys))
        if any(len(key) < MIN_KEY_LENGTH for key in self.keys):
            raise TrustConfigError(f"a signing key must have at least {MIN_KEY_LENGTH} bytes")
        self.enabled = bool(self.keys)
        """Whether entries are signed, and unsigned ones refused."""

    @classmethod
    def from_text(cls, *lists: str | None) -> Signer:
        """The keys of comma-separated lists, the signing one first (:func:`parse_keys`)."""
        return cls(parse_keys(*lists))

    def __repr__(self) -> str:
        return f"Signer(key ids: {[key_id(key) for key in self.keys]})"

    def sign(self, purpose: str, context: str, payload: bytes) -> str | None:
        """The signature of ``payload`` with the first key; None when signing is off."""
        if not self.keys:
            return None
        key = self.keys[0]
        digest = hmac.new(key, _message(purpose, context, payload), hashlib.sha256).hexdigest()
        return f"{SCHEME}:{key_id(key)}:{digest}"

    def verify(self, purpose: str, context: str, payload: bytes, token: object) -> None:
        """Raise :class:`SignatureError` unless ``token`` signs ``payload`` with one of the keys."""
        if not isinstance(token, str) or not token:
            raise SignatureError("it is not signed")
        scheme, _, rest = token[:_TOKEN_LIMIT].partition(":")
        wanted, _, digest = rest.partition(":")
        if scheme != SCHEME or not digest:
            raise SignatureError("its signature is malformed")
        message = _message(purpose, context, payload)
        for key in sorted(self.keys, key=lambda k: key_id(k) != wanted):  # the named key first
            expected = hmac.new(key, message, hashlib.sha256).hexdigest()
            if hmac.compare_digest(expected, digest):
                return
        if wanted not in {key_id(key) for key in self.keys}:
            raise SignatureError(f"it is signed with a key this reader does not have (id {wanted})")
        raise SignatureError("its signature does not match its content (forged or altered)")


_default: Signer | None = None


def default() -> Signer:
    """The signer of the process-wide settings: loaded on first use, kept until a reload."""
    signer = _default
    return signer if signer is not None else _load_default()


def _load_default() -> Signer:
    global _default
    # pydantic-settings loads when signing is first asked, not at import
    from workflow_cache.settings import current, on_reload

    on_reload(_forget_default)
    _default = signer = Signer(current().signing_key_list)
    return signer


def _forget_default() -> None:
    global _default
    _default = None


def enabled() -> bool:
    """Whether the process's settings have signing keys (then unsigned entries are refused)."""
    return default().enabled


def signing_keys() -> tuple[bytes, ...]:
    """The process's signing keys, the signing one first; empty when signing is off."""
    return default().keys


def sign(purpose: str, context: str, payload: bytes) -> str | None:
    """:meth:`Signer.sign` with the process's keys."""
    return default().sign(purpose, context, payload)


def verify(purpose: str, context: str, payload: bytes, token: object) -> None:
    """:meth:`Signer.verify` with the process's keys."""
    default().verify(purpose, context, payload, token)
