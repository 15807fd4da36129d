"""Flow inputs: Kestra's typed ``inputs`` declarations and the values a run is given.

A flow declares inputs with an ``id``, a ``type``, optional ``defaults`` and
``required`` (true unless said otherwise, as in Kestra). Values come from the
command line as text, from a JSON file or from Python; each is checked and
converted to its type before any task runs, so a typo in ``--input count=1O``
stops the run with one line naming the input instead of reaching a script.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, TypeVar
from urllib.parse import urlsplit

import yaml
from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from workflow_cache.duration import DurationError, parse_iso_duration
from workflow_cache.workdir.errors import FlowError

_INPUT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class InputError(FlowError):
    """An input value that is missing, unknown or not of the declared type."""


class _Input(BaseModel):
    """What every input has; subclasses convert a given value to their type."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", validate_default=True
    )
    kind: ClassVar[str] = "a value"

    id: str
    type: str
    description: str | None = None
    display_name: str | None = None
    required: bool = True
    defaults: Any = None
    depends_on: Any = None  # Kestra's UI ordering; no effect on a run

    @model_validator(mode="before")
    @classmethod
    def _legacy_name(cls, data: Any) -> Any:
        """Older Kestra flows name inputs with ``name:`` instead of ``id:``."""
        if isinstance(data, dict) and "name" in data and "id" not in data:
            data = {("id" if key == "name" else key): value for key, value in data.items()}
        return data

    @field_validator("id")
    @classmethod
    def _check_id(cls, value: str) -> str:
        if not _INPUT_ID.match(value):
            raise ValueError(
                f"input id {value!r} must start with a letter or digit and contain only "
                "letters, digits, '_', '.' and '-'"
            )
        return value

    @model_validator(mode="after")
    def _check_defaults(self) -> _Input:
        if self.defaults is not None:
            try:
                self.convert(self.defaults, check_files=False)
            except ValueError as exc:
                raise ValueError(f"defaults of input {self.id!r}: {exc}") from None
        return self

    def convert(self, value: Any, *, check_files: bool = True) -> Any:
        """Return ``value`` as this input's type; raise ``ValueError`` saying what was expected."""
        raise NotImplementedError


_V = TypeVar("_V")
_N = TypeVar("_N", int, float)


def _adapt(adapter: TypeAdapter[_V], value: Any, expected: str) -> _V:
    if isinstance(value, bool) and expected != "true or false":
        raise ValueError(f"expected {expected}, got {value!r}")
    try:
        return adapter.validate_python(value)
    except ValidationError:
        raise ValueError(f"expected {expected}, got {value!r}") from None


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | str):
        return str(value)
    raise ValueError(f"expected text, got {type(value).__name__} {value!r}")


class StringInput(_Input):
    type: Literal["STRING"]
    validator: str | None = None

    @field_validator("validator")
    @classmethod
    def _check_regex(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"validator {value!r} is not a regular expression: {exc}") from exc
        return value

    def convert(self, value: Any, *, check_files: bool = True) -> str:
        text = _text(value)
        if self.validator is not None and not re.fullmatch(self.validator, text):
            raise ValueError(f"{text!r} does not match the validator {self.validator!r}")
        return text


class SecretInput(StringInput):
    """Text that is masked (``******``) wherever the run writes; errors never show it."""

    type: Literal["SECRET"]  # type: ignore[assignment]

    def convert(self, value: Any, *, check_files: bool = True) -> str:
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise ValueError(f"expected text, got {type(value).__name__}")
        text = str(value)
        if self.validator is not None and not re.fullmatch(self.validator, text):
            raise ValueError(f"the value does not match the validator {self.validator!r}")
        return text


_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s.]+")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")


class EmailInput(_Input):
    type: Literal["EMAIL"]

    def convert(self, value: Any, *, check_files: bool = True) -> str:
        text = _text(value)
        if not _EMAIL.fullmatch(text):
            raise ValueError(f"expected an email address such as ada@example.com, got {text!r}")
        return text


class UriInput(_Input):
    type: Literal["URI"]

    def convert(self, value: Any, *, check_files: bool = True) -> str:
        text = _text(value)
        try:
            parts = urlsplit(text)
        except ValueError:
            parts = None
        if (
            parts is None
            or not _SCHEME.fullmatch(parts.scheme)
            or not (parts.netloc or parts.path)
            or any(char.isspace() for char in text)
        ):
            raise ValueError(f"expected a URI such as https://example.com/data, got {text!r}")
        return text


class _Bounded(_Input):
    min: float | None = None
    max: float | None = None

    def _bounds(self, value: _N) -> _N:
        if self.min is not None and value < self.min:
            raise ValueError(f"{value!r} is less than the minimum {_number(self.min)}")
        if self.max is not None and value > self.max:
            raise ValueError(f"{value!r} is more than the maximum {_number(self.max)}")
        return value


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


class IntInput(_Bounded):
    type: Literal["INT"]
    _adapter: ClassVar[TypeAdapter[int]] = TypeAdapter(int)

    def convert(self, value: Any, *, check_files: bool = True) -> int:
        return self._bounds(_adapt(self._adapter, value, "an integer"))


class FloatInput(_Bounded):
    type: Literal["FLOAT"]
    _adapter: ClassVar[TypeAdapter[float]] = TypeAdapter(float)

    def convert(self, value: Any, *, check_files: bool = True) -> float:
        return self._bounds(_adapt(self._adapter, value, "a number"))


class BoolInput(_Input):
    type: Literal["BOOLEAN", "BOOL"]
    _adapter: ClassVar[TypeAdapter[bool]] = TypeAdapter(bool)

    def convert(self, value: Any, *, check_files: bool = True) -> bool:
        return _adapt(self._adapter, value, "true or false")


class _Temporal(_Input):
    after: Any = None
    before: Any = None
    expected: ClassVar[str] = ""
    _adapter: ClassVar[TypeAdapter[Any]]

    @field_validator("after", "before")
    @classmethod
    def _check_limit(cls, value: Any) -> Any:
        return None if value is None else cls._parse(value)

    @classmethod
    def _parse(cls, value: Any) -> Any:
        return _adapt(cls._adapter, value, cls.expected)

    def convert(self, value: Any, *, check_files: bool = True) -> Any:
        parsed = self._parse(value)
        if self.after is not None and not parsed > self.after:
            raise ValueError(f"{value!r} is not after {_iso(self.after)}")
        if self.before is not None and not parsed < self.before:
            raise ValueError(f"{value!r} is not before {_iso(self.before)}")
        return parsed


def _iso(value: date | time) -> str:
    return value.isoformat().replace("+00:00", "Z")


class DateTimeInput(_Temporal):
    type: Literal["DATETIME"]
    expected: ClassVar[str] = "a date and time with a time zone, such as 2024-01-31T12:00:00Z"
    _adapter: ClassVar[TypeAdapter[Any]] = TypeAdapter(AwareDatetime)

    @classmethod
    def _parse(cls, value: Any) -> datetime:
        parsed: datetime = super()._parse(value)
        return parsed.astimezone(UTC)


class DateInput(_Temporal):
    type: Literal["DATE"]
    expected: ClassVar[str] = "a date such as 2024-01-31"
    _adapter: ClassVar[TypeAdapter[Any]] = TypeAdapter(date)

    @classmethod
    def _parse(cls, value: Any) -> date:
        if isinstance(value, datetime) or (isinstance(value, str) and "T" in value):
            raise ValueError(f"expected {cls.expected}, got {value!r}")
        parsed: date = super()._parse(value)
        return parsed


class TimeInput(_Temporal):
    type: Literal["TIME"]
    expected: ClassVar[str] = "a time of day such as 12:30:00"
    _adapter: ClassVar[TypeAdapter[Any]] = TypeAdapter(time)


class DurationInput(_Input):
    type: Literal["DURATION"]
    min: Any = None
    max: Any = None

    @field_validator("min", "max")
    @classmethod
    def _check_limit(cls, value: Any) -> timedelta | None:
        return None if value is None else _duration(value)

    def convert(self, value: Any, *, check_files: bool = True) -> timedelta:
        parsed = _duration(value)
        if self.min is not None and parsed < self.min:
            raise ValueError(f"{value!r} is shorter than the minimum")
        if self.max is not None and parsed > self.max:
            raise ValueError(f"{value!r} is longer than the maximum")
        return parsed


def _duration(value: Any) -> timedelta:
    if isinstance(value, timedelta):
        return value
    if isinstance(value, str):
        try:
            return parse_iso_duration(value)
        except DurationError as exc:
            raise ValueError(str(exc)) from None
    raise ValueError(f"expected an ISO 8601 duration such as 'PT1H', got {value!r}")


class JsonInput(_Input):
    type: Literal["JSON"]

    def convert(self, value: Any, *, check_files: bool = True) -> Any:
        if isinstance(value, str):
            try:
                return json.loads(value)
            except json.JSONDecodeError as exc:
                raise ValueError(f"expected JSON text, got {value!r} ({exc.msg})") from None
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError):
            raise ValueError(f"expected a JSON value, got {type(value).__name__}") from None
        return value


class YamlInput(_Input):
    type: Literal["YAML"]

    def convert(self, value: Any, *, check_files: bool = True) -> Any:
        if isinstance(value, str):
            try:
                value = yaml.safe_load(value)
            except yaml.YAMLError as exc:
                problem = getattr(exc, "problem", None) or "not YAML"
                raise ValueError(f"expected YAML text ({problem})") from None
        try:
            json.dumps(value, allow_nan=False, default=_plain_time)
        except (TypeError, ValueError):
            raise ValueError(f"expected a YAML value, got {type(value).__name__}") from None
        return value


def _plain_time(value: Any) -> str:
    """YAML reads ``2024-01-31`` as a date: such values stay usable in expressions."""
    if isinstance(value, date | datetime):
        return value.isoformat()
    raise TypeError(type(value).__name__)


class SelectInput(_Input):
    type: Literal["SELECT", "ENUM"]
    values: list[str] = Field(min_length=1)
    allow_custom_value: bool = False

    @field_validator("values", mode="before")
    @classmethod
    def _values_text(cls, value: Any) -> Any:
        return [_text(item) for item in value] if isinstance(value, list) else value

    def _one(self, value: Any) -> str:
        text = _text(value)
        if text not in self.values and not self.allow_custom_value:
            choices = ", ".join(repr(choice) for choice in self.values)
            raise ValueError(f"{text!r} is not one of {choices}")
        return text

    def convert(self, value: Any, *, check_files: bool = True) -> str:
        return self._one(value)


class MultiSelectInput(SelectInput):
    type: Literal["MULTISELECT"]  # type: ignore[assignment]

    def convert(self, value: Any, *, check_files: bool = True) -> list[str]:  # type: ignore[override]
        return [self._one(item) for item in _as_list(value, " of choices")]


def _as_list(value: Any, of: str = "") -> list[Any] | tuple[Any, ...]:
    """A list given as itself, as JSON text (``["a","b"]``) or as ``a,b`` on a command line."""
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.lstrip().startswith("[") else value.split(",")
        except json.JSONDecodeError as exc:
            raise ValueError(f"expected a JSON list{of}, got {value!r}: {exc}") from None
    if not isinstance(value, list | tuple):
        raise ValueError(f"expected a list{of}, got {value!r}")
    return value


ARRAY_ITEM_TYPES = (
    "STRING",
    "INT",
    "FLOAT",
    "BOOLEAN",
    "BOOL",
    "DATETIME",
    "DATE",
    "TIME",
    "DURATION",
    "JSON",
    "YAML",
    "EMAIL",
    "URI",
)


class ArrayInput(_Input):
    """A list whose items are each of ``itemType`` (``[1, 2]`` or ``1,2`` on the command line)."""

    type: Literal["ARRAY"]
    item_type: str

    @field_validator("item_type")
    @classmethod
    def _check_item_type(cls, value: str) -> str:
        if value not in ARRAY_ITEM_TYPES:
            raise ValueError(f"itemType {value!r} is not one of " + ", ".join(ARRAY_ITEM_TYPES))
        return value

    def convert(self, value: Any, *, check_files: bool = True) -> list[Any]:
        item = _CLASSES[self.item_type](id=self.id, type=self.item_type)
        converted = []
        for index, element in enumerate(_as_list(value)):
            try:
                converted.append(item.convert(element, check_files=check_files))
            except ValueError as exc:
                raise ValueError(f"item {index} ({self.item_type}): {exc}") from None
        return converted


class FileInput(_Input):
    """A file on this machine (on the worker, for flows sent to Celery), given by its path."""

    type: Literal["FILE"]

    def convert(self, value: Any, *, check_files: bool = True) -> str:
        if not isinstance(value, str | Path) or not str(value):
            raise ValueError(f"expected the path of a file, got {value!r}")
        path = Path(value).expanduser()
        if not check_files:
            return str(path)
        path = path.resolve()
        if not path.is_file():
            raise ValueError(f"no such file: {str(value)!r}")
        return str(path)


_CLASSES: dict[str, type[_Input]] = {}
for _cls in (
    StringInput,
    SecretInput,
    EmailInput,
    UriInput,
    IntInput,
    FloatInput,
    BoolInput,
    DateTimeInput,
    DateInput,
    TimeInput,
    DurationInput,
    JsonInput,
    YamlInput,
    SelectInput,
    MultiSelectInput,
    ArrayInput,
    FileInput,
):
    for _name in _cls.model_fields["type"].annotation.__args__:  # type: ignore[union-attr]
        _CLASSES[_name] = _cls

INPUT_TYPES: tuple[str, ...] = tuple(_CLASSES)
"""The input types a flow may declare here."""


def _input_tag(value: Any) -> str | None:
    type_name = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    if isinstance(type_name, str) and type_name in _CLASSES:
        return _CLASSES[type_name].__name__
    return None


FlowInput = Annotated[
    Annotated[StringInput, Tag("StringInput")]
    | Annotated[SecretInput, Tag("SecretInput")]
    | Annotated[EmailInput, Tag("EmailInput")]
    | Annotated[UriInput, Tag("UriInput")]
    | Annotated[IntInput, Tag("IntInput")]
    | Annotated[FloatInput, Tag("FloatInput")]
    | Annotated[BoolInput, Tag("BoolInput")]
    | Annotated[DateTimeInput, Tag("DateTimeInput")]
    | Annotated[DateInput, Tag("DateInput")]
    | Annotated[TimeInput, Tag("TimeInput")]
    | Annotated[DurationInput, Tag("DurationInput")]
    | Annotated[JsonInput, Tag("JsonInput")]
    | Annotated[YamlInput, Tag("YamlInput")]
    | Annotated[SelectInput, Tag("SelectInput")]
    | Annotated[MultiSelectInput, Tag("MultiSelectInput")]
    | Annotated[ArrayInput, Tag("ArrayInput")]
    | Annotated[FileInput, Tag("FileInput")],
    Discriminator(
        _input_tag,
        custom_error_type="unknown_input_type",
        custom_error_message="unknown input type",
    ),
]
"""One declared input; the ``type`` picks the model."""

INPUT_TAGS = frozenset(cls.__name__ for cls in _CLASSES.values())


def resolve_inputs(
    declared: list[Any] | None,
    given: Mapping[str, Any] | None,
    *,
    check_files: bool = True,
) -> dict[str, Any]:
    """The value of every declared input, converted to its type.

    Raise :class:`InputError` listing, one line each, the inputs that are
    unknown, missing or of the wrong type. ``check_files=False`` skips checking
    that FILE inputs exist (a producer sending a flow to workers elsewhere).
    """
    declared = declared or []
    given = dict(given or {})
    known = {spec.id for spec in declared}
    problems = []
    for name in given:
        if name not in known:
            offer = ", ".join(sorted(known)) if known else "none"
            problems.append(f"unknown input {name!r}; the flow declares: {offer}")
    values: dict[str, Any] = {}
    for spec in declared:
        value = given.get(spec.id)
        if value is None:
            value = spec.defaults
        if value is None:
            if spec.required:
                problems.append(
                    f"input {spec.id!r} ({spec.type}) is required: give it a value "
                    "or declare 'defaults'"
                )
            values[spec.id] = None
            continue
        try:
            values[spec.id] = spec.convert(value, check_files=check_files)
        except ValueError as exc:
            problems.append(f"input {spec.id!r} ({spec.type}): {exc}")
    if problems:
        raise InputError("\n".join(problems))
    return values


def parse_assignments(pairs: list[str]) -> dict[str, str]:
    """``["name=value", ...]`` from the command line as a mapping; values stay text."""
    found: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise InputError(f"--input expects NAME=VALUE, got {pair!r}")
        found[name.strip()] = value
    return found


def load_inputs_file(path: str | Path) -> dict[str, Any]:
    """Read input values from a JSON object in ``path``."""
    source = Path(path)
    try:
        data = json.loads(source.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{source}: no such inputs file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{source}: cannot read the inputs file: {exc}") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{source}:{exc.lineno}: not JSON: {exc.msg}") from None
    if not isinstance(data, dict):
        raise InputError(
            f"{source}: inputs must be a JSON object of name: value, got {type(data).__name__}"
        )
    return data
