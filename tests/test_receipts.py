"""A worker records that it holds a step message only when the message waits for a slot.

On a real prefork worker with one pool process that prefetches: the first step message
is accepted at once (no record); the second, received while the first runs, waits
behind it and gets the record ``receipts.py`` describes, naming the worker's live
connection.
"""

from __future__ import annotations

import threading
import uuid
from pathlib import Path
from typing import Any

from tests.waiting import wait_until
from tests.workers import CeleryWorker, configured_test_app, stop_all, wait_ready
from workflow_cache import create_workflow
from workflow_cache.distributed import CeleryDispatcher
from workflow_cache.distributed.receipts import holder_of, receipt_key


def test_only_a_message_that_waits_for_a_slot_gets_a_receipt(redis_url, tmp_path: Path) -> None:
    env = {
        "WORKFLOW_CACHE_BROKER": redis_url,
        "WORKFLOW_CACHE_NAMESPACE": f"rcpt-{uuid.uuid4().hex[:8]}",
    }
    with configured_test_app(env) as module:
        worker = CeleryWorker(  # prefetching: a message can wait in the main process
            "tests.celery_app",
            "rcpt",
            "steps",
            env,
            pool="prefork",
            log=tmp_path / "w.log",
            options=("--prefetch-multiplier", "4"),
        )
        try:
            wait_ready(module.app, [worker])
            tag = uuid.uuid4().hex[:8]
            first, second = f"{tag}:first", f"{tag}:second"
            client = module.cache.client
            keys = [module.cache.flight.keyspace.for_step(k) for k in (first, second)]
            outcomes: dict[str, Any] = {}

            def produce(key: str, seconds: float) -> None:
                dispatcher = CeleryDispatcher(module.app, module.cache, timeout=60)
                flow = create_workflow({}, cache=module.cache, dispatcher=dispatcher)
                outcomes[key] = flow(lambda step: step(module.work.s(key, seconds, key), key=key))

            producers = [threading.Thread(target=produce, args=(first, 3.0))]
            producers[0].start()
            # the first holds the only pool process for 3 s: the second waits for it
            wait_until(lambda: module.count(first) == 1, "the first step to start")
            producers.append(threading.Thread(target=produce, args=(second, 0.0)))
            producers[1].start()
            marker = wait_until(lambda: client.get(keys[1].queued), "the second to be queued")
            receipt = wait_until(
                lambda: client.get(receipt_key(keys[1])), "the waiting message's receipt"
            )
            presence = holder_of(receipt, marker)
            assert presence is not None  # it names the second message ...
            ids = {int(c["id"]) for c in client.client_list()}
            assert presence in ids  # ... and a live connection: the worker's
            assert module.count(second) == 0  # written while it waited
            assert client.get(receipt_key(keys[0])) is None  # the first started at once
            for producer in producers:
                producer.join(60)
            assert {k: o.value for k, o in outcomes.items()} == {first: first, second: second}
        finally:
            stop_all([worker])
