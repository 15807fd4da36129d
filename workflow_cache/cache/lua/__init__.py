"""The Lua scripts of the claim protocol, one file each, read once from the package.

Each script is one atomic step on the keys of one step (they share a cluster hash
slot); the modules that run them say what each step means.

A script that announces something does it with ``redis.call('PUBLISH', ...)`` on the
step's channel (which shares the step's hash tag). Registered on a Cluster client,
that call becomes ``SPUBLISH``: the notice stays on the node owning the slot, where
waiters subscribe (``clients.py``), instead of crossing the cluster bus to every node.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import cache
from importlib import resources
from typing import Any
from weakref import WeakKeyDictionary

from redis.client import Pipeline

from workflow_cache.cache.clients import is_cluster

PUBLISH_CALL = "redis.call('PUBLISH', "
SHARDED_CALL = "redis.call('SPUBLISH', "


@cache
def script(name: str) -> str:
    """The source of ``<name>.lua`` (read from the installed package the first time)."""
    return resources.files(__name__).joinpath(f"{name}.lua").read_text(encoding="utf-8")


class Script:
    """A script run by EVALSHA. Called directly it loads itself on ``NOSCRIPT`` (as
    redis-py's own does); queued in a pipeline it is a bare EVALSHA, where redis-py
    would first ask ``SCRIPT EXISTS`` in a round trip of its own: the one who runs the
    pipeline makes a call again when its reply is ``NOSCRIPT``."""

    def __init__(self, client: Any, source: str) -> None:
        self._inner = client.register_script(source)

    @property
    def sha(self) -> str:
        return str(self._inner.sha)

    def __call__(
        self, keys: Sequence[Any] = (), args: Sequence[Any] = (), client: Any = None
    ) -> Any:
        if isinstance(client, Pipeline):
            return client.evalsha(self._inner.sha, len(keys), *keys, *args)
        return self._inner(keys=keys, args=args, client=client)


def for_client(client: Any, name: str) -> str:
    """The source of ``<name>.lua`` as ``client`` runs it: publishing with ``SPUBLISH``
    on a Cluster, ``PUBLISH`` elsewhere."""
    source = script(name)
    return source.replace(PUBLISH_CALL, SHARDED_CALL) if is_cluster(client) else source


_REGISTERED: WeakKeyDictionary[Any, dict[str, Script]] = WeakKeyDictionary()


def register(client: Any, names: Iterable[str]) -> dict[str, Script]:
    """``names`` registered on ``client`` (blocking or asyncio): each runs by EVALSHA,
    loading the script on the first ``NOSCRIPT``. Registered once per client: objects
    that run scripts are made per delivery and per commit, and a registration hashes the
    source."""
    known = _REGISTERED.get(client)
    if known is None:
        known = _REGISTERED[client] = {}
    for name in names:
        if name not in known:
            known[name] = Script(client, for_client(client, name))
    return {name: known[name] for name in names}
