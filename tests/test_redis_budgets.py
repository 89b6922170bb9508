"""Budgets shared through Redis (SPEC sections 14 and 16) on a real redis-server: one retry
budget and one spend cap for every process, carried by the script calls the circuit makes
anyway (no round trip of their own), batched with the near-cache, kept in the circuit's own
hash (one cluster slot); and the listing that reads every circuit a script call per page."""

from __future__ import annotations

import asyncio
import multiprocessing
from typing import Any

import pytest
import redis
import redis.asyncio
from redis.backoff import NoBackoff
from redis.retry import Retry

from llm_circuit_breaker import (
    BudgetExceededError,
    CircuitBreaker,
    CircuitBreakerConfig,
    Outcome,
    ThrottleEvent,
    ThrottleSignal,
)
from llm_circuit_breaker._core.budget import RetryBudget, SharedBudgets, SpendCap
from llm_circuit_breaker.storage import RedisStateStore
from llm_circuit_breaker.testing import FakeClock
from tests import redis_workers
from tests.polling import auntil
from tests.redis_server import RedisServer

pytestmark = pytest.mark.redis

NOW = 1_000_000.0


class CountingConnection(redis.Connection):
    """Counts the commands sent (each is one round trip: no pipelines)."""

    sent = 0

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        CountingConnection.sent += 1
        super().send_packed_command(command, check_health)


def _store(port: int, *, counting: bool = False, near_cache: float = 0.0) -> RedisStateStore:
    kind = CountingConnection if counting else redis.Connection
    pool = redis.ConnectionPool(port=port, connection_class=kind)
    client = redis.Redis(connection_pool=pool, retry=Retry(NoBackoff(), 0))
    return RedisStateStore(client, prefix="budgets", clock=lambda: NOW, near_cache=near_cache)


def _fleet(
    port: int, name: str, config: CircuitBreakerConfig, processes: int = 2, **kw: Any
) -> list[CircuitBreaker]:
    """Breakers of one name, each with its own store and clock (``CLOCKS[breaker]``):
    processes of a fleet."""
    fleet = []
    for _ in range(processes):
        clock = FakeClock()
        breaker = CircuitBreaker(name, config, store=_store(port, **kw), clock=clock)
        CLOCKS[breaker] = clock
        fleet.append(breaker)
    return fleet


CLOCKS: dict[CircuitBreaker, FakeClock] = {}


def _spend_in_turns(breakers: list[CircuitBreaker], tokens: float, rounds: int) -> int:
    """Each breaker in turn: admit, spend ``tokens``, report; the calls admitted."""
    admitted = 0
    for _ in range(rounds):
        for breaker in breakers:
            try:
                permit = breaker.admit()
            except BudgetExceededError:
                continue
            admitted += 1
            breaker.spend(tokens)
            breaker.record_success(permit)
    return admitted


def test_a_sync_in_flight_or_failed_loses_nothing() -> None:
    """The pure part: what is being sent still counts, what a failed call carried goes out
    again with the next sync, and once the store answered the fleet's figures decide."""
    retry, spend = RetryBudget(0.5, 1.0), SpendCap(100, 60)
    shared = SharedBudgets(retry, spend)
    retry.deposit(0.0, 4)
    assert retry.try_withdraw(0.0)
    spend.spend(0.0, 30)
    assert shared.due(0.0)
    balance = retry.balance(0.0)
    first = shared.take(0.5, None)
    assert first.retry == (4.0, 0.5, 1.0) and first.tokens == 30.0
    assert retry.balance(0.5) == balance  # in flight: still counted
    shared.landed(first, 0.5, ok=False)
    again = shared.take(0.6, None)
    assert again.retry == (4.0, 0.6, 1.0) and again.tokens == 30.0
    again.fleet_retry, again.fleet_spend = (40.0, 25.0), (90.0, 30.0)
    shared.landed(again, 0.6, ok=True)
    assert retry.balance(0.6) == 10.0 + 0.5 * 40.0 - 25.0
    assert spend.refusal(0.6) is None and spend.spent == 90.0
    spend.spend(0.7, 10)
    assert spend.refusal(0.7) == pytest.approx(29.9)  # the fleet's window: 30 s left at 0.6
    shared.unshare()
    assert retry.balance(0.7) == 10.0 + 0.5 * 4.0 - 1.0  # this process's own counts


def test_two_processes_share_one_spend_cap(redis_server: RedisServer) -> None:
    """token_budget=1000 for the fleet: two processes spending 100 a call stop after about
    10 calls between them (a process alone would make 10 by itself)."""
    fleet = _fleet(redis_server.port, "cap", CircuitBreakerConfig(token_budget=1000))
    admitted = _spend_in_turns(fleet, 100, rounds=20)
    assert 10 <= admitted <= 10 + len(fleet)  # at most one call each past the cap
    for breaker in fleet:
        with pytest.raises(BudgetExceededError) as refused:
            breaker.admit()
        assert refused.value.limit == 1000
    for breaker in fleet:
        breaker.snapshot()  # a store call: each learns what the other's refusal sent
    spent = {breaker.budget["spent"] for breaker in fleet}
    assert spent == {100.0 * admitted}  # both know what the fleet spent


def test_a_lone_process_keeps_its_cap_to_itself_without_a_store() -> None:
    """The contrast: per process, two breakers of one name spend a cap each."""
    fleet = [
        CircuitBreaker("cap", CircuitBreakerConfig(token_budget=1000), clock=FakeClock())
        for _ in range(2)
    ]
    assert _spend_in_turns(fleet, 100, rounds=20) == 20


def test_two_processes_share_one_retry_budget(redis_server: RedisServer) -> None:
    """A reserve of 10 retries per 10 s for the fleet (floor 1/s, no share of traffic): what
    one process retried, the other cannot."""
    config = CircuitBreakerConfig(retry_budget=0.0, retry_budget_floor=1.0)
    a, b = _fleet(redis_server.port, "retries", config)
    a.record_success(a.admit())
    assert all(a.try_spend_retry() for _ in range(6))
    a.record_success(a.admit())  # carries the six withdrawals
    b.record_success(b.admit())  # learns them
    paid = [b.try_spend_retry() for _ in range(10)]
    assert paid == [True] * 4 + [False] * 6
    assert b.stats.retries_denied == 6
    b.record_success(b.admit())  # carries b's four
    CLOCKS[a].advance(1.0)  # with nothing of its own to send, a process syncs every second
    a.record_success(a.admit())
    assert not a.try_spend_retry()  # the fleet's reserve is spent


def test_budgets_cost_no_round_trip_of_their_own(redis_server: RedisServer) -> None:
    """With a spend cap and the retry budget, every answered call costs the one script call
    of its admission, retries included (INFO commandstats agrees with the client's count)."""
    config = CircuitBreakerConfig(token_budget=1_000_000)
    (breaker,) = _fleet(redis_server.port, "trips", config, processes=1, counting=True)
    breaker.record_success(breaker.admit())  # the script is loaded
    admin = redis.Redis(port=redis_server.port)
    before = admin.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0)
    CountingConnection.sent = 0
    for index in range(50):
        breaker.record_success(breaker.admit())
        breaker.spend(10)
        if index % 5 == 0:
            assert breaker.try_spend_retry()
    assert CountingConnection.sent == 50
    after = admin.info("commandstats")["cmdstat_evalsha"]["calls"]
    assert after - before == 50
    assert breaker.budget["spent"] == 500.0  # the last spend rides on the next call


def test_with_a_near_cache_the_deltas_are_batched(redis_server: RedisServer) -> None:
    """near_cache=0.05 at 200 calls/s: about one script call per 10 answered calls, and the
    spends of the batch all reach the fleet."""
    config = CircuitBreakerConfig(token_budget=1_000_000)
    a, b = _fleet(redis_server.port, "batched", config, counting=True, near_cache=0.05)
    clock = CLOCKS[a]  # the near-cache runs on it
    a.record_success(a.admit())
    CountingConnection.sent = 0
    for _ in range(200):
        clock.advance(1 / 200)
        a.record_success(a.admit())
        a.spend(1)
    assert CountingConnection.sent <= 0.1 * 200 + 1
    a.snapshot()  # a store call: the last batch goes with it
    b.snapshot()
    assert b.budget["spent"] == 200.0


def test_while_redis_is_down_each_process_decides_alone(redis_server: RedisServer) -> None:
    """Unreachable Redis: the retry budget falls back to this process's own counts (its own
    reserve), and what it withdrew meanwhile reaches the fleet once Redis answers."""
    config = CircuitBreakerConfig(retry_budget=0.0, retry_budget_floor=1.0)
    (a,) = _fleet(redis_server.port, "down", config, processes=1)
    a.record_success(a.admit())
    assert all(a.try_spend_retry() for _ in range(8))
    a.record_success(a.admit())  # the fleet has 8 withdrawals
    assert a.retry_budget["balance"] == 2.0  # type: ignore[index]
    a._followed.go_local()  # type: ignore[union-attr]  # as after a failed command
    assert a.retry_budget["balance"] == 2.0  # type: ignore[index]  # its own 8 of 10


def test_budget_fields_live_in_the_circuit_s_hash(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    """No key of its own: a cluster slot holds a circuit with its budgets."""
    config = CircuitBreakerConfig(token_budget=100)
    (breaker,) = _fleet(redis_server.port, "fields", config, processes=1)
    breaker.record_success(breaker.admit())
    assert breaker.try_spend_retry()
    breaker.spend(5)
    breaker.record_success(breaker.admit())
    store = breaker.store
    assert isinstance(store, RedisStateStore)
    assert set(redis_client.keys("budgets:*")) <= {k.encode() for k in store.keys("fields")}
    held = redis_client.hmget(store.keys("fields")[0], "rb", "ts", "tw")
    assert all(held)


async def test_an_asyncio_store_shares_the_spend_cap(redis_server: RedisServer) -> None:
    """Two asyncio stores (two processes' event loops) share one cap too."""
    stores = []
    for _ in range(2):
        client = redis.asyncio.Redis(port=redis_server.port)
        stores.append(RedisStateStore(client, prefix="abudgets", clock=lambda: NOW))
    config = CircuitBreakerConfig(token_budget=1000)
    fleet = [CircuitBreaker("acap", config, store=s, clock=FakeClock()) for s in stores]
    admitted = 0
    for _ in range(20):
        for breaker in fleet:
            try:
                permit = await breaker.aadmit()
            except BudgetExceededError:
                continue
            admitted += 1
            breaker.spend(100)
            await breaker.arecord_success(permit)
    assert 10 <= admitted <= 12
    for store in stores:
        await store.client.aclose()
    await asyncio.sleep(0)


def test_forked_processes_share_one_spend_cap(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    """Two real processes spending 100 tokens a call against one fleet cap of 2000 make
    about 20 calls between them, not 20 each."""
    redis_client.set(redis_workers.CLOCK_KEY, repr(NOW))
    context = multiprocessing.get_context("spawn")
    with context.Pool(2) as pool:
        admitted = pool.starmap(redis_workers.spend, [(redis_server.port, 2000.0, 100.0, 40)] * 2)
    assert 20 <= sum(admitted) <= 20 + 2 * 2, admitted


# -- the admission that learns the fleet spent the cap refuses -----------------------------


def _turn(breaker: CircuitBreaker, tokens: float) -> str:
    """One call of ``breaker`` (admit, spend, report): "ok", or "refused" by the budget."""
    try:
        permit = breaker.admit()
    except BudgetExceededError:
        return "refused"
    breaker.spend(tokens)
    breaker.record_success(permit)
    return "ok"


def _budget_events(breaker: CircuitBreaker) -> list[ThrottleEvent]:
    events: list[ThrottleEvent] = []

    def heard(change: object) -> None:
        if isinstance(change, ThrottleEvent) and change.new is ThrottleSignal.BUDGET_EXCEEDED:
            events.append(change)

    breaker.add_listener(heard)
    return events


def test_an_admission_refuses_by_the_fleet_totals_its_own_call_returned(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    """token_budget=25, 10 tokens a call: once A's refusal sent what A spent, B's next
    admission, which carries B's last 10 and learns the fleet's 40, is refused by that same
    script call (one round trip, as an admitted call costs), nothing is taken, and the
    error says the fleet's 40. Both processes' listeners hear BUDGET_EXCEEDED once."""
    a, b = _fleet(
        redis_server.port, "crossing", CircuitBreakerConfig(token_budget=25), counting=True
    )
    heard = {a: _budget_events(a), b: _budget_events(b)}
    steps = [(a, "A"), (a, "A"), (b, "B"), (a, "A"), (a, "A")]
    assert [_turn(breaker, 10) for breaker, _ in steps] == ["ok"] * 4 + ["refused"]
    key = a.store.keys("crossing")[0]  # type: ignore[union-attr]
    assert float(redis_client.hget(key, "ts")) == 30.0  # A's refusal sent its last 10
    CountingConnection.sent = 0
    with pytest.raises(BudgetExceededError) as refused:
        b.admit()
    assert CountingConnection.sent == 1  # the admission's own script call, nothing more
    assert float(redis_client.hget(key, "ts")) == 40.0
    assert (refused.value.spent, refused.value.limit) == (40.0, 25.0)  # the fleet's, fresh
    assert refused.value.retry_after == pytest.approx(86400.0)
    assert b.stats.throttle_refusals["token_budget"] == 1
    assert b.budget["spent"] == 40.0
    for breaker in (a, b):
        assert len(heard[breaker]) == 1  # each process hears the crossing, once
        with pytest.raises(BudgetExceededError):
            breaker.admit()  # decided here now: no store call, no second event
        assert len(heard[breaker]) == 1


def test_a_budget_refusal_takes_no_probe_and_no_throttle_slot(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    """The script refuses before it admits: a HALF_OPEN circuit's probe slot stays free for
    the fleet, and the throttle's bucket is untouched."""
    config = CircuitBreakerConfig(
        token_budget=25, failure_threshold=1, reset_timeout=1.0, requests_per_minute=600
    )
    a, b = _fleet(redis_server.port, "probing", config)
    a.spend(20)
    a.record(a.admit(), Outcome.FAILURE)  # carries the 20 and opens the circuit
    store = a.store
    assert isinstance(store, RedisStateStore)
    inflight = store.keys("probing")[1]
    before = redis_client.hget(store.keys("probing")[0], "rt")
    global NOW
    NOW += 2.0  # HALF_OPEN in the store's clock
    b.spend(10)
    try:
        with pytest.raises(BudgetExceededError):
            b.admit()  # carries the 10: the fleet's 30 are over the cap
        assert redis_client.zcard(inflight) == 0
        assert redis_client.hget(store.keys("probing")[0], "rt") == before
    finally:
        NOW -= 2.0


def test_a_refusal_decided_here_says_what_its_flush_learned(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    """A process whose own figures refuse sends what it spent (one call) and its error says
    the fleet's total that call answered, not its own older figure."""
    a, b = _fleet(redis_server.port, "flushed", CircuitBreakerConfig(token_budget=25))
    a.record_success(a.admit())
    a.spend(30)  # a's own figures: spent
    b.record_success(b.admit())
    b.spend(10)
    b.snapshot()  # the fleet has b's 10
    with pytest.raises(BudgetExceededError) as refused:
        a.admit()
    assert refused.value.spent == 40.0
    assert float(redis_client.hget(a.store.keys("flushed")[0], "ts")) == 40.0  # type: ignore[union-attr]


def test_a_metrics_only_breaker_is_not_refused_by_the_script(redis_server: RedisServer) -> None:
    """enabled=False: the fleet's spent cap is counted, never refused (by Redis neither)."""
    config = CircuitBreakerConfig(token_budget=25, enabled=False)
    a, b = _fleet(redis_server.port, "shadowed", config)
    a.record_success(a.admit())
    a.spend(30)
    a.record_success(a.admit())  # carries the 30
    b.record_success(b.admit())
    assert b.budget["spent"] == 30.0
    b.record_success(b.admit())  # b's own figures now say spent: counted, let through
    assert b.stats.throttle_refusals["token_budget"] == 1


def test_a_fleet_in_turns_goes_over_by_at_most_one_call_per_process(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    """near_cache=0, a cap of 1000, 100 tokens a call in turns: the fleet spends at most
    1100 (one process's last spend had not reached Redis when the other was admitted);
    a refusal never lets a call through that the fleet's totals forbid."""
    config = CircuitBreakerConfig(token_budget=1000)
    fleet = _fleet(redis_server.port, "turns", config)
    admitted = _spend_in_turns(fleet, 100, rounds=20)
    for breaker in fleet:
        breaker.snapshot()
    key = fleet[0].store.keys("turns")[0]  # type: ignore[union-attr]
    assert float(redis_client.hget(key, "ts")) == 100.0 * admitted <= 1100.0


def test_with_a_near_cache_a_refusal_says_the_fleet_spent(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    """near_cache=0.05: a process that learns from Redis the cap is spent refuses on that
    same call, its listeners hear it, and the error says the fleet's total; the calls the
    near-cache admitted meanwhile are all that goes over."""
    config = CircuitBreakerConfig(token_budget=1000)
    a, b = _fleet(redis_server.port, "nearly", config, near_cache=0.05)
    heard = _budget_events(b)
    clock_a, clock_b = CLOCKS[a], CLOCKS[b]
    results = []
    for _ in range(40):
        clock_a.advance(0.02)
        clock_b.advance(0.02)
        results.append((_turn(a, 100), _turn(b, 100)))
    for breaker in (a, b):
        breaker.snapshot()
    key = a.store.keys("nearly")[0]  # type: ignore[union-attr]
    spent = float(redis_client.hget(key, "ts"))
    admitted = sum(r.count("ok") for r in results)
    assert spent == 100.0 * admitted
    # each process syncs at least every near_cache (0.05 s: every 3rd call at 0.02 s): what
    # it admits from its cache meanwhile (two calls) and its last unsent call go over
    assert spent <= 1000.0 + 2 * 3 * 100.0
    assert len(heard) == 1
    with pytest.raises(BudgetExceededError) as refused:
        b.admit()
    assert refused.value.spent == spent


async def test_an_asyncio_store_refuses_by_the_totals_it_just_learned(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    """The reviewer's sequence with asyncio stores: B's admission that learns the fleet's 40
    is refused by that script call, with the fleet's total, and B hears the crossing."""
    stores = []
    for _ in range(2):
        client = redis.asyncio.Redis(port=redis_server.port)
        stores.append(RedisStateStore(client, prefix="acrossing", clock=lambda: NOW))
    config = CircuitBreakerConfig(token_budget=25)
    a, b = (CircuitBreaker("acap", config, store=s, clock=FakeClock()) for s in stores)
    heard = _budget_events(b)

    async def turn(breaker: CircuitBreaker) -> str:
        try:
            permit = await breaker.aadmit()
        except BudgetExceededError:
            return "refused"
        breaker.spend(10)
        await breaker.arecord_success(permit)
        return "ok"

    assert [await turn(x) for x in (a, a, b, a, a)] == ["ok"] * 4 + ["refused"]
    with pytest.raises(BudgetExceededError) as refused:
        await b.aadmit()
    assert refused.value.spent == 40.0
    assert float(redis_client.hget("acrossing:{acap}", "ts")) == 40.0
    assert len(heard) == 1
    for store in stores:
        await store.client.aclose()


async def test_a_cancelled_admission_counts_its_tokens_once(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    """A task cancelled while its admission (carrying 30 tokens) is in Redis: the script ran
    and counted them; they are not sent again with the next call."""
    from tests.test_hardening_storage import GatedConnection

    pool = redis.asyncio.ConnectionPool(port=redis_server.port, connection_class=GatedConnection)
    client = redis.asyncio.Redis(connection_pool=pool)
    store = RedisStateStore(client, prefix="cancelled", clock=lambda: NOW)
    breaker = CircuitBreaker("c", CircuitBreakerConfig(token_budget=1000), store=store)
    key = store.keys("c")[0]
    await breaker.arecord_success(await breaker.aadmit())
    breaker.spend(30)
    GatedConnection.gate, sent = asyncio.Event(), GatedConnection.sent
    try:
        admission = asyncio.create_task(breaker.aadmit())
        await auntil(lambda: GatedConnection.sent > sent)  # the script runs; its reply held
        admission.cancel()
        with pytest.raises(asyncio.CancelledError):
            await admission
        assert float(redis_client.hget(key, "ts")) == 30.0
        GatedConnection.gate.set()
        await auntil(lambda: not breaker._alink.unsent and breaker.budget["spent"] == 30.0)  # type: ignore[union-attr]
    finally:
        GatedConnection.gate = None
    await breaker.arecord_success(await breaker.aadmit())
    await breaker.asnapshot()
    assert float(redis_client.hget(key, "ts")) == 30.0  # counted once
    assert breaker.budget["spent"] == 30.0
    await client.aclose(close_connection_pool=True)


# -- listing (status --redis): a script call per page -------------------------------------


def _many_circuits(client: redis.Redis, prefix: str, count: int) -> RedisStateStore:
    store = RedisStateStore(client, prefix=prefix)  # the listing reads the server's time
    pipe = client.pipeline(transaction=False)
    for index in range(count):
        fields = {"state": "CLOSED", "gen": 0, "seq": 0, "fc": 0, "sc": 0, "held": "0"}
        pipe.hset(store.keys(f"c:{index}")[0], mapping=fields)
    pipe.execute()
    return store


def test_listing_reads_a_page_per_script_call(redis_server: RedisServer) -> None:
    """3,000 circuits, mixed states and odd names, listed in a handful of commands (not one
    per circuit), exactly as the per-key reads list them."""
    client = redis.Redis(
        connection_pool=redis.ConnectionPool(
            port=redis_server.port, connection_class=CountingConnection
        )
    )
    store = _many_circuits(client, "listed", 3000)
    odd = ["é 名前", "a:b:{c}", "12:34", "x\x00y", "%7B"]
    trip = CircuitBreakerConfig(failure_threshold=1, reset_timeout=60, requests_per_minute=60)
    for name in odd:
        breaker = CircuitBreaker(name, trip, store=store)
        breaker.record(breaker.admit(), Outcome.FAILURE)
    CircuitBreaker("held", trip, store=store).force_open()
    client.hset(store.keys("garbage")[0], mapping={"state": "NOPE"})
    CountingConnection.sent = 0
    listed = store.circuits()
    assert CountingConnection.sent <= 5
    assert len(listed) == 3000 + len(odd) + 1
    assert listed["held"]["retry_after"] is None
    assert listed["é 名前"]["state"] == "OPEN"
    assert 0 < listed["é 名前"]["retry_after"] <= 60.0
    assert listed["a:b:{c}"]["throttle"]["requests_remaining"] is not None
    seconds, micros = client.time()
    per_key: dict[str, Any] = {}
    store._scan_pages(client, "listed:{*}", seconds + micros / 1e6, per_key)
    assert _timeless(listed) == _timeless(dict(sorted(per_key.items())))


def _timeless(listed: dict[str, Any]) -> dict[str, Any]:
    """A listing without the seconds that depend on when it was read."""
    return {
        name: {**view, "retry_after": view["retry_after"] is None, "throttle": None}
        for name, view in listed.items()
    }


def test_listing_through_a_client_that_decodes_replies(redis_server: RedisServer) -> None:
    client = redis.Redis(port=redis_server.port, decode_responses=True)
    store = _many_circuits(client, "decoded", 50)
    CircuitBreaker("é", CircuitBreakerConfig(), store=store).force_open()
    listed = store.circuits()
    assert len(listed) == 51
    assert listed["é"]["state"] == "OPEN"


def test_garbage_budget_fields_start_the_budgets_afresh(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    """Foreign or corrupt budget fields never stall calls: they are read as nothing spent."""
    config = CircuitBreakerConfig(token_budget=100, retry_budget=0.0, retry_budget_floor=1.0)
    (breaker,) = _fleet(redis_server.port, "garbage", config, processes=1)
    breaker.record_success(breaker.admit())
    key = breaker.store.keys("garbage")[0]  # type: ignore[union-attr]
    for rb in ("nonsense", "1:nan:inf,x:y:z", "9" * 400 + ":1:1", ":::,,,"):
        redis_client.hset(key, mapping={"rb": rb, "ts": "nan", "tw": "1e300"})
        CLOCKS[breaker].advance(1.0)  # a sync with deposits, which reads the window
        breaker.record_success(breaker.admit())
        assert breaker.budget["spent"] == 0.0
        assert breaker.retry_budget["balance"] == 10.0  # type: ignore[index]
    assert breaker.store.available  # type: ignore[union-attr]


def test_a_valkey_client_shares_the_budgets(redis_server: RedisServer) -> None:
    """A valkey.Valkey store and a redis-py store spend from one cap."""
    import valkey

    theirs = valkey.Valkey(port=redis_server.port, socket_timeout=1)
    config = CircuitBreakerConfig(token_budget=100)
    store = RedisStateStore(theirs, prefix="budgets", clock=lambda: NOW)
    a = CircuitBreaker("vk", config, store=store)
    (b,) = _fleet(redis_server.port, "vk", config, processes=1)
    a.record_success(a.admit())
    a.spend(60)
    a.record_success(a.admit())  # carries the 60
    b.record_success(b.admit())
    b.spend(60)
    with pytest.raises(BudgetExceededError):
        b.admit()
    with pytest.raises(BudgetExceededError) as refused:
        a.admit()  # the script call that learns b's 60 (sent with b's refusal) refuses
    assert refused.value.spent == 120.0
    theirs.close()
