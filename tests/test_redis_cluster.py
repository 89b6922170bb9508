"""The Redis store on a real 3-node Redis Cluster, through redis-py's and valkey's cluster
clients (sync and asyncio): one slot per breaker, circuits spread over slots, listing across
every primary, and a plain client on a node refused or never taken for an outage."""

from __future__ import annotations

import io
import json
import logging

import pytest
import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster
import valkey.cluster
from redis.crc import key_slot

from llm_circuit_breaker import CircuitBreaker, CircuitBreakerConfig, CircuitOpenError, Outcome
from llm_circuit_breaker._cli.status import run_status
from llm_circuit_breaker.storage import RedisStateStore
from tests.polling import until
from tests.redis_cluster import RedisCluster

pytestmark = pytest.mark.redis

TRIP = CircuitBreakerConfig(failure_threshold=1, reset_timeout=60)


def _trip_seen_by_another(first: RedisStateStore, second: RedisStateStore, name: str) -> None:
    a = CircuitBreaker(name, TRIP, store=first)
    b = CircuitBreaker(name, TRIP, store=second)
    a.record(a.admit(), Outcome.FAILURE)
    with pytest.raises(CircuitOpenError):
        b.admit()
    assert first.available and second.available


@pytest.mark.parametrize("name", ["openai", "}starts-with-brace", "a}b{c", "{x}", "%7B"])
def test_sync_cluster_client_shares_one_circuit(flushed: RedisCluster, name: str) -> None:
    """Two processes' RedisCluster clients see one circuit, whatever braces its name holds."""
    stores = [RedisStateStore.from_url(flushed.url, cluster=True, timeout=2) for _ in range(2)]
    _trip_seen_by_another(*stores, name)
    assert stores[0].circuits()[name]["state"] == "OPEN"


def test_given_cluster_clients_of_both_packages(flushed: RedisCluster) -> None:
    """A redis-py RedisCluster and a valkey ValkeyCluster given by the caller share a circuit."""
    ours = redis.cluster.RedisCluster.from_url(flushed.url, socket_timeout=1)
    theirs = valkey.cluster.ValkeyCluster.from_url(flushed.url, socket_timeout=1)
    _trip_seen_by_another(RedisStateStore(ours), RedisStateStore(theirs), "both")
    ours.close()
    theirs.close()


async def test_asyncio_cluster_client(flushed: RedisCluster) -> None:
    """redis.asyncio.cluster.RedisCluster: admissions, reports and a trip, all in Redis."""
    store = RedisStateStore.from_url(flushed.url, cluster=True, asyncio=True, timeout=2)
    breaker = CircuitBreaker("async-cluster", TRIP, store=store)
    permit = await breaker.aadmit()
    await breaker.arecord(permit, Outcome.FAILURE)
    other = CircuitBreaker(
        "async-cluster", TRIP, store=RedisStateStore.from_url(flushed.url, cluster=True, timeout=2)
    )
    with pytest.raises(CircuitOpenError):
        other.admit()
    assert store.available
    await store.client.aclose()


def test_keys_of_a_breaker_share_a_slot_and_breakers_spread(flushed: RedisCluster) -> None:
    """A breaker's three keys hash together; 64 breakers under a prefix with braces land on
    many slots (a prefix never pins them all to one)."""
    store = RedisStateStore.from_url(flushed.url, prefix="app{tenant}", cluster=True, timeout=2)
    slots = set()
    for index in range(64):
        for name in (f"model-{index}", f"}}{index}", f"{{{index}}}"):
            keys = store.keys(name)
            assert len({key_slot(k.encode()) for k in keys}) == 1, keys
            slots.add(key_slot(keys[0].encode()))
    assert len(slots) > 100


def test_listing_covers_every_primary(flushed: RedisCluster) -> None:
    """store.circuits() and `status --redis` list the circuits of all three primaries."""
    store = RedisStateStore.from_url(flushed.url, prefix="listed", cluster=True, timeout=2)
    names = [f"c{i}" for i in range(60)]
    for name in names:
        CircuitBreaker(name, TRIP, store=store).admit()
    nodes = {store.client.get_node_from_key(store.keys(n)[0]).name for n in names}
    assert len(nodes) == 3  # the test means something: circuits on every primary
    assert sorted(store.circuits()) == sorted(names)
    out = io.StringIO()
    assert run_status(flushed.url, "listed", as_json=True, out=out) == 0
    assert sorted(json.loads(out.getvalue())) == sorted(names)


def test_a_silent_primary_leaves_out_only_its_own_circuits(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """One primary of three stopped: the listing (sync and asyncio stores) holds the other
    two's circuits and names the silent one; ``status`` prints them, warns on stderr and
    exits with status 3 (it listed nothing, and said only that Redis could not be read).
    Once the cluster is declared down, the listing fails as a whole."""
    own = RedisCluster()  # this test stops a node: a cluster of its own
    own.start()
    try:
        store = RedisStateStore.from_url(own.url, prefix="part", cluster=True, timeout=0.5)
        names = [f"c{i}" for i in range(60)]
        for name in names:
            CircuitBreaker(name, TRIP, store=store).admit()
        client = store.client
        where = {name: client.get_node_from_key(store.keys(name)[0]).name for name in names}
        gone = own.servers[2]
        silent = f"127.0.0.1:{gone.port}"
        assert silent in where.values() and len(set(where.values())) == 3
        kept = sorted(name for name, node in where.items() if node != silent)
        gone.stop()

        listing = store.circuits()
        assert sorted(listing) == kept
        assert getattr(listing, "unreachable", None) == (silent,)
        astore = RedisStateStore(
            redis.asyncio.cluster.RedisCluster.from_url(own.url, socket_timeout=0.5),
            prefix="part",
        )
        alisting = astore.circuits()
        assert sorted(alisting) == kept
        assert getattr(alisting, "unreachable", None) == (silent,)

        assert run_status(own.url, "part", as_json=True) == 3
        printed = capsys.readouterr()
        assert sorted(json.loads(printed.out)) == kept
        assert silent in printed.err and "did not answer" in printed.err

        # Once the others declare the cluster down, they answer CLUSTERDOWN for every key:
        # no listing at all (exit 2, saying so), never an empty one that looks whole.
        live = redis.Redis(port=own.servers[0].port, socket_timeout=5)
        until(lambda: live.cluster("INFO").get("cluster_state") == "fail", patience=60)
        live.close()
        for lister in (store, astore):
            with pytest.raises(redis.exceptions.ResponseError, match="cluster is down"):
                lister.circuits()
        assert run_status(own.url, "part", as_json=True) == 2
        assert "cluster is down" in capsys.readouterr().err
        client.close()
    finally:
        own.stop()


def test_plain_client_on_a_cluster_node_is_refused(flushed: RedisCluster) -> None:
    """A redis.Redis connected to one node of a cluster is refused at construction, with an
    error that says to pass cluster=True."""
    client = redis.Redis.from_url(flushed.url, socket_timeout=1)
    with pytest.raises(ValueError, match="cluster=True"):
        RedisStateStore(client)
    client.close()


async def test_moved_is_not_an_outage(
    flushed: RedisCluster, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A plain asyncio client on one node (not refused: its server could not be asked at
    construction) gets MOVED for the circuits of other nodes: those calls are decided
    locally, the store stays available for the rest, and one ERROR says to pass cluster=True."""
    monkeypatch.setattr(
        "llm_circuit_breaker.storage.redis.refuse_cluster_node", lambda client, kind: None
    )
    client = redis.asyncio.Redis.from_url(flushed.url, socket_timeout=1)
    store = RedisStateStore(client, prefix="moved")
    node = redis.cluster.RedisCluster.from_url(flushed.url)
    here = node.get_node(host="127.0.0.1", port=flushed.servers[0].port)
    names = [f"m{i}" for i in range(30)]
    elsewhere = [n for n in names if node.get_node_from_key(store.keys(n)[0]) != here]
    assert elsewhere
    with caplog.at_level(logging.ERROR, logger="llm_circuit_breaker"):
        for name in names:
            breaker = CircuitBreaker(name, TRIP, store=store)
            await breaker.arecord(await breaker.aadmit(), Outcome.SUCCESS)
            assert store.available
    assert sum("cluster=True" in r.getMessage() for r in caplog.records) == 1
    node.close()
    await client.aclose()


def test_a_reset_elsewhere_ends_a_cached_refusal_on_a_cluster(flushed: RedisCluster) -> None:
    """With near_cache, a refusal is held until the circuit's retry time; a reset through
    another store is published across the cluster and ends it at once."""
    store = RedisStateStore.from_url(flushed.url, cluster=True, near_cache=0.05, timeout=2)
    breaker = CircuitBreaker("noticed", TRIP, store=store)
    other = CircuitBreaker(
        "noticed", TRIP, store=RedisStateStore.from_url(flushed.url, cluster=True, timeout=2)
    )
    other.record(other.admit(), Outcome.FAILURE)
    until(lambda: breaker.try_admit() < 0)
    assert store.notifies
    other.reset()
    until(lambda: breaker.try_admit() >= 0)  # 60 s before the circuit's own retry time
    store.close()


def test_a_cluster_down_at_start_and_later_never_fails_a_call(closed_port: int) -> None:
    """from_url(cluster=True) while no node answers still makes a store (its breakers decide
    locally); a cluster that stops later (the cluster client's own errors) neither."""
    store = RedisStateStore.from_url(
        f"redis://127.0.0.1:{closed_port}", cluster=True, near_cache=0.05
    )
    breaker = CircuitBreaker("down-at-start", TRIP, store=store)
    breaker.record(breaker.admit(), Outcome.SUCCESS)
    assert not store.available
    later = RedisCluster()
    later.start()
    try:
        store = RedisStateStore.from_url(later.url, cluster=True, timeout=2)
        breaker = CircuitBreaker("down-later", TRIP, store=store)
        breaker.record(breaker.admit(), Outcome.SUCCESS)
        assert store.available
    finally:
        later.stop()
    breaker.record(breaker.admit(), Outcome.SUCCESS)
    assert not store.available


@pytest.mark.parametrize("name", ["budget", "}brace"])
def test_budgets_share_the_circuit_s_slot(flushed: RedisCluster, name: str) -> None:
    """A spend cap and the retry budget synced through a cluster: no CROSSSLOT, no new key
    (the fields live in the circuit's hash), and the other process sees what was spent."""
    from llm_circuit_breaker import BudgetExceededError

    config = CircuitBreakerConfig(token_budget=100)
    stores = [RedisStateStore.from_url(flushed.url, cluster=True, timeout=2) for _ in range(2)]
    a, b = (CircuitBreaker(name, config, store=store) for store in stores)
    a.record_success(a.admit())
    assert a.try_spend_retry()
    a.spend(100)
    with pytest.raises(BudgetExceededError):
        a.admit()  # refused: what it spent is sent with a store call of its own
    b.snapshot()
    assert b.budget["spent"] == 100.0
    with pytest.raises(BudgetExceededError):
        b.admit()
    assert all(store.available for store in stores)
    client = redis.cluster.RedisCluster.from_url(flushed.url)
    keys = {k.decode() for k in client.keys("llm-circuit-breaker:*", target_nodes="all")}
    assert keys <= set(stores[0].keys(name))
    assert all(client.hmget(stores[0].keys(name)[0], "rb", "ts", "tw"))
    client.close()
