"""Checks and fix-ups of a folder just restored from the cache, before anything uses it.

A restored folder came out of an archive anyone with write access to shared
storage could have made. The archive extractor keeps every member inside the
folder; this module makes sure the rest of the run can trust the result:

* the bookkeeping folder ``.workflow-cache`` must be a real folder holding only
  the ``origin`` marker, a small UTF-8 regular file naming an absolute path; a
  symlink there (which would turn the run's script folder and its cleanup
  toward another place), a FIFO, or anything else rejects the restore;
* relocation reads files only through ``O_NOFOLLOW`` descriptors of regular
  files inside the folder and writes each changed one as a new file that
  replaces it (the old one may be shared with the worker's local store);
  symlinks are replaced in place, never what they point to.

A rejected restore is a cache miss: the caller empties the folder and runs
without it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from pathlib import Path

from workflow_cache.workdir import safefs

MARKER_DIR = ".workflow-cache"
ORIGIN_FILE = f"{MARKER_DIR}/origin"
_ORIGIN_LIMIT = 4096
_RELOCATE_LIMIT = 1 << 20
_BINARY_SUFFIXES = frozenset({".pyc", ".so", ".dylib", ".o", ".a", ".whl", ".gz", ".zip", ".node"})
_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class UnsafeRestoreError(Exception):
    """A restored folder the run must not use; the restore counts as a miss."""


def take_origin(folder: Path) -> str | None:
    """Read and remove the origin marker; None when the entry has none.

    Raises :class:`UnsafeRestoreError` when ``.workflow-cache`` is anything but a
    real folder holding one small UTF-8 file naming an absolute path.
    """
    try:
        mode = os.lstat(folder / MARKER_DIR).st_mode
    except FileNotFoundError:
        return None
    if not stat.S_ISDIR(mode):
        raise UnsafeRestoreError(f"{MARKER_DIR} in the entry is {safefs.kind(mode)}, not a folder")
    extra = sorted(set(os.listdir(folder / MARKER_DIR)) - {"origin"})
    if extra:
        raise UnsafeRestoreError(f"{MARKER_DIR} in the entry holds unexpected files {extra[:3]}")
    try:
        with safefs.open_regular(folder, ORIGIN_FILE) as handle:
            raw = handle.read(_ORIGIN_LIMIT + 1)
    except FileNotFoundError:
        os.rmdir(folder / MARKER_DIR)
        return None
    except safefs.UnsafePathError as exc:
        raise UnsafeRestoreError(f"the origin marker is unusable: {exc}") from None
    try:
        text = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise UnsafeRestoreError("the origin marker is not UTF-8 text") from None
    if len(raw) > _ORIGIN_LIMIT or not text.startswith("/") or "\0" in text or "\n" in text:
        raise UnsafeRestoreError("the origin marker does not name an absolute folder")
    os.unlink(folder / ORIGIN_FILE)
    os.rmdir(folder / MARKER_DIR)
    return text


def relocate_from(folder: Path, old: str | None) -> int:
    """Rewrite absolute paths of the folder ``old`` into ``folder``; return how many changed.

    Text files and symlinks naming the old folder are rewritten so a restored
    venv works where it lands (a venv's ``bin/pip`` starts with
    ``#!/old/folder/venv/bin/python``). Nothing outside ``folder`` is opened.
    """
    new = str(folder)
    if not old or old == new:
        return 0
    old_bytes, new_bytes = old.encode(), new.encode()
    changed = 0
    for dirpath, dirnames, filenames in os.walk(folder):  # never follows symlinked folders
        for name in [*dirnames, *filenames]:
            path = os.path.join(dirpath, name)
            if os.path.islink(path):
                changed += _relink(path, old, new)
            elif name in filenames and Path(name).suffix not in _BINARY_SUFFIXES:
                changed += _rewrite(path, old_bytes, new_bytes)
    return changed


def _relink(path: str, old: str, new: str) -> int:
    target = os.readlink(path)
    if target != old and not target.startswith(old + os.sep):
        return 0
    os.unlink(path)  # the link itself, never what it names
    os.symlink(new + target[len(old) :], path)
    return 1


def _rewrite(path: str, old: bytes, new: bytes) -> int:
    """Write the relocated text to a new file that replaces ``path``, never into ``path``.

    A restored file may be a hard link into the worker's local store, so
    writing into it would change every later restore.
    """
    try:
        fd = os.open(path, _READ)
    except OSError:
        return 0
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size > _RELOCATE_LIMIT:
            return 0
        data = os.read(fd, _RELOCATE_LIMIT + 1)
    finally:
        os.close(fd)
    if old not in data or b"\0" in data:
        return 0
    folder, name = os.path.split(path)
    temporary = os.path.join(folder, f".{name}.wfc-{os.getpid()}-{secrets.token_hex(4)}")
    fd = os.open(temporary, _NEW, 0o600)
    try:
        try:
            view = memoryview(data.replace(old, new))
            while view:
                view = view[os.write(fd, view) :]
            os.fchmod(fd, stat.S_IMODE(info.st_mode))
        finally:
            os.close(fd)
        os.replace(temporary, path)  # a symlink put at ``path`` meanwhile is replaced, not followed
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    return 1
