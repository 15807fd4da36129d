"""The Lua scripts of the claim protocol, one file each, read once from the package.

Each script is one atomic step on the keys of one step (they share a cluster hash
slot); the modules that run them say what each step means.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import cache
from importlib import resources
from typing import Any


@cache
def script(name: str) -> str:
    """The source of ``<name>.lua`` (read from the installed package the first time)."""
    return resources.files(__name__).joinpath(f"{name}.lua").read_text(encoding="utf-8")


def register(client: Any, names: Iterable[str]) -> dict[str, Any]:
    """``names`` registered on ``client`` (blocking or asyncio): each runs by EVALSHA,
    loading the script on the first ``NOSCRIPT``."""
    return {name: client.register_script(script(name)) for name in names}
