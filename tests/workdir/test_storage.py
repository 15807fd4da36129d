"""Storage publishes whole objects or nothing, and never rewrites a name: local and S3."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import pytest

from workflow_cache.workdir.storage import Storage

# ``target`` (conftest) is a local folder or an S3 prefix on moto: .kind, .url, .options


@pytest.fixture
def storage(target: Any) -> Storage:
    return Storage(target.url, **target.options)


def writer(data: bytes) -> Callable[[BinaryIO], int]:
    def write(dest: BinaryIO) -> int:
        dest.write(data)
        return len(data)

    return write


def read(storage: Storage, name: str) -> bytes:
    with storage.open_read(name) as handle:
        return handle.read()


def test_publish_read_list_delete(storage: Storage) -> None:
    assert storage.list() == []
    assert storage.publish("ns/flow/a.bin", writer(b"alpha")) == 5
    storage.publish("ns/flow/b.bin", writer(b"beta" * 1000))
    storage.publish("ns/other/c.bin", writer(b""))
    assert storage.exists("ns/flow/a.bin")
    assert not storage.exists("ns/flow/zzz")
    assert read(storage, "ns/flow/a.bin") == b"alpha"
    assert storage.info("ns/flow/b.bin")["size"] == 4000
    assert storage.list() == ["ns/flow/a.bin", "ns/flow/b.bin", "ns/other/c.bin"]
    assert storage.list("ns/flow/") == ["ns/flow/a.bin", "ns/flow/b.bin"]
    assert storage.list("ns/o") == ["ns/other/c.bin"]
    assert storage.list("missing/") == []
    storage.delete("ns/flow/a.bin")
    storage.delete("ns/flow/a.bin")  # already gone: fine
    assert not storage.exists("ns/flow/a.bin")
    with pytest.raises(FileNotFoundError):
        storage.open_read("ns/flow/a.bin")


def test_an_existing_object_is_kept(storage: Storage) -> None:
    first = storage.create("entry", writer(b"first"))
    second = storage.create("entry", writer(b"second"))
    assert (first.created, second.created) == (True, False)
    assert second.value == 6  # the writer ran; its result is still returned
    assert read(storage, "entry") == b"first"
    assert storage.publish("entry", writer(b"third")) == 5
    assert read(storage, "entry") == b"first"


def test_a_failed_write_leaves_nothing(storage: Storage, target: Any) -> None:
    def broken(dest: BinaryIO) -> None:
        dest.write(b"half of it")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        storage.publish("ns/broken.bin", broken)
    assert not storage.exists("ns/broken.bin")
    assert storage.list() == []
    if target.kind == "local":
        assert not [p for p in Path(target.url).rglob("*") if p.is_file()]


def test_large_objects_stream_in_parts(storage: Storage) -> None:
    chunk = bytes(range(256)) * 4096  # 1 MiB

    def write(dest: BinaryIO) -> None:
        for _ in range(20):  # more than one upload part on S3
            dest.write(chunk)

    storage.publish("big.bin", write)
    assert storage.info("big.bin")["size"] == 20 * len(chunk)
    with storage.open_read("big.bin") as handle:
        assert handle.read(len(chunk)) == chunk
        handle.read(18 * len(chunk))
        assert handle.read() == chunk


def test_concurrent_publishers_leave_one_whole_object(storage: Storage) -> None:
    barrier = threading.Barrier(6)
    results: dict[int, bool] = {}

    def publish(i: int) -> None:
        payload = bytes([i]) * 300_000

        def write(dest: BinaryIO) -> None:
            barrier.wait()
            for start in range(0, len(payload), 50_000):
                dest.write(payload[start : start + 50_000])

        results[i] = storage.create("race/entry.bin", write).created

    threads = [threading.Thread(target=publish, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winners = [i for i, created in results.items() if created]
    assert len(winners) == 1
    assert read(storage, "race/entry.bin") == bytes([winners[0]]) * 300_000
    assert storage.list() == ["race/entry.bin"]


@pytest.mark.parametrize("name", ["", "/abs", "a/../b", "../x", "a/./b"])
def test_bad_names_are_refused(storage: Storage, name: str) -> None:
    with pytest.raises(ValueError, match="invalid storage name"):
        storage.exists(name)


def test_local_storage_accepts_file_urls(tmp_path: Path) -> None:
    storage = Storage(f"file://{tmp_path}/files")
    storage.publish("a/b", writer(b"x"))
    assert (tmp_path / "files/a/b").read_bytes() == b"x"
    storage.delete("a/b")
    assert list((tmp_path / "files").iterdir()) == []  # empty folders are pruned
