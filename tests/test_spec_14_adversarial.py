"""Section 14 of the SPEC against real servers, adversarially: listing through every client
family (valkey's cluster client, asyncio stores), clients that decode replies, a cluster node
killed under traffic, a Redis that stops answering, and a store used after a fork."""

from __future__ import annotations

import asyncio
import io
import json
import os
from typing import Any

import pytest
import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster
import valkey
import valkey.asyncio
import valkey.asyncio.cluster
import valkey.cluster

from llm_circuit_breaker import CircuitBreaker, CircuitBreakerConfig, CircuitOpenError, Outcome
from llm_circuit_breaker._cli.status import run_status
from llm_circuit_breaker.storage import RedisStateStore
from tests.redis_cluster import RedisCluster
from tests.redis_server import RedisServer

pytestmark = pytest.mark.redis

TRIP = CircuitBreakerConfig(failure_threshold=1, reset_timeout=60)


def _trip(store: RedisStateStore, name: str) -> None:
    breaker = CircuitBreaker(name, TRIP, store=store)
    breaker.record(breaker.admit(), Outcome.FAILURE)


async def _atrip(store: RedisStateStore, name: str) -> None:
    breaker = CircuitBreaker(name, TRIP, store=store)
    await breaker.arecord(await breaker.aadmit(), Outcome.FAILURE)


# -- listing through every client ---------------------------------------------------------


@pytest.mark.parametrize("decode", [False, True])
def test_a_valkey_cluster_client_lists_every_primary(flushed: RedisCluster, decode: bool) -> None:
    """valkey's sync cluster client names its per-node client ``get_valkey_connection``."""
    port = flushed.servers[0].port
    client = valkey.cluster.ValkeyCluster(host="127.0.0.1", port=port, decode_responses=decode)
    store = RedisStateStore(client, prefix="vk")
    names = [f"model-{i}" for i in range(12)]  # spread over the three primaries
    for name in names:
        _trip(store, name)
    listed = store.circuits()
    assert sorted(listed) == sorted(names)
    assert {view["state"] for view in listed.values()} == {"OPEN"}
    client.close()


def test_status_lists_a_cluster_through_a_valkey_url(flushed: RedisCluster) -> None:
    store = RedisStateStore.from_url(flushed.url, "st", cluster=True)
    _trip(store, "one")
    out = io.StringIO()
    url = flushed.url.replace("redis://", "valkey://", 1)
    assert run_status(url, "st", as_json=True, out=out) == 0
    assert json.loads(out.getvalue())["one"]["state"] == "OPEN"


@pytest.mark.parametrize("family", ["redis", "valkey"])
async def test_an_asyncio_store_lists_its_circuits(redis_server: RedisServer, family: str) -> None:
    """``store.circuits()`` of an asyncio store answers, called or awaited, inside a running
    loop or not, and ``acircuits()`` lists through the running loop's client."""
    redis_server.client().flushall()
    module: Any = redis.asyncio if family == "redis" else valkey.asyncio
    make = module.Redis if family == "redis" else module.Valkey
    client = make(port=redis_server.port, decode_responses=True)
    store = RedisStateStore(client, prefix="aio")
    await _atrip(store, "a")
    await _atrip(store, "b{x}")
    assert sorted(store.circuits()) == ["a", "b{x}"]  # type: ignore[arg-type]
    assert sorted(await store.circuits()) == ["a", "b{x}"]  # type: ignore[misc]
    listed = await store.acircuits()
    assert listed["a"]["state"] == "OPEN" and listed["b{x}"]["failure_count"] == 1
    await _atrip(store, "c")  # the store's own client still serves this loop
    assert sorted(await store.acircuits()) == ["a", "b{x}", "c"]
    await client.aclose()


@pytest.mark.parametrize("family", ["redis", "valkey"])
def test_an_asyncio_cluster_store_lists_every_primary(flushed: RedisCluster, family: str) -> None:
    port = flushed.servers[0].port
    module: Any = redis.asyncio.cluster if family == "redis" else valkey.asyncio.cluster
    make = module.RedisCluster if family == "redis" else module.ValkeyCluster
    names = [f"m{i}" for i in range(12)]

    async def main() -> dict[str, dict[str, Any]]:
        client = make(host="127.0.0.1", port=port)
        store = RedisStateStore(client, prefix="ac")
        for name in names:
            await _atrip(store, name)
        try:
            return await store.acircuits()
        finally:
            await client.aclose()

    assert sorted(asyncio.run(main())) == sorted(names)
    fresh = RedisStateStore(make(host="127.0.0.1", port=port), prefix="ac")  # never used yet
    assert sorted(fresh.circuits()) == sorted(names)


@pytest.mark.parametrize("family", ["redis", "valkey"])
async def test_a_plain_asyncio_client_on_a_cluster_node_is_refused(
    flushed: RedisCluster, family: str
) -> None:
    module: Any = redis.asyncio if family == "redis" else valkey.asyncio
    make = module.Redis if family == "redis" else module.Valkey
    client = make(port=flushed.servers[1].port)  # default settings, retries included
    with pytest.raises(ValueError, match="cluster=True"):
        RedisStateStore(client)
    await client.aclose()


async def test_a_plain_asyncio_client_on_a_single_server_is_accepted(
    redis_server: RedisServer, closed_port: int
) -> None:
    for port in (redis_server.port, closed_port):  # up, and down (nothing to say)
        client = redis.asyncio.Redis(port=port)
        assert RedisStateStore(client).is_async
        await client.aclose()


# -- strong passing probes ------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda port: redis.Redis(port=port, decode_responses=True),
        lambda port: valkey.Valkey(port=port, decode_responses=True),
    ],
)
def test_clients_that_decode_replies_share_the_circuit(
    redis_server: RedisServer, make: Any
) -> None:
    redis_server.client().flushall()
    plain = RedisStateStore(redis_server.client(), prefix="dec")
    decoding = RedisStateStore(make(redis_server.port), prefix="dec", near_cache=0.05)
    _trip(decoding, "x")
    with pytest.raises(CircuitOpenError):
        CircuitBreaker("x", TRIP, store=plain).admit()
    assert decoding.circuits()["x"]["state"] == "OPEN"
    decoding.close()


def test_a_redis_that_stops_answering_costs_one_timeout(redis_server: RedisServer) -> None:
    """While Redis is paused (a slow server: every command times out), the first call pays
    the timeout and the next ones decide locally without asking; no call fails."""
    admin = redis_server.client()
    admin.flushall()
    store = RedisStateStore.from_url(redis_server.url, prefix="slow", timeout=0.1)
    breaker = CircuitBreaker("s", CircuitBreakerConfig(failure_threshold=3), store=store)
    breaker.record(breaker.admit(), Outcome.SUCCESS)
    sent = 0
    real = store._script

    def counted(**kwargs: Any) -> Any:
        nonlocal sent
        sent += 1
        return real(**kwargs)

    store._script = counted  # type: ignore[method-assign]
    admin.execute_command("CLIENT", "PAUSE", "1000", "WRITE")  # scripts wait
    try:
        for _ in range(20):
            breaker.record(breaker.admit(), Outcome.SUCCESS)
        assert sent == 1 and not store.available
    finally:
        admin.execute_command("CLIENT", "UNPAUSE")


def test_a_killed_cluster_node_never_fails_a_call() -> None:
    """A primary stopped under traffic (its slots then uncovered): no call fails."""
    cluster = RedisCluster()
    cluster.start()
    try:
        _killed_node(cluster)
    finally:
        cluster.stop()


def _killed_node(cluster: RedisCluster) -> None:
    store = RedisStateStore.from_url(cluster.url, prefix="kill", cluster=True)
    breakers = [CircuitBreaker(f"k{i}", TRIP, store=store) for i in range(30)]
    for breaker in breakers:
        breaker.record(breaker.admit(), Outcome.SUCCESS)
    cluster.servers[2].stop()
    for _ in range(3):
        for breaker in breakers:
            breaker.record(breaker.admit(), Outcome.SUCCESS)  # nothing raises
    with pytest.raises(CircuitOpenError):  # the local circuit still decides
        breakers[0].record(breakers[0].admit(), Outcome.FAILURE)
        breakers[0].admit()


def test_a_forked_worker_shares_the_circuit_and_its_reset(redis_server: RedisServer) -> None:
    redis_server.client().flushall()
    store = RedisStateStore.from_url(redis_server.url, prefix="fork", near_cache=0.05)
    _trip(store, "f")
    pid = os.fork()
    if pid == 0:  # the child: sees the shared OPEN circuit, then resets it
        code = 1
        try:
            child = CircuitBreaker("f", TRIP, store=store)
            try:
                child.admit()
            except CircuitOpenError:
                child.reset()
                code = 0 if child.admit() >= 0 else 3
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert store.circuits()["f"]["state"] == "CLOSED"
    store.close()
