"""Which files of a working directory a cache keeps: glob patterns, checked and matched.

Patterns are relative to the working directory and may never reach outside it, so
they are checked before anything is read. Matching walks the folder once with
``os.scandir`` and only descends into directories that some pattern can reach,
so a large unrelated folder next to ``venv/`` costs nothing.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from wcmatch import glob

_FLAGS = glob.GLOBSTAR | glob.DOTGLOB


class PatternError(ValueError):
    """A cache pattern that is empty, absolute or escapes the working directory."""


def validate_patterns(patterns: list[str]) -> list[str]:
    """Return the patterns in normal form (``./a//b/`` -> ``a/b``); raise :class:`PatternError`.

    ``..`` is accepted only where it stays inside the folder and follows a literal
    segment (``a/../b`` is ``b``); after a wildcard it could not be resolved.
    """
    if isinstance(patterns, str) or not isinstance(patterns, list | tuple):
        raise PatternError(f"cache patterns must be a list of glob strings, got {patterns!r}")
    return [_normalise(pattern) for pattern in patterns]


def _normalise(pattern: object) -> str:
    if not isinstance(pattern, str):
        raise PatternError(f"cache pattern {pattern!r} must be a string")
    if not pattern.strip():
        raise PatternError(f"cache pattern {pattern!r} is empty")
    if (
        pattern.startswith(("/", "\\", "~"))
        or PurePosixPath(pattern).is_absolute()
        or (len(pattern) > 1 and pattern[1] == ":")
    ):
        raise PatternError(
            f"cache pattern {pattern!r} is absolute: patterns are relative to the working directory"
        )
    parts: list[str] = []
    for segment in pattern.split("/"):
        if segment in ("", "."):
            continue
        if segment == "..":
            if not parts:
                raise PatternError(
                    f"cache pattern {pattern!r} escapes the working directory with '..'"
                )
            if glob.is_magic(parts[-1], flags=_FLAGS):
                raise PatternError(
                    f"cache pattern {pattern!r} has '..' after a wildcard, which cannot be resolved"
                )
            parts.pop()
            continue
        parts.append(segment)
    if not parts:
        raise PatternError(f"cache pattern {pattern!r} names the working directory itself")
    return "/".join(parts)


def _literal_prefix(pattern: str) -> str:
    """The leading segments without wildcards: the only place the pattern can match."""
    prefix: list[str] = []
    for segment in pattern.split("/"):
        if glob.is_magic(segment, flags=_FLAGS):
            break
        prefix.append(segment)
    return "/".join(prefix)


def match_files(root: Path, patterns: list[str]) -> list[Path]:
    """Paths under ``root`` (relative, sorted) that match any pattern.

    Regular files, symlinks (never followed) and directories are returned; a
    directory that matches brings everything below it, so ``venv`` and ``venv/**``
    keep the same files, and empty directories survive a round trip.
    """
    normalised = validate_patterns(patterns)
    if not normalised:
        return []
    matcher = glob.compile(normalised, flags=_FLAGS)
    prefixes = {_literal_prefix(pattern) for pattern in normalised}

    def reachable(rel: str) -> bool:
        return any(
            not p or p == rel or p.startswith(rel + "/") or rel.startswith(p + "/")
            for p in prefixes
        )

    found: list[str] = []

    def everything(folder: str, rel: str) -> None:
        with os.scandir(folder) as entries:
            for entry in entries:
                child = f"{rel}/{entry.name}"
                found.append(child)
                if entry.is_dir(follow_symlinks=False):
                    everything(entry.path, child)

    def walk(folder: str, rel: str) -> None:
        with os.scandir(folder) as entries:
            for entry in entries:
                child = f"{rel}/{entry.name}" if rel else entry.name
                is_dir = entry.is_dir(follow_symlinks=False)
                if matcher.match(child):
                    found.append(child)
                    if is_dir:
                        everything(entry.path, child)
                elif is_dir and reachable(child):
                    walk(entry.path, child)

    walk(os.fspath(root), "")
    found.sort()
    return [Path(name) for name in found]
