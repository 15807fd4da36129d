"""The namespace's handoff channel: a commit made outside the fleet tells the fleet.

A dispatched step's committer resumes the runs its commit handed over itself. Any other
commit that found runs waiting (a producer's local step, sync or async) cannot send
their resumes: it knows no Celery app. It publishes the key on one channel per
namespace instead, which every worker's main process listens on; the listener takes
the handoff set (one taker wins) and sends the resumes. A notice lost on the way (no
listener up, Redis restarting) leaves the handoff set for the reconciler's recheck.

Notices are JSON ``{"key": <step key>}``, plus ``"given"``: the outcome when the cache
does not keep it, so the resumed run sees what it waited for. Read back untrusted.
"""

from __future__ import annotations

import json

from workflow_cache.cache.keys import KeySpace

__all__ = ["MAX_NOTICE_BYTES", "handoff_channel", "handoff_notice", "read_handoff_notice"]

MAX_NOTICE_BYTES = 1 << 20
"""A larger notice is refused (a hostile publisher cannot make listeners parse it)."""


def handoff_channel(keyspace: KeySpace) -> str:
    """The channel of ``keyspace``'s handoff notices (under the namespace's prefix)."""
    return keyspace.for_step("_handoffs").channel


def handoff_notice(key: str, given: bytes | str | None = None) -> bytes:
    """The notice of ``key``'s commit (``given``: its outcome, when it is not kept)."""
    body: dict[str, str] = {"key": key}
    if isinstance(given, bytes):
        try:
            given = given.decode()
        except UnicodeDecodeError:  # not JSON text: the run reads the outcome itself
            given = None
    if given is not None:
        body["given"] = given
    return json.dumps(body, separators=(",", ":")).encode()


def read_handoff_notice(data: object) -> tuple[str, bytes] | None:
    """``(key, given outcome or b"")`` of a notice; None for anything that is not one."""
    if isinstance(data, str):
        data = data.encode()
    if not isinstance(data, bytes) or len(data) > MAX_NOTICE_BYTES:
        return None
    try:
        body = json.loads(data)
    except ValueError:
        return None
    if not isinstance(body, dict):
        return None
    key, given = body.get("key"), body.get("given", "")
    if not isinstance(key, str) or not key or not isinstance(given, str):
        return None
    return key, given.encode()
