"""Decoding many envelopes in one JSON parse gives what decoding each one gives."""

from __future__ import annotations

import pytest

from workflow_cache.envelope import Envelope, EnvelopeError
from workflow_cache.result import ok


def row(key: str, value: object) -> bytes:
    return Envelope.from_result(key, ok(value), ttl=None, now=1.0).dumps(key).encode()


def test_many_rows_decode_like_one_at_a_time() -> None:
    keys = [f"k{i}" for i in range(5)]
    rows = [row(k, {"i": i}) for i, k in enumerate(keys)]
    rows[2] = None  # type: ignore[call-overload]
    assert Envelope.loads_many(keys, rows) == [
        None if raw is None else Envelope.loads(k, raw) for k, raw in zip(keys, rows, strict=True)
    ]


def test_a_row_holding_two_documents_is_not_spread_over_its_neighbours() -> None:
    keys = ["a", "b", "c"]
    two = row("a", 1) + b"," + row("x", 2)
    with pytest.raises(EnvelopeError, match="'a'"):  # parsed alone, as loads() would
        Envelope.loads_many(keys, [two, b'{"v":1,"status":"ok","value":', b"3}"])


def test_rows_that_only_parse_when_joined_are_refused_one_by_one() -> None:
    keys = ["a", "b"]
    with pytest.raises(EnvelopeError, match="'a'"):
        Envelope.loads_many(keys, [b'{"v":1,"status":"ok","value":[1', b'2],"x":0}'])
