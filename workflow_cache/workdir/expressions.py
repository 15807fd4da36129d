"""``{{ ... }}`` expressions: a sandboxed Jinja2 environment that behaves like Kestra's Pebble.

Jinja2 and Pebble share their syntax for the common cases (``{{ a.b | f(x) }}``,
``{% if %}``, ``{% for %}``, ``{# #}``). What differs is made to follow Kestra:

- an unknown variable or filter is an error naming it and the line of the flow
  file, never an empty string;
- only the filters of :mod:`.filters` exist, and ``a.b`` on a map is always its
  key ``b`` (``inputs.items`` is the input named ``items``, not a method);
- values print as Kestra prints them (:func:`.filters.to_text`);
- a rendered value is final: text coming from an input or an output is never
  read as an expression again, so ``{{`` inside a value stays ``{{``;
- in shell text a value is data, never code: :meth:`Expressions.render` with
  ``shell=`` hands each value to the shell through an environment variable
  (:mod:`.shellvalues`), unless it is written ``{{ x | raw }}``;
- Pebble's ``??``, ``???`` and ``c ? a : b`` work (:mod:`.pebbleops`).

The environment is Jinja2's immutable sandbox: no attribute starting with
``_``, no changing lists or maps, no imports or includes.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

from jinja2 import StrictUndefined, TemplateSyntaxError, Undefined, nodes, pass_context
from jinja2.exceptions import SecurityError, TemplateAssertionError, UndefinedError
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment

from workflow_cache.workdir.errors import FlowError
from workflow_cache.workdir.filters import FILTERS, FilterError, RawText, to_text
from workflow_cache.workdir.pebbleops import IS_DEFINED, IS_SET, PebbleParser, spell_operators
from workflow_cache.workdir.shellvalues import Markers, ShellPlacementError, ShellValues, place
from workflow_cache.workdir.sourcemap import Loc, SourceMap

_MARKERS = ("{{", "{%", "{#")
_TEMPLATE = "<template>"
_SHELL = "wfc-shell"
"""Where a shell rendering keeps its :class:`Markers`: a name no expression can spell."""


class ExpressionError(FlowError):
    """An expression that cannot be rendered; the message names the file line and field."""


class Scope(dict[str, Any]):
    """A map that knows its own path (``outputs.build.vars``) to name what is missing in it."""

    def __init__(self, data: Mapping[str, Any], path: str) -> None:
        super().__init__(data)
        self.path = path


def scoped(value: Any, path: str) -> Any:
    """``value`` with every map inside it turned into a :class:`Scope` named by its path."""
    if isinstance(value, Mapping):
        return Scope({key: scoped(item, f"{path}.{key}") for key, item in value.items()}, path)
    if isinstance(value, list | tuple):
        return [scoped(item, f"{path}[{index}]") for index, item in enumerate(value)]
    return value


class Pending(str):
    """A value known only once an earlier task has run: prints as nothing, accepts anything.

    Used to check a flow before it runs, so a typo in ``inputs.nmae`` is reported
    before the first task instead of after it.
    """

    __slots__ = ()

    def __new__(cls) -> Pending:
        return super().__new__(cls, "")

    def _same(self, *args: Any, **kwargs: Any) -> Pending:
        return Pending()

    __add__ = __radd__ = __sub__ = __rsub__ = __mul__ = __rmul__ = _same
    __truediv__ = __rtruediv__ = __floordiv__ = __rfloordiv__ = __mod__ = __rmod__ = _same
    __call__ = _same


class _Unknown(StrictUndefined):
    """An unknown variable: any use of it (printing, comparing, iterating) is an error."""

    __slots__ = ()

    @property
    def _undefined_message(self) -> str:
        if self._undefined_exception is SecurityError:
            return f"{self._undefined_name!r} cannot be used in an expression"
        return f"unknown variable {self._path()!r}"

    def _path(self) -> str:
        name = self._undefined_name
        owner = self._undefined_obj
        if isinstance(owner, Scope):
            return f"{owner.path}.{name}"
        if name is None:
            return "?"
        return str(name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise UndefinedError(f"unknown function {self._path()!r}")


def _pending_aware(function: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(function)
    def call(value: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(value, Pending) or any(
            isinstance(item, Pending) for item in (*args, *kwargs.values())
        ):
            return Pending()
        return function(value, *args, **kwargs)

    return call


def _now() -> datetime:
    return datetime.now(UTC)


def _is_set(value: Any) -> bool:
    return not isinstance(value, Undefined) and value is not None


def _is_defined(value: Any) -> bool:
    return not isinstance(value, Undefined)


@pass_context
def _finalize(context: Context, value: Any) -> str:
    """How a value prints; in shell text, a marker the shell placement replaces."""
    if isinstance(value, RawText):
        return str(value)
    text = to_text(value)
    markers = context.get(_SHELL)
    if not isinstance(markers, Markers):
        return text
    return markers.mark(text, known=not isinstance(value, Pending))


class _Environment(ImmutableSandboxedEnvironment):
    """Maps are read by key first; unknown keys are errors that name the full path."""

    def preprocess(self, source: str, name: str | None = None, filename: str | None = None) -> str:
        return spell_operators(super().preprocess(source, name, filename))

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        return PebbleParser(self, source, name, filename).parse()

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(__obj, _Unknown):
            raise UndefinedError(f"unknown function {__obj._path()!r}")
        return super().call(__context, __obj, *args, **kwargs)

    def getattr(self, obj: Any, attribute: str) -> Any:
        if isinstance(obj, Pending | Undefined):
            return obj
        if isinstance(obj, Mapping):
            if attribute in obj:
                return obj[attribute]
            return self.undefined(obj=obj, name=attribute)
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        if isinstance(obj, Pending | Undefined):
            return obj
        if isinstance(obj, Mapping):
            if argument in obj:
                return obj[argument]
            return self.undefined(obj=obj, name=argument)
        return super().getitem(obj, argument)


def _environment() -> _Environment:
    env = _Environment(
        undefined=_Unknown,
        autoescape=False,
        keep_trailing_newline=True,
        finalize=_finalize,
    )
    env.filters = {name: _pending_aware(function) for name, function in FILTERS.items()}
    kept_tests = ("defined", "undefined", "none", "even", "odd", "iterable", "mapping", "string")
    tests = {name: env.tests[name] for name in kept_tests}
    tests.update(
        null=env.tests["none"],
        map=env.tests["mapping"],
        empty=lambda value: value is None or (hasattr(value, "__len__") and len(value) == 0),
    )
    env.tests = tests
    env.globals = {"null": None, "now": _now, IS_SET: _is_set, IS_DEFINED: _is_defined}
    return env


def has_expression(text: str) -> bool:
    return any(marker in text for marker in _MARKERS)


class Expressions:
    """Compiles and renders the strings of one flow, reporting errors at their file line."""

    def __init__(self, source: SourceMap | None = None) -> None:
        self.source = source or SourceMap()
        self._env = _environment()
        self._compiled: dict[tuple[Loc, str], Any] = {}

    def render(
        self,
        text: str,
        loc: Loc,
        variables: Mapping[str, Any],
        *,
        shell: ShellValues | None = None,
    ) -> str:
        """``text`` with its expressions replaced; text without ``{{``/``{%``/``{#`` as it is.

        With ``shell``, ``text`` is shell code: each value is left in ``shell.env`` and
        the text refers to it (:mod:`.shellvalues`), so no value is ever read as code.
        """
        if not has_expression(text):
            return text
        template = self.compile(text, loc)
        markers = None if shell is None else Markers()
        scope = variables if markers is None else {**variables, _SHELL: markers}
        try:
            rendered: str = template.render(scope)
        except Exception as exc:  # every failure inside a template becomes one message
            line = _template_line(exc.__traceback__)
            raise ExpressionError(self._message(loc, line, exc)) from None
        if markers is None or shell is None:
            return rendered
        try:
            return place(rendered, markers, shell)
        except ShellPlacementError as exc:
            line = rendered[: exc.position].count("\n") + 1
            raise ExpressionError(self._message(loc, line, exc)) from None

    def compile(self, text: str, loc: Loc) -> Any:
        cached = self._compiled.get((loc, text))
        if cached is None:
            try:
                cached = self._env.from_string(text)
            except TemplateSyntaxError as exc:
                raise ExpressionError(self._message(loc, exc.lineno, exc)) from None
            self._compiled[(loc, text)] = cached
        return cached

    def _message(self, loc: Loc, line: int | None, exc: BaseException) -> str:
        where = self.source.where(loc, line or 1)
        field = field_name(loc)
        prefix = f"{where}: {field}" if where else field
        return f"{prefix}: {_describe(exc)}"


def _describe(exc: BaseException) -> str:
    message = str(exc)
    if isinstance(exc, TemplateAssertionError) and message.startswith("No filter named"):
        name = message.removeprefix("No filter named ").rstrip(".")
        return f"unknown filter {name}; known filters: " + ", ".join(sorted(FILTERS))
    if message.startswith("No test named"):  # at compile time or, inside an if, at run time
        name = message.removeprefix("No test named ").removesuffix(" found.").rstrip(".")
        return f"unknown test {name}"
    if isinstance(exc, TemplateSyntaxError):
        return f"expression syntax error: {message}"
    if isinstance(exc, UndefinedError | FilterError | FlowError):
        return message
    if isinstance(exc, SecurityError | ShellPlacementError):
        return message
    return f"{type(exc).__name__}: {message}"


def _template_line(tb: TracebackType | None) -> int | None:
    """The template line of the innermost template frame of a rendering error."""
    line = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == _TEMPLATE:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def field_name(loc: Iterable[int | str]) -> str:
    """``tasks[0].commands[1]`` for the location ``("tasks", 0, "commands", 1)``."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text
