"""One unpacked tree of the local store: its manifest, and filling a folder from it.

The tree is untrusted like an archive: anything on the worker could have
changed it, and so could the scripts of earlier runs, whose folders shared its
files through hard links. A manifest written when the tree was unpacked records
every entry's kind, mode, size, mtime and inode; filling a folder walks the tree
with ``O_NOFOLLOW`` folder descriptors and refuses it (:class:`TreeChanged`) at
the first entry that differs from the manifest, including an entry the manifest
does not name. An in-place write changes the size or mtime of the shared inode,
so a tree a script wrote to is never served again.

Files reach the folder, in order of preference, as reflinks (their own inode
sharing the blocks copy-on-write, so nothing written later leaks), as hard links
(one ``link()`` each), or as copies. A file another folder still links to (its
link count is above the manifest's) is copied, so no two runs share an inode,
and so is every file that runs were seen writing in place, or that tools
commonly rewrite (:func:`rewritten_in_place`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

__all__ = [
    "MANIFEST_LIMIT",
    "Filled",
    "Item",
    "Manifest",
    "TreeChanged",
    "fill",
    "make_spare",
    "parse_manifest",
    "rewritten_in_place",
    "scan",
]

FICLONE = 0x40049409  # linux/fs.h: _IOW(0x94, 9, int)
MANIFEST_LIMIT = 64 << 20
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_NO_REFLINK = {errno.EOPNOTSUPP, errno.EXDEV, errno.EINVAL, errno.ENOTTY, errno.EBADF}
_NO_LINK = {errno.EXDEV, errno.EPERM, errno.EMLINK, errno.EACCES}
_KINDS = {"d": stat.S_IFDIR, "f": stat.S_IFREG, "l": stat.S_IFLNK}
_FORMAT = 1


class TreeChanged(Exception):
    """The tree is not what its manifest records: it must not be served."""

    def __init__(self, message: str, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path  # a regular file whose content changed, when that is what happened


@dataclass(frozen=True)
class Item:
    """One entry of the tree as it was unpacked."""

    kind: str  # "d" | "f" | "l"
    mode: int
    size: int
    mtime_ns: int
    ino: int
    nlink: int
    target: str = ""  # a symlink's target


@dataclass(frozen=True)
class Manifest:
    digest: str
    files: int
    file_bytes: int
    items: dict[str, Item]
    private: frozenset[str]  # files runs were seen writing in place: always copied

    def to_json(self) -> bytes:
        rows = [
            [path, it.kind, it.mode, it.size, it.mtime_ns, it.ino, it.nlink, it.target]
            for path, it in self.items.items()
        ]
        document = {
            "v": _FORMAT,
            "digest": self.digest,
            "files": self.files,
            "bytes": self.file_bytes,
            "private": sorted(self.private),
            "items": rows,
        }
        return json.dumps(document, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Filled:
    """What filling a folder did, file by file."""

    files: int
    bytes: int
    reflinked: int
    linked: int
    copied: int


def scan(tree: str, digest: str, files: int, size: int, private: frozenset[str]) -> Manifest:
    """Record every entry below ``tree``, a folder this process just unpacked."""
    items: dict[str, Item] = {}

    def walk(folder: str, prefix: str) -> None:
        with os.scandir(folder) as entries:
            for entry in entries:
                info = entry.stat(follow_symlinks=False)
                path = prefix + entry.name
                kind = _kind(info.st_mode)
                if kind is None:
                    raise TreeChanged(f"{path!r} is neither a file, a folder nor a symlink")
                target = os.readlink(entry.path) if kind == "l" else ""
                items[path] = Item(
                    kind,
                    stat.S_IMODE(info.st_mode),
                    info.st_size if kind == "f" else 0,
                    info.st_mtime_ns,
                    info.st_ino,
                    info.st_nlink,
                    target,
                )
                if kind == "d":
                    walk(entry.path, path + "/")

    walk(tree, "")
    likely = {path for path, item in items.items() if item.kind == "f" and rewritten_in_place(path)}
    kept = frozenset(p for p in private if p in items) | likely
    return Manifest(digest, files, size, items, kept)


def rewritten_in_place(path: str) -> bool:
    """Whether tools commonly rewrite this file in place when they run again.

    A venv's ``bin/Activate.ps1`` and ``pyvenv.cfg`` (``python -m venv`` on an
    existing venv), npm's ``node_modules/.package-lock.json``: files directly in
    a ``bin`` or ``Scripts`` folder or at the first two levels. There are few,
    so copying them from the start costs little, and it spares the first
    restore after such a run from finding the store's copy changed.
    """
    parts = path.split("/")
    return len(parts) <= 2 or (len(parts) >= 2 and parts[-2] in ("bin", "Scripts"))


def parse_manifest(raw: bytes, digest: str) -> Manifest:
    """The manifest in ``raw``; ValueError when it is not shaped as this module writes it.

    A row's names and numbers need no more checks: the fill walks the real tree
    and uses a row only once it equals what ``stat`` says of the entry found,
    so a row naming nothing real only makes the count of entries fall short.
    """
    try:
        document = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"the manifest is not JSON: {exc}") from None
    if not isinstance(document, dict) or document.get("v") != _FORMAT:
        raise ValueError("the manifest has an unknown format")
    if document.get("digest") != digest:
        raise ValueError("the manifest names another entry")
    files, size = document.get("files"), document.get("bytes")
    rows, private = document.get("items"), document.get("private")
    if not (isinstance(files, int) and isinstance(size, int) and isinstance(rows, list)):
        raise ValueError("the manifest's counts are malformed")
    if not (_count(files) and _count(size)):
        raise ValueError("the manifest's counts are malformed")
    if not isinstance(private, list) or not all(isinstance(p, str) for p in private):
        raise ValueError("the manifest's private files are malformed")
    items: dict[str, Item] = {}
    for row in rows:
        if type(row) is not list or len(row) != 8 or type(row[0]) is not str:
            raise ValueError("a manifest row is malformed")
        if row[1] not in _KINDS or type(row[7]) is not str or type(row[6]) is not int:
            raise ValueError(f"the manifest row of {row[0]!r} is malformed")
        items[row[0]] = Item(*row[1:])
    kept = frozenset(p for p in private if p in items)
    return Manifest(digest, files, size, items, kept)


def _count(value: Any) -> bool:
    return type(value) is int and value >= 0


def _kind(mode: int) -> str | None:
    if stat.S_ISREG(mode):
        return "f"
    if stat.S_ISDIR(mode):
        return "d"
    if stat.S_ISLNK(mode):
        return "l"
    return None


def fill(tree_fd: int, dest: str, manifest: Manifest, *, spare: bool = False) -> Filled:
    """Recreate the tree open at ``tree_fd`` in ``dest``, a fresh empty folder.

    ``spare``: ``dest`` is a spare made by :func:`make_spare`, holding the
    tree's folders already; anything else in it is :class:`TreeChanged`.
    Raises :class:`TreeChanged` when the tree differs from ``manifest``, and
    ``OSError`` when the folder cannot be filled; either way ``dest`` is left
    for the caller to remove.
    """
    filler = _Filler(manifest, spare)
    dest_fd = os.open(dest, _DIR)
    try:
        filler.folder(tree_fd, dest_fd, "")
    finally:
        os.close(dest_fd)
    if filler.seen != len(manifest.items):
        raise TreeChanged("entries the manifest records are missing from the tree")
    return Filled(
        manifest.files, manifest.file_bytes, filler.reflinked, filler.linked, filler.copied
    )


def make_spare(manifest: Manifest, dest: str) -> None:
    """Make the tree's folders, empty, in the folder ``dest``: the ``mkdir`` calls of a later fill.

    Making a folder costs far more than linking a file on a busy disk, and a
    venv has one folder for every nine files.
    """
    for path, item in manifest.items.items():  # a folder comes before what it holds
        if item.kind == "d":
            os.mkdir(f"{dest}/{path}", item.mode)


class _Filler:
    def __init__(self, manifest: Manifest, spare: bool) -> None:
        self.manifest = manifest
        self.spare = spare
        self.seen = 0
        self.reflinked = 0
        self.linked = 0
        self.copied = 0
        self.reflink: bool | None = None  # unknown until the first file tries it

    def folder(self, src: int, dst: int, prefix: str) -> None:
        if self.spare:
            for name in os.listdir(dst):
                found = self.manifest.items.get(prefix + name)
                if found is None or found.kind != "d":
                    raise TreeChanged(f"the spare folders hold {prefix + name!r}")
        with os.scandir(src) as entries:
            for entry in entries:
                path = prefix + entry.name
                item = self.manifest.items.get(path)
                if item is None:
                    raise TreeChanged(f"{path!r} is not in the manifest")
                info = entry.stat(follow_symlinks=False)
                self._check(path, item, info)
                self.seen += 1
                if item.kind == "d":
                    try:
                        os.mkdir(entry.name, item.mode, dir_fd=dst)
                    except FileExistsError:
                        if not self.spare:
                            raise
                    with (
                        _opened(entry.name, src, path) as child_src,
                        _opened(entry.name, dst, path) as child_dst,
                    ):
                        if stat.S_IMODE(os.fstat(child_dst).st_mode) != item.mode:
                            os.fchmod(child_dst, item.mode)
                        self.folder(child_src, child_dst, path + "/")
                    times = (item.mtime_ns, item.mtime_ns)
                    os.utime(entry.name, ns=times, dir_fd=dst, follow_symlinks=False)
                elif item.kind == "l":
                    target = os.readlink(entry.name, dir_fd=src)
                    if target != item.target:
                        raise TreeChanged(f"the symlink {path!r} points elsewhere now")
                    os.symlink(target, entry.name, dir_fd=dst)
                else:
                    private = path in self.manifest.private or info.st_nlink > item.nlink
                    self._file(entry.name, src, dst, path, item, private)

    @staticmethod
    def _check(path: str, item: Item, info: os.stat_result) -> None:
        if _kind(info.st_mode) != item.kind:
            raise TreeChanged(f"{path!r} is not the {_KIND_NAMES[item.kind]} it was")
        if info.st_ino != item.ino or stat.S_IMODE(info.st_mode) != item.mode:
            raise TreeChanged(f"{path!r} was replaced", path if item.kind == "f" else None)
        if item.kind == "l":
            return
        if info.st_mtime_ns != item.mtime_ns or (item.kind == "f" and info.st_size != item.size):
            changed = path if item.kind == "f" else None
            raise TreeChanged(f"{path!r} was changed in place", changed)

    def _file(self, name: str, src: int, dst: int, path: str, item: Item, private: bool) -> None:
        if self.reflink is not False and self._clone(name, src, dst, path, item):
            self.reflinked += 1
            return
        if not private:
            try:
                os.link(name, name, src_dir_fd=src, dst_dir_fd=dst, follow_symlinks=False)
                self.linked += 1
                return
            except OSError as exc:
                if exc.errno not in _NO_LINK:
                    raise
        self._copy(name, src, dst, path, item)
        self.copied += 1

    def _clone(self, name: str, src: int, dst: int, path: str, item: Item) -> bool:
        with _source(name, src, path, item) as source:
            target = os.open(name, _NEW, 0o600, dir_fd=dst)
            try:
                try:
                    fcntl.ioctl(target, FICLONE, source)
                except OSError as exc:
                    if exc.errno not in _NO_REFLINK:
                        raise
                    self.reflink = False
                    os.unlink(name, dir_fd=dst)
                    return False
                self.reflink = True
                _finish(target, item)
            finally:
                os.close(target)
        return True

    def _copy(self, name: str, src: int, dst: int, path: str, item: Item) -> None:
        with _source(name, src, path, item) as source:
            target = os.open(name, _NEW, 0o600, dir_fd=dst)
            try:
                _copy_bytes(source, target, item.size)
                _finish(target, item)
            finally:
                os.close(target)
            after = os.fstat(source)  # a run writing to it meanwhile shows in its mtime
            if (after.st_size, after.st_mtime_ns) != (item.size, item.mtime_ns):
                raise TreeChanged(f"{path!r} was changed while it was copied", path)


_KIND_NAMES = {"d": "folder", "f": "file", "l": "symlink"}


@contextlib.contextmanager
def _opened(name: str, dir_fd: int, path: str) -> Iterator[int]:
    try:
        fd = os.open(name, _DIR, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise TreeChanged(f"{path!r} is no longer a folder") from None
        raise
    try:
        yield fd
    finally:
        os.close(fd)


@contextlib.contextmanager
def _source(name: str, dir_fd: int, path: str, item: Item) -> Iterator[int]:
    try:
        fd = os.open(name, _READ, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise TreeChanged(f"{path!r} is a symlink now", path) from None
        raise
    try:
        if os.fstat(fd).st_ino != item.ino:
            raise TreeChanged(f"{path!r} was replaced", path)
        yield fd
    finally:
        os.close(fd)


def _copy_bytes(source: int, target: int, size: int) -> None:
    left = size
    try:
        while left > 0:
            done = os.copy_file_range(source, target, left)
            if done == 0:
                break
            left -= done
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise
        os.lseek(source, size - left, os.SEEK_SET)
        while left > 0:
            chunk = os.read(source, min(left, 1 << 20))
            if not chunk:
                break
            left -= len(chunk)
            view = memoryview(chunk)
            while view:
                view = view[os.write(target, view) :]
    if left:
        raise TreeChanged("a file shrank while it was copied")


def _finish(target: int, item: Item) -> None:
    os.fchmod(target, item.mode)
    os.utime(target, ns=(item.mtime_ns, item.mtime_ns))
