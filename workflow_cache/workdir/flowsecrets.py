"""Secrets of a flow run: where ``secret('NAME')`` reads them, and masking every value read.

As in Kestra's open-source edition, ``secret('GITHUB_TOKEN')`` reads the
variable ``SECRET_GITHUB_TOKEN`` of the environment of the process that runs the
flow (the worker), base64-encoded. A secrets file holds more of them, one
``SECRET_<NAME>=<base64>`` line each, the same lines as Kestra's ``.env_encoded``
file. ``SECRET`` inputs join them.

Every value read is masked (``******``) wherever the run writes text: script
output, the summary, error messages. Script processes do not inherit the
``SECRET_*`` variables: a script gets a secret only where the flow hands it one.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from workflow_cache.workdir.errors import FlowError

MASK = "******"
PREFIX = "SECRET_"
_LINE_MASK_MIN = 8
"""Lines of a multi-line secret (a PEM key) are masked on their own from this length on."""
_CHUNK = 1 << 20


class SecretError(FlowError):
    """A secret that is not set or cannot be decoded; the message names it, never its value."""


def without_secrets(environ: Mapping[str, str]) -> dict[str, str]:
    """``environ`` without the ``SECRET_*`` variables, for the processes a flow starts."""
    return {name: value for name, value in environ.items() if not name.startswith(PREFIX)}


class FlowSecrets:
    """The secrets one run may read, and the values it has read, to be masked."""

    def __init__(self, environ: Mapping[str, str], file: str | Path | None = None) -> None:
        self._encoded = {
            name.removeprefix(PREFIX): value
            for name, value in environ.items()
            if name.startswith(PREFIX)
        }
        self._file = None if file is None else str(file)
        if file is not None:
            self._encoded.update(_read_file(Path(file)))
        self._values: dict[str, str] = {}
        self._masked: list[str] = []

    def read(self, name: Any) -> str:
        """The value of ``secret(name)``, decoded; raise :class:`SecretError` naming it."""
        if not isinstance(name, str) or not name:
            raise SecretError(f"secret(): expected a secret name, got {name!r}")
        known = self._values.get(name)
        if known is not None:
            return known
        encoded = self._encoded.get(name)
        if encoded is None:
            where = f"{PREFIX}{name} in the environment of the worker"
            if self._file is not None:
                where += f" or in the secrets file {self._file}"
            raise SecretError(f"secret {name!r} is not set: set {where} (base64-encoded)")
        try:
            value = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            raise SecretError(
                f"secret {name!r}: {PREFIX}{name} is not base64-encoded UTF-8 text"
            ) from None
        self._values[name] = value
        self.add(value)
        return value

    def add(self, value: str) -> None:
        """Mask ``value`` from now on (a ``SECRET`` input)."""
        pieces = [value]
        if "\n" in value:
            pieces += [line.strip() for line in value.splitlines()]
        for piece in pieces:
            wanted = piece is value or len(piece) >= _LINE_MASK_MIN
            if piece and wanted and piece not in self._masked:
                self._masked.append(piece)
        self._masked.sort(key=len, reverse=True)  # the longest first: no half-masked value

    @property
    def used(self) -> bool:
        return bool(self._masked)

    def mask(self, text: str) -> str:
        """``text`` with every occurrence of every secret value replaced by ``******``."""
        for value in self._masked:
            if value in text:
                text = text.replace(value, MASK)
        return text

    def mask_data(self, data: Any) -> Any:
        """``data`` (JSON-like) with every string masked."""
        if isinstance(data, str):
            return self.mask(data)
        if isinstance(data, Mapping):
            return {self.mask(str(key)): self.mask_data(item) for key, item in data.items()}
        if isinstance(data, list | tuple):
            return [self.mask_data(item) for item in data]
        return data

    def holds_secret(self, text: str) -> bool:
        return any(value in text for value in self._masked)

    def file_holding_secret(self, folder: Path, names: Iterable[Path | str]) -> str | None:
        """The first of ``names`` (files under ``folder``) whose bytes contain a secret value."""
        needles = [value.encode("utf-8") for value in self._masked]
        if not needles:
            return None
        overlap = max(len(needle) for needle in needles) - 1
        for name in names:
            path = folder / name
            if path.is_symlink() or not path.is_file():
                continue
            try:
                with path.open("rb") as source:
                    tail = b""
                    while chunk := source.read(_CHUNK):
                        window = tail + chunk
                        if any(needle in window for needle in needles):
                            return str(name)
                        tail = window[-overlap:] if overlap else b""
            except OSError:
                continue
        return None


def _read_file(path: Path) -> dict[str, str]:
    """``SECRET_<NAME>=<base64>`` lines; blank lines and ``#`` comments are skipped."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SecretError(f"{path}: cannot read the secrets file: {exc.strerror or exc}") from None
    found: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.partition("=")
        if not sep or not name.startswith(PREFIX) or len(name) == len(PREFIX):
            raise SecretError(f"{path}:{number}: expected a line {PREFIX}<NAME>=<base64 value>")
        found[name.removeprefix(PREFIX)] = value
    return found
