"""``with_hedging``: when an answer is slow to start, ask again in parallel and keep the first.

::

    @circuit_breaker("openai")
    async def ask(prompt: str) -> AsyncIterator[str]: ...

    fast_ask = with_hedging(ask, ask, delay="p90", max_attempts=3)

The primary starts at once; while no attempt has answered -- for a stream, yielded its first
*content* item (:func:`~llm_circuit_breaker._judge.content.is_content`: role-only deltas,
``ping`` and lifecycle events do not count) -- for ``delay`` seconds after the last one
started, the next target starts, up to ``max_attempts`` in flight. The first answer wins; the
other attempts are cancelled (a task cancelled and its stream closed; in a thread, its stream
closed once it answers, a plain result discarded), so their breakers count them as ignored.
A provider's fault (the verdict's, as for ``with_fallbacks``) starts the next target at once;
the caller's fault is raised. A target whose breaker is OPEN, or throttled beyond its wait,
refuses without a call, which is a provider's fault like any other.

``delay="p90"`` (``"p50"``..``"p99"``) reads that quantile of the primary breaker's recent
times to first item (the last 200, kept by :func:`~llm_circuit_breaker.breaker.telemetry.
latency_of`; ``delay_default`` until 20 are known). Every attempt that answers adds its time;
an attempt cancelled after waiting longer than the delay adds the delay (it took at least
that long, and its true time would only move the quantile the same way), so the slow tail
keeps its weight although its attempts never finish.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import logging
import math
import queue
import re
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar, cast

from llm_circuit_breaker import _validate as check
from llm_circuit_breaker._core.state import Outcome
from llm_circuit_breaker._judge.content import is_content
from llm_circuit_breaker._judge.refusal import refusal_of
from llm_circuit_breaker.breaker import clock as time_source
from llm_circuit_breaker.breaker.breaker import CircuitBreaker
from llm_circuit_breaker.breaker.clock import running_library
from llm_circuit_breaker.breaker.concurrency import ABANDONED
from llm_circuit_breaker.breaker.telemetry import Latency, latency_of
from llm_circuit_breaker.strategies import tracing
from llm_circuit_breaker.strategies.fallbacks import (
    _PROVIDER_FAULTS,
    _distinct,
    _name,
    aclose_left,
)
from llm_circuit_breaker.strategies.gate import LOST, PLAIN, is_stream
from llm_circuit_breaker.strategies.kinds import CallableKind, kind_of

if TYPE_CHECKING:
    import asyncio

__all__ = ["HedgeStats", "with_hedging"]

logger = logging.getLogger("llm_circuit_breaker.hedge")

F = TypeVar("F", bound=Callable[..., Any])

_QUANTILE = re.compile(r"p([5-9][0-9])")
MIN_SAMPLES = 20  # times to first item needed before a quantile delay is trusted

FIRST, HEDGE, FAILOVER = "first", "hedge", "failover"  # why an attempt started


@dataclasses.dataclass
class HedgeStats:
    """What a hedged callable did since it was made (live counts).

    ``attempts`` counts every attempt started, the first of each call included: a hedge is
    an extra attempt. ``hedges`` are the attempts started because those in flight were slow,
    ``failovers`` those started at once after a provider's fault; ``wins`` counts, per target
    name, the calls it answered first.
    """

    calls: int = 0
    attempts: int = 0
    hedges: int = 0
    failovers: int = 0
    wins: dict[str, int] = dataclasses.field(default_factory=dict)


class _Hedge:
    """The targets, the delay rule and the stats of one ``with_hedging`` (shared by calls)."""

    def __init__(
        self,
        targets: tuple[Callable[..., Any], ...],
        delay: float | None,
        quantile: float | None,
        max_attempts: int,
        delay_default: float,
    ) -> None:
        self.targets = targets
        self.names = _distinct([_name(t) for t in targets])
        self.delay = delay
        self.quantile = quantile
        self.max_attempts = max_attempts
        self.total = max(max_attempts, len(targets))  # attempts one call may start
        self.delay_default = delay_default
        self.stats = HedgeStats(wins=dict.fromkeys(self.names, 0))
        self.lock = threading.Lock()
        self.own = [Latency() for _ in targets]  # for a target without a breaker

    def latency(
        self, index: int, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[Any, Latency]:
        """The breaker of target ``index`` for this call (None without one), and its record."""
        target = self.targets[index]
        breaker = getattr(target, "breaker", None)
        breaker_for = getattr(target, "breaker_for", None)
        if breaker is None and callable(breaker_for):
            try:
                breaker = breaker_for(*args, **kwargs)  # scoped: this call's breaker
            except Exception:  # a missing argument: the call itself will say so
                breaker = None
        if breaker is not None and isinstance(getattr(breaker, "name", None), str):
            try:
                return breaker, latency_of(breaker)
            except TypeError:  # not weakly referable: no breaker of ours
                pass
        return None, self.own[index]


class _Call:
    """One call's attempts: which target comes next, the delay, the errors so far."""

    def __init__(self, hedge: _Hedge, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.hedge = hedge
        self.args = args
        self.kwargs = kwargs
        # Each target's breaker for this call and its record, looked up when first needed (a
        # scoped alternative that never runs makes no breaker).
        self.records: list[tuple[Any, Latency] | None] = [None] * len(hedge.targets)
        if hedge.quantile is None:
            self.delay = cast("float", hedge.delay)
        else:
            found = self.record(0)[1].first_item.quantile(hedge.quantile, minimum=MIN_SAMPLES)
            self.delay = hedge.delay_default if found is None else found
        self.started = 0
        self.last_start = 0.0
        self.why: list[str] = []
        self.errors: list[Exception] = []
        self.hedging = True  # False once the retry budget refused a hedge
        with hedge.lock:
            hedge.stats.calls += 1

    @property
    def can_start(self) -> bool:
        return self.started < self.hedge.total

    @property
    def can_hedge(self) -> bool:
        return self.hedging and self.started < self.hedge.total

    def pay_for_hedge(self) -> bool:
        """Whether the next target's breaker's retry budget pays for a hedge (a hedge is an
        extra attempt); once it cannot, this call starts no more hedges. A target that will
        refuse without a call (OPEN, or throttled beyond its wait) costs nothing: it is
        skipped as a failed attempt, and the next one starts at once."""
        breaker = self.record(self.slot(self.started))[0]
        if breaker is not None and not _refuses(breaker) and not breaker.try_spend_retry():
            self.hedging = False
        return self.hedging

    def target(self, attempt: int) -> Callable[..., Any]:
        return self.hedge.targets[self.slot(attempt)]

    def slot(self, attempt: int) -> int:
        """Which target attempt ``attempt`` runs: the targets are used in turn."""
        return attempt % len(self.hedge.targets)

    def record(self, slot: int) -> tuple[Any, Latency]:
        """Target ``slot``'s breaker for this call (None without one) and its record."""
        found = self.records[slot]
        if found is None:
            found = self.records[slot] = self.hedge.latency(slot, self.args, self.kwargs)
        return found

    def start(self, why: str) -> tuple[int, float]:
        """Count the next attempt; its number and when it started."""
        hedge, attempt = self.hedge, self.started
        self.started += 1
        self.why.append(why)
        with hedge.lock:
            hedge.stats.attempts += 1
            if why == HEDGE:
                hedge.stats.hedges += 1
            elif why == FAILOVER:
                hedge.stats.failovers += 1
        if why == HEDGE:
            breaker, record = self.record(self.slot(attempt))
            record.hedge_started()
            self._announce(attempt, breaker)
        self.last_start = time_source.now()
        return attempt, self.last_start

    def answered(self, attempt: int, started_at: float) -> None:
        """Keep the attempt's time to first item (it answered, winner or not)."""
        record = self.record(self.slot(attempt))[1]
        record.first_item.add(time_source.now() - started_at)

    def cancelled(self, attempt: int, started_at: float) -> None:
        """An attempt stopped before it answered: if it had waited longer than the delay,
        count it as taking the delay (a lower bound that keeps the slow tail's weight)."""
        if time_source.now() - started_at >= self.delay:
            self.record(self.slot(attempt))[1].first_item.add(self.delay)

    def won(self, attempt: int) -> None:
        hedge = self.hedge
        with hedge.lock:
            hedge.stats.wins[hedge.names[self.slot(attempt)]] += 1
        if self.why[attempt] == HEDGE:
            self.record(self.slot(attempt))[1].hedge_won()

    def failed(self, attempt: int, exc: BaseException) -> None:
        """Keep a provider's fault and go on; raise the caller's fault."""
        if not _provider_fault(exc):
            raise exc
        self.errors.append(cast("Exception", exc))
        name = self.hedge.names[self.slot(attempt)]
        logger.debug("hedging: %r failed (%s)", name, type(exc).__name__)

    def exhausted(self) -> Exception:
        """The error to raise when no attempt answered: the last one's."""
        return self.errors[-1]

    def _announce(self, attempt: int, breaker: Any) -> None:
        name = breaker.name if breaker is not None else self.hedge.names[self.slot(attempt)]
        logger.debug("hedging: no answer within %.3gs; starting %r", self.delay, name)
        trace = sys.modules.get("opentelemetry.trace")  # loaded only if the app uses it
        if trace is None:
            return
        span = trace.get_current_span()
        if span.is_recording():
            span.add_event(
                "llm_circuit_breaker.hedge",
                {
                    "llm_circuit_breaker.name": name,
                    "llm_circuit_breaker.hedge.attempt": attempt + 1,
                    "llm_circuit_breaker.hedge.delay_s": self.delay,
                },
            )


def _refuses(breaker: Any) -> bool:
    """Whether ``breaker`` would refuse a call now without making it (its circuit OPEN, or
    its throttle paused beyond its wait); False when it cannot say."""
    try:
        if breaker.refusal_now() is not None:
            return True
        paused = breaker.throttle.get("paused_for") or 0.0
        return bool(paused > breaker.config.throttle_max_wait)
    except Exception:  # not one of ours, a store that cannot say: the attempt finds out
        return False


def _provider_fault(exc: BaseException) -> bool:
    """Whether another attempt may answer where this one failed (the verdict's answer, as
    ``with_fallbacks`` reads it; a context-length error is the caller's)."""
    if not isinstance(exc, Exception):
        return False  # KeyboardInterrupt, cancellation ...
    if refusal_of(exc) is not None:
        return True
    from llm_circuit_breaker._judge.verdict import judge  # loaded by the first failure

    verdict = judge(exc)
    return verdict.outcome in (Outcome.FAILURE, Outcome.THROTTLED) or (
        verdict.kind.value in _PROVIDER_FAULTS
    )


def _delay_rule(delay: object) -> tuple[float | None, float | None]:
    """``delay`` as (seconds, None) or (None, quantile)."""
    if isinstance(delay, str):
        found = _QUANTILE.fullmatch(delay)
        if found is None:
            raise ValueError(
                f'with_hedging.delay must be seconds or a quantile "p50".."p99", got {delay!r}'
            )
        return None, int(found.group(1)) / 100
    return check.seconds("with_hedging", "delay", delay, allow_zero=True), None


def with_hedging(
    primary: F,
    *alternatives: Callable[..., Any],
    delay: float | str = 1.0,
    max_attempts: int = 2,
    delay_default: float = 1.0,
) -> F:
    """A callable of the same kind as ``primary`` (sync, async, generator, async generator)
    that starts ``primary`` and, while nothing has answered ``delay`` seconds after the last
    attempt started, the next target (``alternatives`` in order; the same function may be
    listed again, and the targets are used again in turn while ``max_attempts`` allows), up
    to ``max_attempts`` in flight. The first answer wins: a value, or a stream's first
    content item; the others are cancelled and count as ignored.

    ``delay`` is seconds (0: all at once) or a quantile of the primary breaker's recent time
    to first item, ``"p50"``..``"p99"`` (``delay_default`` until 20 times are known).
    Coroutine functions and async generators run their attempts as tasks (asyncio's, or a
    trio nursery's under trio); plain functions and generators in threads (each attempt in a
    thread of its own, so that the caller can take the first answer; with
    ``max_attempts=1`` in the caller's thread). When no attempt
    answered, the last attempt's error is raised.

    The result exposes ``.hedge_stats`` (:class:`HedgeStats`).
    """
    targets: tuple[Callable[..., Any], ...] = (primary, *alternatives)
    for target in targets:
        if not callable(target):
            raise TypeError(f"with_hedging takes callables, got {target!r}")
    kinds = {kind_of(t) for t in targets}
    if len(kinds) > 1:
        raise TypeError(
            "with_hedging targets must be of one kind (all sync functions, all coroutine "
            f"functions, all generators or all async generators), got {sorted(map(str, kinds))}"
        )
    fixed, quantile = _delay_rule(delay)
    max_attempts = check.count("with_hedging", "max_attempts", max_attempts, 1)
    delay_default = check.seconds("with_hedging", "delay_default", delay_default, allow_zero=True)
    hedge = _Hedge(targets, fixed, quantile, max_attempts, delay_default)
    wrapper = {
        CallableKind.ASYNC_GENERATOR: _async_gen_hedge,
        CallableKind.COROUTINE: _async_hedge,
        CallableKind.GENERATOR: _gen_hedge,
        CallableKind.PLAIN: _sync_hedge,
    }[kinds.pop()](hedge)
    functools.update_wrapper(wrapper, primary)
    vars(wrapper)["hedge_stats"] = hedge.stats
    return cast("F", wrapper)


# -- asyncio: attempts as tasks ----------------------------------------------------------------


def _async_hedge(hedge: _Hedge) -> Callable[..., Any]:
    async def call(*args: Any, **kwargs: Any) -> Any:
        if tracing.hook is not None and tracing.passing() is not call:
            return await tracing.hook.acall(call, None, args, kwargs)
        run = _Call(hedge, args, kwargs)

        async def attempt(number: int) -> Any:
            result = await run.target(number)(*args, **kwargs)
            if result.__class__ not in PLAIN and hasattr(result, "__anext__"):
                result = await _async_until_content(result)  # a returned stream
            return result

        number, result = await _async_race(run, attempt)
        run.won(number)
        return result

    return call


def _async_gen_hedge(hedge: _Hedge) -> Callable[..., Any]:
    async def call(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        if tracing.hook is not None and tracing.passing() is not call:
            async for item in tracing.hook.agen(call, None, args, kwargs):
                yield item
            return
        run = _Call(hedge, args, kwargs)

        async def attempt(number: int) -> AsyncReplayed:
            return await _async_until_content(run.target(number)(*args, **kwargs))

        number, stream = await _async_race(run, attempt)
        run.won(number)
        try:
            async for item in stream:
                yield item
        finally:
            await stream.aclose()

    return call


async def _async_race(run: _Call, attempt: Callable[[int], Awaitable[Any]]) -> tuple[int, Any]:
    """Run attempts as tasks until one answers: its number and its result."""
    if running_library() == "trio":
        return await _trio_race(run, attempt)
    import asyncio  # loaded already: a coroutine is running

    tasks: dict[asyncio.Future[Any], tuple[int, float]] = {}

    async def timed(number: int, started_at: float) -> Any:
        result = await attempt(number)
        run.answered(number, started_at)
        return result

    def launch(why: str) -> None:
        number, started_at = run.start(why)
        tasks[asyncio.ensure_future(timed(number, started_at))] = (number, started_at)

    launch(FIRST)
    try:
        while True:
            timeout = None
            if len(tasks) < run.hedge.max_attempts and run.can_hedge:
                timeout = max(0.0, run.last_start + run.delay - time_source.now())
            faked = timeout is not None and _faked()
            done, _ = await asyncio.wait(
                set(tasks), timeout=0.0 if faked else timeout, return_when=asyncio.FIRST_COMPLETED
            )
            if not done and faked:  # the delay passes at once on a fake clock
                await time_source.async_sleep(timeout or 0.0)
                done = {task for task in tasks if task.done()}
            if not done:
                if run.pay_for_hedge():
                    launch(HEDGE)
                continue
            ordered = sorted(done, key=lambda task: tasks[task][0])
            for task in ordered:
                if not task.cancelled() and task.exception() is None:
                    number = tasks.pop(task)[0]
                    return number, task.result()
            for task in ordered:
                number = tasks.pop(task)[0]
                run.failed(number, asyncio.CancelledError() if task.cancelled() else _error(task))
                if run.can_start:
                    launch(FAILOVER)  # at once, in place of the attempt that failed
            if not tasks:
                raise run.exhausted()
    finally:
        for task, (number, started_at) in tasks.items():
            if not task.done():
                run.cancelled(number, started_at)
            _drop(task)


async def _trio_race(run: _Call, attempt: Callable[[int], Awaitable[Any]]) -> tuple[int, Any]:
    """:func:`_async_race` under trio: attempts in a nursery, each in a cancel scope of its
    own. Nothing is raised inside the nursery (trio would wrap it in an exception group): the
    race's end is kept, the losers cancelled, and the end raised or returned once they are."""
    import trio

    send, receive = trio.open_memory_channel[tuple[int, bool, Any]](math.inf)
    in_flight: dict[int, tuple[float, trio.CancelScope]] = {}
    end: tuple[int, Any] | BaseException | None = None

    async def timed(number: int, started_at: float, scope: trio.CancelScope) -> None:
        with scope:
            try:
                result = await attempt(number)
            except Exception as exc:
                send.send_nowait((number, False, exc))
                return
            run.answered(number, started_at)
            send.send_nowait((number, True, result))

    try:
        async with trio.open_nursery() as nursery:

            def launch(why: str) -> None:
                number, started_at = run.start(why)
                scope = trio.CancelScope()
                in_flight[number] = (started_at, scope)
                nursery.start_soon(timed, number, started_at, scope)

            launch(FIRST)
            try:
                while end is None:
                    timeout = math.inf
                    if len(in_flight) < run.hedge.max_attempts and run.can_hedge:
                        timeout = max(0.0, run.last_start + run.delay - time_source.now())
                    got = None
                    if timeout != math.inf and _faked():  # the delay passes at once
                        with contextlib.suppress(trio.WouldBlock):
                            got = receive.receive_nowait()
                        if got is None:
                            await time_source.async_sleep(timeout)
                            with contextlib.suppress(trio.WouldBlock):
                                got = receive.receive_nowait()
                    else:
                        with trio.move_on_after(timeout):
                            got = await receive.receive()
                    if got is not None:
                        number, answered, value = got
                        del in_flight[number]
                        if answered:
                            end = (number, value)
                            break
                        try:
                            run.failed(number, value)
                        except Exception as exc:  # the caller's fault
                            end = exc
                            break
                        if run.can_start:
                            launch(FAILOVER)
                        elif not in_flight:
                            end = run.exhausted()
                        continue
                    if run.pay_for_hedge():
                        launch(HEDGE)
            finally:
                for number, (started_at, scope) in in_flight.items():
                    run.cancelled(number, started_at)
                    scope.cancel()
    finally:
        send.close()
        while True:  # losers that answered all the same: their streams are closed
            try:
                _, answered, value = receive.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):
                break
            if answered and value.__class__ not in PLAIN and hasattr(value, "aclose"):
                with trio.CancelScope(shield=True):
                    await value.aclose()
    if isinstance(end, BaseException):
        raise end
    assert end is not None  # the loop ends with an answer or an error
    return end


def _error(task: asyncio.Future[Any]) -> BaseException:
    exc = task.exception()
    assert exc is not None  # the caller saw it neither cancelled nor answered
    return exc


# Losing tasks still finishing (their cancellation, closing their streams): a reference keeps
# each alive until then, as asyncio's documentation asks.
_dropped: set[Any] = set()


def _drop(task: asyncio.Future[Any]) -> None:
    """Cancel a losing attempt; close what it gave if it answered all the same."""
    task.cancel()
    _dropped.add(task)
    task.add_done_callback(_close_dropped)


def _close_dropped(task: asyncio.Future[Any]) -> None:
    _dropped.discard(task)
    if task.cancelled() or task.exception() is not None:  # retrieved: nothing is logged
        return
    result = task.result()
    if result.__class__ in PLAIN or not hasattr(result, "aclose"):
        return
    import asyncio

    closing = asyncio.ensure_future(result.aclose())
    _dropped.add(closing)
    closing.add_done_callback(_dropped.discard)


async def _async_until_content(stream: Any) -> AsyncReplayed:
    """Read ``stream`` up to its first content item (or its end): the stream, replaying
    what was read. A failure (or cancellation) closes it first."""
    read: list[Any] = []
    try:
        while True:
            try:
                item = await stream.__anext__()
            except StopAsyncIteration:
                break
            read.append(item)
            if is_content(item):
                break
    except BaseException:
        await _aclose(stream)
        raise
    return AsyncReplayed(stream, read)


async def _aclose(stream: Any) -> None:
    await aclose_left(stream)


class AsyncReplayed:
    """An async stream whose first items were read to pick the winner: those items, then
    the rest; other attributes (``response`` ...) are the stream's own."""

    def __init__(self, stream: Any, read: list[Any]) -> None:
        self._stream = stream
        self._read = read

    def __aiter__(self) -> AsyncReplayed:
        return self

    async def __anext__(self) -> Any:
        if self._read:
            return self._read.pop(0)
        return await self._stream.__anext__()

    async def aclose(self) -> None:
        """Close the stream (a stream closed before its end counts as neither outcome)."""
        self._read.clear()
        await _aclose(self._stream)

    async def __aenter__(self) -> AsyncReplayed:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


# -- threads: plain functions and generators ---------------------------------------------------


def _sync_hedge(hedge: _Hedge) -> Callable[..., Any]:
    def call(*args: Any, **kwargs: Any) -> Any:
        if tracing.hook is not None and tracing.passing() is not call:
            return tracing.hook.call(call, None, args, kwargs)
        run = _Call(hedge, args, kwargs)

        def attempt(number: int) -> Any:
            result = run.target(number)(*args, **kwargs)
            if result.__class__ not in PLAIN and hasattr(result.__class__, "__next__"):
                result = _until_content(result)  # a returned stream
            return result

        number, result = _thread_race(run, attempt)
        run.won(number)
        return result

    return call


def _gen_hedge(hedge: _Hedge) -> Callable[..., Any]:
    def call(*args: Any, **kwargs: Any) -> Iterator[Any]:
        if tracing.hook is not None and tracing.passing() is not call:
            yield from tracing.hook.gen(call, None, args, kwargs)
            return
        run = _Call(hedge, args, kwargs)

        def attempt(number: int) -> Replayed:
            return _until_content(run.target(number)(*args, **kwargs))

        number, stream = _thread_race(run, attempt)
        run.won(number)
        try:
            yield from stream
        finally:
            stream.close()

    return call


class _Outbox:
    """Where attempt threads leave their ends, until the caller stops listening: after
    that, a thread closes what it got itself."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.open = True
        self.queue: queue.SimpleQueue[tuple[int, bool, Any]] = queue.SimpleQueue()

    def put(self, number: int, answered: bool, value: Any) -> bool:
        with self.lock:
            if self.open:
                self.queue.put((number, answered, value))
            return self.open

    def close(self) -> list[tuple[int, bool, Any]]:
        """Stop listening; the ends left unread."""
        with self.lock:
            self.open = False
        left = []
        while not self.queue.empty():  # no thread puts any more
            left.append(self.queue.get_nowait())
        return left


def _thread_race(run: _Call, attempt: Callable[[int], Any]) -> tuple[int, Any]:
    """Run attempts until one answers: its number and its result. Each attempt runs in a
    thread of its own (the caller waits for the first answer), or in the caller's thread
    when only one may be in flight."""
    if run.hedge.max_attempts == 1:
        while True:
            number, started_at = run.start(FAILOVER if run.started else FIRST)
            try:
                result = attempt(number)
            except BaseException as exc:
                run.failed(number, exc)
            else:
                run.answered(number, started_at)
                return number, result
            if not run.can_start:
                raise run.exhausted()

    outbox = _Outbox()
    in_flight: dict[int, float] = {}
    lost = threading.Event()  # up once the race is over: what fails later has only lost

    def work(number: int, started_at: float) -> None:
        LOST.set(lost)  # in this attempt's own copy of the context
        ABANDONED.set(lost)  # a slot in flight that comes after the race is not used
        try:
            result = attempt(number)
        except BaseException as exc:
            outbox.put(number, False, exc)
            return
        run.answered(number, started_at)  # a loser's time counts too
        if not outbox.put(number, True, result):
            _lost(run, number, result)

    def launch(why: str) -> None:
        number, started_at = run.start(why)
        in_flight[number] = started_at
        context = contextvars.copy_context()  # the caller's span, scoped values ...
        threading.Thread(
            target=context.run,
            args=(work, number, started_at),
            name=f"llm-circuit-breaker-hedge-{number}",
            daemon=True,  # a loser stuck on a dead connection must not hold the exit
        ).start()

    launch(FIRST)
    try:
        while True:
            timeout = None
            if len(in_flight) < run.hedge.max_attempts and run.can_hedge:
                timeout = max(0.0, run.last_start + run.delay - time_source.now())
            try:
                if timeout is not None and _faked():  # the delay passes at once
                    try:
                        number, answered, value = outbox.queue.get_nowait()
                    except queue.Empty:
                        time_source.sleep(timeout)
                        number, answered, value = outbox.queue.get_nowait()
                else:
                    number, answered, value = outbox.queue.get(timeout=timeout)
            except queue.Empty:
                if run.pay_for_hedge():
                    launch(HEDGE)
                continue
            del in_flight[number]
            if answered:
                return number, value
            run.failed(number, value)
            if run.can_start:
                launch(FAILOVER)
            elif not in_flight:
                raise run.exhausted()
    finally:
        lost.set()
        for number, answered, value in outbox.close():
            if answered:
                _lost(run, number, value)


def _lost(run: _Call, number: int, result: Any) -> None:
    """A thread's attempt that answered after the race ended: its stream closed (reported
    ignored by its guard), a plain result dropped and its success counted as ignored (the
    thread could not be cancelled, so its breaker counted a success)."""
    _discard(result)
    if result.__class__ in PLAIN or not is_stream(result):
        breaker = run.record(run.slot(number))[0]
        if isinstance(breaker, CircuitBreaker):
            breaker._local.recount_success_as_ignored()


def _faked() -> bool:
    """Whether the library's time source does not really sleep (``llm_clock`` and
    ``frozen_time()`` advance a fake clock, ``instant()`` skips the wait): a hedge delay then
    passes at once, as every wait the library would sleep does."""
    return time_source.SHARED.sleep is not time_source.system_sleep


def _discard(result: Any) -> None:
    if result.__class__ in PLAIN:
        return
    close = getattr(result, "close", None)
    if close is not None:
        try:
            close()
        except Exception:
            logger.exception("hedging: closing a losing attempt's stream raised")


def _until_content(stream: Any) -> Replayed:
    """:func:`_async_until_content` for an iterator."""
    read: list[Any] = []
    try:
        for item in stream:
            read.append(item)
            if is_content(item):
                break
    except BaseException:
        close = getattr(stream, "close", None)
        if close is not None:
            close()
        raise
    return Replayed(stream, read)


class Replayed:
    """:class:`AsyncReplayed` for an iterator."""

    def __init__(self, stream: Any, read: list[Any]) -> None:
        self._stream = stream
        self._read = read

    def __iter__(self) -> Replayed:
        return self

    def __next__(self) -> Any:
        if self._read:
            return self._read.pop(0)
        return next(self._stream)

    def close(self) -> None:
        """Close the stream (a stream closed before its end counts as neither outcome)."""
        self._read.clear()
        close = getattr(self._stream, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> Replayed:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)
