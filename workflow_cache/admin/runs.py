"""The runs an operator sees: paged lists from the run indexes, one run's steps in order.

Shared by ``workflow-cache runs`` and the web dashboard. Every read is bounded: a page is
one ``ZREVRANGEBYSCORE ... LIMIT`` on one index and one read-only script over the page's
records (``run_page.lua``), never a scan of the keyspace. The index read depends on the
filters:

- none: the ``started`` set, newest start first; ``since`` bounds the start;
- ``task``: that task's ``task:<task>`` set (kept by the script that starts a run), newest
  start first; a ``state`` with it is checked on the records read;
- ``state`` alone: that state's set, most recently entered first; ``since`` bounds when
  the run entered the state ("failed in the last hour", "suspended since").

A filter checked on records reads ahead at most :data:`READ_AHEAD` index entries per
page, so a filtered page may hold fewer runs than ``limit`` while ``next_cursor`` still
says where to go on.

Everything read is untrusted: fields are checked and turned into plain ``str``, ``int``
and ``float``; a record or outcome that does not parse is shown as unknown, with one
warning, never a traceback.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from workflow_cache.cache.lua import script
from workflow_cache.cache.redis import RedisCache
from workflow_cache.distributed.run_states import LEASED, STATES
from workflow_cache.distributed.runs import Runs, outcome_key
from workflow_cache.distributed.suspend import EVENT_ENTRY, SLEEP_ENTRY, step_key
from workflow_cache.envelope import Envelope

__all__ = [
    "MAX_LIMIT",
    "READ_AHEAD",
    "RunDetail",
    "RunPage",
    "RunSummary",
    "StepLine",
    "count_runs",
    "list_runs",
    "show_run",
]

log = logging.getLogger(__name__)

MAX_LIMIT = 1000
"""The largest page ``list_runs`` returns."""
READ_AHEAD = 2000
"""The most index entries one filtered page reads to fill itself."""
OUTCOME_TEXT_LIMIT = 4000
"""Characters of a run's outcome ``show_run`` renders (the rest is cut, and says so)."""
_WHOLE_OUTCOME = 64 << 10
_TEXT_LIMIT = 1000
_STATUS = re.compile(rb'^\{(?:"sig":"[^"]{1,200}",)?"v":1,"status":"(ok|err)"')
_CURSOR = re.compile(r"^(\d{1,16})\.(\d{1,9})$")


@dataclass(frozen=True, slots=True)
class RunSummary:
    run_id: str
    task: str
    """The workflow task's name (``""`` if unknown)."""
    state: str
    """One of ``run_states.STATES``, or ``"unknown"`` for a record that says otherwise."""
    started_at: float | None
    """Epoch seconds (Redis's clock)."""
    updated_at: float | None
    """When the run entered its state."""
    replays: int
    batch: int
    outcome_status: str | None
    """``"ok"`` or ``"err"`` once finished (a cancelled run's is ``"err"``); else None."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "task": self.task,
            "state": self.state,
            "started_at": self.started_at,
            "updated_at": self.updated_at,
            "replays": self.replays,
            "batch": self.batch,
            "outcome_status": self.outcome_status,
        }


@dataclass(frozen=True, slots=True)
class RunPage:
    runs: tuple[RunSummary, ...]
    """Newest first."""
    next_cursor: str | None
    """Opaque: give it back as ``cursor=`` for the next page; None at the end."""

    def to_dict(self) -> dict[str, Any]:
        return {"runs": [r.to_dict() for r in self.runs], "next_cursor": self.next_cursor}


@dataclass(frozen=True, slots=True)
class StepLine:
    position: int
    task: str
    key: str
    status: str
    """``ok``, ``err``, ``running`` (claimed), ``queued``, ``pending`` (the run waits on it,
    nothing sent yet) or ``missing`` (no outcome, claim or marker: expired or deleted)."""
    executed: bool | None
    """True: stored after the run started (or the step is the run's own, unkeyed);
    False: stored before the run started, so the run found it (a hit); None: unknown."""
    duration: float | None
    """Seconds, where known (stored outcomes do not record it yet)."""
    worker: str | None
    """The claim holder of a running step (``host:pid``), where known."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "position": self.position,
            "task": self.task,
            "key": self.key,
            "status": self.status,
            "executed": self.executed,
            "duration": self.duration,
            "worker": self.worker,
        }


@dataclass(frozen=True, slots=True)
class RunDetail:
    summary: RunSummary
    steps: tuple[StepLine, ...]
    """In position order."""
    waiting_on_keys: tuple[str, ...]
    sleeping_until: float | None
    """Epoch seconds at which a sleeping run's timer fires."""
    waiting_for_event: str | None
    """The event name a ``waiting`` run waits for."""
    lease_holder: str | None
    """The delivery holding a running run (``delivery <epoch>``) while its lease is live."""
    outcome_text: str | None
    """The outcome as text: the value as JSON, or the error's message; size-limited."""

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.summary.to_dict(),
            "steps": [s.to_dict() for s in self.steps],
            "waiting_on_keys": list(self.waiting_on_keys),
            "sleeping_until": self.sleeping_until,
            "waiting_for_event": self.waiting_for_event,
            "lease_holder": self.lease_holder,
            "outcome_text": self.outcome_text,
        }


# ----------------------------------------------------------------------------- listing


def list_runs(
    cache: RedisCache,
    *,
    state: str | None = None,
    task: str | None = None,
    since: float | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> RunPage:
    """One page of runs, newest first (see the module for what each filter reads)."""
    if state is not None and state not in STATES:
        raise ValueError(f"unknown run state {state!r}; one of: {', '.join(STATES)}")
    if not 1 <= limit <= MAX_LIMIT:
        raise ValueError(f"limit must be between 1 and {MAX_LIMIT}, got {limit}")
    if since is not None and not math.isfinite(since):
        raise ValueError(f"since must be a finite time, got {since}")
    runs = Runs(cache.flight)
    if task:
        index, check_state = runs.task_key(task), state
    elif state is not None:
        index, check_state = runs.state_key(state), None
    else:
        index, check_state = runs.started_key, None
    low = "-inf" if since is None else max(0, math.ceil(since * 1000))
    position = _Position.parse(cursor)
    found: list[RunSummary] = []
    scanned = 0
    while True:
        want = limit - len(found) + 1 if check_state is None else max(limit, 100)
        want = min(want, READ_AHEAD - scanned + 1)
        rows = _index_page(cache, index, position, low, want)
        more = len(rows) == want
        ids = [_text(member) for member, _ in rows]
        summaries = _summaries(cache, runs, ids)
        for (_, score), summary in zip(rows, summaries, strict=True):
            if len(found) == limit or scanned == READ_AHEAD:
                return RunPage(tuple(found), position.dump())
            position = position.after(score)
            scanned += 1
            if summary is None or (check_state is not None and summary.state != check_state):
                continue
            found.append(summary)
        if not more:
            return RunPage(tuple(found), None)


def count_runs(cache: RedisCache) -> dict[str, int]:
    """Runs per state, from the index sizes (``ZCARD``): no record is read."""
    runs = Runs(cache.flight)
    client = cache.client

    def read() -> list[Any]:
        pipe = client.pipeline(transaction=False)
        for state in STATES:
            pipe.zcard(runs.state_key(state))
        return pipe.execute()

    counts = cache.flight.claims.call(read)
    return {state: int(n) for state, n in zip(STATES, counts, strict=True)}


def _index_page(
    cache: RedisCache, index: str, position: _Position, low: float | str, want: int
) -> list[tuple[Any, float]]:
    client = cache.client

    def read() -> list[tuple[Any, float]]:
        rows: list[Any] = client.zrevrangebyscore(
            index, position.top, low, start=position.skip, num=want, withscores=True
        )
        return [(row[0], float(row[1])) for row in rows]

    return cache.flight.claims.call(read)


@dataclass(frozen=True, slots=True)
class _Position:
    """Where a page ended in an index: below ``top``, after ``skip`` members scored ``top``
    (several runs can share a millisecond)."""

    top: float | str
    skip: int

    @classmethod
    def parse(cls, cursor: str | None) -> _Position:
        if not cursor:
            return cls("+inf", 0)
        match = _CURSOR.match(cursor)
        if match is None:
            raise ValueError(f"not a runs cursor: {cursor[:80]!r} (give back next_cursor)")
        return cls(int(match.group(1)), int(match.group(2)))

    def after(self, score: float) -> _Position:
        top = int(score)
        return _Position(top, self.skip + 1 if top == self.top else 1)

    def dump(self) -> str:
        return f"{self.top}.{self.skip}"


def _summaries(cache: RedisCache, runs: Runs, ids: Sequence[str]) -> list[RunSummary | None]:
    """The page's records in one read-only script call (outcomes too large for it: their
    head from the run's stored outcome, in one more pipelined read)."""
    if not ids:
        return []
    page = cache.client.register_script(script("run_page"))
    keys = [runs.keys(run_id).run for run_id in ids]
    rows = cache.flight.claims.call(lambda: page(keys=keys, args=[_WHOLE_OUTCOME]))
    large = [i for i, row in enumerate(rows) if len(row) == 8 and not row[6] and _int(row[7]) > 0]
    if large:
        client = cache.client

        def heads() -> list[Any]:
            pipe = client.pipeline(transaction=False)
            for i in large:
                pipe.getrange(runs.keys(ids[i]).out, 0, 255)
            return pipe.execute()

        for i, head in zip(large, cache.flight.claims.call(heads), strict=True):
            rows[i][6] = head or b""
    return [_summary(run_id, row) for run_id, row in zip(ids, rows, strict=True)]


def _summary(run_id: str, row: Sequence[Any]) -> RunSummary | None:
    if len(row) < 7:  # gone since the index was read, or not a record at all
        if row:
            log.warning("run %r: its record is not a hash; left out", run_id[:200])
        return None
    state_raw, since, started, batch, replays, task, head = row[:7]
    if state_raw is None:
        log.warning("run %r: its record has no state; left out", run_id[:200])
        return None
    state = _text(state_raw)
    if state not in STATES:
        log.warning("run %r: its record has an unknown state; shown as unknown", run_id[:200])
        state = "unknown"
    status = None
    if state in ("done", "cancelled"):
        match = _STATUS.match(_bytes(head))
        status = match.group(1).decode() if match else None
    return RunSummary(
        run_id=_clip(run_id),
        task=_clip(_text(task)) if task is not None else "",
        state=state,
        started_at=_ms_to_s(started),
        updated_at=_ms_to_s(since),
        replays=_int(replays),
        batch=_int(batch),
        outcome_status=status,
    )


# ----------------------------------------------------------------------------- one run


def show_run(cache: RedisCache, run_id: str) -> RunDetail | None:
    """One run: its summary, its steps in order with their outcomes, what it waits on, and
    its outcome; None for an unknown (or forgotten) run."""
    runs = Runs(cache.flight)
    k = runs.keys(run_id)
    client = cache.client

    def read() -> list[Any]:
        pipe = client.pipeline(transaction=False)
        pipe.hgetall(k.run)
        pipe.lrange(k.steps, 0, -1)
        pipe.smembers(k.pending)
        pipe.hgetall(k.given)
        pipe.time()
        return pipe.execute(raise_on_error=False)

    replies = cache.flight.claims.call(read)
    record_raw, history_raw, pending_raw, given_raw = (
        _checked(run_id, name, reply, kind)
        for name, reply, kind in zip(
            ("record", "history", "pending keys", "given outcomes"),
            replies[:4],
            (dict, list, set, dict),
            strict=True,
        )
    )
    now_s, now_us = replies[4]
    if not record_raw:
        return None
    now_ms = int(now_s) * 1000 + int(now_us) // 1000
    record = {_text(a): b for a, b in record_raw.items()}
    outcome_raw = record.get("outcome")
    envelope = _envelope(outcome_key(run_id), outcome_raw) if outcome_raw else None
    head = [record.get(f) for f in ("state", "since", "started", "batch", "replays", "task")]
    summary = _summary(run_id, [*head, b""])
    if summary is None:
        return None
    if envelope is not None and summary.state in ("done", "cancelled"):
        summary = _with_status(summary, envelope.status)
    pending = sorted(_text(p) for p in pending_raw if _text(p))
    given = {_text(a): b for a, b in given_raw.items()}
    history = [_text(h) for h in history_raw]
    steps = _steps(cache, run_id, record, history, set(pending), given, now_ms)
    state = summary.state
    wake = _int(record.get("wake"))
    lease = _int(record.get("lease"))
    event = None
    if state == "waiting" and pending:
        event = next((p[len("event:") :] for p in pending if p.startswith("event:")), None)
    return RunDetail(
        summary=summary,
        steps=steps,
        waiting_on_keys=tuple(_clip(p) for p in pending),
        sleeping_until=wake / 1000 if state == "sleeping" and wake else None,
        waiting_for_event=_clip(event) if event is not None else None,
        lease_holder=(
            f"delivery {_int(record.get('epoch'))}" if state in LEASED and lease > now_ms else None
        ),
        outcome_text=_outcome_text(envelope) if envelope is not None else None,
    )


def _steps(
    cache: RedisCache,
    run_id: str,
    record: dict[str, Any],
    history: list[str],
    pending: set[str],
    given: dict[str, Any],
    now_ms: int,
) -> tuple[StepLine, ...]:
    started = _int(record.get("started"))
    entries = []
    for position, entry in enumerate(history):
        task, _, key = entry.partition("|")
        if task != EVENT_ENTRY:  # an event's entry always names its key
            key = key or step_key(run_id, position)
        entries.append((task, key))
    read = [key for task, key in entries if task != SLEEP_ENTRY and key]
    stored = _read_steps(cache, read)
    lines = []
    for position, (task, key) in enumerate(entries):
        status, executed, worker = "missing", None, None
        if task == SLEEP_ENTRY:
            wake = _int(record.get(f"timer:{key}"))
            status = "ok" if 0 < wake <= now_ms else "pending"
        else:
            out, lock, queued = stored.get(key, (None, None, False))
            raw = out if out is not None else given.get(key)
            envelope = _envelope(key, raw) if raw is not None else None
            if envelope is not None:
                status = envelope.status
                own = key.startswith(step_key(run_id, 0)[:-1])
                executed = own or (envelope.created_at * 1000 >= started if started else None)
            elif lock is not None:
                status = "running"
                worker = _worker(lock)
            elif queued:
                status = "queued"
            elif key in pending:
                status = "pending"
        lines.append(
            StepLine(
                position=position,
                task=_clip(task),
                key=_clip(key),
                status=status,
                executed=executed,
                duration=None,
                worker=worker,
            )
        )
    return tuple(lines)


def _read_steps(cache: RedisCache, keys: Sequence[str]) -> dict[str, tuple[Any, Any, bool]]:
    """Outcome, claim and queued marker of each key, in one pipelined read."""
    valid = []
    for key in dict.fromkeys(keys):
        try:
            valid.append((key, cache.keyspace.for_step(key)))
        except ValueError:
            log.warning("a run's history names a key that is not a step key: %r", key[:200])
    if not valid:
        return {}
    client = cache.client

    def read() -> list[Any]:
        pipe = client.pipeline(transaction=False)
        for _, names in valid:
            pipe.get(names.out)
            pipe.get(names.lock)
            pipe.exists(names.queued)
        return pipe.execute(raise_on_error=False)

    replies = cache.flight.claims.call(read)
    read_back: dict[str, tuple[Any, Any, bool]] = {}
    for i, (key, _) in enumerate(valid):
        out, lock, queued = replies[3 * i : 3 * i + 3]
        if any(isinstance(r, Exception) for r in (out, lock, queued)):
            log.warning("step %r: its keys in Redis are not what a step writes", key[:200])
            out, lock, queued = None, None, False
        read_back[key] = (out, lock, bool(queued))
    return read_back


def _checked(run_id: str, name: str, reply: Any, kind: type) -> Any:
    """A reply of the expected type, else empty (with one warning)."""
    if isinstance(reply, kind):
        return reply
    log.warning("run %r: its %s in Redis is not a %s; ignored", run_id[:200], name, kind.__name__)
    return kind()


def _envelope(key: str, raw: Any) -> Envelope | None:
    try:
        return Envelope.loads(key, raw)
    except Exception as exc:  # untrusted bytes: unreadable is unknown, said once
        log.warning("stored outcome of %r is not readable: %s", key[:200], str(exc)[:200])
        return None


def _outcome_text(envelope: Envelope) -> str:
    if envelope.status == "ok":
        text = json.dumps(envelope.value, ensure_ascii=False, sort_keys=True)
    elif envelope.unexpected and isinstance(envelope.error, dict):
        text = f"{envelope.error.get('type', 'Error')}: {envelope.error.get('message', '')}"
    else:
        text = json.dumps(envelope.error, ensure_ascii=False, sort_keys=True)
    if len(text) > OUTCOME_TEXT_LIMIT:
        return text[:OUTCOME_TEXT_LIMIT] + f"... ({len(text):,} characters)"
    return text


def _with_status(summary: RunSummary, status: str) -> RunSummary:
    return RunSummary(
        run_id=summary.run_id,
        task=summary.task,
        state=summary.state,
        started_at=summary.started_at,
        updated_at=summary.updated_at,
        replays=summary.replays,
        batch=summary.batch,
        outcome_status=status,
    )


def _worker(lock: Any) -> str | None:
    """``host:pid`` of a claim token ``host:pid:uuid|epoch``."""
    owner = _text(lock).rpartition("|")[0]
    host_pid = owner.rsplit(":", 1)[0] if owner.count(":") >= 2 else owner
    return _clip(host_pid) or None


def _clip(text: str) -> str:
    return text if len(text) <= _TEXT_LIMIT else text[:_TEXT_LIMIT] + "..."


def _ms_to_s(value: Any) -> float | None:
    ms = _int(value)
    return ms / 1000 if ms > 0 else None


def _int(value: Any) -> int:
    if value is None:
        return 0
    text = _text(value) if isinstance(value, bytes | str) else str(value)
    return int(text) if text.isdigit() and len(text) <= 18 else 0


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _bytes(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    return b"" if value is None else str(value).encode()
