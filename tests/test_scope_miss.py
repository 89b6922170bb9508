"""A scope's miss and a breaker's creation through the registry: the work each does, counted
(lookups, formatting, lock acquisitions, objects kept), never timed (issue: per-breaker
cost)."""

from __future__ import annotations

import functools
import inspect
import threading
import weakref
from typing import Any

import pytest

from llm_circuit_breaker import BreakerRegistry, CircuitBreaker, circuit_breaker
from llm_circuit_breaker.breaker import registry as registry_module
from llm_circuit_breaker.breaker.registry import ScopeCache
from llm_circuit_breaker.strategies.kinds import CallableKind, kind_of


class Key:
    """A call's argument that counts how often it is hashed and formatted into a name."""

    def __init__(self, value: int) -> None:
        self.value = value
        self.hashed = self.formatted = 0

    def __hash__(self) -> int:
        self.hashed += 1
        return hash(self.value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Key) and other.value == self.value

    def __format__(self, spec: str) -> str:
        self.formatted += 1
        return f"k{self.value}"


class CountingLock:
    """The registry's lock, its acquisitions counted."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.acquired = 0

    def acquire(self, *args: Any) -> bool:
        self.acquired += 1
        return self._lock.acquire(*args)

    def release(self) -> None:
        self._lock.release()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def test_a_scope_s_first_call_looks_its_key_up_once_and_formats_its_name_once() -> None:
    """The miss is found by the lookup itself: the key hashed for that lookup and for the
    cache's store, the name formatted once; a hit hashes it once and formats nothing."""
    registry = BreakerRegistry()

    @circuit_breaker("tenant:{tenant}", registry=registry)
    def call(tenant: Key) -> str:
        return "ok"

    key = Key(1)
    assert call(key) == "ok"
    assert (key.hashed, key.formatted) == (2, 1)
    assert registry.get("tenant:k1").template == "tenant:{tenant}"
    assert call(key) == "ok" and call(tenant=key) == "ok"
    assert (key.hashed, key.formatted) == (4, 1)


def test_a_scope_s_miss_past_the_bound_takes_the_registry_s_lock_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    registry = BreakerRegistry(max_breakers=3)
    lock = CountingLock()
    registry._lock = lock  # type: ignore[assignment]
    made: list[str] = []
    init = CircuitBreaker.__init__

    def counted(self: CircuitBreaker, name: str, *args: Any, **kwargs: Any) -> None:
        made.append(name)
        init(self, name, *args, **kwargs)

    monkeypatch.setattr(CircuitBreaker, "__init__", counted)
    monkeypatch.setattr(  # the registry's own way to make one, through the class here
        registry_module,
        "new_breaker",
        lambda name, config=None, clock=None: CircuitBreaker(name, config, clock=clock),
    )

    @circuit_breaker("tenant:{tenant}", registry=registry)
    def call(tenant: int) -> int:
        return tenant

    for tenant in range(3):
        call(tenant)
    lock.acquired = 0
    for tenant in range(3, 30):  # every call a miss: the least recently used one reused
        assert call(tenant) == tenant
    assert lock.acquired == 27
    assert made == ["tenant:0", "tenant:1", "tenant:2"]
    assert [b.name for b in registry.breakers()] == ["tenant:27", "tenant:28", "tenant:29"]
    assert all(b.stats.calls == 1 for b in registry.breakers())


def test_a_refused_scope_is_never_cached() -> None:
    """What a decoration refuses for a scope's breaker (an asyncio store under a plain
    function, a call_timeout on one) is refused on every call, not once."""
    registry = BreakerRegistry()

    @circuit_breaker("tenant:{tenant}", registry=registry, call_timeout=1.0)
    def call(tenant: int) -> int:  # pragma: no cover - never runs
        return tenant

    for _ in range(3):
        with pytest.raises(TypeError, match="call_timeout applies to coroutine functions"):
            call(1)


def test_a_breaker_made_inline_while_an_observer_is_added_is_observed() -> None:
    """get_or_create makes a breaker under the lock that add_observer takes: a breaker made
    by one thread while another adds an observer is observed either way."""
    registry = BreakerRegistry()
    heard: set[str] = set()

    class Observer:
        def retried(self, breaker: Any, attempt: int, error: BaseException, delay: float) -> None:
            heard.add(breaker.name)

    start = threading.Barrier(2)

    def make() -> None:
        start.wait()
        for i in range(300):
            registry.get_or_create(f"svc-{i}")

    thread = threading.Thread(target=make)
    thread.start()
    start.wait()
    registry.add_observer(Observer())  # type: ignore[arg-type]
    thread.join()
    for breaker in registry.breakers():
        breaker.record_retry(1, ConnectionError("down"), 0.0)
    assert heard == {f"svc-{i}" for i in range(300)}


def test_a_decorated_function_s_breaker_is_the_registry_s() -> None:
    registry = BreakerRegistry()

    @circuit_breaker("svc", registry=registry)
    def call() -> int:
        return 1

    assert call() == 1
    assert call.breaker is registry.get("svc") is registry.get_or_create("svc")
    assert circuit_breaker("svc", registry=registry)(lambda: 2).breaker is call.breaker


async def _coroutine() -> None:
    return None


def _generator() -> Any:
    yield 1


async def _async_generator() -> Any:
    yield 1


def _plain() -> None:
    return None


class _Methods:
    async def coroutine(self) -> None:
        return None

    def __call__(self) -> Any:
        yield 1


@pytest.mark.parametrize(
    ("func", "kind"),
    [
        (_plain, CallableKind.PLAIN),
        (_coroutine, CallableKind.COROUTINE),
        (_generator, CallableKind.GENERATOR),
        (_async_generator, CallableKind.ASYNC_GENERATOR),
        (lambda: None, CallableKind.PLAIN),
        (_Methods().coroutine, CallableKind.COROUTINE),
        (functools.partial(_async_generator), CallableKind.ASYNC_GENERATOR),
        (_Methods(), CallableKind.GENERATOR),
        (_Methods, CallableKind.PLAIN),
        (len, CallableKind.PLAIN),
    ],
)
def test_kind_of_tells_every_kind_and_keeps_nothing(func: Any, kind: CallableKind) -> None:
    """A function's kind is read from its code at once: nothing remembered per function (no
    weak reference to it)."""
    assert kind_of(func) is kind
    assert kind_of(func) is kind
    if inspect.isfunction(func):
        assert weakref.getweakrefcount(func) == 0


@pytest.mark.skipif(
    not hasattr(inspect, "markcoroutinefunction"), reason="inspect marks from Python 3.12"
)
def test_kind_of_a_plain_function_marked_a_coroutine_function() -> None:
    def returns_awaitable() -> Any:
        return _coroutine()

    marked = inspect.markcoroutinefunction(returns_awaitable)  # type: ignore[attr-defined,unused-ignore]
    assert kind_of(marked) is CallableKind.COROUTINE


def test_a_store_given_to_a_registry_later_reaches_the_breakers_made_then() -> None:
    from llm_circuit_breaker.storage.memory import MemoryStateStore

    registry = BreakerRegistry()
    assert registry.get_or_create("before").store is None
    store = MemoryStateStore()
    registry.store = store
    assert registry.store is store
    assert registry.get_or_create("after").store is store

    @circuit_breaker("tenant:{tenant}", registry=registry)
    def call(tenant: int) -> int:
        return tenant

    assert call(1) == 1
    assert registry.get("tenant:1").store is store


def test_threads_cycling_scopes_past_the_bound_keep_every_key_on_its_own_breaker() -> None:
    """Four threads cycle overlapping scopes through a bound of 8 (a miss reuses the least
    recently used breaker when nothing holds it): nothing raises, the bound holds, and the
    cache keeps no key whose breaker went to another scope."""
    registry = BreakerRegistry(max_breakers=8)
    errors: list[BaseException] = []
    calls_per_thread = 3_000

    @circuit_breaker("tenant:{tenant}", registry=registry)
    def call(tenant: int) -> int:
        return tenant

    start = threading.Barrier(4)

    def cycle(offset: int) -> None:
        start.wait()
        try:
            for i in range(calls_per_thread):
                tenant = (i * 7 + offset) % 40
                if call(tenant) != tenant:  # pragma: no cover - the failure
                    raise AssertionError(tenant)
        except BaseException as exc:  # pragma: no cover - the failure
            errors.append(exc)

    threads = [threading.Thread(target=cycle, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert len(registry) <= 8 + 4  # the bound, give or take a miss per thread in flight
    held = [getattr(c.cell_contents, "__self__", c.cell_contents) for c in call.__closure__]  # type: ignore[attr-defined]
    cache = next(scopes for scopes in held if isinstance(scopes, ScopeCache))
    assert cache
    for key, breaker in list(cache.items()):
        assert breaker.name == f"tenant:{key}"
    for breaker in registry.breakers():
        assert breaker.template == "tenant:{tenant}" and breaker.stats.calls >= 1


def _renamed(breaker: CircuitBreaker, config: Any = None) -> bool:
    from llm_circuit_breaker.config import DEFAULT_CONFIG

    return breaker._renamed("new", DEFAULT_CONFIG if config is None else config)


def test_a_fresh_breaker_is_renamed_with_statistics_from_zero() -> None:
    from llm_circuit_breaker.config import CircuitBreakerConfig

    breaker = CircuitBreaker("old")
    for _ in range(3):  # counted clean successes: the lock-free counter made
        breaker.record_success(breaker.admit())
    breaker.template = "t:{x}"
    assert _renamed(breaker)
    assert breaker.name == breaker._local.name == "new" and breaker._local.template is None
    assert breaker.stats.calls == 0 and breaker.stats.successes == 0
    breaker.record_success(breaker.admit())
    assert breaker.stats.successes == 1
    # a config tracked per call (slow calls): an empty in-flight dict is nothing pending
    slow = CircuitBreakerConfig(slow_call_duration=5.0)
    tracked = CircuitBreaker("slow", slow)
    tracked.record_success(tracked.admit())
    assert tracked._local._inflight == {}
    assert _renamed(tracked, slow) and tracked.name == "new"


def test_a_renamed_breaker_counts_successes_from_zero_exactly_under_threads() -> None:
    import threading

    breaker = CircuitBreaker("old")
    breaker.record_success(breaker.admit())  # called once: its successes an int
    assert _renamed(breaker)
    local = breaker._local
    start = threading.Barrier(8)

    def calls() -> None:
        start.wait()
        for _ in range(500):
            breaker.record_success(breaker.admit())

    threads = [threading.Thread(target=calls) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert breaker.stats.successes == breaker.stats.calls == 4000
    from llm_circuit_breaker import Outcome

    breaker.record(breaker.admit(), Outcome.FAILURE)  # a failure still closes the clean path
    assert local.clean_permit < 0 and breaker.stats.failures == 1


@pytest.mark.parametrize(
    "spoil",
    [
        "opened_and_closed",
        "failure_pending",
        "listener",
        "weak_reference",
        "other_config",
        "held_circuit",
        "retry_budget",
        "throttle",
        "forgotten",
        "rate_window",
    ],
)
def test_a_breaker_that_keeps_more_than_counts_is_never_renamed(spoil: str) -> None:
    from llm_circuit_breaker import Outcome
    from llm_circuit_breaker.config import CircuitBreakerConfig

    config: Any = None
    if spoil == "rate_window":
        config = CircuitBreakerConfig(failure_rate_threshold=0.5, minimum_calls=5)
    breaker = CircuitBreaker("old", config)
    keep: list[Any] = []
    if spoil == "opened_and_closed":
        breaker.force_open()
        breaker.force_closed()
    elif spoil == "failure_pending":
        breaker.record(breaker.enter(), Outcome.FAILURE)  # type: ignore[arg-type]
    elif spoil == "listener":
        breaker.add_listener(lambda change: None)
    elif spoil == "weak_reference":
        keep.append(weakref.ref(breaker))
    elif spoil == "other_config":
        config = CircuitBreakerConfig(failure_threshold=2)
    elif spoil == "held_circuit":
        keep.append(breaker._local)
    elif spoil == "retry_budget":
        breaker._budgets()
        breaker._budget.retry = object()  # type: ignore[union-attr]
    elif spoil == "throttle":
        assert breaker._local.made_throttle() is not None  # as the first rate-limit header
    elif spoil == "forgotten":
        breaker._local.rejoin = lambda: None
    assert not _renamed(breaker, config)
    assert breaker.name == "old"


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"failure_rate_threshold": 0.5, "minimum_calls": 5},
        {"slow_call_duration": 2.0},
        {"requests_per_minute": 60},
        {"requests_per_minute": 60, "throttle": False},
        {"enabled": False},
    ],
)
def test_a_local_circuit_s_core_is_set_as_a_breaker_core_sets_it(fields: dict[str, Any]) -> None:
    """The local circuit sets its core's slots itself: each as ``BreakerCore.__init__`` sets
    it, the lock-free permits as a refresh would."""
    from llm_circuit_breaker._core.state import BreakerCore
    from llm_circuit_breaker.config import CircuitBreakerConfig

    config = CircuitBreakerConfig(**fields)
    local = CircuitBreaker("c", config)._local
    core = BreakerCore(config)
    for slot in BreakerCore.__slots__:
        mine, theirs = getattr(local, slot), getattr(core, slot)
        if slot == "_window":
            assert type(mine) is type(theirs)
        elif slot in ("lock_free_permit", "paced", "clean_permit"):
            continue
        else:
            assert mine == theirs, slot
    paced = local.throttle is not None and local.throttle.active
    assert local.paced is paced
    assert local.clean_permit == -1  # no clean permit before the success counter is made
    saved = local.lock_free_permit
    local._refresh()
    assert local.lock_free_permit == saved


def test_first_successes_racing_on_fresh_breakers_are_each_counted() -> None:
    """Threads report the first successes of the same fresh breakers at once (the first is
    an int bumped under the counting lock, the second makes the counter): none is lost."""
    breakers = [CircuitBreaker(f"b{i}") for i in range(200)]
    threads, rounds = 4, 3
    start = threading.Barrier(threads)

    def report() -> None:
        start.wait()
        for _ in range(rounds):
            for breaker in breakers:
                breaker.record_success(breaker.admit())

    workers = [threading.Thread(target=report) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert [b.stats.successes for b in breakers] == [threads * rounds] * len(breakers)


def test_without_reference_counts_a_miss_past_the_bound_makes_a_breaker() -> None:
    """An interpreter without ``sys.getrefcount`` (PyPy) imports the package and cycles scopes
    past ``max_breakers`` by making breakers, never by reusing one it cannot prove idle."""
    import subprocess
    import sys

    script = """
import sys
del sys.getrefcount
from llm_circuit_breaker import BreakerRegistry, circuit_breaker
registry = BreakerRegistry(max_breakers=4)
@circuit_breaker("tenant:{tenant}", registry=registry)
def call(tenant: int) -> int:
    return tenant
for i in range(12):
    assert call(i) == i
assert len(registry.scope("tenant")) <= 4
assert registry.get("tenant:11").stats.successes == 1
print("ok")
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "ok"
