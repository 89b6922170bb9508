"""The Redis client a ``RedisStateStore`` works through: which kind it is, whether it would
retry commands (which a store must not wait for), one made for a URL, and, for an asyncio
client, one per running event loop."""

from __future__ import annotations

import asyncio
import logging
import threading
import weakref
from collections.abc import AsyncIterator
from typing import Any

__all__ = ["LoopClients", "client_for_url", "is_async_client", "warn_if_retrying"]

logger = logging.getLogger("llm_circuit_breaker")


def is_async_client(client: Any) -> bool:
    """True for a ``redis.asyncio.Redis``, False for a ``redis.Redis``; else ``TypeError``."""
    import redis
    import redis.asyncio

    if isinstance(client, redis.asyncio.Redis):
        return True
    if isinstance(client, redis.Redis):
        return False
    raise TypeError(
        f"RedisStateStore needs a redis.Redis or redis.asyncio.Redis client, "
        f"got {type(client).__name__}"
    )


def warn_if_retrying(client: Any, prefix: str) -> None:
    """One WARNING when ``client`` retries failed commands: while Redis is down, a call would
    wait for every retry."""
    retries = getattr(getattr(client, "get_retry", lambda: None)(), "_retries", 0)
    if retries:
        logger.warning(
            "the Redis client of state store %r retries failed commands %d times: while Redis "
            "is down the first call of every retry interval waits for all of them; create it "
            "with retry=Retry(NoBackoff(), 0) and a short socket_timeout, or use "
            "RedisStateStore.from_url()",
            prefix,
            retries,
        )


def client_for_url(url: str, *, asyncio: bool, timeout: float) -> Any:
    """A client for ``url`` with ``timeout``-second socket timeouts and no retries."""
    from redis.backoff import NoBackoff

    if asyncio:
        import redis.asyncio as aredis
        from redis.asyncio.retry import Retry as AsyncRetry

        return aredis.Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=AsyncRetry(NoBackoff(), 0),
        )
    import redis
    from redis.retry import Retry

    return redis.Redis.from_url(
        url, socket_timeout=timeout, socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0)
    )


class LoopClients:
    """One asyncio client per running event loop, as the HTTP helpers keep one session per
    loop: an asyncio client's connections belong to the loop that opened them, so the same
    client used from the next ``asyncio.run()`` (or from a thread running its own loop) fails
    with "Event loop is closed" / "attached to a different loop".

    The given client serves the first loop that uses it (it stays the caller's to close);
    every other loop gets a copy with a pool of its own (same class, pool class and
    connection settings), closed when ``asyncio.run`` finalises that loop and dropped once
    the loop is closed. A client whose pool cannot be copied is used as it is.
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
            client = _copy(self._given)
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
        await client.aclose(close_connection_pool=True)


def _copy(client: Any) -> Any:
    """``client`` with a pool of its own (``client`` itself when its pool cannot be copied)."""
    pool = client.connection_pool
    kwargs = {k: v for k, v in pool.connection_kwargs.items() if k != "connection_pool"}
    if hasattr(pool, "timeout"):  # a blocking pool
        kwargs["timeout"] = pool.timeout
    try:
        if hasattr(pool, "service_name"):  # Sentinel-managed
            copy = type(pool)(
                pool.service_name,
                pool.sentinel_manager,
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
