"""Where cache archives live: a local folder, ``s3://bucket/prefix`` or any fsspec URL.

Objects are named by ``/``-separated relative names. The one promise that matters
is :meth:`Storage.publish`: an object appears whole or not at all, and a name,
once written, is never rewritten in place, so a reader on another machine never
sees half an archive.

How publishing is made atomic depends on the backend:

* local folders (and NFS and the like): write a hidden temporary file next to
  the final name, then ``os.link`` it into place, which fails if the name exists;
* S3 (and S3-compatible stores such as MinIO): an upload only becomes visible
  when it completes, and ``If-None-Match: *`` makes it fail if the name exists;
* any other fsspec file system: write a temporary name, then move it into place
  if the name is still free (the check and the move are two steps there).
"""

from __future__ import annotations

import contextlib
import errno
import os
import uuid
from collections.abc import Callable
from pathlib import PurePosixPath
from typing import Any, BinaryIO, NamedTuple, TypeVar

import fsspec
from fsspec.implementations.local import LocalFileSystem

T = TypeVar("T")

_TEMP_MARK = ".tmp-"
_BLOCK_SIZE = 8 << 20  # upload parts / read-ahead: bounds memory per open object


class Published(NamedTuple):
    """What :meth:`Storage.create` returns: the writer's result and whether ours won."""

    value: Any
    created: bool


class Storage:
    """A flat namespace of immutable objects under one fsspec URL."""

    def __init__(self, url: str, **storage_options: Any) -> None:
        self.url = url
        self.fs, root = fsspec.core.url_to_fs(url, **storage_options)
        self.root = root.rstrip("/")
        self._local = isinstance(self.fs, LocalFileSystem)
        self._exclusive = "s3" in _protocols(self.fs)
        if self._local:
            os.makedirs(self.root, exist_ok=True)

    def __repr__(self) -> str:
        return f"Storage({self.url!r})"

    def _path(self, name: str) -> str:
        pure = PurePosixPath(name)
        if not name or pure.is_absolute() or any(p in ("..", ".") for p in name.split("/")):
            raise ValueError(f"invalid storage name {name!r}: expected a relative name like 'a/b'")
        return f"{self.root}/{pure.as_posix()}"

    def open_read(self, name: str) -> BinaryIO:
        """Open an object for streaming reads; ``FileNotFoundError`` if it is not there."""
        path = self._path(name)
        if self._local:
            return open(path, "rb")
        return self.fs.open(path, "rb", block_size=_BLOCK_SIZE, cache_type="readahead")

    def publish(self, name: str, write: Callable[[BinaryIO], T]) -> T:
        """Write an object atomically with ``write(file)``; an existing object is kept.

        Returns what ``write`` returned, whether or not the object was new; use
        :meth:`create` to know which happened.
        """
        return self.create(name, write).value

    def create(self, name: str, write: Callable[[BinaryIO], T]) -> Published:
        """Like :meth:`publish`, and say whether this call created the object."""
        path = self._path(name)
        if self._local:
            return self._create_local(path, write)
        if self._exclusive:
            return self._create_exclusive(path, write)
        return self._create_by_move(path, write)

    def _create_local(self, path: str, write: Callable[[BinaryIO], T]) -> Published:
        folder, base = os.path.split(path)
        temp = os.path.join(folder, f".{base}{_TEMP_MARK}{uuid.uuid4().hex}")
        handle = _create_file(temp)
        try:
            with handle:
                value = write(handle)
                handle.flush()
                os.fsync(handle.fileno())
            try:
                os.link(temp, path)
                created = True
            except FileExistsError:
                created = False
            except OSError as exc:
                if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
                    raise
                # No hard links here: a rename is atomic but would replace a winner.
                created = not os.path.exists(path)
                if created:
                    os.rename(temp, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
        return Published(value, created)

    def _create_exclusive(self, path: str, write: Callable[[BinaryIO], T]) -> Published:
        handle = self.fs.open(path, "xb", block_size=_BLOCK_SIZE)
        try:
            value = write(handle)
        except BaseException:
            handle.discard()  # abort the upload: nothing becomes visible
            handle.closed = True
            raise
        try:
            handle.close()
        except FileExistsError:
            return Published(value, False)
        finally:
            self.fs.invalidate_cache(path)
        return Published(value, True)

    def _create_by_move(self, path: str, write: Callable[[BinaryIO], T]) -> Published:
        folder, base = path.rsplit("/", 1)
        temp = f"{folder}/.{base}{_TEMP_MARK}{uuid.uuid4().hex}"
        try:
            with self.fs.open(temp, "wb") as handle:
                value = write(handle)
            self.fs.invalidate_cache(path)
            if self.fs.exists(path):
                return Published(value, False)
            self.fs.mv(temp, path)
            return Published(value, True)
        finally:
            with contextlib.suppress(FileNotFoundError):
                if self.fs.exists(temp):
                    self.fs.rm_file(temp)

    def exists(self, name: str) -> bool:
        path = self._path(name)
        if self._local:
            return os.path.exists(path)
        self.fs.invalidate_cache(path)
        return bool(self.fs.exists(path))

    def info(self, name: str) -> dict[str, Any]:
        """The backend's details of one object; always has ``name`` and ``size``."""
        path = self._path(name)
        if not self._local:
            self.fs.invalidate_cache(path)
        details = dict(self.fs.info(path))
        details["name"] = name
        return details

    def list(self, prefix: str = "") -> list[str]:
        """Names of all objects whose name starts with ``prefix``, sorted.

        Temporary files of unfinished local publishes are left out.
        """
        folder = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        base = f"{self.root}/{folder}" if folder else self.root
        if not self._local:
            self.fs.invalidate_cache(base)
        try:
            found = self.fs.find(base)
        except FileNotFoundError:
            return []
        start = len(self.root) + 1
        names = []
        for path in found:
            name = path[start:]
            if name.startswith(prefix) and _TEMP_MARK not in name.rsplit("/", 1)[-1]:
                names.append(name)
        return sorted(names)

    def delete(self, name: str) -> None:
        """Remove an object; a missing one is not an error (someone else removed it)."""
        path = self._path(name)
        with contextlib.suppress(FileNotFoundError):
            if self._local:
                os.unlink(path)
                self._prune(os.path.dirname(path))
            else:
                self.fs.rm_file(path)
                self.fs.invalidate_cache(path)

    def _prune(self, folder: str) -> None:
        """Remove now-empty local folders up to the root, so deleted keys leave no trace."""
        while len(folder) > len(self.root) and folder.startswith(self.root + "/"):
            try:
                os.rmdir(folder)
            except OSError:  # not empty, or someone is publishing into it right now
                return
            folder = os.path.dirname(folder)


def _create_file(path: str) -> BinaryIO:
    """Open a new file, creating its folder; retried because a delete may prune the folder."""
    for _ in range(5):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        try:
            return open(path, "xb")
        except FileNotFoundError:
            continue
    raise FileNotFoundError(errno.ENOENT, "folder keeps disappearing", os.path.dirname(path))


def _protocols(fs: fsspec.AbstractFileSystem) -> set[str]:
    protocol = fs.protocol
    return {protocol} if isinstance(protocol, str) else set(protocol)
