"""The Redis client a ``RedisStateStore`` works through: which kind it is, whether it would
retry commands (which a store must not wait for), and one made for a URL."""

from __future__ import annotations

import logging
from typing import Any

__all__ = ["client_for_url", "is_async_client", "warn_if_retrying"]

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
