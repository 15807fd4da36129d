"""Values in shell text reach the shell through the environment, never as shell code.

Kestra pastes a rendered value into ``commands`` as text, so a value holding
``$(touch pwned)`` runs ``touch`` on the worker: script injection, as GitHub
Actions calls it. Here each ``{{ }}`` of a shell field is rendered to a marker
(see :class:`Markers`), and a small lexer of the POSIX shell's quoting states
(:func:`place`) replaces every marker by a reference to an environment variable
that holds the value, written for the context the marker stands in:

=================================  ==============================================
context                            what the shell gets, and what it makes of it
=================================  ==============================================
``"...{{ x }}..."``                ``${V}``: one word, the exact value
unquoted ``{{ x }}``               ``"${V1}" "${V2}"``: one word per run of
                                   non-blank characters, as pasted text splits,
                                   and nothing more (no globbing, no ``$( )``)
``NAME={{ x }}``, ``> {{ x }}``,   ``"${V}"``: one word, as the shell itself keeps
``<<< {{ x }}``, ``[[ ]]``,        these (a split value there would run its second
``case {{ x }} in``, a command's   word as a command or make a bad redirection); a
name: ``{{ x }} --version``        value names a program, it does not write a command
``'...{{ x }}...'``, ``$'...'``    ``'..'"${V}"'..'``: the literal value
here-document                      ``${V}``; a quoted one (``<<'EOF'``) holding a
                                   value is rewritten with its text escaped
arithmetic: ``$(( ))``, ``(( ))``, ``${V}``, and the value must be an integer: bash
``$[ ]``, ``let``, ``[[ -eq ]]``   evaluates ``a[$(cmd)]`` there as code
a comment                          nothing
=================================  ==============================================

The value never becomes part of the text the shell parses, so however the
lexer reads the text, the shell never parses a value as code. A marker whose context
cannot be placed safely (inside backticks, inside ``${...}``, right after a
backslash) is a :class:`ShellPlacementError` rather than a guess.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field

ENV_PREFIX = "__wfc_"
"""Names of the environment variables that carry values (``__wfc_1``, ``__wfc_2``...)."""

_BLANKS = re.compile(r"[ \t\n]+")
_INTEGER = re.compile(r"[+-]?[0-9]+")
_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\[[^\]]*\])?\+?=")
_ARITHMETIC_TESTS = re.compile(r"(^|\s)-(eq|ne|lt|le|gt|ge|v)(\s|$)")
_PLAIN_DELIMITER = re.compile(r"[A-Za-z0-9_.+-]+")
_WORD_ENDS = frozenset(" \t\n;&|()<>")
_SPECIAL_IN_HEREDOC = frozenset("\\$`")
_ESCAPED_IN_DOUBLE = frozenset('$`"\\\n')
_RESERVED_KEEP_COMMAND = frozenset(
    {"if", "then", "else", "elif", "do", "while", "until", "!", "{", "}", "time", "fi", "done"}
)


class ShellPlacementError(ValueError):
    """A value stands where the shell could read it as code; the message says how to fix it."""

    position = 0
    """Where in the rendered text the value stands."""


@dataclass
class ShellValues:
    """The environment variables through which one task's shell text receives its values."""

    env: dict[str, str] = field(default_factory=dict)
    _names: dict[str, str] = field(default_factory=dict)

    def name(self, value: str) -> str:
        """The variable holding ``value`` (one per distinct value of the task)."""
        known = self._names.get(value)
        if known is None:
            if "\x00" in value:
                raise ShellPlacementError(
                    "a value holds a NUL character, which no program can receive"
                )
            known = f"{ENV_PREFIX}{len(self._names) + 1}"
            self._names[value] = known
            self.env[known] = value
        return known


_OPEN = f"\x00{secrets.token_hex(8)}:"
_MARKER = re.compile(re.escape(_OPEN) + r"(\d+)\x00")
"""Markers carry a random number of this process, which no flow or value can know."""


class Markers:
    """Stand-ins for the values of one rendering, told apart from the text around them."""

    def __init__(self) -> None:
        self.values: list[str] = []
        self.unknown: set[int] = set()

    def found_in(self, text: str) -> bool:
        return _OPEN in text

    def index(self, found: re.Match[str]) -> int | None:
        """The value a marker stands for; ``None`` for one this rendering did not make."""
        index = int(found[1])
        return index if index < len(self.values) else None

    def mark(self, value: str, *, known: bool = True) -> str:
        """A marker for ``value``; a value holding markers (a captured block) is plain data."""
        if _OPEN in value:
            value = _MARKER.sub(self._expand, value)
        if not known:
            self.unknown.add(len(self.values))
        self.values.append(value)
        return f"{_OPEN}{len(self.values) - 1}\x00"

    def _expand(self, found: re.Match[str]) -> str:
        index = self.index(found)
        return found.group() if index is None else self.values[index]


# --- the lexer ---------------------------------------------------------------------------

PLAIN, DOUBLE, SINGLE, ANSI, BACKTICK, PARAM, ARITH, HEREDOC = range(8)
_QUOTES = {"'": SINGLE, '"': DOUBLE, "`": BACKTICK}
_PLAIN_RUN = re.compile(r"[^ \t\n;&|()<>'\"`$\\\x00#]+")
_DOUBLE_RUN = re.compile(r"[^\"`$\\\x00]+")
_SINGLE_RUN = re.compile(r"[^'\x00]+")
"""Runs of characters without meaning in a state, copied in one step."""


@dataclass
class _Frame:
    kind: int
    closer: str = ""
    integers: bool = False
    depth: int = 0
    # PLAIN only: where the current word and command stand
    word: str = ""
    command_start: bool = True
    command: str | None = None
    one_word_next: bool = False
    one_word: bool = False
    case_depth: int = 0
    in_test: bool = False
    test_integers: bool = False
    let: bool = False

    def integers_here(self) -> bool:
        return self.integers or self.let or (self.in_test and self.test_integers)


@dataclass
class _Heredoc:
    delimiter: str
    quoted: bool
    strip_tabs: bool
    slot: int


def place(text: str, markers: Markers, values: ShellValues) -> str:
    """``text`` with every marker replaced by a reference to its value's variable."""
    placed = text
    if markers.found_in(text):
        lexer = _Lexer(text, markers, values, _Frame(PLAIN))
        try:
            placed = lexer.run()
        except ShellPlacementError as exc:
            exc.position = lexer.i
            raise
    if "\x00" in placed:  # a marker that a filter block changed: its value has no place
        error = ShellPlacementError(
            "a value went through a {% filter %} block, where it cannot be placed safely; "
            "apply the filter inside {{ }} instead"
        )
        error.position = text.find("\x00")
        raise error
    return placed


class _Lexer:
    def __init__(self, text: str, markers: Markers, values: ShellValues, first: _Frame) -> None:
        self.text = text
        self.markers = markers
        self.values = values
        self.i = 0
        self.out: list[str] = []
        self.stack = [first]
        self.heredocs: list[_Heredoc] = []

    # -- helpers ---------------------------------------------------------------------------

    def _marker_at(self, i: int) -> re.Match[str] | None:
        if self.text.startswith("\x00", i):
            found = _MARKER.match(self.text, i)
            if found is not None and self.markers.index(found) is not None:
                return found
        return None

    def _value(self, found: re.Match[str]) -> tuple[str, bool]:
        index = int(found[1])
        return self.markers.values[index], index not in self.markers.unknown

    def _ref(self, value: str) -> str:
        return "${" + self.values.name(value) + "}"

    def _integer(self, value: str, known: bool) -> None:
        if known and not _INTEGER.fullmatch(value.strip()):
            raise ShellPlacementError(
                f"a value used in shell arithmetic must be an integer, got {value!r}: bash "
                "evaluates other text there as code; check it, or pass it through 'env'"
            )

    def _escaped_marker(self, i: int) -> None:
        if self._marker_at(i) is not None:
            raise ShellPlacementError(
                "a backslash right before {{ }} makes its meaning depend on the value; "
                "remove the backslash or quote the expression"
            )

    def _push(self, kind: int, closer: str = "", *, integers: bool | None = None) -> None:
        top = self.stack[-1]
        inherited = top.integers_here() if integers is None else integers
        self.stack.append(_Frame(kind, closer=closer, integers=inherited))

    # -- the loop ---------------------------------------------------------------------------

    def run(self) -> str:
        handlers = {
            PLAIN: self._plain,
            DOUBLE: self._double,
            HEREDOC: self._double,
            SINGLE: self._single,
            ANSI: self._ansi,
            BACKTICK: self._backtick,
            PARAM: self._param,
            ARITH: self._arith,
        }
        while self.i < len(self.text):
            handlers[self.stack[-1].kind]()
        return "".join(self.out)

    def _dollar(self, frame: _Frame) -> bool:
        """Open ``$(``, ``$((``, ``${``, ``$[``, unquoted ``$'`` or ``$"``; False: a plain ``$``."""
        rest = self.text[self.i : self.i + 3]
        if rest.startswith("$(("):
            self.out.append("$((")
            self.i += 3
            self._push(ARITH, "))", integers=True)
        elif rest.startswith("$("):
            self.out.append("$(")
            self.i += 2
            self._push(PLAIN, ")", integers=False)
        elif rest.startswith("${"):
            self.out.append("${")
            self.i += 2
            self._push(PARAM, "}")
        elif rest.startswith("$["):
            self.out.append("$[")
            self.i += 2
            self._push(ARITH, "]", integers=True)
        elif frame.kind == PLAIN and rest.startswith("$'"):
            self.out.append("$'")
            self.i += 2
            self._push(ANSI)
        elif frame.kind == PLAIN and rest.startswith('$"'):
            self.out.append('$"')
            self.i += 2
            self._push(DOUBLE)
        else:
            return False
        return True

    # -- unquoted text -----------------------------------------------------------------------

    def _plain(self) -> None:
        frame = self.stack[-1]
        text, i = self.text, self.i
        found = self._marker_at(i)
        if found is not None:
            self._plain_value(frame, found)
            return
        char = text[i]
        if char == "\\":
            self._escaped_marker(i + 1)
            self._start_word(frame)
            self.out.append(text[i : i + 2])
            frame.word += text[i : i + 2]
            self.i += 2
            return
        if char == "#" and not frame.word:
            end = text.find("\n", i)
            end = len(text) if end < 0 else end
            self.out.append(_MARKER.sub("", text[i:end]))  # a comment runs nothing
            self.i = end
            return
        if char in _QUOTES:
            self._start_word(frame)
            self.out.append(char)
            self.i += 1
            self._push(_QUOTES[char])
            return
        if char == "$" and self._dollar(frame):
            self._start_word(frame)
            return
        if char == "(" and frame.command_start and not frame.word and text.startswith("((", i):
            self.out.append("((")
            self.i += 2
            self._push(ARITH, "))", integers=True)
            return
        if char in _WORD_ENDS:
            self._operator(frame, char)
            return
        self._start_word(frame)
        run = _PLAIN_RUN.match(text, i)
        chunk = run.group() if run else char
        frame.word += chunk
        self.out.append(chunk)
        self.i += len(chunk)

    def _start_word(self, frame: _Frame) -> None:
        """The first character of a word: decide whether a value in it stays one word."""
        if frame.word:
            return
        frame.one_word = frame.one_word_next or frame.in_test
        frame.one_word_next = False
        frame.word = "\x01"  # something has started, even if it is a quote

    def _operator(self, frame: _Frame, char: str) -> None:
        text, i = self.text, self.i
        self._end_word(frame)
        if char == "\n":
            self.out.append(char)
            self.i += 1
            self._command_end(frame)
            if self.heredocs:
                self._heredoc_bodies()
            return
        if char in " \t":
            self.out.append(char)
            self.i += 1
            return
        if char == "<" and text.startswith("<<", i) and not text.startswith("<<<", i):
            self._heredoc_operator()
            return
        if char in "<>":
            operator = re.match(r"<<<|<>|<&|>>|>&|>\||<|>", text[i:])
            assert operator is not None
            self.out.append(operator.group(0))
            self.i += len(operator.group(0))
            frame.one_word_next = True  # a redirection's target, or a here-string, is one word
            return
        if text.startswith(("&&", "||"), i):
            self.out.append(text[i : i + 2])
            self.i += 2
            if not frame.in_test:  # inside [[ ]] they join conditions, not commands
                self._command_end(frame)
            return
        if char == ")":
            if frame.depth:
                frame.depth -= 1
            elif frame.closer == ")" and not frame.case_depth:
                self.out.append(char)
                self.i += 1
                self.stack.pop()
                return
        elif char == "(":
            frame.depth += 1
        self.out.append(char)
        self.i += 1
        self._command_end(frame)

    def _end_word(self, frame: _Frame) -> None:
        word = frame.word.replace("\x01", "")
        raw = frame.word
        frame.word = ""
        frame.one_word = False
        if not raw:
            return
        if frame.in_test:
            if word == "]]":
                frame.in_test = frame.test_integers = False
            return
        if word == "esac" and frame.case_depth:
            frame.case_depth -= 1
            return
        if not frame.command_start:
            if word == "in" and frame.command == "case":
                frame.command = None
                frame.command_start = True
            return
        if _ASSIGNMENT.match(word):
            return  # NAME=value before a command: the command comes next
        if word == "[[":
            frame.in_test = True
            frame.test_integers = self._arithmetic_test_ahead()
            frame.command_start = False
            return
        if word == "case":
            frame.case_depth += 1
            frame.command = "case"
            frame.one_word_next = True
            frame.command_start = False
            return
        if word in _RESERVED_KEEP_COMMAND:
            return
        frame.command = word
        frame.let = word == "let"
        frame.command_start = False

    def _command_end(self, frame: _Frame) -> None:
        frame.command_start = True
        frame.command = None
        frame.let = False
        frame.one_word_next = False

    def _arithmetic_test_ahead(self) -> bool:
        """Whether the ``[[ ]]`` starting here compares numbers (its operands are arithmetic)."""
        end = self.text.find("]]", self.i)
        inside = self.text[self.i : len(self.text) if end < 0 else end]
        return _ARITHMETIC_TESTS.search(_MARKER.sub(" x ", inside)) is not None

    def _plain_value(self, frame: _Frame, found: re.Match[str]) -> None:
        value, known = self._value(found)
        self.i = found.end()
        word = frame.word.replace("\x01", "")
        self._start_word(frame)
        if frame.integers_here():
            self._integer(value, known)
            self.out.append('"' + self._ref(value) + '"')
            return
        command_name = frame.command_start and not word
        if frame.one_word or command_name or _ASSIGNMENT.match(word):
            self.out.append('"' + self._ref(value) + '"')  # NAME=..., a command's name: one word
            return
        words = split_words(value)
        placed = " ".join('"' + self._ref(part) + '"' for part in words)
        if value[:1] in " \t\n":
            placed = " " + placed
        if value[-1:] in " \t\n" and words:
            placed += " "
        self.out.append(placed)
        if placed.endswith(" "):  # the value ended the word: what follows starts another
            frame.word = ""
            frame.one_word = False
        if words:
            frame.command_start = False

    # -- quoted text ---------------------------------------------------------------------------

    def _double(self) -> None:
        frame = self.stack[-1]
        text, i = self.text, self.i
        found = self._marker_at(i)
        if found is not None:
            value, known = self._value(found)
            if frame.integers:
                self._integer(value, known)
            self.out.append(self._ref(value))
            self.i = found.end()
            return
        run = _DOUBLE_RUN.match(text, i)
        if run is not None:
            self.out.append(run.group())
            self.i = run.end()
            return
        char = text[i]
        if char == "\\":
            self._escaped_marker(i + 1)
            following = text[i + 1 : i + 2]
            special = _SPECIAL_IN_HEREDOC if frame.kind == HEREDOC else _ESCAPED_IN_DOUBLE
            size = 2 if following in special or following == "\n" else 1
            self.out.append(text[i : i + size])
            self.i += size
            return
        if char == '"' and frame.kind == DOUBLE:
            self.out.append(char)
            self.i += 1
            self.stack.pop()
            return
        if char == "`":
            self.out.append(char)
            self.i += 1
            self._push(BACKTICK)
            return
        if char == "$" and self._dollar(frame):
            return
        self.out.append(char)
        self.i += 1

    def _single(self) -> None:
        found = self._marker_at(self.i)
        if found is not None:
            value, known = self._value(found)
            if self.stack[-1].integers:
                self._integer(value, known)
            self.out.append("'\"" + self._ref(value) + "\"'")
            self.i = found.end()
            return
        run = _SINGLE_RUN.match(self.text, self.i)
        if run is not None:
            self.out.append(run.group())
            self.i = run.end()
            return
        char = self.text[self.i]
        self.out.append(char)
        self.i += 1
        if char == "'":
            self.stack.pop()

    def _ansi(self) -> None:
        found = self._marker_at(self.i)
        if found is not None:
            value, known = self._value(found)
            if self.stack[-1].integers:
                self._integer(value, known)
            self.out.append("'\"" + self._ref(value) + "\"$'")
            self.i = found.end()
            return
        char = self.text[self.i]
        if char == "\\":
            self._escaped_marker(self.i + 1)
            self.out.append(self.text[self.i : self.i + 2])
            self.i += 2
            return
        self.out.append(char)
        self.i += 1
        if char == "'":
            self.stack.pop()

    def _backtick(self) -> None:
        if self._marker_at(self.i) is not None:
            raise ShellPlacementError(
                "{{ }} inside backticks cannot be placed safely; write $( ) instead of ` `"
            )
        char = self.text[self.i]
        if char == "\\":
            self.out.append(self.text[self.i : self.i + 2])
            self.i += 2
            return
        self.out.append(char)
        self.i += 1
        if char == "`":
            self.stack.pop()

    def _param(self) -> None:
        frame = self.stack[-1]
        if self._marker_at(self.i) is not None:
            raise ShellPlacementError(
                "{{ }} inside ${...} cannot be placed safely (the shell may read it as a "
                "pattern or an arithmetic subscript); put the value in 'env' and use $NAME"
            )
        char = self.text[self.i]
        if char == "\\":
            self.out.append(self.text[self.i : self.i + 2])
            self.i += 2
            return
        if char == "$" and self._dollar(frame):
            return
        self.out.append(char)
        self.i += 1
        if char == '"':
            self._push(DOUBLE)
        elif char == "'" and not any(outer.kind == DOUBLE for outer in self.stack):
            self._push(SINGLE)
        elif char == "`":
            self._push(BACKTICK)
        elif char == "{":
            frame.depth += 1
        elif char == "}":
            if frame.depth:
                frame.depth -= 1
            else:
                self.stack.pop()

    def _arith(self) -> None:
        frame = self.stack[-1]
        found = self._marker_at(self.i)
        if found is not None:
            value, known = self._value(found)
            self._integer(value, known)
            self.out.append(self._ref(value))
            self.i = found.end()
            return
        char = self.text[self.i]
        if char == "$" and self._dollar(frame):
            return
        if char == '"':
            self.out.append(char)
            self.i += 1
            self._push(DOUBLE)
            return
        if char == "(":
            frame.depth += 1
        elif char == ")" and frame.depth:
            frame.depth -= 1
        elif frame.closer == "))" and self.text.startswith("))", self.i):
            self.out.append("))")
            self.i += 2
            self.stack.pop()
            return
        elif frame.closer == "]" and char == "]":
            self.stack.pop()
        self.out.append(char)
        self.i += 1

    # -- here-documents -----------------------------------------------------------------------

    def _heredoc_operator(self) -> None:
        """``<<`` or ``<<-`` and its end marker; the body follows the next unquoted newline."""
        text = self.text
        start = self.i
        self.i += 2
        strip_tabs = text.startswith("-", self.i)
        if strip_tabs:
            self.i += 1
        while self.i < len(text) and text[self.i] in " \t":
            self.i += 1
        self.out.append(text[start : self.i])
        word_start = self.i
        delimiter = ""
        quoted = False
        while self.i < len(text) and text[self.i] not in _WORD_ENDS:
            if self._marker_at(self.i) is not None:
                raise ShellPlacementError("the end marker of a here-document cannot be a value")
            char = text[self.i]
            if char in "'\"":
                end = text.find(char, self.i + 1)
                end = len(text) if end < 0 else end
                delimiter += text[self.i + 1 : end]
                quoted = True
                self.i = end + 1
            elif char == "\\":
                delimiter += text[self.i + 1 : self.i + 2]
                quoted = True
                self.i += 2
            else:
                delimiter += char
                self.i += 1
        self.out.append(text[word_start : self.i])
        self.heredocs.append(_Heredoc(delimiter, quoted, strip_tabs, len(self.out) - 1))

    def _heredoc_bodies(self) -> None:
        """Read each pending here-document's lines up to its end marker, as the shell does."""
        pending, self.heredocs = self.heredocs, []
        for doc in pending:
            text = self.text
            start = line_start = self.i
            end_line: tuple[int, int] | None = None
            while line_start < len(text):
                newline = text.find("\n", line_start)
                line_end = len(text) if newline < 0 else newline
                line = text[line_start:line_end]
                if (line.lstrip("\t") if doc.strip_tabs else line) == doc.delimiter:
                    end_line = (line_start, min(line_end + 1, len(text)))
                    break
                line_start = line_end + 1
            body_end = end_line[0] if end_line else len(text)
            body = text[start:body_end]
            self.out.append(self._heredoc_body(doc, body))
            if end_line is not None:
                self.out.append(text[end_line[0] : end_line[1]])
                self.i = end_line[1]
            else:
                self.i = len(text)

    def _heredoc_body(self, doc: _Heredoc, body: str) -> str:
        has_values = self.markers.found_in(body)
        if doc.quoted:
            if not has_values:
                return body
            if not _PLAIN_DELIMITER.fullmatch(doc.delimiter):
                raise ShellPlacementError(
                    f"a value in the here-document ending with {doc.delimiter!r}: give it an "
                    "end marker of letters and digits, such as EOF"
                )
            self.out[doc.slot] = doc.delimiter  # unquoted, with the text escaped instead
            pieces = []
            last = 0
            for found in _MARKER.finditer(body):
                if self.markers.index(found) is None:
                    continue
                pieces.append(re.sub(r"([\\$`])", r"\\\1", body[last : found.start()]))
                pieces.append(self._ref(self._value(found)[0]))
                last = found.end()
            pieces.append(re.sub(r"([\\$`])", r"\\\1", body[last:]))
            return "".join(pieces)
        if not has_values:
            return body
        inner = _Lexer(body, self.markers, self.values, _Frame(HEREDOC))
        return inner.run()


def split_words(value: str) -> Sequence[str]:
    """The words an unquoted value stands for: its runs of non-blank characters."""
    return [part for part in _BLANKS.split(value) if part]
