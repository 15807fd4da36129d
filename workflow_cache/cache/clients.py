"""Redis clients from URLs: one server, a primary found through Sentinel, or a Cluster.

``redis://``, ``rediss://`` and ``unix://`` are redis-py's own URLs.
``redis+sentinel://[:password@]host:port[,host:port...]/service[/db]`` asks the
listed sentinels for the primary of ``service`` and follows it across a
failover: when the primary changes, connections are re-made to the new one.
The password is the data nodes'; ``?sentinel_password=...`` gives the
sentinels' own, if they have one.
``redis+cluster://[:password@]host:port[,host:port...]`` starts from any of the
listed nodes and routes each command to the node owning its key's slot.

The few calls that differ on a Cluster are here, so the rest of the cache
does not ask which kind of client it holds: reading many keys of many slots
(``read_many``), running many scripts in one round trip per server
(``in_one_trip``), publishing a notice (``publish``) and the connections pub/sub
notices arrive on (``notice_nodes``). A Cluster client here sends a script, a GET
or an SPUBLISH straight to the node owning its key's slot.

Notices on a Cluster are sharded pub/sub (Redis 7): a step's channel shares its
keys' hash tag, a notice is sent with ``SPUBLISH`` on the node owning that slot (by
the Lua scripts too, see ``lua/__init__.py``) and reaches the clients subscribed
there with ``SSUBSCRIBE`` only, instead of being forwarded to every node over the
cluster bus as a classic ``PUBLISH`` is. A waiting process holds one notice
connection per node it waits on. One server keeps classic ``PUBLISH``/``SUBSCRIBE``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any, Protocol, cast
from urllib.parse import parse_qs, unquote, urlsplit

import redis
from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import AskError, ClusterDownError, MovedError, NoScriptError, TryAgainError
from redis.sentinel import Sentinel

SENTINEL_SCHEME = "redis+sentinel"
CLUSTER_SCHEME = "redis+cluster"


class BadRedisURL(ValueError):
    """A Redis URL that names no server the way its scheme requires."""


def client_from_url(url: str, **kwargs: Any) -> redis.Redis:
    """A client for ``url``; ``kwargs`` (timeouts, retry) apply to every data connection."""
    if url.startswith(f"{SENTINEL_SCHEME}://"):
        return _sentinel_client(url, **kwargs)
    if url.startswith(f"{CLUSTER_SCHEME}://"):
        return _cluster_client(url, **kwargs)
    return redis.Redis.from_url(url, **kwargs)


def _hosts(url: str, what: str) -> list[tuple[str, int]]:
    hosts = []
    for item in urlsplit(url).netloc.rpartition("@")[2].split(","):
        host, _, port = item.rpartition(":")
        if not host or not port.isdigit():
            raise BadRedisURL(
                f"{redact(url)}: expected host:port[,host:port...] of the {what}, got {item!r}"
            )
        hosts.append((host, int(port)))
    return hosts


def _cluster_client(url: str, **kwargs: Any) -> redis.Redis:
    parts = urlsplit(url)
    hosts = _hosts(url, "cluster nodes")
    nodes = [ClusterNode(host, port) for host, port in hosts]  # type: ignore[no-untyped-call]
    if parts.path.strip("/") not in ("", "0"):
        raise BadRedisURL(f"{redact(url)}: a Redis Cluster has only database 0")
    password = unquote(parts.password) if parts.password else None
    username = unquote(parts.username) if parts.username else None
    client = Cluster(startup_nodes=nodes, password=password, username=username, **kwargs)
    return client  # type: ignore[return-value]


class Cluster(RedisCluster):
    """A Cluster client that sends a script or a GET straight to the client of the node
    owning its key's slot: redis-py's routing of a command through the Cluster costs
    about as much CPU as the round trip itself. A node that no longer owns the slot,
    or cannot be reached, leaves the command to that routing, which follows it."""

    def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        key = _routed_key(args, kwargs)
        if key is not None:
            node = self.get_node_from_key(key)  # type: ignore[no-untyped-call]
            try:
                target = self.get_redis_connection(node)
                return target.execute_command(*args, **kwargs)  # type: ignore[no-untyped-call]
            except (*REDIRECTED, redis.ConnectionError, redis.TimeoutError):
                pass
        return super().execute_command(*args, **kwargs)  # type: ignore[no-untyped-call]


def _routed_key(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """The key that alone decides the node of ``args`` when it is a script with keys, a
    GET or an SPUBLISH; None for everything else (the Cluster client routes those)."""
    if set(kwargs) - {"keys"} or not args:
        return None
    if args[0] == "EVALSHA" and len(args) > 3 and str(args[2]) != "0":
        return args[3]
    if (args[0] == "GET" and len(args) == 2) or (args[0] == "SPUBLISH" and len(args) == 3):
        return args[1]
    return None


def _sentinel_client(url: str, **kwargs: Any) -> redis.Redis:
    parts = urlsplit(url)
    sentinels = _hosts(url, "sentinels")
    path = [p for p in parts.path.split("/") if p]
    if not path or len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
        raise BadRedisURL(f"{redact(url)}: expected /<service name>[/<db>] after the sentinels")
    service, db = path[0], int(path[1]) if len(path) == 2 else 0
    query = parse_qs(parts.query)
    sentinel_kwargs = {
        "socket_timeout": kwargs.get("socket_timeout"),
        "socket_connect_timeout": kwargs.get("socket_connect_timeout"),
    }
    if "sentinel_password" in query:
        sentinel_kwargs["password"] = query["sentinel_password"][0]
    manager = Sentinel(sentinels, sentinel_kwargs=sentinel_kwargs)  # type: ignore[no-untyped-call]
    password = unquote(parts.password) if parts.password else None
    username = unquote(parts.username) if parts.username else None
    primary = manager.master_for(  # type: ignore[no-untyped-call]
        service, db=db, password=password, username=username, **kwargs
    )
    return cast(redis.Redis, primary)


def is_cluster(client: Any) -> bool:
    return isinstance(client, RedisCluster)


def read_many(client: Any, names: Sequence[str]) -> list[Any]:
    """GET of every name in order: one MGET, or on a Cluster one per slot."""
    if is_cluster(client):
        return list(client.mget_nonatomic(list(names)))
    return list(client.mget(list(names)))


Keyed = tuple[str, Callable[[Any], Any]]
"""One call of a batch and the key whose slot it runs on."""

REDIRECTED = (MovedError, AskError, TryAgainError, ClusterDownError)
"""Replies of a node that does not serve the slot now: the command did not run there."""


def in_one_trip(client: Any, calls: Sequence[Keyed]) -> list[Any]:
    """Each call made with a pipeline: one round trip on one server, one per node on a
    Cluster (a Cluster pipeline refuses scripts, a node's own pipeline does not)."""
    if not calls:
        return []
    if is_cluster(client):
        return _by_node(client, calls)
    if len(calls) == 1:  # a pipeline costs its making; one call needs none (the Cluster
        return [calls[0][1](client)]  # client, above, routes by node either way)
    return _raised(_pipelined(client, [call for _, call in calls]))


def _pipelined(client: Any, calls: Sequence[Callable[[Any], Any]]) -> list[Any]:
    """The replies of one pipeline, errors as values; a call the server refused for an
    unknown script is made again by itself, which loads the script."""
    pipe = client.pipeline(transaction=False)
    for call in calls:
        call(pipe)
    replies = list(pipe.execute(raise_on_error=False))
    for i, reply in enumerate(replies):
        if isinstance(reply, NoScriptError):
            replies[i] = _reply(calls[i], client)
    return replies


def _by_node(client: RedisCluster, calls: Sequence[Keyed]) -> list[Any]:
    """One pipeline per node, grouped by the slot map the client holds. A node that
    no longer owns a slot (resharding, failover) or cannot be reached sends its calls
    through the Cluster client, one at a time, which follows redirections."""
    groups: dict[str, list[int]] = {}
    nodes: dict[str, ClusterNode] = {}
    for i, (key, _) in enumerate(calls):
        node = client.get_node_from_key(key)  # type: ignore[no-untyped-call]
        nodes[node.name] = node
        groups.setdefault(node.name, []).append(i)
    replies: list[Any] = [None] * len(calls)
    again: list[int] = []
    for name, members in groups.items():
        target = client.get_redis_connection(nodes[name])
        try:
            got = _pipelined(target, [calls[i][1] for i in members])
        except (redis.ConnectionError, redis.TimeoutError):
            again.extend(members)
            continue
        for i, reply in zip(members, got, strict=True):
            if isinstance(reply, REDIRECTED):
                again.append(i)
            else:
                replies[i] = reply
    for i in sorted(again):
        replies[i] = _reply(calls[i][1], client)
    return _raised(replies)


def _reply(call: Callable[[Any], Any], client: Any) -> Any:
    """The reply of one call made on ``client`` by itself, an error as a value."""
    try:
        return call(client)
    except redis.ResponseError as error:
        return error


def _raised(replies: list[Any]) -> list[Any]:
    """``replies``, or the first error among them raised, as a pipeline does."""
    for reply in replies:
        if isinstance(reply, redis.ResponseError):
            raise reply
    return replies


def pool_of(client: Any) -> Any:
    """The connection pool to copy a dedicated connection from (on a Cluster, the
    default node's: for a connection whose node does not matter)."""
    if is_cluster(client):
        return client.get_default_node().redis_connection.connection_pool
    return client.connection_pool


def publish(client: Any, channel: str, message: bytes) -> Any:
    """Announce ``message`` on ``channel``: ``SPUBLISH`` on a Cluster (to the channel's
    shard only, where waiters subscribe), ``PUBLISH`` on one server."""
    if is_cluster(client):
        return client.execute_command("SPUBLISH", channel, message)
    return client.publish(channel, message)


class NoticeNodes(Protocol):
    """Where the notices of a channel are heard: which node, and a connection to it."""

    sharded: bool
    """True: ``SSUBSCRIBE`` on the node owning the channel's slot; else ``SUBSCRIBE``."""

    def node_of(self, channel: bytes) -> str:
        """The name of the node whose subscribers hear ``channel``."""
        ...

    def connect(self, node: str) -> Any:
        """A new, unconnected pub/sub connection to ``node`` (see ``pubsub_connection``)."""
        ...

    def refresh(self) -> None:
        """Learn the slot map again (a node said a slot moved, or could not be reached)."""
        ...


class OneServer:
    """Every channel is heard on the one server ``make`` connects to."""

    sharded = False

    def __init__(self, make: Callable[[], Any]) -> None:
        self._make = make

    def node_of(self, channel: bytes) -> str:
        return ""

    def connect(self, node: str) -> Any:
        return self._make()

    def refresh(self) -> None:
        pass


class Shards:
    """A channel is heard on the primary owning its slot, as the Cluster client maps it."""

    sharded = True

    def __init__(self, client: RedisCluster, retry: Any) -> None:
        self._client = client
        self._retry = retry

    def node_of(self, channel: bytes) -> str:
        return str(self._client.get_node_from_key(channel).name)  # type: ignore[no-untyped-call]

    def connect(self, node: str) -> Any:
        found = self._client.get_node(node_name=node)  # type: ignore[no-untyped-call]
        if found is None:
            raise redis.ConnectionError(f"{node} is no longer a node of the Cluster")
        pool = self._client.get_redis_connection(found).connection_pool
        return pubsub_connection(pool, self._retry)

    def refresh(self) -> None:
        self._client.nodes_manager.initialize()


def notice_nodes(client: Any, retry: Any) -> NoticeNodes:
    """Where ``client``'s notices are heard; connections made with ``retry``."""
    if is_cluster(client):
        return Shards(client, retry)
    pool = client.connection_pool
    return OneServer(lambda: pubsub_connection(pool, retry))


def pubsub_connection(pool: Any, retry: Any) -> Any:
    """A connection of ``pool``'s kind and address, for notices only, outside the pool:
    RESP2 (messages as plain replies, not RESP3 pushes), raw bytes, no health checks,
    and ``retry`` (the listener reconnects by itself)."""
    kwargs = dict(pool.connection_kwargs)
    if "maint_notifications_config" in kwargs:  # redis-py >= 6.3, RESP3-only feature
        kwargs.pop("maint_notifications_pool_handler", None)
        kwargs["maint_notifications_config"] = None
    kwargs.update(decode_responses=False, protocol=2, retry=retry, health_check_interval=0)
    return pool.connection_class(**kwargs)


def describe(client: redis.Redis) -> str:
    """Where ``client`` points, for messages, without credentials."""
    if is_cluster(client):
        nodes = ",".join(f"{n.host}:{n.port}" for n in client.get_primaries())  # type: ignore[attr-defined]
        return f"{CLUSTER_SCHEME}://{nodes}"
    pool: Any = client.connection_pool  # a SentinelConnectionPool has more than its type says
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


def redact(url: str) -> str:
    """``url`` for messages: the credentials before ``@`` and any ``password=`` replaced."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    if "@" in rest.split("/", 1)[0]:
        rest = "***@" + rest.rpartition("@")[2]
    rest = re.sub(r"((?:^|[?&])\w*password=)[^&]*", r"\1***", rest)
    return f"{scheme}://{rest}"
