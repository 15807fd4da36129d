"""Where each value of a flow was written: file name and line, for messages about expressions.

Expressions are rendered while a flow runs, long after the YAML was parsed; the
map kept from parsing lets an error say ``flow.yaml:12`` rather than only a field.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import yaml

Loc = tuple[int | str, ...]


@dataclass
class SourceMap:
    """Lines of the scalar values of one flow file, keyed by their location in the data."""

    source: str | None = None
    starts: dict[Loc, int] = field(default_factory=dict)

    def __eq__(self, other: object) -> bool:
        # Two flows with the same content are equal wherever they were written.
        return isinstance(other, SourceMap)

    def __hash__(self) -> int:
        return 0

    def line(self, loc: Loc, offset: int = 1) -> int | None:
        """The file line of line ``offset`` (1-based) of the value at ``loc``, if known."""
        start = self.starts.get(tuple(loc))
        return None if start is None else start + offset - 1

    def where(self, loc: Loc, offset: int = 1) -> str:
        """``file:line`` for messages, or ``""`` when the flow was not read from a file."""
        line = self.line(loc, offset)
        if self.source is None:
            return ""
        return f"{self.source}:{line}" if line is not None else self.source

    @classmethod
    def from_yaml(cls, root: yaml.Node | None, source: str) -> SourceMap:
        """Record the first content line of every scalar under ``root``."""
        found = cls(source=source)
        if root is not None:
            _walk(root, (), found.starts, set())
        return found


def _walk(node: yaml.Node, loc: Loc, starts: dict[Loc, int], seen: set[int]) -> None:
    if id(node) in seen:  # an alias shares its anchor's node; record it once
        return
    if isinstance(node, yaml.ScalarNode):
        # A block scalar (``|`` or ``>``) starts on the line after its indicator.
        block = node.style in ("|", ">")
        starts[loc] = node.start_mark.line + (2 if block else 1)
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode):
                _walk(value, (*loc, key.value), starts, seen)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _walk(item, (*loc, index), starts, seen)
    seen.discard(id(node))
