"""Which files of a working directory a cache keeps: glob patterns, checked and matched.

Patterns are relative to the working directory and may never reach outside it, so
they are checked before anything is read. Matching walks the folder once with
``os.scandir`` and only descends into directories that some pattern can reach,
so a large unrelated folder next to ``venv/`` costs nothing.

A pattern starting with ``!`` excludes what it matches. The last pattern that
matches a path, or one of the folders above it, decides: ``node_modules/**``
then ``!node_modules/.cache/**`` keeps the packages but not npm's cache, and a
later positive pattern can bring part of an excluded folder back.
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
    normalised = [_normalise(pattern) for pattern in patterns]
    if normalised and all(pattern.startswith("!") for pattern in normalised):
        raise PatternError(
            f"cache patterns {list(patterns)!r} only exclude ('!'): add a pattern that selects "
            "files, such as 'node_modules/**'"
        )
    return normalised


def _normalise(pattern: object) -> str:
    if not isinstance(pattern, str):
        raise PatternError(f"cache pattern {pattern!r} must be a string")
    if pattern.startswith("!"):
        if pattern.startswith("!!"):
            raise PatternError(f"cache pattern {pattern!r} has more than one '!'")
        if not pattern[1:].strip():
            raise PatternError(f"cache pattern {pattern!r} excludes nothing: add a glob after '!'")
        try:
            return "!" + _normalise(pattern[1:])
        except PatternError as exc:
            raise PatternError(str(exc).replace(repr(pattern[1:]), repr(pattern), 1)) from None
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
    """Paths under ``root`` (relative, sorted) that the patterns select.

    Regular files, symlinks (never followed) and directories are returned; a
    directory that is selected brings everything below it, so ``venv`` and
    ``venv/**`` keep the same files, and empty directories survive a round trip.
    The last pattern matching a path or one of its parent folders decides
    whether it is kept (``!pattern``: not kept).
    """
    normalised = validate_patterns(patterns)
    if not normalised:
        return []
    rules = [_Rule(pattern) for pattern in normalised]
    # Where rules after index i (i = -1 for "no rule yet") can still match: a folder is
    # only walked when one of them could change the decision below it.
    keeps_after = [_prefixes(rules[i + 1 :], keep=True) for i in range(-1, len(rules))]
    drops_after = [_prefixes(rules[i + 1 :], keep=False) for i in range(-1, len(rules))]

    def reachable(rel: str, candidates: set[str]) -> bool:
        return any(
            not p or p == rel or p.startswith(rel + "/") or rel.startswith(p + "/")
            for p in candidates
        )

    def decided(rel: str, inherited: int) -> int:
        """Index of the last rule matching ``rel`` or a parent folder; -1 for none."""
        for index in range(len(rules) - 1, inherited, -1):
            if rules[index].matcher.match(rel):
                return index
        return inherited

    found: list[str] = []

    def everything(folder: str, rel: str) -> None:
        with os.scandir(folder) as entries:
            for entry in entries:
                child = f"{rel}/{entry.name}"
                found.append(child)
                if entry.is_dir(follow_symlinks=False):
                    everything(entry.path, child)

    def walk(folder: str, rel: str, inherited: int) -> None:
        with os.scandir(folder) as entries:
            for entry in entries:
                child = f"{rel}/{entry.name}" if rel else entry.name
                is_dir = entry.is_dir(follow_symlinks=False)
                index = decided(child, inherited)
                kept = index >= 0 and rules[index].keep
                if kept:
                    found.append(child)
                if not is_dir:
                    continue
                if kept and not reachable(child, drops_after[index + 1]):
                    everything(entry.path, child)  # no later exclusion reaches below
                elif kept or reachable(child, keeps_after[index + 1]):
                    walk(entry.path, child, index)

    walk(os.fspath(root), "", -1)
    found.sort()
    return [Path(name) for name in found]


def _prefixes(rules: list[_Rule], *, keep: bool) -> set[str]:
    return {_literal_prefix(rule.glob) for rule in rules if rule.keep is keep}


class _Rule:
    """One pattern: its glob, compiled once, and whether it keeps or excludes (``!``)."""

    def __init__(self, pattern: str) -> None:
        self.keep = not pattern.startswith("!")
        self.glob = pattern if self.keep else pattern[1:]
        self.matcher = glob.compile(self.glob, flags=_FLAGS)


def selects(patterns: list[str], relative: str) -> bool:
    """Whether ``patterns`` keep the path ``relative``, by the same rule as :func:`match_files`."""
    rules = [_Rule(pattern) for pattern in validate_patterns(patterns)]
    parts = PurePosixPath(relative).parts
    candidates = ["/".join(parts[: end + 1]) for end in range(len(parts))]
    for rule in reversed(rules):
        if any(rule.matcher.match(candidate) for candidate in candidates):
            return rule.keep
    return False
