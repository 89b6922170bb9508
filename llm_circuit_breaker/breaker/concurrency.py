"""``ConcurrencyLimit``: a breaker's cap on its calls in flight in this process (config
``max_concurrent``).

The pure :class:`~llm_circuit_breaker._core.concurrency.LimiterCore` decides, behind a lock
held only to count (never across a call or a wait). A call over the limit gets a place in line,
handed to the shells as a :class:`Wait` whose permit is :data:`QUEUED`; the breaker's ``wait``
/ ``await_slot`` bring it here, where the caller sleeps until a finished call hands its slot
on (a thread on an event, an asyncio task on a future, a trio task on an event; the loop is
never blocked), at most ``throttle_max_wait`` seconds on the breaker's clock, then gets
``ThrottledError`` with reason ``"concurrency"``. The circuit (and its throttle) admits the call
once it holds a slot. Every report of a call gives the slot back: a success, a failure, an
ignored or abandoned call (a closed stream, a cancelled task).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from llm_circuit_breaker._core.concurrency import LimiterCore, Signal
from llm_circuit_breaker._core.state import Outcome
from llm_circuit_breaker._core.throttle import Wait
from llm_circuit_breaker.breaker.clock import TimeSource, running_library
from llm_circuit_breaker.config import CircuitBreakerConfig
from llm_circuit_breaker.errors import ThrottledError

if TYPE_CHECKING:
    from llm_circuit_breaker.breaker.circuit import Entry
    from llm_circuit_breaker.breaker.telemetry import Telemetry

__all__ = ["ABANDONED", "QUEUED", "ConcurrencyLimit"]

# Set (to a threading.Event) by with_hedging in an attempt's thread: once it is up another
# attempt won, and a loser that got its slot in flight only then gives it back uncalled.
ABANDONED: ContextVar[threading.Event | None] = ContextVar(
    "llm_circuit_breaker_abandoned", default=None
)

# The permit of a Wait that stands in line for a slot in flight (not for a throttle slot).
QUEUED = -3
# Under a fake clock the deadline is looked at this often (real seconds) while waiting: the
# clock moves when a test says so, not while a waiter sleeps.
_POLL = 0.01

Waker = Callable[[], object]


def _overloaded(error: BaseException | None) -> bool:
    """A 529, an "overloaded" answer or a timeout: too many calls in flight."""
    if error is None:
        return False
    if isinstance(error, TimeoutError):
        return True
    from llm_circuit_breaker._judge.classify import classify
    from llm_circuit_breaker._judge.kinds import ErrorKind

    return classify(error).kind in (ErrorKind.OVERLOADED, ErrorKind.TIMEOUT)


def _resolve(future: Any) -> None:
    if not future.done():
        future.set_result(None)


class ConcurrencyLimit:
    """The slots in flight of one breaker, and the callers waiting for one."""

    __slots__ = (
        "_core",
        "_enforced",
        "_enter",
        "_line",
        "_lock",
        "_succeed",
        "_telemetry",
        "_time",
        "_wakers",
        "max_wait",
        "name",
    )

    def __init__(
        self,
        name: str,
        config: CircuitBreakerConfig,
        source: TimeSource,
        telemetry: Telemetry,
        enter: Callable[[], Entry],
        record_success: Callable[[int], None],
    ) -> None:
        limit = config.max_concurrent
        if limit is None:  # pragma: no cover - made only for a configured limit
            raise ValueError("no max_concurrent configured")
        self.name = name
        self._core = LimiterCore(
            limit, config.max_concurrent_ceiling, latency_target=config.slow_call_duration
        )
        self._lock = threading.Lock()
        self._time = source
        self._telemetry = telemetry
        self._enter = enter  # the circuit's admission, asked once a slot is held
        self._succeed = record_success
        self._enforced = config.enabled
        self.max_wait = config.throttle_max_wait
        self._line: dict[Wait, int] = {}  # a place in line handed out -> its ticket
        self._wakers: dict[int, Waker] = {}  # ticket -> how to wake its waiter

    # -- admitting ---------------------------------------------------------------------------

    def enter(self) -> Entry:
        """A slot and the circuit's entry, or a place in line (a ``Wait`` with permit
        ``QUEUED``), or ``ThrottledError`` when the caller may not wait."""
        early = self._take()
        return self._admit() if early is None else early

    async def aenter(self, enter: Callable[[], Awaitable[Entry]]) -> Entry:
        """:meth:`enter` for a circuit in an asyncio store (``enter`` admits there)."""
        early = self._take()
        return self._checked(await enter()) if early is None else early

    def _take(self) -> Wait | ThrottledError | None:
        """None: a slot is held; else the place in line or the refusal."""
        shadow = False
        with self._lock:
            now = self._time.now()
            took = self._core.take(now)
            if not took and not self._enforced:  # metrics-only: count it, let it through
                took = shadow = self._core.take(now, force=True)
            if not took and self.max_wait > 0:
                wait = Wait(QUEUED, self.max_wait)
                self._line[wait] = self._core.enqueue()
                return wait
        if shadow:
            self._telemetry.count_throttle_refusal("concurrency")
        if not took:
            return self._refuse()
        return None

    def _admit(self) -> Entry:
        """The circuit's say once a slot is held; a refusal gives the slot back."""
        return self._checked(self._enter())

    def _checked(self, entry: Entry) -> Entry:
        if entry.__class__ is not int and entry.__class__ is not Wait:
            self._free(Signal.NEUTRAL)
        return entry

    def _admitted(self, entry: Entry | None = None) -> int | Wait:
        """:meth:`_admit` for a caller that waited: a refusal is raised."""
        entry = self._admit() if entry is None else self._checked(entry)
        if isinstance(entry, (int, Wait)):
            return entry
        raise entry

    def _refuse(self) -> ThrottledError:
        self._telemetry.count_throttle_refusal("concurrency")
        with self._lock:
            hint = self._core.hint()
        return ThrottledError(self.name, hint, "concurrency")

    def give_up(self, wait: Wait) -> bool:
        """A caller that may not wait drops ``wait``: True for a place in line (a refusal,
        counted); a throttle slot's call slot is given back (False: the throttle's turn)."""
        if wait.permit != QUEUED:
            self._free(Signal.NEUTRAL)
            return False
        with self._lock:
            ticket = self._line.pop(wait, None)
            freed = [] if ticket is None else self._core.cancel(ticket, self._time.now())
            wakers = self._wakers_of(freed)
        self._wake(wakers)
        self._telemetry.count_throttle_refusal("concurrency")
        return True

    # -- waiting -----------------------------------------------------------------------------

    def _join(self, wait: Wait, waker: Waker) -> tuple[int, bool]:
        """Register how to wake the waiter of ``wait``: its ticket, and whether a slot was
        granted already."""
        with self._lock:
            ticket = self._line.pop(wait)
            if self._core.claim(ticket):
                return ticket, True
            self._wakers[ticket] = waker
            return ticket, False

    def _leave(self, ticket: int) -> bool:
        """The waiter of ``ticket`` stops waiting: True if it holds a slot, else it left the
        line."""
        with self._lock:
            self._wakers.pop(ticket, None)
            if self._core.claim(ticket):
                return True
            self._core.cancel(ticket, self._time.now())
            return False

    def _abandon(self, ticket: int) -> None:
        """The waiter of ``ticket`` was interrupted: its place or its slot goes to others."""
        with self._lock:
            self._wakers.pop(ticket, None)
            wakers = self._wakers_of(self._core.cancel(ticket, self._time.now()))
        self._wake(wakers)

    def _remaining(self, deadline: float) -> float:
        """Seconds to wait before looking again (<= 0: the deadline passed)."""
        remaining = deadline - self._time.now()
        if self._time.now is time.monotonic or remaining <= 0:
            return remaining
        return min(remaining, _POLL)  # a fake clock: look again soon

    def wait(self, wait: Wait, throttle_wait: Callable[[Wait], int]) -> int:
        """Sleep (threads) for a slot in flight if ``wait`` is a place in line, then wait for
        the throttle's slot with ``throttle_wait``; the permit. A throttle that gives up gives
        the call slot back."""
        if wait.permit == QUEUED:
            event = threading.Event()
            ticket, granted = self._join(wait, event.set)
            if not granted:
                deadline = self._time.now() + self.max_wait
                try:
                    while not event.is_set():
                        remaining = self._remaining(deadline)
                        if remaining <= 0:
                            break
                        event.wait(remaining)
                except BaseException:  # an interrupt, a greenlet killed
                    self._abandon(ticket)
                    raise
                if not self._leave(ticket):
                    raise self._refuse()
            abandoned = ABANDONED.get()
            if abandoned is not None and abandoned.is_set():  # a hedge that lost meanwhile
                self._free(Signal.NEUTRAL)
                raise ThrottledError(self.name, 0.0, "concurrency")
            entry = self._admitted()
            if isinstance(entry, int):
                return entry
            wait = entry
        try:
            return throttle_wait(wait)
        except BaseException:
            self._free(Signal.NEUTRAL)
            raise

    async def await_slot(
        self,
        wait: Wait,
        throttle_wait: Callable[[Wait], Awaitable[int]],
        enter: Callable[[], Awaitable[Entry]] | None = None,
    ) -> int:
        """:meth:`wait` for tasks (asyncio or trio): the loop runs on meanwhile; cancelling
        gives the place in line or the slot back. ``enter``: the admission of a circuit in an
        asyncio store."""
        if wait.permit == QUEUED:
            await self._await_turn(wait)
            entry = self._admitted(None if enter is None else await enter())
            if isinstance(entry, int):
                return entry
            wait = entry
        try:
            return await throttle_wait(wait)
        except BaseException:
            self._free(Signal.NEUTRAL)
            raise

    async def _await_turn(self, wait: Wait) -> None:
        if running_library() == "trio":
            import trio

            event = trio.Event()
            token = trio.lowlevel.current_trio_token()

            def wake_trio() -> None:
                try:
                    token.run_sync_soon(event.set)
                except trio.RunFinishedError:  # pragma: no cover - the run ended
                    pass

            ticket, granted = self._join(wait, wake_trio)
            is_set: Callable[[], bool] = event.is_set

            async def sleep(seconds: float) -> None:
                with trio.move_on_after(seconds):
                    await event.wait()

        else:
            import asyncio

            loop = asyncio.get_running_loop()
            future = loop.create_future()

            def wake_asyncio() -> None:
                try:
                    loop.call_soon_threadsafe(_resolve, future)
                except RuntimeError:  # pragma: no cover - the loop is closed
                    pass

            ticket, granted = self._join(wait, wake_asyncio)
            is_set = future.done

            async def sleep(seconds: float) -> None:
                await asyncio.wait((future,), timeout=seconds)

        if granted:
            return
        deadline = self._time.now() + self.max_wait
        try:
            while not is_set():
                remaining = self._remaining(deadline)
                if remaining <= 0:
                    break
                await sleep(remaining)
        except BaseException:  # cancelled
            self._abandon(ticket)
            raise
        if not self._leave(ticket):
            raise self._refuse()

    # -- reports -----------------------------------------------------------------------------

    def _wakers_of(self, tickets: list[int]) -> list[Waker]:
        """How to wake the waiters granted ``tickets`` (lock held)."""
        return [waker for ticket in tickets if (waker := self._wakers.pop(ticket, None))]

    @staticmethod
    def _wake(wakers: list[Waker]) -> None:
        for waker in wakers:
            waker()

    def _free(self, signal: Signal) -> None:
        """A call gave its slot back: the next in line gets it."""
        with self._lock:
            wakers = self._wakers_of(self._core.release(self._time.now(), signal))
        if wakers:
            self._wake(wakers)

    def record_success(self, permit: int) -> None:
        """The circuit's ``record_success``, then the slot is given back."""
        try:
            self._succeed(permit)
        finally:
            self._free(Signal.SUCCESS)

    def released(self, outcome: Outcome, error: BaseException | None) -> None:
        """A call reported ``outcome``: its slot is given back (an overload tells an
        adaptive limit to shrink)."""
        if outcome is Outcome.SUCCESS:
            signal = Signal.SUCCESS
        elif outcome is Outcome.FAILURE and self._core.adaptive and _overloaded(error):
            signal = Signal.OVERLOAD
        else:
            signal = Signal.NEUTRAL
        self._free(signal)

    # -- reading -----------------------------------------------------------------------------

    @property
    def busy(self) -> bool:
        """Calls in flight or waiting (a registry must not drop the breaker then)."""
        core = self._core
        return bool(core.in_flight or core.queue)

    def locked(self) -> bool:
        """Whether this limit's lock is held now (by any thread)."""
        return self._lock.locked()

    def view(self) -> dict[str, int | str]:
        """``{limit, in_flight, waiting, mode}`` now."""
        with self._lock:
            return self._core.view()
