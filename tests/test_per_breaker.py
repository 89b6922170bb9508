"""What one breaker costs: GC-tracked objects, reference cycles, exact counts without
parsing anything (issue: per-breaker cost). Bounded by counts, never by time."""

from __future__ import annotations

import gc
import itertools
import threading
import weakref
from collections.abc import Iterator

import pytest

from llm_circuit_breaker import BreakerRegistry, CircuitBreaker, CircuitState, circuit_breaker
from llm_circuit_breaker._core.state import BreakerCore, Outcome
from llm_circuit_breaker.breaker import registry as registry_module
from llm_circuit_breaker.breaker.circuit import LocalCircuit
from llm_circuit_breaker.config import DEFAULT_CONFIG, CircuitBreakerConfig
from llm_circuit_breaker.errors import CircuitOpenError
from llm_circuit_breaker.storage.memory import Cell, MemoryStateStore
from llm_circuit_breaker.testing import FakeClock

BREAKERS = 500


@pytest.fixture
def no_collector() -> Iterator[None]:
    """Only reference counts free objects while a test runs."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _tracked_per_breaker(make: object) -> float:
    kept = []
    gc.collect()
    before = len(gc.get_objects())
    for i in range(BREAKERS):
        kept.append(make(i))  # type: ignore[operator]
    gc.collect()
    return (len(gc.get_objects()) - before) / BREAKERS


def test_a_registry_breaker_holds_few_gc_tracked_objects() -> None:
    registry = BreakerRegistry()
    registry.get_or_create("warm")
    assert _tracked_per_breaker(lambda i: registry.get_or_create(f"svc-{i}")) <= 12


def test_a_used_breaker_stays_small_too() -> None:
    def make(i: int) -> CircuitBreaker:
        breaker = CircuitBreaker(f"svc-{i}")
        breaker.record_success(breaker.admit())
        breaker.record(breaker.admit(), Outcome.FAILURE)
        assert breaker.stats.calls == 2  # a read makes nothing that stays
        return breaker

    make(-1)
    assert _tracked_per_breaker(make) <= 12


def test_breakers_made_without_a_config_share_the_defaults() -> None:
    registry = BreakerRegistry()
    one, two = registry.get_or_create("one"), CircuitBreaker("two")
    assert one.config is two.config is DEFAULT_CONFIG


@pytest.mark.usefixtures("no_collector")
def test_an_idle_or_used_breaker_is_freed_by_reference_counts() -> None:
    breaker = CircuitBreaker("svc")
    freed = weakref.ref(breaker)
    breaker.record_success(breaker.admit())
    breaker.record(breaker.admit(), Outcome.FAILURE)
    breaker.template = "svc"
    del breaker
    assert freed() is None


@pytest.mark.usefixtures("no_collector")
def test_an_evicted_scoped_breaker_is_freed_by_reference_counts() -> None:
    registry = BreakerRegistry(max_breakers=4)

    @circuit_breaker("tenant:{tenant}", registry=registry)
    def call(tenant: int) -> int:
        return tenant

    call(0)
    first = weakref.ref(registry.get("tenant:0"))
    for tenant in range(1, 40):
        call(tenant)
    assert len(registry) <= 5
    assert first() is None


def test_a_scope_costs_its_breaker_alone() -> None:
    """One shell for every scope of a decoration: a scope adds its breaker, not a shell."""
    registry = BreakerRegistry()

    @circuit_breaker("tenant:{tenant}", registry=registry)
    def call(tenant: int) -> int:
        return tenant

    @circuit_breaker("tenant-async:{tenant}", registry=registry)
    async def acall(tenant: int) -> int:
        return tenant

    def scope_of_coroutine(i: int) -> None:
        with pytest.raises(StopIteration):
            acall(i).send(None)

    call(-1)
    scope_of_coroutine(-1)
    assert _tracked_per_breaker(call) <= 12
    assert _tracked_per_breaker(scope_of_coroutine) <= 12


@pytest.mark.usefixtures("no_collector")
def test_cycling_scopes_keeps_a_bounded_number_of_breakers_alive() -> None:
    registry = BreakerRegistry(max_breakers=4)

    @circuit_breaker("tenant:{tenant}", registry=registry)
    def call(tenant: int) -> int:
        return tenant

    alive = []
    for _ in range(3):
        for tenant in range(100):
            call(tenant)
            alive.append(weakref.ref(registry.get(f"tenant:{tenant}")))
    assert len(registry) <= 5
    # the registry's breakers, and at most max(8, max_breakers / 8) more the cache let go late
    assert sum(ref() is not None for ref in alive) <= 4 + 8 + 1


def test_reading_the_counts_changes_none_of_them() -> None:
    breaker = CircuitBreaker("svc", DEFAULT_CONFIG)
    for _ in range(3):
        breaker.record_success(breaker.admit())
    breaker.record(breaker.admit(), Outcome.IGNORED)
    for _ in range(5):
        assert (breaker.stats.successes, breaker.stats.ignored, breaker.stats.calls) == (3, 1, 4)
    breaker._restart()
    assert (breaker.stats.successes, breaker.stats.calls, breaker.stats.rejections) == (0, 0, 0)
    breaker.record_success(breaker.admit())
    assert breaker.stats.successes == 1


def test_counts_read_while_threads_count_stay_exact() -> None:
    breaker = CircuitBreaker("svc")
    breaker.record(breaker.admit(), Outcome.FAILURE)  # the slow counts exist too
    breaker.record_success(breaker.admit())  # clean again: successes take the lock-free path
    done = threading.Event()
    seen: list[int] = []

    def read() -> None:
        while not done.is_set():
            seen.append(breaker.stats.successes)

    def work() -> None:
        for _ in range(20_000):
            breaker.record_success(breaker.admit())

    reader = threading.Thread(target=read)
    reader.start()
    workers = [threading.Thread(target=work) for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    done.set()
    reader.join()
    assert breaker.stats.successes == 80_001
    assert seen == sorted(seen)  # a read never went back
    assert breaker.stats.failures == 1


def test_the_local_circuit_and_the_memory_store_hold_a_circuit_alike() -> None:
    store = MemoryStateStore(clock=lambda: 100.0)
    config = CircuitBreakerConfig()
    store.snapshot("svc", config)
    cell = store._cores["svc"]
    local = CircuitBreaker("svc")._local
    # the store's cell holds a core; the breaker's circuit is one (no object apart)
    assert type(cell) is Cell and type(cell.core) is BreakerCore
    assert isinstance(local, BreakerCore) and local.core is local
    # Neither makes a throttle before it has something to say ...
    assert cell.throttle is None and local.throttle is None
    before = store.snapshot("svc", config).throttle
    assert before is not None and before["paused_for"] == 0.0
    # ... and both make it for a rate limit.
    admission = store.admit("svc", config)
    store.record("svc", config, admission.permit, Outcome.THROTTLED, None, "", pause=5.0)
    assert cell.throttle is not None and cell.throttle.paused_until == 105.0
    breaker = CircuitBreaker("svc", clock=lambda: 100.0)
    breaker.record(breaker.admit(), Outcome.THROTTLED, hint=5.0)
    assert breaker._local.throttle is not None
    assert breaker.throttle["paused_for"] == pytest.approx(5.0, abs=0.5)


def test_a_breaker_called_once_makes_no_success_counter() -> None:
    """Admitted lock-free from the first call; the first success is counted in an int under
    a lock, the second makes the lock-free counter (going on from that count), which the
    later ones bump without a lock."""
    breaker = CircuitBreaker("svc")
    local = breaker._local
    assert breaker.idle
    assert local.lock_free_permit >= 0 and local.clean_permit < 0  # no success counter yet
    breaker.record_success(breaker.admit())
    assert local.clean_permit < 0 and local._successes == 1 and breaker.idle
    assert breaker.stats.successes == 1
    breaker.record_success(breaker.admit())
    assert local.clean_permit >= 0 and isinstance(local._successes, itertools.count)
    breaker.record_success(breaker.admit())
    assert breaker.stats.successes == 3 and breaker.stats.calls == 3


def test_a_new_breaker_with_a_pacing_throttle_takes_the_slow_path_from_its_first_call() -> None:
    clock = FakeClock(start=100.0)
    breaker = CircuitBreaker("svc", CircuitBreakerConfig(requests_per_minute=60), clock=clock)
    assert breaker._local.lock_free_permit < 0
    for _ in range(3):
        breaker.record_success(breaker.try_admit())
    assert sum(breaker.wait_histogram.counts) == 3  # every admission asked the throttle
    assert breaker.stats.successes == 3


def test_a_counter_made_before_the_first_success_opens_the_clean_path_too() -> None:
    """A store's link makes the success counter with the breaker: the first clean success
    decided locally opens the clean path (no success takes the lock after it)."""
    breaker = CircuitBreaker("svc")
    local = breaker._local
    local.success_counter()  # what a store's link does
    assert local.clean_permit < 0
    breaker.record_success(breaker.admit())
    assert local.clean_permit >= 0 and breaker.stats.successes == 1


def test_the_circuit_refreshes_its_lock_free_permits_as_its_core_does() -> None:
    """``LocalCircuit._refresh`` is the core's, inline, with no clean permit before the
    success counter is made: the two agree in every state once it is."""
    clock = FakeClock(start=100.0)
    configs = [
        CircuitBreakerConfig(failure_threshold=2, reset_timeout=5.0, success_threshold=1),
        CircuitBreakerConfig(failure_rate_threshold=0.5, minimum_calls=2, reset_timeout=5.0),
        CircuitBreakerConfig(slow_call_duration=1.0, failure_threshold=2, reset_timeout=5.0),
    ]
    for config in configs:
        breaker = CircuitBreaker("svc", config, clock=clock)
        local = breaker._local

        def agree(local: LocalCircuit = local) -> None:
            local._refresh()
            mine = (local.lock_free_permit, local.clean_permit)
            BreakerCore._refresh(local)
            assert (local.lock_free_permit, local.clean_permit) == mine
            local._refresh()

        local.success_counter()
        agree()
        for outcome in (Outcome.SUCCESS, Outcome.FAILURE, Outcome.FAILURE, Outcome.FAILURE):
            permit = breaker.try_admit()
            if permit >= 0:
                breaker.record(permit, outcome)
            agree()
        clock.advance(6.0)
        assert breaker.state is CircuitState.HALF_OPEN
        agree()
        breaker.record_success(breaker.admit())
        agree()
        breaker.force_open()
        agree()
        breaker.force_closed()
        agree()


def test_successes_reported_under_the_lock_make_the_counter_from_the_second() -> None:
    breaker = CircuitBreaker("svc", CircuitBreakerConfig(failure_threshold=100))
    local = breaker._local
    breaker.record(breaker.admit(), Outcome.FAILURE)  # a failure pending: reports take the lock
    breaker.record(breaker.admit(), Outcome.FAILURE)
    local.tally(Outcome.SUCCESS)
    assert local._successes == 1
    local.tally(Outcome.SUCCESS)
    assert isinstance(local._successes, itertools.count)
    local.tally(Outcome.SUCCESS)
    assert breaker.stats.successes == 3 and breaker.stats.failures == 2


def test_a_breaker_that_only_fails_or_is_ignored_makes_no_success_counter() -> None:
    breaker = CircuitBreaker("svc", CircuitBreakerConfig(failure_threshold=100))
    for _ in range(5):
        breaker.record(breaker.admit(), Outcome.FAILURE)
        breaker.record(breaker.admit(), Outcome.IGNORED)
    assert breaker._local._successes == 0
    assert (breaker.stats.failures, breaker.stats.ignored, breaker.stats.calls) == (5, 5, 10)


def test_a_success_makes_no_refusal_counter_a_failure_does() -> None:
    """The fail-fast path's counter is made by a report that can open the circuit."""
    from llm_circuit_breaker.breaker.telemetry import NOT_OPEN_YET

    breaker = CircuitBreaker("svc", CircuitBreakerConfig(failure_threshold=1))
    breaker.record_success(breaker.admit())
    assert breaker._local._rejections is NOT_OPEN_YET
    breaker.record(breaker.admit(), Outcome.FAILURE, error=ConnectionError("down"))
    assert breaker._local._rejections is not NOT_OPEN_YET
    with pytest.raises(CircuitOpenError):
        breaker.admit()
    assert breaker.stats.rejections == 1


def test_counts_stay_exact_while_threads_arm_the_lock_free_path() -> None:
    """Successes counted in an int under a lock, then by the counter made while other
    threads still count in the int: not one lost, however the threads interleave."""
    for _ in range(20):
        breaker = CircuitBreaker("svc")
        start = threading.Barrier(4)

        def work(breaker: CircuitBreaker = breaker, start: threading.Barrier = start) -> None:
            start.wait()
            for _ in range(200):
                breaker.record_success(breaker.admit())

        threads = [threading.Thread(target=work) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert breaker.stats.successes == 800 and breaker.stats.calls == 800


def test_breakers_share_a_few_striped_locks_and_count_exactly_under_threads() -> None:
    """A breaker's first call makes no lock: its circuit takes one of a few shared ones, which
    guard a few lines each and never nest, so breakers that share one neither deadlock nor
    lose a count."""
    breakers = [CircuitBreaker(f"svc-{i}", CircuitBreakerConfig(failure_threshold=10**9))
                for i in range(300)]  # fmt: skip
    for breaker in breakers:
        breaker.record_success(breaker.admit())
    locks = {id(breaker._local.locked()) for breaker in breakers}
    assert len(locks) <= 67

    rounds = 50

    def work(offset: int) -> None:
        for n in range(rounds):
            for breaker in breakers[offset::4]:
                outcome = Outcome.FAILURE if n % 2 else Outcome.SUCCESS
                breaker.record(breaker.admit(), outcome)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for breaker in breakers:
        stats = breaker.stats
        assert stats.calls == rounds + 1
        assert stats.failures == rounds // 2


def _counting_breakers(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    made: list[str] = []
    init = CircuitBreaker.__init__

    def counted(self: CircuitBreaker, name: str, *args: object, **kwargs: object) -> None:
        made.append(name)
        init(self, name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(CircuitBreaker, "__init__", counted)
    # the registry's own way to make one, through the class (and so counted) here
    monkeypatch.setattr(registry_module, "new_breaker", _through_the_class)
    return made


def _through_the_class(
    name: str, config: CircuitBreakerConfig | None = None, clock: object = None
) -> CircuitBreaker:
    return CircuitBreaker(name, config, clock=clock)  # type: ignore[arg-type]


def test_cycling_scopes_reuses_the_dropped_breaker_as_a_fresh_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Past ``max_breakers`` the breaker the registry drops, held by nothing else, becomes the
    new scope's: no breaker made per miss, and nothing tells it from a fresh one."""
    made = _counting_breakers(monkeypatch)
    registry = BreakerRegistry(max_breakers=4)
    used: list[CircuitBreaker] = []

    @circuit_breaker("tenant:{tenant}", registry=registry)
    def call(tenant: int) -> int:
        if tenant % 3 == 0 and tenant not in failed:
            failed.add(tenant)
            raise ConnectionError("down")
        used.append(registry.get(f"tenant:{tenant}"))
        return tenant

    failed: set[int] = set()
    for tenant in range(100):
        if tenant % 3 == 0:  # a failure, then a success: idle again, its counts not zero
            with pytest.raises(ConnectionError):
                call(tenant)
        assert call(tenant) == tenant
        breaker = used.pop()
        assert breaker.name == f"tenant:{tenant}" and breaker.template == "tenant:{tenant}"
        stats = breaker.stats
        assert stats.successes == 1 and stats.failures == (tenant % 3 == 0)
        assert stats.calls == 1 + (tenant % 3 == 0)
    del breaker
    assert len(registry) == 4
    assert len(made) <= 4 + 1  # the first four, and at most one more
    assert [b.name for b in registry.breakers()] == [f"tenant:{t}" for t in range(96, 100)]


def test_a_breaker_held_elsewhere_or_listened_to_is_never_reused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    made = _counting_breakers(monkeypatch)
    registry = BreakerRegistry(max_breakers=2)

    @circuit_breaker("tenant:{tenant}", registry=registry)
    def call(tenant: int) -> int:
        return tenant

    call(0)
    held = registry.get("tenant:0")
    call(1)
    registry.get("tenant:1").add_listener(lambda change: None)
    for tenant in range(2, 10):
        call(tenant)
    assert held.name == "tenant:0" and held.stats.calls == 1
    assert "tenant:0" not in registry and "tenant:1" not in registry
    # 0 and 1 are not reused: 2 and 3 are made; from then on each dropped one is reused
    assert made == ["tenant:0", "tenant:1", "tenant:2", "tenant:3"]


def test_a_closed_circuit_holds_no_float_of_its_own() -> None:
    """``open_until`` while not open is one float shared by every circuit and core (24 B a
    breaker otherwise), made so again when an opened circuit closes."""
    clock = FakeClock()
    first, second = CircuitBreaker("a", clock=clock), CircuitBreaker("b", clock=clock)
    assert first._local.open_until is second._local.open_until
    assert BreakerCore(DEFAULT_CONFIG).open_until is first._local.open_until
    first.force_open()
    first.force_closed()
    assert first.state is CircuitState.CLOSED
    assert first._local.open_until is second._local.open_until


@pytest.mark.parametrize(
    "config",
    [
        None,
        CircuitBreakerConfig(failure_threshold=2),
        CircuitBreakerConfig(failure_rate_threshold=0.5, minimum_calls=4),
        CircuitBreakerConfig(requests_per_minute=60),
        CircuitBreakerConfig(token_budget=1_000),
        CircuitBreakerConfig(max_concurrent=2),
    ],
)
def test_a_breaker_the_registry_makes_is_the_one_its_class_makes(
    config: CircuitBreakerConfig | None,
) -> None:
    """``new_breaker`` (the registry's way to make one) sets every slot of the breaker and its
    local circuit as ``CircuitBreaker(name, config, clock=...)`` does."""
    from llm_circuit_breaker.breaker.breaker import new_breaker

    clock = FakeClock()
    for with_clock in (None, clock):
        made, reference = (
            new_breaker("n", config, with_clock),
            CircuitBreaker("n", config, clock=with_clock),
        )
        for slot in CircuitBreaker.__slots__:
            if slot == "__weakref__":
                continue
            mine, theirs = getattr(made, slot), getattr(reference, slot)
            if slot in ("_local", "_circuit", "_enter", "_record_success", "_limit", "_budget"):
                assert (mine is None) == (theirs is None), slot
            else:
                assert mine == theirs, slot
        assert made._circuit is made._local
        for slot in (*BreakerCore.__slots__, *LocalCircuit.__slots__):
            mine, theirs = getattr(made._local, slot), getattr(reference._local, slot)
            if slot in ("_window", "throttle"):
                assert type(mine) is type(theirs), slot
            elif slot == "source":
                assert mine.now == theirs.now and mine.sleep == theirs.sleep
            else:
                assert mine == theirs, slot
    for bad in ("", 3):
        with pytest.raises(ValueError):
            new_breaker(bad, config)  # type: ignore[arg-type]
