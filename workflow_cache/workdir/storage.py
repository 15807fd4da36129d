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

A local folder may be shared with writers that are not trusted (any worker of
a fleet), so local operations go through :mod:`workflow_cache.workdir.safefs`:
reads accept regular files only and never block, and no read, write, listing
or delete follows a symlink, so nothing outside the root is touched.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import os
import stat
import uuid
from collections.abc import Callable
from pathlib import PurePosixPath
from typing import Any, BinaryIO, NamedTuple, TypeVar

import fsspec
from fsspec.implementations.local import LocalFileSystem

from workflow_cache.workdir import safefs
from workflow_cache.workdir.safefs import UnsafePathError

T = TypeVar("T")

_TEMP_MARK = ".tmp-"
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
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
            return safefs.open_regular(self.root, name)
        opened: BinaryIO = self.fs.open(path, "rb", block_size=_BLOCK_SIZE, cache_type="readahead")
        return opened

    def publish(self, name: str, write: Callable[[BinaryIO], T]) -> T:
        """Write an object atomically with ``write(file)``; an existing object is kept.

        Returns what ``write`` returned, whether or not the object was new; use
        :meth:`create` to know which happened.
        """
        written: T = self.create(name, write).value
        return written

    def create(self, name: str, write: Callable[[BinaryIO], T]) -> Published:
        """Like :meth:`publish`, and say whether this call created the object."""
        path = self._path(name)
        if self._local:
            return self._create_local(name, write)
        if self._exclusive:
            return self._create_exclusive(path, write)
        return self._create_by_move(path, write)

    def _create_local(self, name: str, write: Callable[[BinaryIO], T]) -> Published:
        parts = safefs.parts_of(name)
        base = parts[-1]
        temp = f".{base}{_TEMP_MARK}{uuid.uuid4().hex}"
        root_fd = safefs.open_root(self.root)
        try:
            for attempt in range(5):  # a concurrent delete may prune the folder under us
                with safefs.parent_of(root_fd, parts, create=True) as folder:
                    try:
                        fd = os.open(temp, _NEW_FILE, 0o644, dir_fd=folder)
                    except FileNotFoundError:
                        if attempt == 4:
                            raise
                        continue
                    try:
                        return self._publish_local(folder, fd, temp, base, write)
                    finally:
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(temp, dir_fd=folder)
        finally:
            os.close(root_fd)
        raise AssertionError("unreachable")

    @staticmethod
    def _publish_local(
        folder: int, fd: int, temp: str, base: str, write: Callable[[BinaryIO], T]
    ) -> Published:
        with os.fdopen(fd, "wb") as handle:
            value = write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(temp, base, src_dir_fd=folder, dst_dir_fd=folder, follow_symlinks=False)
            return Published(value, True)
        except FileExistsError:
            return Published(value, False)
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
                raise
        # No hard links here: a rename is atomic but would replace a winner.
        try:
            os.stat(base, dir_fd=folder, follow_symlinks=False)
            return Published(value, False)
        except FileNotFoundError:
            os.rename(temp, base, src_dir_fd=folder, dst_dir_fd=folder)
            return Published(value, True)

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
            return self._local_mode(name) is not None
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

        Temporary files of unfinished local publishes are left out; in a local
        folder only regular files are objects, and symlinked folders are not entered.
        """
        if self._local:
            return self._list_local(prefix)
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
        """Remove an object; a missing one is not an error (someone else removed it).

        In a local folder the name itself is removed, never what a symlink points
        to; a symlink or file on the way is :class:`UnsafePathError`.
        """
        path = self._path(name)
        if self._local:
            self._delete_local(name)
            return
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(path)
            self.fs.invalidate_cache(path)

    # -- local folders, confined to the root ----------------------------------------------

    def _local_mode(self, name: str) -> int | None:
        """The ``lstat`` mode of a local object, or None; never through a symlink."""
        parts = safefs.parts_of(name)
        root_fd = safefs.open_root(self.root)
        try:
            with safefs.parent_of(root_fd, parts) as folder:
                return os.stat(parts[-1], dir_fd=folder, follow_symlinks=False).st_mode
        except FileNotFoundError:
            return None
        finally:
            os.close(root_fd)

    def _delete_local(self, name: str) -> None:
        parts = safefs.parts_of(name)
        root_fd = safefs.open_root(self.root)
        try:
            fds = [os.dup(root_fd)]
            try:
                for depth, part in enumerate(parts[:-1], 1):
                    fds.append(
                        safefs.step_into(fds[-1], part, "/".join(parts[:depth]), create=False)
                    )
                mode = os.stat(parts[-1], dir_fd=fds[-1], follow_symlinks=False).st_mode
                if stat.S_ISDIR(mode):
                    raise UnsafePathError(errno.EISDIR, "a folder where an object should be", name)
                os.unlink(parts[-1], dir_fd=fds[-1])
                # Remove folders left empty, up to the root, so deleted keys leave no trace.
                for depth in range(len(parts) - 1, 0, -1):
                    try:
                        os.rmdir(parts[depth - 1], dir_fd=fds[depth - 1])
                    except OSError:  # not empty, or someone is publishing into it right now
                        break
            except FileNotFoundError:
                return
            finally:
                for fd in fds:
                    os.close(fd)
        finally:
            os.close(root_fd)

    def _list_local(self, prefix: str) -> builtins.list[str]:
        folder = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        names: list[str] = []
        try:
            root_fd = safefs.open_root(self.root)
        except FileNotFoundError:
            return []
        try:
            if folder:
                parts = safefs.parts_of(folder)
                with safefs.parent_of(root_fd, [*parts, "-"]) as start:
                    _walk_local(start, f"{'/'.join(parts)}/", prefix, names)
            else:
                _walk_local(root_fd, "", prefix, names)
        except (FileNotFoundError, UnsafePathError):
            return []
        finally:
            os.close(root_fd)
        return sorted(names)


def _walk_local(dir_fd: int, relative: str, prefix: str, names: list[str]) -> None:
    """Regular files below ``dir_fd`` whose name starts with ``prefix``; symlinks skipped."""
    with os.scandir(dir_fd) as entries:
        for entry in entries:
            name = relative + entry.name
            if entry.is_dir(follow_symlinks=False):
                if not (prefix.startswith(name + "/") or name.startswith(prefix)):
                    continue
                try:
                    child = os.open(entry.name, safefs.DIR_FLAGS, dir_fd=dir_fd)
                except OSError:  # replaced by a symlink or removed while we listed
                    continue
                try:
                    _walk_local(child, name + "/", prefix, names)
                finally:
                    os.close(child)
            elif (
                entry.is_file(follow_symlinks=False)
                and name.startswith(prefix)
                and _TEMP_MARK not in entry.name
            ):
                names.append(name)


def _protocols(fs: fsspec.AbstractFileSystem) -> set[str]:
    protocol = fs.protocol
    return {protocol} if isinstance(protocol, str) else set(protocol)
