"""The Redis client a ``RedisStateStore`` works through: which kind it is (redis-py or
valkey, sync or asyncio, one server or a cluster), which of its errors mean "store
unavailable", whether it would retry commands (which a store must not wait for), clients made
for a URL or a Sentinel service with safe defaults, and, for an asyncio client, one per running
event loop."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import threading
import weakref
from collections.abc import AsyncIterator, Callable, Sequence
from types import ModuleType
from typing import Any

__all__ = [
    "ClientKind",
    "LoopClients",
    "PendingCluster",
    "client_for_sentinel",
    "client_for_url",
    "client_kind",
    "close_copy",
    "copy_for_loop",
    "is_async_client",
    "refuse_cluster_node",
    "warn_if_retrying",
]

logger = logging.getLogger("llm_circuit_breaker")


@dataclasses.dataclass(frozen=True)
class ClientKind:
    """What a store needs to know of its client."""

    family: str  # "redis" (redis-py) or "valkey"
    is_async: bool
    is_cluster: bool
    exceptions: ModuleType  # the family's ``exceptions`` module
    errors: tuple[type[BaseException], ...]  # what means "the store is unavailable"


def _families() -> dict[str, ModuleType]:
    """The client packages installed: redis-py (always, the extra) and valkey (if present)."""
    import redis

    found: dict[str, ModuleType] = {"redis": redis}
    try:
        import valkey
    except ImportError:
        pass
    else:
        found["valkey"] = valkey
    return found


def client_kind(client: Any) -> ClientKind:
    """The kind of ``client``: a redis-py or valkey client, sync or asyncio, for one server
    (Sentinel-managed ones included) or a cluster; anything else is a ``TypeError``."""
    roots = {cls.__module__.split(".")[0] for cls in type(client).__mro__}
    import importlib

    if isinstance(client, PendingCluster):
        return _kind(client.family, is_async=False, is_cluster=True)
    for family, package in _families().items():
        if family not in roots:
            continue

        plain = getattr(package, "Redis" if family == "redis" else "Valkey")
        cluster = importlib.import_module(f"{family}.cluster")
        cluster_class = getattr(cluster, "RedisCluster" if family == "redis" else "ValkeyCluster")
        aio = importlib.import_module(f"{family}.asyncio")
        aio_cluster = importlib.import_module(f"{family}.asyncio.cluster")
        aio_cluster_class = getattr(
            aio_cluster, "RedisCluster" if family == "redis" else "ValkeyCluster"
        )
        aio_plain = getattr(aio, "Redis" if family == "redis" else "Valkey")
        for cls, is_async, is_cluster in (
            (aio_cluster_class, True, True),
            (cluster_class, False, True),
            (aio_plain, True, False),
            (plain, False, False),
        ):
            if isinstance(client, cls):
                return _kind(family, is_async=is_async, is_cluster=is_cluster)
    raise TypeError(
        "RedisStateStore needs a redis-py or valkey client (redis.Redis, redis.asyncio.Redis, "
        "redis.cluster.RedisCluster, redis.asyncio.cluster.RedisCluster, a Sentinel "
        f"master_for() client, or their valkey equivalents), got {type(client).__name__}"
    )


def _kind(family: str, *, is_async: bool, is_cluster: bool) -> ClientKind:
    import importlib

    exceptions = importlib.import_module(f"{family}.exceptions")
    prefix = "Redis" if family == "redis" else "Valkey"
    # a cluster client's own errors (no node reachable, a slot not covered) are not RedisError
    errors = (
        getattr(exceptions, f"{prefix}Error"),
        getattr(exceptions, f"{prefix}ClusterException"),
    )
    return ClientKind(family, is_async, is_cluster, exceptions, (*errors, OSError))


class PendingCluster:
    """A sync cluster client made on first use. redis-py's (and valkey's) sync cluster client
    asks the cluster for its slots when constructed, so a store made while the cluster is down
    would fail the application's start; this one is made anyway (its breakers decide locally
    until the cluster answers), and every use tries to make the client until one is made."""

    def __init__(self, family: str, make: Callable[[], Any], retry: Any) -> None:
        import importlib

        self.family = family
        self._make = make
        self._retry = retry
        self._client: Any = None
        self._lock = threading.Lock()
        package = importlib.import_module(family)
        self._encoder = package.ConnectionPool().get_encoder()  # makes no connection
        self._unreachable = importlib.import_module(f"{family}.exceptions").ConnectionError

    def made(self) -> Any:
        """The cluster client, made now if need be (else the family's ``ConnectionError``)."""
        client = self._client
        if client is not None:
            return client
        with self._lock:
            if self._client is None:
                try:
                    self._client = self._make()
                except Exception as exc:
                    raise self._unreachable(f"Redis Cluster unreachable: {exc}") from exc
            return self._client

    def get_encoder(self) -> Any:
        return self._encoder

    def register_script(self, script: str) -> Any:
        """The family's ``Script`` on this client (it runs through the client once made)."""
        import importlib

        return importlib.import_module(f"{self.family}.commands.core").Script(self, script)

    def get_retry(self) -> Any:
        return self._retry

    def close(self) -> None:
        """Close the cluster client if it was made (never makes one to close it)."""
        if self._client is not None:
            self._client.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.made(), name)

    def __repr__(self) -> str:
        return f"PendingCluster({self.family}, made={self._client is not None})"


def is_async_client(client: Any) -> bool:
    """True for an asyncio client, False for a sync one; else ``TypeError``."""
    return client_kind(client).is_async


def refuse_cluster_node(client: Any, kind: ClientKind) -> None:
    """Refuse a plain client (sync or asyncio) connected to a node of a cluster: its commands
    would draw ``MOVED`` replies for most circuits. The check asks the server once: through
    the client, or, for an asyncio client or one that retries commands (redis-py's default:
    asking through it would wait for every retry while Redis is down), through one sync
    connection of its own that does not retry. A server that cannot be asked now is not
    refused (a ``MOVED`` reply later is still never taken for an outage)."""
    if kind.is_cluster:
        return
    try:
        if kind.is_async or _retries(client):  # asked through a connection of its own
            enabled = _cluster_enabled_apart(client, kind.family)
        else:
            enabled = client.info("cluster").get("cluster_enabled")
    except Exception:  # unreachable now, or INFO not allowed: nothing to say
        return
    if str(enabled) == "1":
        raise ValueError(
            "the Redis client of this RedisStateStore is connected to a node of a Redis "
            "Cluster: pass a cluster client (redis.cluster.RedisCluster), or use "
            "RedisStateStore.from_url(url, cluster=True)"
        )


def _cluster_enabled_apart(client: Any, family: str) -> str | None:
    """``cluster_enabled`` of the server of ``client`` (sync or asyncio), asked through one
    sync connection that does not retry (0.5 s timeouts at most) with its address and
    credentials; None when that cannot be made alike (TLS, a Sentinel, a credential provider,
    a pool of unknown make)."""
    import importlib

    pool = getattr(client, "connection_pool", None)
    if pool is None or hasattr(pool, "service_name"):
        return None
    given = pool.connection_kwargs
    if given.get("credential_provider") is not None:
        return None
    sync = importlib.import_module(family)
    timeout = min(float(given.get("socket_timeout") or 0.5), 0.5)
    kwargs: dict[str, Any] = {k: given[k] for k in ("username", "password", "db") if k in given}
    no_retry = importlib.import_module(f"{family}.retry").Retry(
        importlib.import_module(f"{family}.backoff").NoBackoff(), 0
    )
    kwargs["retry"] = no_retry
    kind = pool.connection_class.__name__
    if kind == "Connection":
        connection = sync.Connection(
            host=given.get("host", "localhost"),
            port=given.get("port", 6379),
            socket_connect_timeout=timeout,
            socket_timeout=timeout,
            **kwargs,
        )
    elif kind == "UnixDomainSocketConnection":
        connection = sync.UnixDomainSocketConnection(
            path=given["path"], socket_timeout=timeout, **kwargs
        )
    else:
        return None
    try:
        connection.send_command("INFO", "cluster")
        reply = connection.read_response()
    finally:
        connection.disconnect()
    info = reply.decode() if isinstance(reply, bytes) else str(reply)
    return "1" if "cluster_enabled:1" in info else "0"


def _retries(client: Any) -> int:
    """How many times ``client`` retries a failed command."""
    try:
        return int(getattr(client.get_retry(), "_retries", 0) or 0)
    except AttributeError:  # no retry object (valkey's cluster client may have none)
        return 0


def warn_if_retrying(client: Any, prefix: str) -> None:
    """One WARNING when ``client`` retries failed commands: while Redis is down, a call would
    wait for every retry."""
    retries = _retries(client)
    if retries:
        logger.warning(
            "the Redis client of state store %r retries failed commands %d times: while Redis "
            "is down the first call of every retry interval waits for all of them; create it "
            "with retry=Retry(NoBackoff(), 0) and a short socket_timeout, or use "
            "RedisStateStore.from_url()",
            prefix,
            retries,
        )


def _family_of_url(url: str) -> str:
    return "valkey" if url.split(":", 1)[0] in ("valkey", "valkeys") else "redis"


def client_for_url(
    url: str,
    *,
    asyncio: bool,
    timeout: float,
    cluster: bool = False,
    max_connections: int = 50,
) -> Any:
    """A client for ``url`` (``redis://``, ``rediss://``, ``unix://``; ``valkey://`` and
    ``valkeys://`` with the valkey package) with ``timeout``-second socket timeouts, no
    retries and, for one server, a blocking pool of ``max_connections`` (a caller waits up to
    ``timeout`` for a connection instead of failing); ``cluster``: a cluster client."""
    import importlib

    family = _family_of_url(url)
    package = importlib.import_module(f"{family}.asyncio" if asyncio else family)
    backoff = importlib.import_module(f"{family}.backoff")
    retry_module = importlib.import_module(
        f"{family}.asyncio.retry" if asyncio else f"{family}.retry"
    )
    retry = retry_module.Retry(backoff.NoBackoff(), 0)
    timeouts = {"socket_timeout": timeout, "socket_connect_timeout": timeout}
    if cluster:
        module = importlib.import_module(f"{package.__name__}.cluster")
        cluster_class = getattr(module, "RedisCluster" if family == "redis" else "ValkeyCluster")
        if asyncio:  # the asyncio client connects on first use anyway
            return cluster_class.from_url(url, retry=retry, **timeouts)
        return PendingCluster(
            family, functools.partial(cluster_class.from_url, url, retry=retry, **timeouts), retry
        )
    client_class = getattr(package, "Redis" if family == "redis" else "Valkey")
    pool = package.BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=timeout, retry=retry, **timeouts
    )
    return client_class.from_pool(pool)  # the client closes the pool with itself


def client_for_sentinel(
    sentinels: Sequence[tuple[str, int]],
    service_name: str,
    *,
    asyncio: bool,
    timeout: float,
    family: str = "redis",
    **kwargs: Any,
) -> Any:
    """The primary of Sentinel service ``service_name``, found through ``sentinels``, with
    ``timeout``-second socket timeouts and no retries (the Sentinels are asked with the same
    timeouts); ``kwargs`` go to the primary's connections (``password``, ``db``, ...)."""
    import importlib

    package = importlib.import_module(f"{family}.asyncio" if asyncio else family)
    sentinel_module = importlib.import_module(f"{package.__name__}.sentinel")
    backoff = importlib.import_module(f"{family}.backoff")
    retry_module = importlib.import_module(
        f"{family}.asyncio.retry" if asyncio else f"{family}.retry"
    )
    timeouts = {"socket_timeout": timeout, "socket_connect_timeout": timeout}
    manager = sentinel_module.Sentinel(list(sentinels), sentinel_kwargs=dict(timeouts), **timeouts)
    return manager.master_for(
        service_name, retry=retry_module.Retry(backoff.NoBackoff(), 0), **timeouts, **kwargs
    )


class LoopClients:
    """One asyncio client per running event loop, as the HTTP helpers keep one session per
    loop: an asyncio client's connections belong to the loop that opened them, so the same
    client used from the next ``asyncio.run()`` (or from a thread running its own loop) fails
    with "Event loop is closed" / "attached to a different loop".

    The given client serves the first loop that uses it (it stays the caller's to close);
    every other loop gets a copy with a pool of its own (same class, pool class and
    connection settings; a cluster client: one for the same nodes with the same options),
    closed when ``asyncio.run`` finalises that loop and dropped once the loop is closed. A
    client that cannot be copied is used as it is.
    """

    def __init__(self, client: Any) -> None:
        self._given = client
        self._given_used = False
        # loop -> (its client, the async generator that closes a copy at the loop's shutdown)
        self._clients: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, tuple[Any, AsyncIterator[None] | None]
        ] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    async def current(self) -> Any:
        """The client of the running event loop."""
        loop = asyncio.get_running_loop()
        found = self._clients.get(loop)
        if found is not None:
            return found[0]
        with self._lock:
            for old in [old for old in list(self._clients) if old.is_closed()]:
                del self._clients[old]  # its client's connections hold the loop: no GC alone
            if not self._given_used:
                self._given_used = True
                self._clients[loop] = (self._given, None)
                return self._given
            client = copy_for_loop(self._given)
            closer = None if client is self._given else _closed_at_shutdown(client)
            self._clients[loop] = (client, closer)
        if closer is not None:
            await closer.__anext__()  # started: the loop finalises it at shutdown
        return client


async def _closed_at_shutdown(client: Any) -> AsyncIterator[None]:
    """Closes ``client`` when its loop finalises its async generators (``asyncio.run`` does)."""
    try:
        yield
    finally:
        await close_copy(client)


async def close_copy(client: Any) -> None:
    """Close a copy :func:`copy_for_loop` made: its pool (a cluster client's: every node's),
    and its Sentinels' connections."""
    if getattr(client, "connection_pool", None) is None:  # a cluster client
        await client.aclose()
        return
    await client.aclose(close_connection_pool=True)
    manager = getattr(getattr(client, "connection_pool", None), "sentinel_manager", None)
    for sentinel in getattr(manager, "sentinels", ()):
        await sentinel.aclose(close_connection_pool=True)


def _cluster_copied(client: Any) -> Any:
    """An asyncio cluster client like ``client`` (the same startup nodes, connection options
    and retry policy) whose connections are its own: a cluster client's node connections
    belong to the loop that opened them too."""
    import importlib
    import inspect

    cls = type(client)
    node = importlib.import_module(cls.__module__).ClusterNode
    accepted = inspect.signature(cls.__init__).parameters
    kwargs = {
        key: value
        for key, value in client.connection_kwargs.items()
        if key in accepted and key not in ("host", "port", "startup_nodes", "retry")
    }
    manager = client.nodes_manager
    startup = [node(n.host, n.port) for n in manager.startup_nodes.values()]
    extra: dict[str, Any] = {"require_full_coverage": manager.require_full_coverage}
    connection_class = client.connection_kwargs.get("connection_class")
    if "ssl" in accepted and "SSL" in getattr(connection_class, "__name__", ""):
        extra["ssl"] = True  # the ssl_* options alone do not say it
    if "address_remap" in accepted and getattr(manager, "address_remap", None) is not None:
        extra["address_remap"] = manager.address_remap
    strategy = getattr(client, "load_balancing_strategy", None)
    if strategy is not None and "load_balancing_strategy" in accepted:
        extra["load_balancing_strategy"] = strategy
    return cls(startup_nodes=startup, retry=client.retry, **extra, **kwargs)


def _sentinels_copied(manager: Any) -> Any:
    """A Sentinel manager like ``manager`` with connections of its own: an asyncio Sentinel's
    connections belong to the loop that opened them, as a client's do."""
    addresses = [
        (
            sentinel.connection_pool.connection_kwargs.get("host", "localhost"),
            sentinel.connection_pool.connection_kwargs.get("port", 26379),
        )
        for sentinel in manager.sentinels
    ]
    extra: dict[str, Any] = {}
    if getattr(manager, "_force_master_ip", None) is not None:  # redis-py's option
        extra["force_master_ip"] = manager._force_master_ip
    return type(manager)(
        addresses,
        min_other_sentinels=manager.min_other_sentinels,
        sentinel_kwargs=dict(manager.sentinel_kwargs),
        **extra,
        **manager.connection_kwargs,
    )


def copy_for_loop(client: Any) -> Any:
    """``client`` with connections of its own: a copy of its pool (and of its Sentinel
    manager), or, for a cluster client, a client for the same nodes (``client`` itself when
    it cannot be copied)."""
    pool = getattr(client, "connection_pool", None)
    if pool is None:  # a cluster client: a new one for the same nodes, with the same options
        try:
            return _cluster_copied(client)
        except Exception as exc:  # a client of unknown make: the client as it is
            logger.debug("no copy of %r for another event loop: %s", client, exc)
            return client
    kwargs = {k: v for k, v in pool.connection_kwargs.items() if k != "connection_pool"}
    if hasattr(pool, "timeout"):  # a blocking pool
        kwargs["timeout"] = pool.timeout
    try:
        if hasattr(pool, "service_name"):  # Sentinel-managed
            copy = type(pool)(
                pool.service_name,
                _sentinels_copied(pool.sentinel_manager),
                is_master=pool.is_master,
                check_connection=pool.check_connection,
                connection_class=pool.connection_class,
                max_connections=pool.max_connections,
                **kwargs,
            )
        else:
            copy = type(pool)(
                connection_class=pool.connection_class,
                max_connections=pool.max_connections,
                **kwargs,
            )
        return type(client)(connection_pool=copy)
    except Exception as exc:  # a pool of unknown make: the client as it is
        logger.debug("no copy of %r for another event loop: %s", client, exc)
        return client
