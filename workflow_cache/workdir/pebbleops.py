"""Pebble's operators that Jinja2 lacks: ``a ?? b``, ``a ??? b`` and ``c ? a : b``.

Kestra adds two coalescing operators to Pebble: ``??`` gives its right side when
the left one is undefined or null, ``???`` only when it is undefined. Both bind
tighter than ``~`` and filters, as in Kestra (``a ?? b | upper`` is
``(a ?? b) | upper``), and the right side is only evaluated when it is used.
Pebble's ternary ``c ? a : b`` has the lowest precedence, like Jinja's
``a if c else b``, and nests to the right.

Jinja's lexer refuses ``?``, so :func:`spell_operators` first respells the
operators, outside string literals and only inside ``{{ }}`` and ``{% %}``, as
names no flow uses; :class:`PebbleParser` then reads those names as operators.
"""

from __future__ import annotations

import re

from jinja2 import nodes
from jinja2.parser import Parser

NULL_OR = "__wfc_null_or__"
UNDEFINED_OR = "__wfc_undefined_or__"
THEN = "__wfc_then__"

IS_SET = "__wfc_is_set__"
IS_DEFINED = "__wfc_is_defined__"
"""Names of the two functions the coalescing operators call (see :func:`is_set`)."""

_SPELLING = {"???": UNDEFINED_OR, "??": NULL_OR, "?": THEN}
_TESTS = {NULL_OR: IS_SET, UNDEFINED_OR: IS_DEFINED}
_OPENING = re.compile(r"\{\{|\{%|\{#")
_RAW = re.compile(r"-?\s*raw\s*-?%\}")
_END_RAW = re.compile(r"\{%-?\s*endraw\s*-?%\}")
_QUESTIONS = re.compile(r"\?{1,3}")
_PAIRS = {"(": ")", "[": "]", "{": "}"}


def spell_operators(source: str) -> str:
    """``source`` with ``??``, ``???`` and ``?`` in expressions written as names."""
    if "?" not in source:
        return source
    out: list[str] = []
    i = 0
    while True:
        found = _OPENING.search(source, i)
        if found is None:
            out.append(source[i:])
            return "".join(out)
        out.append(source[i : found.start()])
        start = found.end()
        if found.group() == "{#":
            end = source.find("#}", start)
            i = len(source) if end < 0 else end + 2
            out.append(source[found.start() : i])
            continue
        if found.group() == "{%" and _RAW.match(source, start):
            end_raw = _END_RAW.search(source, start)
            i = len(source) if end_raw is None else end_raw.end()
            out.append(source[found.start() : i])
            continue
        closer = "}}" if found.group() == "{{" else "%}"
        body, i = _expression(source, start, closer)
        out.append(found.group() + body)


def _expression(source: str, i: int, closer: str) -> tuple[str, int]:
    """The respelled text of one tag from ``i`` up to and including its closer."""
    out: list[str] = []
    depth: list[str] = []
    while i < len(source):
        char = source[i]
        if char in "'\"":
            end = i + 1
            while end < len(source) and source[end] != char:
                end += 2 if source[end] == "\\" else 1
            out.append(source[i : end + 1])
            i = end + 1
        elif not depth and source.startswith(closer, i):
            out.append(closer)
            return "".join(out), i + len(closer)
        elif char == "?":
            run = _QUESTIONS.match(source, i)
            assert run is not None
            out.append(f" {_SPELLING[run.group()]} ")
            i = run.end()
        else:
            if char in _PAIRS:
                depth.append(_PAIRS[char])
            elif depth and char == depth[-1]:
                depth.pop()
            out.append(char)
            i += 1
    return "".join(out), i


class PebbleParser(Parser):
    """Jinja's parser, reading the respelled Pebble operators."""

    def parse_condexpr(self) -> nodes.Expr:
        lineno = self.stream.current.lineno
        condition = super().parse_condexpr()
        if not self.stream.skip_if(f"name:{THEN}"):
            return condition
        chosen = self.parse_condexpr()
        self.stream.expect("colon")
        otherwise = self.parse_condexpr()
        return nodes.CondExpr(condition, chosen, otherwise, lineno=lineno)

    def parse_unary(self, with_filter: bool = True) -> nodes.Expr:
        node = super().parse_unary(with_filter=False)
        while self.stream.current.type == "name" and self.stream.current.value in _TESTS:
            test = _TESTS[self.stream.current.value]
            lineno = self.stream.current.lineno
            next(self.stream)
            fallback = super().parse_unary(with_filter=False)
            present = nodes.Call(nodes.Name(test, "load"), [node], [], None, None, lineno=lineno)
            node = nodes.CondExpr(present, node, fallback, lineno=lineno)
        if with_filter:
            node = self.parse_filter_expr(node)
        return node
