"""Adversarial probes of the per-breaker cost work (issue 29): scoped breakers dropped,
renamed and made again under a tiny ``max_breakers``, threads racing misses, counts read
across the lock-free transitions, forked children. Bounded by counts, never by time."""

from __future__ import annotations

import os
import threading
from typing import Any

import pytest

from llm_circuit_breaker import (
    BreakerRegistry,
    CircuitOpenError,
    CircuitState,
    circuit_breaker,
)
from llm_circuit_breaker.breaker.registry import ScopeCache


def _cache_of(wrapper: Any) -> ScopeCache:
    """The scope cache a scoped decoration's shell reads."""
    held = [
        getattr(cell.cell_contents, "__self__", cell.cell_contents) for cell in wrapper.__closure__
    ]
    return next(h for h in held if isinstance(h, ScopeCache))


def _in_threads(target: Any, count: int, *, numbered: bool = True) -> None:
    """Run ``target`` (given its number when ``numbered``) in ``count`` threads; wait for all."""
    threads = [threading.Thread(target=target, args=(n,) if numbered else ()) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def _scoped(registry: BreakerRegistry, template: str = "t:{k}", **fields: Any) -> Any:
    @circuit_breaker(template, registry=registry, **fields)
    def call(k: Any, fail: bool = False) -> Any:
        if fail:
            raise RuntimeError("provider down")
        return k

    return call


# -- a dropped breaker that something still holds --------------------------------------------


def test_two_decorations_of_one_template_agree_on_a_scope_dropped_and_made_again() -> None:
    """Two decorations name ``t:1``; the registry drops it (past ``max_breakers``) while the
    second one's cache still holds it. When the first makes ``t:1`` again, both must guard
    their calls with the one breaker the registry lists: failures seen through the second
    open the circuit the first (and ``registry.get``) sees."""
    registry = BreakerRegistry(max_breakers=1)
    first = _scoped(registry, failure_threshold=2)
    second = _scoped(registry, failure_threshold=2)
    assert first(1) == 1 and second(1) == 1  # both caches hold t:1
    assert first(2) == 2  # t:1 dropped: the bound is 1
    assert "t:1" not in registry
    assert first(1) == 1  # t:1 again
    for _ in range(2):
        with pytest.raises(RuntimeError):
            second(1, fail=True)
    assert registry.get("t:1").state is CircuitState.OPEN
    with pytest.raises(CircuitOpenError):
        first(1)


def test_a_failure_of_a_call_in_flight_when_its_scope_dropped_is_not_lost() -> None:
    """A call of ``t:1`` is in flight when ``t:1`` is dropped for another scope (it was
    CLOSED and clean then). Its failure counts on the breaker later calls of ``t:1`` get."""
    registry = BreakerRegistry(max_breakers=1)

    @circuit_breaker("t:{k}", registry=registry, failure_threshold=2)
    def call(k: int, then: int | None = None, fail: bool = False) -> int:
        if then is not None:
            call(then)  # another scope's first call while this one is in flight
        if fail:
            raise RuntimeError("provider down")
        return k

    with pytest.raises(RuntimeError):
        call(1, then=2, fail=True)
    with pytest.raises(RuntimeError):
        call(1, fail=True)
    assert registry.get("t:1").state is CircuitState.OPEN
    with pytest.raises(CircuitOpenError):
        call(1)


def test_a_scope_s_breaker_is_never_named_after_another_argument_s_cache_entry() -> None:
    """An unhashable argument's breaker is cached by its name; a later call whose (hashable)
    argument equals that name must still get the breaker its own name says."""
    registry = BreakerRegistry()
    call = _scoped(registry)
    assert call(["a"]) == ["a"]  # cached under its name, "t:['a']"
    assert call("t:['a']") == "t:['a']"
    assert "t:t:['a']" in registry
    cache = _cache_of(call)
    assert sorted(b.name for b in cache.values()) == ["t:['a']", "t:t:['a']"]


# -- threads racing misses under a tiny bound -------------------------------------------------


@pytest.mark.parametrize("bound", [1, 2, 3])
def test_threads_racing_misses_keep_one_breaker_per_name_and_the_bound(bound: int) -> None:
    """Four threads, two decorations of one template, six scopes through a bound of 1-3,
    some calls failing (below the threshold): nothing raises from the LRU, every cached
    breaker is named after its key, every registered name is the breaker both caches give,
    and the bound holds (give or take a miss per thread)."""
    registry = BreakerRegistry(max_breakers=bound)
    first, second = (
        _scoped(registry, failure_threshold=10_000),
        _scoped(registry, failure_threshold=10_000),
    )
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def run(offset: int) -> None:
        start.wait()
        try:
            for i in range(1_500):
                k = (i * 5 + offset) % 6
                call = first if (i + offset) % 2 else second
                try:
                    if call(k, fail=i % 7 == 0) != k:  # pragma: no cover - the failure
                        raise AssertionError(k)
                except RuntimeError as exc:
                    if str(exc) != "provider down":  # pragma: no cover - the failure
                        raise
        except BaseException as exc:  # pragma: no cover - the failure
            errors.append(exc)

    _in_threads(run, 4)
    assert not errors
    assert set(registry) == set(registry._scoped)
    # a breaker with failures pending is never dropped: those may stay past the bound
    assert len([b for b in registry.breakers() if b.idle]) <= bound + 4
    for call in (first, second):
        for key, breaker in list(_cache_of(call).items()):
            assert breaker.name == f"t:{key}"
            if breaker.name in registry:
                assert registry.get(breaker.name) is breaker
    for k in range(6):  # a call of each scope now meets the registry's breaker
        assert first(k) == k and second(k) == k
        assert _cache_of(first)[k] is _cache_of(second)[k] is registry.get(f"t:{k}")


def test_successes_of_threads_racing_a_fresh_breaker_s_first_calls_are_each_counted() -> None:
    """The first success is an int under a lock, the second makes the lock-free counter:
    eight threads start together on fresh breakers, round after round; every success is
    counted exactly once."""
    registry = BreakerRegistry()
    threads_n, calls, rounds = 8, 50, 20
    for round_ in range(rounds):

        @circuit_breaker(f"fresh-{round_}", registry=registry)
        def call() -> int:
            return 1

        start = threading.Barrier(threads_n)

        def run(start: threading.Barrier = start) -> None:
            start.wait()
            for _ in range(calls):
                call()

        _in_threads(run, threads_n, numbered=False)
        stats = call.breaker.stats
        assert (stats.successes, stats.calls) == (threads_n * calls, threads_n * calls)


def test_control_and_listeners_on_a_breaker_whose_clean_path_is_open() -> None:
    """Once successes run lock-free, force_open refuses the next call, a listener added then
    hears every later change, force_closed and reset give the clean path back, and the
    counts stay exact."""
    registry = BreakerRegistry()

    @circuit_breaker("armed", registry=registry)
    def call() -> str:
        return "ok"

    for _ in range(3):
        call()
    breaker = call.breaker
    assert breaker._local.clean_permit >= 0  # armed
    heard: list[tuple[str, str]] = []
    breaker.add_listener(lambda change: heard.append((change.old.value, change.new.value)))
    breaker.force_open()
    with pytest.raises(CircuitOpenError):
        call()
    breaker.force_closed()
    assert call() == "ok"
    breaker.force_open()
    breaker.reset()
    assert call() == "ok" and call() == "ok"
    assert heard == [("CLOSED", "OPEN"), ("OPEN", "CLOSED"), ("CLOSED", "OPEN"), ("OPEN", "CLOSED")]
    stats = breaker.stats
    assert (stats.successes, stats.rejections) == (6, 1)
    assert stats.state_changes == {"CLOSED": 2, "OPEN": 2, "HALF_OPEN": 0}
    assert breaker._local.clean_permit >= 0  # armed again


def test_an_observer_added_to_every_registry_later_hears_scoped_breakers_made_before() -> None:
    """``observe_all`` after scoped breakers exist: they are observed, and no breaker the
    observer holds is renamed into another scope afterwards."""
    registry = BreakerRegistry(max_breakers=1)
    call = _scoped(registry, failure_threshold=1)
    call(1)
    refusals: list[str] = []

    class Observer:
        def rejected(self, breaker: Any, enforced: bool) -> None:
            refusals.append(breaker.name)

    observer = Observer()
    BreakerRegistry.observe_all(observer)
    try:
        with pytest.raises(RuntimeError):
            call(1, fail=True)
        with pytest.raises(CircuitOpenError):
            call(1)
        assert call(2) == 2 and call(3) == 3  # past the bound: t:1 is not idle, kept
        with pytest.raises(CircuitOpenError):
            call(1)
        with pytest.raises(RuntimeError):
            call(3, fail=True)
        with pytest.raises(CircuitOpenError):
            call(3)
    finally:
        BreakerRegistry.unobserve_all(observer)
    assert refusals == ["t:1", "t:1", "t:3"]


def test_clear_mid_traffic_leaves_one_breaker_per_scope_with_fresh_state() -> None:
    """``registry.clear()`` while scoped decorations run (one of them holding a dropped
    breaker): each scope's next call, ``registry.get`` and both decorations agree on one
    breaker, with fresh state."""
    registry = BreakerRegistry(max_breakers=1)
    first = _scoped(registry, failure_threshold=2)
    second = _scoped(registry, failure_threshold=2)
    first(1), second(1), first(2)  # t:1 dropped, second's cache holds it
    with pytest.raises(RuntimeError):
        second(1, fail=True)  # counted on t:1, which goes back to the registry
    assert registry.get("t:1").failure_count == 1
    registry.clear()
    assert second(1) == 1 and first(1) == 1
    assert registry.get("t:1") is _cache_of(first)[1] is _cache_of(second)[1]
    assert registry.get("t:1").failure_count == 0
    for _ in range(2):
        with pytest.raises(RuntimeError):
            first(1, fail=True)
    with pytest.raises(CircuitOpenError):
        second(1)


# -- forked children ---------------------------------------------------------------------------


def _child_status(pid: int, polls: int = 500) -> int | None:
    """The forked child's exit code, or None when it hung (killed after ~5 s of polls)."""
    import time

    for _ in range(polls):
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    return None


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
def test_a_child_forked_while_another_thread_counts_can_use_its_breakers() -> None:
    """The locks breakers now share (the counting lock, the striped circuit locks) and the
    registry's lock are held by some thread for a few lines at a time; a child forked at
    that moment (a worker forked by a server with threads running) must not find them
    held forever."""
    import warnings

    from llm_circuit_breaker.breaker import circuit as circuit_module
    from llm_circuit_breaker.breaker import telemetry

    registry = BreakerRegistry()
    breaker = registry.get_or_create("forked")
    locks = [telemetry._counting, breaker._local.locked(), registry._lock]
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        for lock in locks:
            lock.acquire()
        holding.set()
        release.wait()
        for lock in reversed(locks):
            lock.release()

    holder = threading.Thread(target=hold)
    holder.start()
    holding.wait()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # forking with threads (3.12+)
            pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            code = 1
            try:
                breaker.force_open()
                breaker.reset()
                assert breaker.stats.state_changes["OPEN"] == 1
                assert registry.get_or_create("forked") is breaker
                assert circuit_module._STRIPES  # still there
                code = 0
            finally:
                os._exit(code)
    finally:
        release.set()
        holder.join()
    assert _child_status(pid) == 0


def test_scopes_left_open_do_not_lift_the_bound_for_clean_ones() -> None:
    """An outage leaves 80 scopes OPEN and never called again (not droppable: not clean);
    then 500 new scopes are called once each. The clean ones past ``max_breakers`` are
    dropped: the registry holds the open scopes and at most the bound besides."""
    registry = BreakerRegistry(max_breakers=4)
    call = _scoped(registry, failure_threshold=1)
    for k in range(80):
        with pytest.raises(RuntimeError):
            call(f"down-{k}", fail=True)
    assert len(registry) == 80
    for k in range(500):
        assert call(k) == k
    assert len([b for b in registry.breakers() if b.state is CircuitState.OPEN]) == 80
    assert len(registry) <= 80 + 4
    for k in range(80):  # still open, still refusing
        with pytest.raises(CircuitOpenError):
            call(f"down-{k}")


def test_a_decoration_naming_a_scope_outright_shares_it_after_the_scope_dropped() -> None:
    """``@circuit_breaker("t:1")`` names the breaker a scoped decoration made for ``k=1``;
    the scope drops past the bound and is called again: one breaker still guards both."""
    registry = BreakerRegistry(max_breakers=1)
    scoped = _scoped(registry, failure_threshold=2)
    scoped(1)

    @circuit_breaker("t:1", registry=registry)
    def outright() -> str:
        raise RuntimeError("provider down")

    scoped(2)  # t:1 dropped: held by the outright decoration
    assert scoped(1) == 1
    assert registry.get("t:1") is outright.breaker
    for _ in range(2):
        with pytest.raises(RuntimeError):
            outright()
    with pytest.raises(CircuitOpenError):
        scoped(1)


def test_async_scopes_with_listener_fallback_and_timeout_through_a_bound_of_one() -> None:
    """A scoped coroutine function with ``on_state_change``, ``fallback`` and
    ``call_timeout``, its scopes cycling through ``max_breakers=1``: the open scope is kept
    and keeps refusing into the fallback, the listener hears each change under the scope's
    own name once, clean scopes are reused under their new names, the timeout names its
    breaker."""
    import asyncio

    from llm_circuit_breaker.testing import FakeClock

    clock = FakeClock()
    registry = BreakerRegistry(max_breakers=1, clock=clock)
    heard: list[tuple[str, str]] = []

    async def fallback(k: Any, fail: bool = False, hang: bool = False) -> str:
        return f"fallback {k}"

    @circuit_breaker(
        "t:{k}",
        registry=registry,
        failure_threshold=1,
        success_threshold=1,
        on_state_change=lambda change: heard.append((change.name, change.new.value)),
        fallback=fallback,
        call_timeout=0.05,
    )
    async def call(k: Any, fail: bool = False, hang: bool = False) -> Any:
        if hang:
            await asyncio.Event().wait()
        if fail:
            raise RuntimeError("provider down")
        return k

    async def main() -> None:
        with pytest.raises(RuntimeError):
            await call(1, fail=True)
        assert await call(1) == "fallback 1"
        for k in range(2, 6):
            assert await call(k) == k
        assert await call(1) == "fallback 1"
        names = sorted(b.name for b in registry.breakers())
        assert names[0] == "t:1" and len(names) <= 3
        clock.advance(30.0)
        assert await call(1) == 1  # the probe closes it
        with pytest.raises(TimeoutError, match="'t:7'"):
            await call(7, hang=True)  # a hang always outlasts the timeout
        assert await call(7) == "fallback 7"

    asyncio.run(main())
    assert heard == [
        ("t:1", "OPEN"),
        ("t:1", "HALF_OPEN"),
        ("t:1", "CLOSED"),
        ("t:7", "OPEN"),
    ]


def test_scoped_generators_through_a_bound_of_one_count_each_failure_on_its_scope() -> None:
    """Scoped generators take a shell per breaker (kept while the breaker is): two scopes
    alternating through ``max_breakers=1``, one failing mid-stream, open exactly the
    failing scope, which then refuses without running."""
    registry = BreakerRegistry(max_breakers=1)
    ran: list[str] = []

    @circuit_breaker("g:{k}", registry=registry, failure_threshold=3)
    def stream(k: str) -> Any:
        ran.append(k)
        yield 1
        if k == "bad":
            raise RuntimeError("cut off")
        yield 2

    for _ in range(3):
        assert list(stream("good")) == [1, 2]
        with pytest.raises(RuntimeError):
            list(stream("bad"))
    assert registry.get("g:bad").state is CircuitState.OPEN
    assert "g:good" not in registry or registry.get("g:good").state is CircuitState.CLOSED
    ran.clear()
    with pytest.raises(CircuitOpenError):
        list(stream("bad"))
    assert list(stream("good")) == [1, 2]
    assert ran == ["good"]


def test_event_loops_in_threads_racing_scoped_coroutines_keep_one_breaker_per_name() -> None:
    """Four threads, each running its own event loop, call a scoped coroutine function over
    five scopes through ``max_breakers=2``: every success and failure lands on a breaker
    named after its scope, and afterwards each scope's breaker is the registry's."""
    import asyncio

    registry = BreakerRegistry(max_breakers=2)

    @circuit_breaker("a:{k}", registry=registry, failure_threshold=10_000)
    async def call(k: int, fail: bool = False) -> int:
        await asyncio.sleep(0)
        if fail:
            raise RuntimeError("provider down")
        return k

    errors: list[BaseException] = []
    start = threading.Barrier(4)

    async def drive(offset: int) -> None:
        async def one(i: int) -> None:
            k = (i * 3 + offset) % 5
            try:
                assert await call(k, fail=i % 5 == 0) == k
            except RuntimeError as exc:
                assert str(exc) == "provider down"

        for i in range(0, 600, 6):
            await asyncio.gather(*(one(i + j) for j in range(6)))

    def run(offset: int) -> None:
        start.wait()
        try:
            asyncio.run(drive(offset))
        except BaseException as exc:  # pragma: no cover - the failure
            errors.append(exc)

    _in_threads(run, 4)
    assert not errors
    for key, breaker in list(_cache_of(call).items()):
        assert breaker.name == f"a:{key}"
        if breaker.name in registry:
            assert registry.get(breaker.name) is breaker
    assert set(registry) == set(registry._scoped)


def test_a_scope_with_failures_in_its_rate_window_is_not_dropped_as_clean() -> None:
    """Failure-rate mode: a failure then a success leave ``failure_count`` at 0 but the
    window holds the failure. Dropping that scope past the bound would forget it; the
    window's failures keep it until they expire, then it drops like any clean scope."""
    from llm_circuit_breaker.testing import FakeClock

    clock = FakeClock()
    registry = BreakerRegistry(max_breakers=1, clock=clock)
    call = _scoped(
        registry, failure_rate_threshold=0.5, window=60.0, minimum_calls=4, failure_threshold=99
    )
    with pytest.raises(RuntimeError):
        call(1, fail=True)
    assert call(1) == 1
    assert registry.get("t:1").failure_count == 0
    assert call(2) == 2  # past the bound: t:1 is not clean, kept
    for _ in range(2):
        with pytest.raises(RuntimeError):
            call(1, fail=True)
    assert registry.get("t:1").state is CircuitState.OPEN  # 3 of 4 calls failed
    with pytest.raises(CircuitOpenError):
        call(1)
    clock.advance(31.0)
    assert call(1) == 1
    registry.get("t:1").reset()
    for k in range(3, 6):  # the window empties with time: clean, dropped
        assert call(k) == k
    with pytest.raises(RuntimeError):
        call(6, fail=True)
    assert call(6) == 6
    clock.advance(61.0)
    for k in range(7, 10):
        assert call(k) == k
    assert "t:6" not in registry and len(registry) <= 2


def test_a_scope_s_spent_token_budget_survives_scopes_cycling_past_the_bound() -> None:
    """``token_budget`` per scope (a tenant's daily cap): a tenant that spent its budget is
    refused; a hundred other tenants called meanwhile must not drop its breaker and hand it
    a fresh budget. Once its window ends it is clean again and may drop."""
    from llm_circuit_breaker import BudgetExceededError
    from llm_circuit_breaker.testing import FakeClock

    clock = FakeClock()
    registry = BreakerRegistry(max_breakers=2, clock=clock)

    @circuit_breaker("tenant:{tenant}", registry=registry, token_budget=100.0)
    def complete(tenant: str) -> dict[str, Any]:
        return {"usage": {"total_tokens": 150}}

    complete("big")  # spends 150 of 100
    with pytest.raises(BudgetExceededError):
        complete("big")
    for k in range(100):
        complete(f"small-{k}")
    with pytest.raises(BudgetExceededError):
        complete("big")
    clock.advance(86_400.0)
    for k in range(100, 104):
        complete(f"small-{k}")
    assert "tenant:big" not in registry


def test_where_a_call_lends_its_argument_a_held_breaker_is_still_never_renamed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """CPython 3.14 passes a local variable to ``sys.getrefcount`` as a borrowed reference:
    the count of an object held by one local is 1, not 2. Reuse must measure that, not
    assume it: a scope's breaker that a decoration naming it outright holds must never be
    renamed into another scope (simulated here on any version)."""
    import sys

    from llm_circuit_breaker.breaker import breaker as breaker_module
    from llm_circuit_breaker.breaker import registry as registry_module

    def through(obj: object) -> int:
        return sys.getrefcount(obj)

    def one_local() -> int:
        probe = object()
        return through(probe)

    calling = one_local() - 1  # what passing the object on to a function adds, here

    def lent(obj: object) -> int:
        return sys.getrefcount(obj) - calling  # the passing not counted: the object's holders

    def held_by_one_local() -> int:  # what the library measures on such an interpreter
        probe = object()
        return lent(probe)

    for module in (breaker_module, registry_module):
        monkeypatch.setattr(module, "refcount", lent)
    held_once = held_by_one_local()
    assert held_once == 1
    monkeypatch.setattr(breaker_module, "ONE_HOLDER", held_once, raising=False)
    monkeypatch.setattr(registry_module, "ONE_HOLDER", held_once, raising=False)

    registry = BreakerRegistry(max_breakers=1)
    scoped = _scoped(registry)
    scoped(1)
    breaker = registry.get("t:1")
    held = (
        breaker,
        breaker._local.enter,
    )  # as a transport holds a fixed breaker: its admission too
    del breaker
    for k in range(2, 5):
        assert scoped(k) == k
    assert held[0].name == "t:1"
    # a breaker nothing else holds is still reused on such an interpreter
    reused_id = id(registry.get("t:4"))
    assert scoped(5) == 5
    assert id(registry.get("t:5")) == reused_id


def test_without_reference_counts_decorations_still_agree_on_a_dropped_scope() -> None:
    """Without ``sys.getrefcount`` (PyPy) nothing proves a dropped breaker unheld: it is kept
    weakly and given back, so two decorations of one template still share each scope."""
    import subprocess
    import sys

    script = """
import sys
del sys.getrefcount
from llm_circuit_breaker import BreakerRegistry, CircuitOpenError, circuit_breaker
registry = BreakerRegistry(max_breakers=1)
def make():
    @circuit_breaker("t:{k}", registry=registry, failure_threshold=2)
    def call(k, fail=False):
        if fail:
            raise RuntimeError("provider down")
        return k
    return call
first, second = make(), make()
first(1), second(1), first(2), first(1)
for _ in range(2):
    try:
        second(1, fail=True)
    except RuntimeError:
        pass
try:
    first(1)
except CircuitOpenError:
    print("ok")
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "ok"


def test_reset_all_also_resets_a_dropped_scope_that_is_still_held() -> None:
    """``reset_all()`` (the test fixtures' isolation) resets every breaker of the registry:
    also a scoped one dropped past the bound that something holds, and that is given back
    when its scope is called again."""
    registry = BreakerRegistry(max_breakers=1)
    call = _scoped(registry)
    call(1)
    held = registry.get("t:1")
    call(2)  # t:1 dropped, held here
    held.force_open()
    registry.reset_all()
    assert held.state is CircuitState.CLOSED
    assert call(1) == 1
    assert registry.get("t:1") is held and held.stats.rejections == 0


# -- finalisers and the shared locks -----------------------------------------------------------


def _finalised_while(lock: Any, drop: Any) -> bool:
    """Run ``drop()`` (which lets a guarded stream be collected: its finaliser reports) in a
    thread that holds ``lock``, as a collection that starts inside a locked section does.
    True if it came back (a finaliser that waits on that lock would never)."""
    finished = threading.Event()

    def run() -> None:
        with lock:
            drop()
        finished.set()

    threading.Thread(target=run, daemon=True).start()
    return finished.wait(5.0)


@pytest.mark.parametrize("which", ["stripe", "counting"])
def test_a_stream_collected_while_its_thread_holds_a_shared_lock_does_not_hang(
    which: str,
) -> None:
    """Breakers share a few striped locks and the counting lock. The collector may run a
    guarded stream's finaliser in any thread, inside any locked section of any breaker;
    the finaliser's report must not wait for a lock its own thread holds."""
    from llm_circuit_breaker.breaker import circuit as circuit_module
    from llm_circuit_breaker.breaker import telemetry

    registry = BreakerRegistry()

    @circuit_breaker("streams", registry=registry)
    def stream() -> Any:
        return iter([1, 2, 3])  # a returned iterator is guarded until it ends

    guarded = stream()
    assert next(guarded) == 1
    breaker = registry.get("streams")
    # the stripe is shared: any breaker mapped to it may hold it when the collector runs
    stripe = breaker._local.locked()
    assert stripe in circuit_module._STRIPES
    lock = stripe if which == "stripe" else telemetry._counting
    held = [guarded]
    del guarded

    assert _finalised_while(lock, held.clear)
    # the report lands once the lock is free: nothing stays in flight, nothing is counted
    for _ in range(100):
        if breaker.stats.ignored == 1:
            break
        threading.Event().wait(0.01)
    assert breaker.stats.ignored == 1 and breaker.stats.calls == 1
