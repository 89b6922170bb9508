"""``CircuitBreaker``: one circuit, decided in this process (a :class:`LocalCircuit`) or kept
in a shared store (a link from :mod:`llm_circuit_breaker.storage.link`: plain methods for a
sync store, coroutines for an asyncio one); its :class:`Telemetry` reports either way.
"""

from __future__ import annotations

import contextvars
import dataclasses
import itertools
import sys
import threading
import weakref
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, cast

from llm_circuit_breaker._core.budget import RetryBudget, SpendCap, usage_tokens
from llm_circuit_breaker._core.permits import REJECTED
from llm_circuit_breaker._core.state import LOCK_FREE, CircuitState, Outcome
from llm_circuit_breaker._core.throttle import TOKEN_COST, Wait, estimate_tokens
from llm_circuit_breaker._core.views import Control, View
from llm_circuit_breaker._redact import shown
from llm_circuit_breaker.breaker import clock as clock_module
from llm_circuit_breaker.breaker.circuit import Entry, LocalCircuit
from llm_circuit_breaker.breaker.clock import TimeSource
from llm_circuit_breaker.breaker.telemetry import (
    NOT_OPEN_YET,
    BreakerStats,
    Listener,
    Observer,
    StateChange,
    WaitHistogram,
    _counting,
)
from llm_circuit_breaker.config import DEFAULT_CONFIG, CircuitBreakerConfig
from llm_circuit_breaker.errors import BudgetExceededError, CircuitOpenError, ThrottledError

if TYPE_CHECKING:
    from llm_circuit_breaker.breaker._async.link import AsyncStoreLink
    from llm_circuit_breaker.breaker._sync.link import StoreLink
    from llm_circuit_breaker.breaker.concurrency import ConcurrencyLimit
    from llm_circuit_breaker.storage.base import AsyncStateStore, StateStore

__all__ = ["BreakerStats", "CircuitBreaker", "Clock", "Listener", "Observer", "StateChange"]

Clock = Callable[[], float]

# Reference counts say when nothing else holds a breaker (CPython with its GIL; elsewhere,
# free-threaded builds included, none is reused).
_REFCOUNTED = sys.implementation.name == "cpython" and LOCK_FREE
# Interpreters without reference counts have no sys.getrefcount: there it counts -1, never
# the count a reuse requires.
refcount: Callable[[object], int] = getattr(sys, "getrefcount", lambda _obj: -1)
weakref_count = weakref.getweakrefcount


def _held_once() -> int:
    """What ``refcount`` says of an object that one local variable alone holds: 2 where the
    call's argument is a reference of its own, 1 where the interpreter lends it (CPython 3.14's
    borrowed references), -1 without reference counts. The reuse checks count from this."""
    probe = object()
    return refcount(probe)


ONE_HOLDER = _held_once()
# What a circuit that never left CLOSED and keeps nothing but counts holds (see _renamed).
_FRESH = (0, 0, None, None, None, None, (), None, None)


class CircuitBreaker:
    """One circuit, shared by every caller that names it.

    ``config`` is a :class:`CircuitBreakerConfig` or a mapping of its field names (checked as
    every entry point checks them); None gives the defaults.

    ``state`` reads OPEN -> HALF_OPEN lazily from the library's time source
    (:mod:`llm_circuit_breaker.breaker.clock`, which tests replace) or from ``clock=``, a
    callable returning monotonic seconds that this breaker keeps (one with ``sleep`` /
    ``async_sleep`` methods, such as ``testing.FakeClock``, also serves the throttle's waits).
    ``store=`` keeps the circuit in a shared store (say a ``RedisStateStore``); with an
    asyncio store the breaker's calls are coroutines (``await breaker.aenter()`` ...) and
    ``is_async`` is True.

    Calls are admitted with ``enter()`` (a permit, or the :class:`CircuitOpenError` to raise;
    :meth:`admit` raises it) and report with ``record_success(permit)`` / :meth:`record`; the
    decorators and the HTTP helpers do that for you. Thread-safe and asyncio-safe.
    """

    __slots__ = (
        "__weakref__",
        "_alink",
        "_budget",
        "_circuit",
        "_enter",
        "_limit",
        "_local",
        "_record_success",
        "name",
    )

    def __init__(
        self,
        name: str,
        config: CircuitBreakerConfig | Mapping[str, Any] | None = None,
        *,
        clock: Clock | None = None,
        store: StateStore | AsyncStateStore | None = None,
    ) -> None:
        if (name.__class__ is not str and not isinstance(name, str)) or not name:
            raise ValueError(f"a circuit breaker needs a non-empty str name, got {name!r}")
        if config is None:
            config = DEFAULT_CONFIG  # frozen: one shared by every default breaker
        elif not isinstance(config, CircuitBreakerConfig):
            config = config_of(config)
        self.name = name
        # Without a clock of its own the breaker reads (and waits with) the library's time
        # source; a clock that can sleep (``testing.FakeClock``) also drives the throttle's waits.
        source = clock_module.SHARED if clock is None else TimeSource.of(clock)
        self._limit: ConcurrencyLimit | None = None  # the cap on calls in flight
        # With a store, the local circuit (and its throttle) decides while the store is down.
        # What the sync methods drive (``_circuit``) is the local circuit, or a sync store's
        # link; None for an asyncio store, whose circuit only coroutines reach. The local
        # circuit is the breaker's telemetry too (counts, listeners, observers).
        self._local = local = LocalCircuit(name, config, source)
        self._circuit: LocalCircuit | StoreLink | None = local
        self._alink: AsyncStoreLink | None = None
        # What enter / record_success are when not the local circuit's own (a link's, the
        # concurrency limit's, the token budget's): None keeps no bound method per breaker.
        self._enter: Callable[[], Entry] | None = None
        self._record_success: Callable[[int], None] | None = None
        # The retry budget and the lock of the budgets are made on first need.
        self._budget: _Budgets | None = None
        if store is None and config.token_budget is None and config.max_concurrent is None:
            return  # the common case: nothing more to make
        if store is not None:  # only a shared breaker needs the links
            self._link(store, (name, config, local, local))
        if config.token_budget is not None:
            self._cap_spend()
        if store is not None:  # a store's link may share the budgets with the fleet
            self._share_budgets()
        if config.max_concurrent is not None:
            self._cap_calls_in_flight()

    def _link(self, store: StateStore | AsyncStateStore, parts: tuple[Any, ...]) -> None:
        """Drive the circuit through a link to ``store`` (made with the breaker)."""
        from llm_circuit_breaker.breaker._async.link import AsyncStoreLink
        from llm_circuit_breaker.breaker._sync.link import StoreLink

        if store.is_async:
            self._alink = AsyncStoreLink(cast("AsyncStateStore", store), *parts)
            self._circuit = None
            self._enter = self._record_success = self._needs_await
        else:
            circuit = self._circuit = StoreLink(cast("StateStore", store), *parts)
            self._enter, self._record_success = circuit.enter, circuit.record_success

    def _cap_calls_in_flight(self) -> None:
        """Count calls in flight on admission and report (``max_concurrent``)."""
        from llm_circuit_breaker.breaker.concurrency import ConcurrencyLimit

        limit = ConcurrencyLimit(
            self.name, self.config, self._time, self._local, self.enter, self.record_success
        )
        self._limit = limit
        if self._alink is None:  # with an asyncio store, aenter() and the a-reports count
            self._enter, self._record_success = limit.enter, limit.record_success

    @property
    def config(self) -> CircuitBreakerConfig:
        """The breaker's configuration (kept by its circuit)."""
        return self._local.config

    @property
    def store(self) -> StateStore | AsyncStateStore | None:
        """The shared store that keeps the circuit, None when it is decided in this process."""
        if self._alink is not None:
            return self._alink.store
        circuit = self._circuit
        return None if circuit is self._local else cast("StoreLink", circuit).store

    @property
    def enter(self) -> Callable[[], Entry]:
        """Admit one call: its permit, the :class:`CircuitOpenError` that says why not, the
        :class:`ThrottledError` when its throttle slot is too far away, or the ``Wait`` for a
        slot. The circuit's own method: bind it once (the decorators do), no extra frame."""
        enter = self._enter
        return self._local.enter if enter is None else enter

    @property
    def record_success(self) -> Callable[[int], None]:
        """Report that the call holding ``permit`` succeeded (the circuit's own method)."""
        record = self._record_success
        return self._local.record_success if record is None else record

    @property
    def template(self) -> str | None:
        """The name template this breaker was made from (``"openai:{model}"``), None when
        named outright: exporters and logs label by template and scope value apart."""
        return self._local.template

    @template.setter
    def template(self, template: str | None) -> None:
        self._local.template = template

    @property
    def _time(self) -> TimeSource:
        """The breaker's time source (its local circuit's)."""
        return self._local.source

    @property
    def _followed(self) -> LocalCircuit | StoreLink | AsyncStoreLink:
        """What a read without I/O sees: the local circuit, or the link to the store."""
        if self._alink is not None:
            return self._alink
        return cast("LocalCircuit | StoreLink", self._circuit)

    @property
    def is_async(self) -> bool:
        """True when the circuit lives in an asyncio store: use the ``a``-methods."""
        return self._alink is not None

    def _needs_await(self, *args: object) -> Any:
        what = "use `await breaker.aenter()` / `arecord_success()` / `arecord()` / `aobserve()`"
        raise TypeError(f"circuit {self.name!r} keeps its state in an asyncio store: {what}")

    def _sync(self, what: str = "") -> LocalCircuit | StoreLink:
        """The circuit the sync methods drive, or the TypeError saying to await ``what``."""
        if self._circuit is None:
            if what:
                raise TypeError(
                    f"circuit {self.name!r} keeps its state in an asyncio store: "
                    f"use `await breaker.{what}()`"
                )
            self._needs_await()
        return cast("LocalCircuit | StoreLink", self._circuit)

    # -- guarding calls --------------------------------------------------------------------

    def admit(self) -> int:
        """Admit one call and return its permit (after waiting for its throttle slot), or
        raise :class:`CircuitOpenError` / :class:`ThrottledError`."""
        entry = self.enter()
        if isinstance(entry, Wait):
            return self.wait(entry)
        if not isinstance(entry, int):
            try:
                raise entry
            finally:
                del entry  # else frame -> error -> traceback -> frame: a cycle for the GC
        return entry

    def try_admit(self) -> int:
        """Admit one call: its permit, or ``-1`` when refused or throttled (nothing waits)."""
        entry = self.enter()
        if isinstance(entry, Wait):
            if self._limit is not None and self._limit.give_up(entry):
                return REJECTED  # a place in line for a slot in flight, dropped and counted
            self._settle(entry, gave_up=True)
            self._local.count_throttle_refusal()  # refused: it would have had to wait
            return REJECTED
        return entry if isinstance(entry, int) else REJECTED

    def _settle(self, wait: Wait, *, gave_up: bool) -> Wait | ThrottledError | None:
        return self._sync().waited(wait, gave_up=gave_up)

    def wait(self, wait: Wait) -> int:
        """Sleep until a slot in flight (``max_concurrent``) and a throttle slot: the permit
        (or ``ThrottledError``)."""
        if self._limit is not None:
            return self._limit.wait(wait, self._wait_throttle)
        return self._wait_throttle(wait)

    def _wait_throttle(self, wait: Wait) -> int:
        """Sleep (``time.sleep``, looked up now) until a throttle slot; the permit it held. A
        pause that a rate limit set meanwhile, past the slot, is waited out too (or
        ``ThrottledError``)."""
        while True:
            try:
                self._time.sleep(wait.seconds)
            except BaseException:
                self._settle(wait, gave_up=True)
                raise
            again = self._settle(wait, gave_up=False)
            if again is None:
                return wait.permit
            if isinstance(again, ThrottledError):
                raise again
            wait = again

    def observe(self, headers: object) -> None:
        """Feed a response's rate-limit headers to the throttle (the HTTP helpers do it for
        every response; call it for responses your own code reads)."""
        self._sync().observe(headers)

    @property
    def throttle(self) -> dict[str, float | int | None]:
        """``{paused_for, requests_remaining, tokens_remaining, reset_in, waiting}`` (with a
        store: the shared throttle as of the last store call)."""
        if self._circuit is not self._local and self._circuit is not None:
            self._circuit.view()  # a sync store is read now; an asyncio one as of its last call
        return self._known_throttle()

    @property
    def reads_token_cost(self) -> bool:
        """Whether admitting a call now reads its estimated tokens (``TOKEN_COST``): with a
        token budget, a store (its shared throttle), or a throttle that paces calls. Code that
        sees request bodies estimates only then."""
        local = self._local  # an asyncio store's breaker has no sync circuit: not local either
        if local.config.token_budget is not None or self._circuit is not local:
            return True
        throttle = local.throttle
        return throttle is not None and throttle.active

    @property
    def concurrency(self) -> dict[str, int | str] | None:
        """``{limit, in_flight, waiting, mode}`` of ``max_concurrent`` in this process (None
        without a limit)."""
        return None if self._limit is None else self._limit.view()

    @property
    def idle(self) -> bool:
        """CLOSED and clean: a registry may drop this (scoped) breaker without losing state."""
        busy = self._limit is not None and self._limit.busy
        return not busy and not self._spending() and self._followed.idle

    def _spending(self) -> bool:
        """Whether the token budget holds what dropping the breaker would forget: tokens
        spent in its window (in this process), or not yet sent to the store that keeps them."""
        cap = self._spend
        if cap is None:
            return False
        with self._budgets():
            if self._followed is not self._local:
                return cap.unsent
            return cap.view(self._time.now())["spent"] > 0.0

    def _renamed(
        self, name: str, config: CircuitBreakerConfig, template: str | None = None
    ) -> bool:
        """Become a fresh breaker called ``name`` if this (scoped) breaker can: a local circuit
        with ``config`` that never changed state and keeps nothing but counts (no failure
        pending, no throttle, no listener, no budget, no cap), that nothing but the caller
        holds (reference counts: no call in flight, no decoration, no weak reference; the
        caller checks its own). The registry has dropped it, so nothing can tell it apart from
        a fresh one: the name (and ``template``) change, statistics start from zero, the
        cores are as a new breaker's already. False (nothing changed) if it cannot."""
        local = self._local
        if (
            _REFCOUNTED
            # no link, limit or token budget (each sets ``_enter``), no retry budget
            and self._enter is None
            and self._budget is None
            and (local.config is config or local.config == config)
            # held by the breaker twice (``_local``, ``_circuit``) and here alone
            and refcount(local) == ONE_HOLDER + 2
            and not weakref_count(self)
            # never left CLOSED, nothing pending, made or hooked since
            and (
                local.generation,
                local.failure_count,
                local.transitions,
                local._window,
                local.throttle,
                local.rejoin,
                local._hooks,
                local.breaker,
                local._waits,
            )
            == _FRESH
            and not local._inflight  # none in flight (an empty dict once tracked)
        ):
            self.name = local.name = name
            # armed (a counter): the fast path stays open; an int stays one (a counter given to
            # every renamed breaker: ~0.1 us a cycling call for 56 B and a tracked object more)
            local._successes = 0 if local._successes.__class__ is int else itertools.count()
            local._rejections = NOT_OPEN_YET
            local._counts = None
            local.template = template
            return True
        return False

    def _known_throttle(self) -> dict[str, float | int | None]:
        return self._followed.throttle_view()

    def record(
        self,
        permit: int,
        outcome: Outcome,
        *,
        open_for: float | None = None,
        why: str = "",
        error: BaseException | None = None,
        hint: float | None = None,
    ) -> None:
        """Report a finished call; ``open_for`` opens the circuit that long on a failure.

        ``error`` (the exception the call raised) becomes the ``__cause__`` of the refusals
        that follow if this report opens the circuit. ``hint``: the server's wait for a
        ``THROTTLED`` outcome (a rate limit), which pauses the throttle.
        """
        self._sync().record(permit, outcome, open_for=open_for, why=why, error=error, hint=hint)
        if self._limit is not None:
            self._limit.released(outcome, error)

    def dropped(self, permit: int, loop: Any = None) -> None:
        """Report, from a finaliser, a guarded stream collected without being closed: neither
        outcome, so no probe slot, in-flight entry or concurrency slot outlives it. With an
        asyncio store the report is scheduled on ``loop`` (the loop that made the stream).
        Never raises."""
        try:
            if self._alink is None:
                if self._locks_free():  # in a context of its own: the collector may run in
                    # a call of this breaker, whose admission to its throttle is not this one
                    contextvars.Context().run(self.record, permit, Outcome.IGNORED)
                else:  # perhaps held by this very thread: the collector ran inside a locked
                    # section (of any breaker: the locks are shared), so never wait here
                    _report_apart(self.record, permit)
            elif loop is not None and not loop.is_closed():
                loop.call_soon_threadsafe(
                    _report_later, loop, self.arecord, permit, context=contextvars.Context()
                )
        except Exception:  # a finaliser has no caller to tell
            pass

    def _locks_free(self) -> bool:
        """Whether the locks a report takes are free now (a finaliser's report may not wait
        for one: its own thread may hold it)."""
        limit = self._limit
        return not (
            _counting.locked()
            or self._local.locked().locked()
            or (limit is not None and limit.locked())
        )

    def refusal_now(self) -> CircuitOpenError | None:
        """The :class:`CircuitOpenError` a call would get now, or None if it would be admitted
        (nothing is admitted or counted). A metrics-only breaker (``enabled=False``) refuses
        nothing: None."""
        if not self.config.enabled:
            return None
        view = self._view()
        if view.retry_after == 0.0:
            return None
        return CircuitOpenError(self.name, view.retry_after, view.reason)

    def record_retry(self, attempt: int, error: BaseException, delay: float) -> None:
        """Count a retry of a call guarded by this breaker (``with_retry`` calls it)."""
        self._local.retried(attempt, error, delay)

    # -- budgets: retries and spend (a store's link shares them) ---------------------------

    def _budgets(self) -> threading.Lock:
        """The lock of the budgets (made now if this is the first need of one)."""
        budgets = self._budget
        if budgets is None:
            with _MAKING:
                budgets = self._budget
                if budgets is None:
                    budgets = self._budget = _Budgets()
        return budgets.lock

    @property
    def _spend(self) -> SpendCap | None:
        budgets = self._budget
        return None if budgets is None else budgets.spend

    def _cap_spend(self) -> None:
        config = self.config
        self._budgets()
        budgets = cast("_Budgets", self._budget)
        budgets.spend = SpendCap(cast("float", config.token_budget), config.token_budget_window)
        if self._circuit is not None:  # a spent budget refuses before the circuit admits
            budgets.enter_circuit = self.enter
            self._enter = self._capped_enter

    def _share_budgets(self) -> None:
        """Hand the budgets to a store's link that shares them (made now: the link syncs
        them with each store call)."""
        config = self.config
        share = getattr(self._followed, "share_budgets", None)
        if share is None or (config.retry_budget is None and config.token_budget is None):
            return
        lock = self._budgets()
        budgets = cast("_Budgets", self._budget)
        if config.retry_budget is not None and budgets.retry is None:
            budgets.retry = RetryBudget(config.retry_budget, config.retry_budget_floor)
        share(lock, budgets.retry, budgets.spend)

    def _settled_budget(self, ratio: float, now: float) -> RetryBudget:
        """The retry budget with the first attempts counted since (lock held); made by the
        first retry (the counts it reads start with the breaker, so it sees them all)."""
        budgets = cast("_Budgets", self._budget)
        budget = budgets.retry
        if budget is None:
            budget = budgets.retry = RetryBudget(ratio, self.config.retry_budget_floor)
        budget.settle(now, self._local.stats().calls)  # retries too: settle sorts
        return budget

    def try_spend_retry(self) -> bool:
        """Pay for one extra attempt (a retry, an SDK's retry, a hedge) from the retry
        budget: True when it may be made, False when the budget cannot pay (counted in
        ``stats.retries_denied``; a metrics-only breaker counts it and says True)."""
        ratio = self.config.retry_budget
        if ratio is None:
            return True
        with self._budgets():  # the count read under the lock: settles see it only grow
            now = self._time.now()
            budget = self._settled_budget(ratio, now)
            paid = budget.try_withdraw(now)
            if paid:
                budget.skip()  # the retry's own call is no first attempt
        if paid:
            return True
        self._local.count_throttle_refusal("retry_budget")
        return not self.config.enabled

    @property
    def retry_budget(self) -> dict[str, float] | None:
        """``{balance, ratio, floor}``: the retries that may be made now (None when off)."""
        ratio = self.config.retry_budget
        if ratio is None:
            return None
        with self._budgets():
            now = self._time.now()
            budget = self._settled_budget(ratio, now)
            balance = budget.balance(now)
        return {"balance": balance, "ratio": budget.ratio, "floor": budget.floor}

    def spend(self, tokens: float) -> None:
        """Count ``tokens`` used by a call against ``token_budget`` (the library does it for
        the responses it sees; call it for usage your own code reads)."""
        cap = self._spend
        if cap is None:
            return
        with self._budgets():
            now = self._time.now()
            before = cap.refusal(now)
            cap.spend(now, tokens)
            after = cap.refusal(now)
            view = cap.view(now)
        if before is None and after is not None:
            self._local.budget_spent(view["spent"], view["limit"], after, at=now)

    def charge(self, response: object, request: object = None) -> None:
        """Count what a call cost against ``token_budget``: its response's ``usage``, or the
        estimate of its request (``max_tokens`` plus the prompt's length / 4) without one."""
        if self._spend is None:
            return
        tokens = usage_tokens(response)
        if tokens is None:
            tokens = TOKEN_COST.get() or (
                estimate_tokens(request) if isinstance(request, Mapping) else 0.0
            )
        self.spend(tokens)

    def budget_refusal(self) -> BudgetExceededError | None:
        """The :class:`BudgetExceededError` a call gets now (counted), or None."""
        cap = self._spend
        if cap is None:
            return None
        with self._budgets():
            wait = cap.refusal(self._time.now())
            spent, limit = cap.spent, cap.limit
        if wait is None:
            return None
        self._local.count_throttle_refusal("token_budget")
        if not self.config.enabled:  # metrics-only: counted, let through
            return None
        return BudgetExceededError(self.name, wait, spent, limit)

    def _capped_enter(self) -> Entry:
        refusal = self.budget_refusal()
        if refusal is None:
            return cast("_Budgets", self._budget).enter_circuit()
        if self._circuit is not self._local:  # what this process spent reaches the fleet
            cast("StoreLink", self._circuit).flush()
            self._freshen(refusal)
        return refusal

    def _freshen(self, refusal: BudgetExceededError) -> None:
        """Say in ``refusal`` what the fleet spent as the flush just answered (the freshest
        figure known), while the cap still refuses."""
        cap = cast("SpendCap", self._spend)
        with self._budgets():
            wait = cap.refusal(self._time.now())
            if wait is not None:
                refusal.spent, refusal.retry_after = cap.spent, wait

    @property
    def budget(self) -> dict[str, float | None]:
        """``{spent, limit, resets_in}`` of the token budget (``limit`` None: no cap)."""
        cap = self._spend
        if cap is None:
            return {"spent": 0.0, "limit": None, "resets_in": None}
        with self._budgets():
            return dict(cap.view(self._time.now()))

    # -- the coroutine face: awaited through a link to an asyncio store, or answered by the
    # sync methods when the circuit lives in this process (or in a sync store) -------------

    async def _asettle(self, wait: Wait, *, gave_up: bool) -> Wait | ThrottledError | None:
        if self._alink is not None:
            await self._alink.awaited(wait, gave_up=gave_up)
            return None
        return self._settle(wait, gave_up=gave_up)

    async def await_slot(self, wait: Wait) -> int:
        """Sleep (tasks) until a slot in flight and a throttle slot: the permit."""
        if self._limit is not None:
            enter = None if self._alink is None else self._alink.aenter
            return await self._limit.await_slot(wait, self._await_throttle, enter)
        return await self._await_throttle(wait)

    async def _await_throttle(self, wait: Wait) -> int:
        """Sleep (``asyncio.sleep``, ``trio.sleep``) until a throttle slot; the permit it held.
        Cancelling frees the slot; a pause set meanwhile, past the slot, is waited out too."""
        while True:
            try:
                await self._time.async_sleep(wait.seconds)
            except BaseException:
                await self._asettle(wait, gave_up=True)
                raise
            again = await self._asettle(wait, gave_up=False)
            if again is None:
                return wait.permit
            if isinstance(again, ThrottledError):
                raise again
            wait = again

    async def aobserve(self, headers: object) -> None:
        """``observe()`` as a coroutine (what an asyncio store needs)."""
        if self._alink is not None:
            await self._alink.aobserve(headers)
        else:
            self.observe(headers)

    async def aenter(self) -> Entry:
        """``enter()`` as a coroutine (what an asyncio store needs)."""
        if self._alink is not None:
            refusal = self.budget_refusal()
            if refusal is not None:
                await self._alink.aflush()  # what this process spent reaches the fleet
                self._freshen(refusal)
                return refusal
            if self._limit is not None:
                return await self._limit.aenter(self._alink.aenter)
            return await self._alink.aenter()
        return self.enter()

    async def aadmit(self) -> int:
        """``admit()`` as a coroutine (the throttle's wait is an ``asyncio.sleep``)."""
        entry = await self.aenter()
        if isinstance(entry, Wait):
            return await self.await_slot(entry)
        if not isinstance(entry, int):
            try:
                raise entry
            finally:
                del entry
        return entry

    async def atry_admit(self) -> int:
        """``try_admit()`` as a coroutine."""
        entry = await self.aenter()
        if isinstance(entry, Wait):
            if self._limit is not None and self._limit.give_up(entry):
                return REJECTED
            await self._asettle(entry, gave_up=True)
            self._local.count_throttle_refusal()  # refused: it would have had to wait
            return REJECTED
        return entry if isinstance(entry, int) else REJECTED

    async def arecord_success(self, permit: int) -> None:
        """``record_success()`` as a coroutine."""
        if self._alink is not None:
            await self._alink.arecord_success(permit)
            if self._limit is not None:
                self._limit.released(Outcome.SUCCESS, None)
        else:
            self.record_success(permit)

    async def arecord(
        self,
        permit: int,
        outcome: Outcome,
        *,
        open_for: float | None = None,
        why: str = "",
        error: BaseException | None = None,
        hint: float | None = None,
    ) -> None:
        """``record()`` as a coroutine."""
        if self._alink is not None:
            await self._alink.arecord(
                permit, outcome, open_for=open_for, why=why, error=error, hint=hint
            )
            if self._limit is not None:
                self._limit.released(outcome, error)
        else:
            self.record(permit, outcome, open_for=open_for, why=why, error=error, hint=hint)

    async def asnapshot(self) -> dict[str, Any]:
        """``snapshot()`` read now, also from an asyncio store."""
        view = await self._alink.aview() if self._alink is not None else self._view()
        return self._as_dict(view)

    async def _acontrol(self, action: Control) -> None:
        if self._alink is not None:
            await self._alink.acontrol(action)
        else:
            self._control(action)

    async def areset(self) -> None:
        """``reset()`` as a coroutine (what an asyncio store needs)."""
        await self._acontrol("reset")

    async def aforce_open(self) -> None:
        """``force_open()`` as a coroutine."""
        await self._acontrol("force_open")

    async def aforce_closed(self) -> None:
        """``force_closed()`` as a coroutine."""
        await self._acontrol("force_closed")

    # -- reading ---------------------------------------------------------------------------

    def _view(self) -> View:
        """The circuit now (for an asyncio store: as of the last call, see ``asnapshot``)."""
        if self._alink is not None:
            return self._alink.known_view()
        return self._sync().view()

    @property
    def state(self) -> CircuitState:
        """The current state (HALF_OPEN as soon as ``reset_timeout`` has passed)."""
        if self._followed is self._local:
            return self._local.state_now
        return self._view().state

    @property
    def failure_count(self) -> int:
        """Consecutive failures counted in CLOSED."""
        return self._view().failure_count

    @property
    def success_count(self) -> int:
        """Consecutive probe successes counted in HALF_OPEN."""
        return self._view().success_count

    @property
    def retry_after(self) -> float | None:
        """Seconds until a call is admitted: 0.0 when now, ``None`` while held open."""
        return self._view().retry_after

    @property
    def wait_histogram(self) -> WaitHistogram:
        """How long admitted calls waited for their throttle slot (for the exporters)."""
        return self._local.known_waits()

    @property
    def stats(self) -> BreakerStats:
        """Calls, successes, failures, ignored, throttled, rejections, retries, state changes."""
        return self._local.stats()

    def snapshot(self) -> dict[str, Any]:
        """A JSON-serialisable view: state, counts, ``opened_at``, ``retry_after``, stats."""
        return self._as_dict(self._view())

    def _as_dict(self, view: View) -> dict[str, Any]:
        return {
            "state": view.state.value,
            "failure_count": view.failure_count,
            "success_count": view.success_count,
            "opened_at": view.opened_at,
            "retry_after": view.retry_after,
            "throttle": self._known_throttle(),
            "concurrency": self.concurrency,
            "budget": self.budget,
            "stats": dataclasses.asdict(self.stats),
        }

    # -- manual control and listeners ------------------------------------------------------

    def _control(self, action: Control) -> None:
        self._sync(f"a{action}").control(action)

    def reset(self) -> None:
        """Close the circuit with clean counts and clear the throttle (a pause, the limits
        learned from headers); the configured rates and the statistics are kept."""
        self._control("reset")

    def _link_view(self) -> View:
        """A store's circuit as of the link's last store call (no I/O)."""
        return cast("StoreLink | AsyncStoreLink", self._followed).known_view()

    def _restart(self) -> None:
        """Fresh state in place: :meth:`reset`, statistics zeroed (``registry.reset_all()``).
        An asyncio store is not awaited here: only this process's part restarts."""
        if self._alink is not None:
            self._local.control("reset")
        else:
            self.reset()
        self._local.zero()
        budgets = self._budget
        if budgets is None:
            return
        with budgets.lock:  # the counts the retry budget reads start again from zero
            if budgets.retry is not None:  # a store's link may share it: kept, restarted
                budgets.retry.restart()
            if budgets.spend is not None:
                budgets.spend.forget()

    def _detach(self, rejoin: Callable[[], None]) -> None:
        """The registry forgot this breaker: its next admission calls ``rejoin`` first."""
        self._local.detach(rejoin)
        if self._followed is not self._local:  # a link looks past its near-cache and lease
            cast("StoreLink | AsyncStoreLink", self._followed).forget()

    def force_closed(self) -> None:
        """Close the circuit now, ending a forced or timed open; counting starts afresh and
        the throttle is cleared (a pause, the limits learned from headers), as by :meth:`reset`."""
        self._control("force_closed")

    def force_open(self) -> None:
        """Open the circuit and hold it open, with no probes, until it is reset or closed."""
        self._control("force_open")

    def add_observer(self, observer: Observer) -> None:
        """Tell ``observer`` of refusals and retries (the metrics exporters use this)."""
        self._local.add_observer(observer, self)

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener(StateChange)`` after every state change (outside the lock)."""
        self._local.add_listener(listener)

    def remove_listener(self, listener: Listener) -> None:
        """Stop calling ``listener``."""
        self._local.remove_listener(listener)

    def __repr__(self) -> str:
        view = self._local.view() if self._followed is self._local else self._link_view()
        return (
            f"CircuitBreaker({shown(self.name)!r}, state={view.state.value}, "
            f"failure_count={view.failure_count}, success_count={view.success_count})"
        )


def config_of(config: object) -> CircuitBreakerConfig:
    """``config`` as a :class:`CircuitBreakerConfig`: a mapping of field names is built into
    one (an unknown name is a ``TypeError`` with a did-you-mean hint); anything else that is
    no config is a ``TypeError``."""
    if isinstance(config, CircuitBreakerConfig):
        return config
    if isinstance(config, Mapping):
        return CircuitBreakerConfig.from_mapping(config)
    raise TypeError(
        f"config must be a CircuitBreakerConfig or a mapping of its fields, "
        f"got {type(config).__name__}"
    )


_MAKING = threading.Lock()  # makes a breaker's budgets once


def _no_circuit() -> Entry:  # pragma: no cover - set with the spend cap, before any call
    raise RuntimeError("a token budget without a circuit to enter")


class _Budgets:
    """A breaker's retry budget and spend cap and their lock (made on first need)."""

    __slots__ = ("enter_circuit", "lock", "retry", "spend")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.retry: RetryBudget | None = None  # made by the first retry
        self.spend: SpendCap | None = None  # token_budget
        self.enter_circuit: Callable[[], Entry] = _no_circuit  # what a capped enter admits


_LATER: set[Any] = set()  # reports scheduled from finalisers, held until they ran


def _report_apart(record: Callable[..., Any], permit: int) -> None:
    """Report a dropped stream's permit (neither outcome) from a thread of its own, which
    waits for the locks the finaliser's thread may hold."""

    def report() -> None:
        try:
            record(permit, Outcome.IGNORED)
        except Exception:  # pragma: no cover - a finaliser has no caller to tell
            pass

    threading.Thread(target=report, name="llm-circuit-breaker-dropped", daemon=True).start()


def _report_later(loop: Any, arecord: Callable[..., Any], permit: int) -> None:
    task = loop.create_task(arecord(permit, Outcome.IGNORED))
    _LATER.add(task)
    task.add_done_callback(_LATER.discard)


_make = object.__new__
_init_local = LocalCircuit.__init__


def new_breaker(
    name: str, config: CircuitBreakerConfig | None = None, clock: Clock | None = None
) -> CircuitBreaker:
    """``CircuitBreaker(name, config, clock=clock)``, for the registry's paths that make
    breakers: the common case (a plain config: no token budget, no cap on calls in flight;
    no store) made without the class calls' dispatch to ``__init__`` (about 0.3 us a
    breaker), its slots set as ``__init__`` sets them; anything else through ``__init__``."""
    if config is None:
        config = DEFAULT_CONFIG
    elif (
        config.__class__ is not CircuitBreakerConfig
        or config.token_budget is not None
        or config.max_concurrent is not None
    ):
        return CircuitBreaker(name, config, clock=clock)
    if name.__class__ is not str or not name:  # a str subclass, or the ValueError
        return CircuitBreaker(name, config, clock=clock)
    local = _make(LocalCircuit)
    _init_local(local, name, config, clock_module.SHARED if clock is None else TimeSource.of(clock))
    breaker = _make(CircuitBreaker)
    breaker.name = name
    breaker._limit = None
    breaker._local = local
    breaker._circuit = local
    breaker._alink = None
    breaker._enter = None
    breaker._record_success = None
    breaker._budget = None
    return breaker
