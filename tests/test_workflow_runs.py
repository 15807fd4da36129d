"""The scripts behind suspension, on a real Redis: waiter sets, handoff and run batches."""

from __future__ import annotations

import threading
import uuid

from workflow_cache import RedisCache
from workflow_cache.cache.claims import Done
from workflow_cache.distributed.runs import Resume, Runs
from workflow_cache.distributed.waiters import Joined, Waiters

EPOCH = 1  # the first delivery's


def _suspend(cache: RedisCache, run_id: str, keys: list[str]) -> tuple[int, list]:
    runs, waiters = Runs(cache.flight), Waiters(cache.flight)
    assert runs.begin(run_id, 0, Resume("t.flow", ["a"], {}, "workflows")).epoch == EPOCH
    batch = runs.prepare(run_id, EPOCH, [f"t.step|{k}" for k in keys], keys)
    ids = [uuid.uuid4().hex for _ in keys]
    joined = waiters.join_many(keys, ids, [60.0] * len(keys), run_id, batch)
    return batch, joined


def _commit(cache: RedisCache, key: str, value: bytes = b'{"v":1}') -> list[tuple[str, int]]:
    holder = cache.flight.acquire(key)
    assert not isinstance(holder, Done)
    assert holder.commit(value)
    return Waiters(cache.flight).take_handoff(key)


def test_racing_commits_of_a_batch_resume_the_run_exactly_once(redis_url, namespace) -> None:
    cache = RedisCache(redis_url, namespace=namespace)
    runs = Runs(cache.flight)
    keys = [f"k{i}" for i in range(8)]
    resumes: list[Resume] = []
    for attempt in range(20):
        run_id = f"run-{attempt}"
        batch, joined = _suspend(cache, run_id, [f"{attempt}:{k}" for k in keys])
        assert all(isinstance(j, Joined) and j.send for j in joined)  # one sender per key
        assert runs.arm(run_id, EPOCH, batch, []) == "wait"
        found: list[Resume] = []

        def commit(key: str, found: list[Resume] = found) -> None:
            for who, b in _commit(cache, key):
                resume = runs.arrive(who, b, key, b"")
                if resume is not None:
                    found.append(resume)

        threads = [threading.Thread(target=commit, args=(f"{attempt}:{k}",)) for k in keys]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(found) == 1 and found[0] == Resume("t.flow", ["a"], {}, "workflows")
        resumes.extend(found)
    assert len(resumes) == 20
    cache.close()


def test_several_runs_on_one_key_each_resume_once(redis_url, namespace) -> None:
    cache = RedisCache(redis_url, namespace=namespace)
    runs = Runs(cache.flight)
    sends = []
    for i in range(5):
        batch, joined = _suspend(cache, f"r{i}", ["shared"])
        sends.append(joined[0].send)
        assert runs.arm(f"r{i}", EPOCH, batch, []) == "wait"
    assert sum(s is not None for s in sends) == 1  # one message for the key
    assert Waiters(cache.flight).waiting_on("shared") == [f"r{i}" for i in range(5)]
    handed = _commit(cache, "shared")
    assert sorted(r for r, _ in handed) == [f"r{i}" for i in range(5)]
    assert all(runs.arrive(r, b, "shared", b"") is not None for r, b in handed)
    assert Waiters(cache.flight).take_handoff("shared") == []  # taken once
    assert Waiters(cache.flight).waiting_on("shared") == []
    cache.close()


def test_a_commit_racing_the_suspension_lets_the_run_carry_on(redis_url, namespace) -> None:
    cache = RedisCache(redis_url, namespace=namespace)
    runs = Runs(cache.flight)
    batch, _ = _suspend(cache, "early", ["x", "y"])
    for key in ("x", "y"):
        for who, b in _commit(cache, key):
            assert runs.arrive(who, b, key, b"") is None  # still suspending: no resume
    # both keys committed before the run finished suspending: it carries on itself
    assert runs.arm("early", EPOCH, batch, []) == "go"
    cache.close()


def test_a_key_already_done_is_not_joined(redis_url, namespace) -> None:
    cache = RedisCache(redis_url, namespace=namespace)
    _commit(cache, "done-key")
    _, joined = _suspend(cache, "late", ["done-key"])
    assert isinstance(joined[0], Done)
    assert Waiters(cache.flight).waiting_on("done-key") == []
    cache.close()


def test_a_stale_batch_and_a_stale_resume_are_refused(redis_url, namespace) -> None:
    cache = RedisCache(redis_url, namespace=namespace)
    runs = Runs(cache.flight)
    batch, _ = _suspend(cache, "s", ["a"])
    assert runs.arm("s", EPOCH, batch, []) == "wait"
    assert runs.arrive("s", batch + 1, "a", b"") is None  # an entry of another batch
    resume = runs.arrive("s", batch, "a", b'{"not":"kept"}')
    assert resume is not None and runs.given("s") == {"a": b'{"not":"kept"}'}
    begun = runs.begin("s", batch, resume)
    assert begun.kind == "run" and begun.replays == 1 and begun.steps == ("t.step|a",)
    assert begun.given == {"a": b'{"not":"kept"}'}
    assert runs.begin("s", batch - 1, resume).kind == "stale"  # an older message
    assert runs.finish("s", begun.epoch, '{"v":1,"status":"ok","value":3}')
    assert runs.begin("s", batch, resume).kind == "done"
    info = runs.info("s")
    assert info is not None and info.state == "done" and info.replays == 1
    cache.close()
