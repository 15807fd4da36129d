"""Helpers of the hostile-input tests: planted entries, snapshots, the CLI in a subprocess.

An attacker here is anyone who can write to shared storage, to Redis or to a
machine's local cache. The helpers build what such a writer could leave behind
(archives of any shape, any ``entry.json``), run the real ``workflow-cache``
console script of this environment against it, and take snapshots of
everything outside the folder or storage root, so a test can assert that
nothing there changed.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import subprocess
import sys
import tarfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import zstandard

from workflow_cache.workdir.filecache import EntryKey

SCRIPT = Path(sys.executable).with_name("workflow-cache")
NAMESPACE, FLOW, TASK = "dev", "hostile", "wd"
KEY = EntryKey(NAMESPACE, FLOW, TASK)


def snapshot(root: Path, skip: Iterable[Path] = ()) -> dict[str, tuple[Any, ...]]:
    """Every path below ``root`` (not following symlinks) with its kind, mode and content hash."""
    skipped = {os.fspath(p) for p in skip}
    found: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if os.path.join(dirpath, d) not in skipped]
        for name in [*dirnames, *filenames]:
            path = os.path.join(dirpath, name)
            if path in skipped:
                continue
            info = os.lstat(path)
            relative = os.path.relpath(path, root)
            if stat.S_ISLNK(info.st_mode):
                found[relative] = ("link", os.readlink(path))
            elif stat.S_ISREG(info.st_mode):
                digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
                found[relative] = ("file", stat.S_IMODE(info.st_mode), digest)
            else:
                found[relative] = (stat.S_IFMT(info.st_mode), stat.S_IMODE(info.st_mode))
    return found


@dataclass
class Member:
    """One tar member of a planted archive."""

    name: str
    data: bytes = b""
    kind: bytes = tarfile.REGTYPE
    link: str = ""
    size: int | None = None  # data of this many zero bytes, streamed (for huge members)


def archive_bytes(members: list[Member]) -> bytes:
    """A ``.tar.zst`` holding ``members`` exactly as given, hostile or not."""
    out = io.BytesIO()
    compressor = zstandard.ZstdCompressor(level=3)
    with (
        compressor.stream_writer(out, closefd=False) as zst,
        tarfile.open(fileobj=zst, mode="w|", format=tarfile.GNU_FORMAT) as tar,
    ):
        for member in members:
            info = tarfile.TarInfo(member.name)
            info.type = member.kind
            info.mode = 0o755 if member.kind == tarfile.DIRTYPE else 0o644
            info.linkname = member.link
            if member.size is not None:
                info.size = member.size
                tar.addfile(info, _Zeros(member.size))
            elif member.kind == tarfile.REGTYPE:
                info.size = len(member.data)
                tar.addfile(info, io.BytesIO(member.data))
            else:
                tar.addfile(info)
    return out.getvalue()


class _Zeros(io.RawIOBase):
    def __init__(self, size: int) -> None:
        self.left = size

    def read(self, size: int = -1) -> bytes:
        size = self.left if size < 0 else min(size, self.left)
        self.left -= size
        return bytes(size)


def plant_entry(
    storage: Path,
    members: list[Member] | None = None,
    *,
    key: EntryKey = KEY,
    archive: bytes | None = None,
    folder: str | None = None,
    **fields: Any,
) -> Path:
    """Write an ``entry.json`` and archive into local storage as a hostile writer would.

    ``fields`` override the document's fields; ``folder`` stores it under another name.
    """
    data = archive if archive is not None else archive_bytes(members or [])
    name = "archive-20260101T000000-0123456789abcdef.tar.zst"
    entry = storage / (folder or key.name)
    entry.mkdir(parents=True, exist_ok=True)
    (entry / name).write_bytes(data)
    document: dict[str, Any] = {
        "v": 1,
        "key": {
            "namespace": key.namespace,
            "flow": key.flow,
            "task": key.task,
            "content": key.content,
        },
        "created_at": datetime.now(UTC).isoformat(),
        "archive": name,
        "size": len(data),
        "files": len(members or []),
        "bytes": sum(len(m.data) for m in members or []),
        "patterns": ["cached/**"],
    }
    document.update(fields)
    (entry / "entry.json").write_text(json.dumps(document))
    return entry


def flow_yaml(
    path: Path,
    *,
    inputs: dict[str, str] | None = None,
    commands: list[str] | None = None,
    outputs: list[str] | None = None,
    ttl: str = "PT1H",
) -> Path:
    """A flow ``dev.hostile`` with one cached WorkingDirectory ``wd`` and one shell child."""
    lines = [
        f"id: {FLOW}",
        f"namespace: {NAMESPACE}",
        "tasks:",
        f"  - id: {TASK}",
        "    type: io.kestra.plugin.core.flow.WorkingDirectory",
    ]
    if inputs:
        lines.append("    inputFiles:")
        lines += [f"      {name}: {json.dumps(text)}" for name, text in inputs.items()]
    if outputs:
        lines.append("    outputFiles:")
        lines += [f"      - {json.dumps(pattern)}" for pattern in outputs]
    lines += ["    cache:", "      patterns:", "        - cached/**", f"      ttl: {ttl}"]
    lines += [
        "    tasks:",
        "      - id: child",
        "        type: io.kestra.plugin.scripts.shell.Commands",
    ]
    lines.append("        commands:")
    for command in commands or ["mkdir -p cached && echo built > cached/file.txt"]:
        lines.append(f"          - {json.dumps(command)}")
    path.write_text("\n".join(lines) + "\n")
    return path


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def summary(self) -> dict[str, Any]:
        return json.loads(self.stdout)

    def task(self, task_id: str = TASK) -> dict[str, Any]:
        return next(t for t in self.summary()["tasks"] if t["task_id"] == task_id)


class Sandbox:
    """A tmp tree: ``storage``, ``work``, ``outputs``, ``home`` and ``outside`` (the victim)."""

    def __init__(self, tmp_path: Path) -> None:
        self.root = tmp_path
        self.storage = tmp_path / "storage"
        self.work = tmp_path / "work"
        self.outputs = tmp_path / "outputs"
        self.home = tmp_path / "home"
        self.outside = tmp_path / "outside"
        for folder in (self.storage, self.work, self.home, self.outside):
            folder.mkdir(parents=True, exist_ok=True)
        (self.outside / "victim.txt").write_text("precious\n")
        (self.outside / "scripts").mkdir()
        (self.outside / "scripts" / "keep.sh").write_text("echo keep\n")
        (self.outside / "origin").write_text("/somewhere\n")
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("WORKFLOW_CACHE_")},
            "WORKFLOW_CACHE_HOME": str(self.home),
            "COLUMNS": "200",
        }

    def outside_snapshot(self) -> dict[str, tuple[Any, ...]]:
        """Everything in the sandbox but the storage root, work folders and outputs."""
        return snapshot(self.root, skip=[self.storage, self.work, self.outputs, self.home])

    def cli(
        self,
        *args: str | Path,
        env: dict[str, str] | None = None,
        timeout: float = 120,
        preexec: Callable[[], None] | None = None,
    ) -> Run:
        done = subprocess.run(
            [str(SCRIPT), *map(str, args)],
            cwd=self.root,
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
            preexec_fn=preexec,
            check=False,
        )
        return Run(done.returncode, done.stdout, done.stderr)

    def run(
        self,
        flow: Path,
        *,
        env: dict[str, str] | None = None,
        timeout: float = 120,
        preexec: Callable[[], None] | None = None,
    ) -> Run:
        return self.cli(
            "run",
            flow,
            "--json",
            "--storage",
            self.storage,
            "--work-dir",
            self.work,
            "--outputs",
            self.outputs,
            env=env,
            timeout=timeout,
            preexec=preexec,
        )


def assert_clean(run: Run, status: int = 0) -> None:
    """The run exited with ``status`` and printed no traceback."""
    assert run.returncode == status, run.output
    assert "Traceback" not in run.output, run.output
