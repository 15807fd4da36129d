"""Redis clients from URLs: one server, or a primary found through Sentinel.

``redis://``, ``rediss://`` and ``unix://`` are redis-py's own URLs.
``redis+sentinel://[:password@]host:port[,host:port...]/service[/db]`` asks the
listed sentinels for the primary of ``service`` and follows it across a
failover: when the primary changes, connections are re-made to the new one.
The password is the data nodes'; ``?sentinel_password=...`` gives the
sentinels' own, if they have one.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import redis
from redis.sentinel import Sentinel

SENTINEL_SCHEME = "redis+sentinel"


class BadRedisURL(ValueError):
    """A Redis URL that names no server the way its scheme requires."""


def client_from_url(url: str, **kwargs: Any) -> redis.Redis:
    """A client for ``url``; ``kwargs`` (timeouts, retry) apply to every data connection."""
    if url.startswith(f"{SENTINEL_SCHEME}://"):
        return _sentinel_client(url, **kwargs)
    return redis.Redis.from_url(url, **kwargs)


def _sentinel_client(url: str, **kwargs: Any) -> redis.Redis:
    parts = urlsplit(url)
    hosts = parts.netloc.rpartition("@")[2]
    sentinels = []
    for item in hosts.split(","):
        host, _, port = item.rpartition(":")
        if not host or not port.isdigit():
            raise BadRedisURL(
                f"{_hide(url)}: expected host:port[,host:port...] of the sentinels, got {item!r}"
            )
        sentinels.append((host, int(port)))
    path = [p for p in parts.path.split("/") if p]
    if not path or len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
        raise BadRedisURL(f"{_hide(url)}: expected /<service name>[/<db>] after the sentinels")
    service, db = path[0], int(path[1]) if len(path) == 2 else 0
    query = parse_qs(parts.query)
    sentinel_kwargs = {
        "socket_timeout": kwargs.get("socket_timeout"),
        "socket_connect_timeout": kwargs.get("socket_connect_timeout"),
    }
    if "sentinel_password" in query:
        sentinel_kwargs["password"] = query["sentinel_password"][0]
    manager = Sentinel(sentinels, sentinel_kwargs=sentinel_kwargs)
    password = unquote(parts.password) if parts.password else None
    username = unquote(parts.username) if parts.username else None
    return manager.master_for(service, db=db, password=password, username=username, **kwargs)


def describe(client: redis.Redis) -> str:
    """Where ``client`` points, for messages, without credentials."""
    pool = client.connection_pool
    service = getattr(pool, "service_name", None)
    kwargs = pool.connection_kwargs
    db = kwargs.get("db", 0)
    if service is not None:
        hosts = ",".join(
            "{host}:{port}".format(**node.connection_pool.connection_kwargs)
            for node in pool.sentinel_manager.sentinels
        )
        return f"{SENTINEL_SCHEME}://{hosts}/{service}/{db}"
    if kwargs.get("path"):
        return f"unix://{kwargs['path']}?db={db}"
    scheme = "rediss" if "ssl" in pool.connection_class.__name__.lower() else "redis"
    return f"{scheme}://{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}/{db}"


def _hide(url: str) -> str:
    scheme, _, rest = url.partition("://")
    return f"{scheme}://***@{rest.rpartition('@')[2]}" if "@" in rest else url
