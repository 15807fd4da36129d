"""The ``entry.json`` of a cached folder: one pydantic model with bounds, optionally signed.

``entry.json`` is read back from shared storage, so it is untrusted input: it
is parsed by :class:`EntryDocument` (strict types, sizes and counts bounded, no
``Infinity``), must describe the entry at the place it was found, and with
signing keys configured must carry a valid signature over its fields, which
include the SHA-256 of the archive's bytes. A document that fails any of this
raises :class:`EntryError`, which callers turn into a miss.
"""

from __future__ import annotations

import builtins
import json
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from workflow_cache import signing

FORMAT = 1
MAX_DOCUMENT_BYTES = 1 << 20
PURPOSE = "workflow-cache entry v1"
_MAX_COUNT = 1 << 50  # a petabyte, or a quadrillion files: beyond any real folder
_MAX_TTL = 1000 * 366 * 86400.0  # a thousand years, in seconds

Segment = Annotated[str, StringConstraints(min_length=1, max_length=1024)]
Count = Annotated[int, Field(ge=0, le=_MAX_COUNT)]


class EntryError(ValueError):
    """An ``entry.json`` that is malformed, out of bounds, misplaced or not validly signed."""


class KeyFields(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    namespace: Segment
    flow: Segment
    task: Segment
    content: Segment | None = None


class EntryDocument(BaseModel):
    """What ``entry.json`` holds; unknown fields are ignored (and not signed)."""

    model_config = ConfigDict(extra="ignore", strict=True, frozen=True)

    v: Annotated[int, Field(ge=FORMAT, le=FORMAT)]
    key: KeyFields
    created_at: datetime
    archive: Annotated[str, StringConstraints(pattern=r"^archive-[A-Za-z0-9._-]{1,200}\.tar\.zst$")]
    size: Count
    files: Count
    bytes: Count
    patterns: Annotated[
        list[Annotated[str, StringConstraints(max_length=4096)]], Field(max_length=4096)
    ] = []
    digest: Annotated[str, StringConstraints(pattern=r"^sha256:[0-9a-f]{64}$")] | None = None
    ttl: Annotated[float, Field(gt=0, le=_MAX_TTL)] | None = None
    """Seconds the flow's ``ttl`` was when the entry was saved (what ``cache prune`` goes by)."""
    sig: Annotated[str, StringConstraints(max_length=200)] | None = None

    def signed_fields(self) -> builtins.bytes:
        """The canonical bytes a signature covers: every field but ``sig`` (and an absent
        ``ttl``, so entries saved before it existed keep their signatures)."""
        excluded = {"sig"} if self.ttl is not None else {"sig", "ttl"}
        data = self.model_dump(mode="json", exclude=excluded)
        return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()


def build(name: str, fields: dict[str, Any]) -> bytes:
    """The bytes of a new ``entry.json`` at storage folder ``name``, signed when keys are set."""
    document = EntryDocument.model_validate(fields, strict=False)
    token = signing.sign(PURPOSE, name, document.signed_fields())
    data = document.model_dump(mode="json", exclude_none=True)
    if token is not None:
        data["sig"] = token
    return json.dumps(data, indent=2).encode()


def parse(name: str, raw: bytes) -> EntryDocument:
    """Validate ``entry.json`` bytes found at storage folder ``name``; :class:`EntryError` if bad.

    The signature is checked when signing keys are configured.
    """
    if len(raw) > MAX_DOCUMENT_BYTES:
        raise EntryError(f"entry.json is larger than {MAX_DOCUMENT_BYTES:,} bytes")
    try:
        document = EntryDocument.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "document"
        raise EntryError(f"entry.json field {where!r}: {first['msg']}") from None
    if document.created_at.tzinfo is None:
        document = document.model_copy(
            update={"created_at": document.created_at.replace(tzinfo=UTC)}
        )
    if (
        not datetime(2000, 1, 1, tzinfo=UTC)
        <= document.created_at
        <= datetime(2999, 1, 1, tzinfo=UTC)
    ):
        raise EntryError(f"entry.json created_at {document.created_at} is out of range")
    if signing.enabled():
        if document.digest is None:
            raise EntryError("entry.json is not signed (signing keys are configured)")
        try:
            signing.verify(PURPOSE, name, document.signed_fields(), document.sig)
        except signing.SignatureError as exc:
            raise EntryError(f"entry.json: {exc}") from None
    return document
