"""File operations confined to one root folder: never through a symlink, never blocking.

Cache storage and restored working folders hold bytes anyone with write access
to shared storage could have planted. Whatever is done because of them must
stay inside the folder it belongs to, so every operation here walks from the
root one component at a time with ``openat``-style calls (``dir_fd``) and
``O_NOFOLLOW``: a symlink anywhere on the way, or a file where a folder should
be, is an :class:`UnsafePathError` instead of a write or delete somewhere else.
Reads open with ``O_NONBLOCK`` and accept regular files only, so a FIFO planted
where a file is expected cannot hang a run.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import stat
from collections.abc import Iterator
from typing import BinaryIO

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_REPLACE = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class UnsafePathError(OSError):
    """A path that would leave its root through a symlink, or is not the kind of file expected."""

    def __str__(self) -> str:
        return f"{self.filename!r}: {self.strerror}"


def parts_of(relative: str) -> list[str]:
    """The components of a relative ``/``-separated name; absolute names and ``..`` refused."""
    parts = [part for part in relative.split("/") if part not in ("", ".")]
    if relative.startswith("/") or ".." in parts or not parts or "\0" in relative:
        raise UnsafePathError(errno.EINVAL, "not a relative name inside the folder", relative)
    return parts


def open_root(root: str | os.PathLike[str]) -> int:
    """A descriptor of the root folder itself (the root may be reached through symlinks)."""
    return os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


def step_into(dir_fd: int, name: str, shown: str, *, create: bool) -> int:
    """Open the folder ``name`` inside ``dir_fd`` without following a symlink."""
    for _ in range(2):
        try:
            return os.open(name, DIR_FLAGS, dir_fd=dir_fd)
        except FileNotFoundError:
            if not create:
                raise
            with contextlib.suppress(FileExistsError):
                os.mkdir(name, 0o777, dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise UnsafePathError(
                    errno.ELOOP, "a symlink or a file stands where a folder should be", shown
                ) from None
            raise
    return os.open(name, DIR_FLAGS, dir_fd=dir_fd)


@contextlib.contextmanager
def parent_of(root_fd: int, parts: list[str], *, create: bool = False) -> Iterator[int]:
    """A descriptor of the folder holding ``parts[-1]``, reached without following symlinks.

    ``create`` makes missing folders on the way (never through a symlink).
    """
    fd = os.dup(root_fd)
    try:
        for depth, name in enumerate(parts[:-1], 1):
            child = step_into(fd, name, "/".join(parts[:depth]), create=create)
            os.close(fd)
            fd = child
        yield fd
    finally:
        os.close(fd)


def open_regular(root: str | os.PathLike[str], relative: str) -> BinaryIO:
    """Open a regular file below ``root`` for reading; anything else is :class:`UnsafePathError`.

    ``FileNotFoundError`` when it does not exist. Never blocks: a FIFO is refused.
    """
    parts = parts_of(relative)
    root_fd = open_root(root)
    try:
        with parent_of(root_fd, parts) as parent:
            try:
                fd = os.open(parts[-1], _READ, dir_fd=parent)
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    raise UnsafePathError(errno.ELOOP, "a symlink, not a file", relative) from None
                raise
    finally:
        os.close(root_fd)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise UnsafePathError(errno.EINVAL, f"not a regular file ({_kind(mode)})", relative)
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def write_file(root: str | os.PathLike[str], relative: str, data: bytes | BinaryIO) -> None:
    """Write ``data`` (bytes, or a file read to its end) to ``root/relative``, making folders.

    A symlink at the name itself is replaced by the file; a symlink or a file
    on the way is :class:`UnsafePathError`, and so is anything at the name that
    is not a regular file or a symlink.
    """
    parts = parts_of(relative)
    root_fd = open_root(root)
    try:
        with parent_of(root_fd, parts, create=True) as parent:
            name = parts[-1]
            try:
                existing = os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode
            except FileNotFoundError:
                existing = None
            if existing is not None and stat.S_ISLNK(existing):
                os.unlink(name, dir_fd=parent)
            elif existing is not None and not stat.S_ISREG(existing):
                raise UnsafePathError(
                    errno.EINVAL, f"cannot write a file over a {_kind(existing)}", relative
                )
            fd = os.open(name, _REPLACE, 0o666, dir_fd=parent)
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    raise UnsafePathError(errno.EINVAL, "not a regular file", relative)
                if isinstance(data, bytes):
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view) :]
                else:
                    with os.fdopen(fd, "wb", closefd=False) as out:
                        shutil.copyfileobj(data, out, 1 << 20)
            finally:
                os.close(fd)
    finally:
        os.close(root_fd)


def remove_tree(root: str | os.PathLike[str], relative: str) -> None:
    """Remove ``root/relative`` (a folder or a file) if present, never following a symlink.

    A symlink on the way means the path is not inside ``root``: nothing is removed.
    """
    parts = parts_of(relative)
    root_fd = open_root(root)
    try:
        with parent_of(root_fd, parts) as parent:
            name = parts[-1]
            mode = os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode
            if stat.S_ISDIR(mode):
                shutil.rmtree(name, dir_fd=parent)
            else:
                os.unlink(name, dir_fd=parent)
    except (FileNotFoundError, UnsafePathError):
        return
    finally:
        os.close(root_fd)


def is_inside(root: str | os.PathLike[str], path: str | os.PathLike[str]) -> bool:
    """Whether ``path``, with every symlink resolved, is ``root`` or below it."""
    real_root = os.path.realpath(root)
    real = os.path.realpath(path)
    return real == real_root or real.startswith(real_root.rstrip("/") + "/")


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISLNK(mode):
        return "a symlink"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


def kind(mode: int) -> str:
    """A few words naming what kind of file ``mode`` is, for messages."""
    return "a regular file" if stat.S_ISREG(mode) else _kind(mode)
