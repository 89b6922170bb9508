"""``Gate``: how one decoration admits calls to its breaker and reports how they ended.

The decorator shells (plain, coroutine, generator and async generator functions) share it:
a shell closes over one :class:`ShellGate` (its only closure cell) and reads what admits its
calls from it (``core``: the breaker's local circuit, read inline, or an :class:`Elsewhere`
whose ``enter`` / ``record_success`` are the breaker's own, bound once); the rarer methods
pass through to the breaker, ``failed`` judges the exception once (:func:`._verdict.judge`)
and reports the verdict, and ``refuse`` is the one refusal path. The ``a``-methods are the
same for a breaker whose circuit lives in an asyncio store; ``awaits_store`` says which a
shell must use.

A function that returns a stream (an iterator or async iterator, such as the openai SDK's
``Stream``) is guarded until the stream ends: :class:`GuardedStream` / :class:`AsyncGuardedStream`
report when it is exhausted, fails or is closed, and check an SDK stream's items for its
provider's final one (:mod:`.._judge.streams`). Under a ``token_budget`` they also read the
items' ``usage`` (openai's last chunk with ``stream_options={"include_usage": True}``, a
Responses ``response.completed``, anthropic's ``message_start`` and ``message_delta``) and
count it when the stream ends: the estimate of the call's arguments for a whole stream that
said nothing, what was said for one that failed or was closed early.
"""

from __future__ import annotations

import sys
import weakref
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from types import CoroutineType, NoneType
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from llm_circuit_breaker._core.throttle import Wait
    from llm_circuit_breaker._judge.verdict import Verdict
    from llm_circuit_breaker.breaker.circuit import Entry, LocalCircuit

from llm_circuit_breaker._core.budget import StreamUsage
from llm_circuit_breaker._core.state import Outcome
from llm_circuit_breaker._core.throttle import TOKEN_COST
from llm_circuit_breaker._judge.streams import ItemWatch
from llm_circuit_breaker.breaker.breaker import CircuitBreaker
from llm_circuit_breaker.config import BreakerRules

__all__ = [
    "PLAIN",
    "ASK",
    "AsyncGuardedStream",
    "Elsewhere",
    "Gate",
    "GuardedStream",
    "ShellGate",
    "aclose_inner",
    "aguard_stream",
    "guard_returned",
    "guard_stream",
    "guarded_later",
    "is_stream",
]

# Set (to a flag) by with_hedging in an attempt's thread: once the flag is up another attempt
# won, and this one's failure is no failure of its provider.
LOST: ContextVar[Any] = ContextVar("llm_circuit_breaker_lost", default=None)

# Results that are never streams, checked first because most results are one of them.
PLAIN = frozenset({str, bytes, dict, list, tuple, int, float, bool, NoneType})
# Results that are neither a stream nor a completion: reported a success without a look (a
# dict may be a completion's ``model_dump()``, judged by ``no_answer``).
SCALARS = PLAIN - {dict}


def no_answer(result: object) -> bool:
    """Whether ``result`` is a completion that answers nothing (``results.non_answer``:
    empty, spent on reasoning, filtered, broken tool arguments): the breaker ignores it, a
    non-answer being no outage (nor proof of health). Judged: a dict with a completion's
    keys, an object of the openai or anthropic SDK; anything else is an answer without a
    look. The judge (and ``json``) is loaded by the first completion: ``import
    llm_circuit_breaker`` loads neither."""
    cls = result.__class__
    if cls is dict:  # a completion's dict has its choices, content blocks or output items
        keys = cast("dict[str, object]", result)
        if "choices" not in keys and "content" not in keys and "output" not in keys:
            return False
    else:  # an object: the openai and anthropic SDKs' alone (their classes, remembered)
        judged = _JUDGED.get(cls)
        if judged is None:
            module = getattr(cls, "__module__", None)
            judged = module.__class__ is str and module.partition(".")[0] in _SDKS
            if len(_JUDGED) < _MAX_JUDGED:
                _JUDGED[cls] = judged
        if not judged:
            return False
    judge = _judge_answer
    if judge is None:
        judge = _load_judge()
    return judge(result) is not None


_judge_answer: Callable[[object], object] | None = None
_SDKS = frozenset({"openai", "anthropic"})
_JUDGED: dict[type, bool] = {}  # whether a result class's objects are completions to judge
_MAX_JUDGED = 1024


def _load_judge() -> Callable[[object], object]:
    global _judge_answer
    from llm_circuit_breaker._judge.results import non_answer

    _judge_answer = non_answer
    return non_answer


def is_stream(result: object) -> bool:
    """Whether ``result`` is an iterator or async iterator to guard until it ends (the shells
    skip the ``PLAIN`` types before asking)."""
    cls = result.__class__
    return hasattr(cls, "__next__") or hasattr(cls, "__anext__")


def guarded_later(result: object) -> bool:
    """Whether a sync function's ``result`` is guarded past its return: a stream (until it
    ends) or a coroutine (until it is awaited: a lambda that returns an SDK's coroutine).
    The shells skip the ``PLAIN`` types before asking."""
    cls = result.__class__
    return hasattr(cls, "__next__") or hasattr(cls, "__anext__") or cls is CoroutineType


def guard_returned(result: Any, gate: Gate, permit: int, request: object = None) -> Any:
    """:func:`guard_stream`, or for a coroutine a coroutine that reports how it ended."""
    if result.__class__ is CoroutineType:
        started: list[bool] = []
        guarded = _awaited(result, gate, permit, request, started)
        # never awaited (a task cancelled before it ran, a coroutine dropped): the permit is
        # given back when it is collected, as a dropped stream's is
        weakref.finalize(guarded, _never_awaited, started, result, gate.breaker, permit)
        return guarded
    return guard_stream(result, gate, permit, request)


def _never_awaited(
    started: list[bool], awaitable: Any, breaker: CircuitBreaker, permit: int
) -> None:
    if not started:
        awaitable.close()  # the function's own coroutine: closed, no "never awaited" warning
        breaker.dropped(permit)


async def _awaited(
    awaitable: Any, gate: Gate, permit: int, request: object, started: list[bool]
) -> Any:
    """Await what a sync function returned, reporting to its breaker as a coroutine
    function's shell does (a stream it gives is guarded to its end)."""
    started.append(True)
    try:
        result = await awaitable
    except BaseException as exc:
        gate.failed(permit, exc)
        raise
    if result.__class__ not in PLAIN and is_stream(result):
        return aguard_stream(result, gate, permit, request)
    gate.breaker.charge(result, request)
    if result.__class__ not in SCALARS and no_answer(result):
        gate.abandoned(permit)  # neither outcome: not an outage
    else:
        gate.succeeded(permit)
    return result


def guard_stream(result: Any, gate: Gate, permit: int, request: object = None) -> Any:
    """``result`` (a stream a sync function returned) guarded by the wrapper that fits its
    kind: :class:`GuardedStream` for an iterator, :class:`AsyncGuardedStream` for an async
    iterator (a plain function may return one: it is iterated with ``async for``)."""
    if hasattr(result.__class__, "__next__"):
        return GuardedStream(result, gate, permit, request)
    return AsyncGuardedStream(result, gate, permit, request)


def aguard_stream(result: Any, gate: Gate, permit: int, request: object = None) -> Any:
    """:func:`guard_stream` for a stream a coroutine function returned: an async iterator
    (or any stream of a breaker on an asyncio store, whose reports are awaited) is guarded
    by :class:`AsyncGuardedStream`, a plain iterator by :class:`GuardedStream` (iterated with
    ``for``)."""
    if hasattr(result.__class__, "__anext__") or gate.awaits_store:
        return AsyncGuardedStream(result, gate, permit, request)
    return GuardedStream(result, gate, permit, request)


async def aclose_inner(inner: Any) -> None:
    """Close what an async stream wraps: its ``aclose()`` (awaited), else its ``close()``
    (awaited when it returns an awaitable)."""
    for name in ("aclose", "close"):
        close = getattr(inner, name, None)
        if close is not None:
            result = close()
            if hasattr(result, "__await__"):
                await result
            return


def _no_fallback(*args: object, **kwargs: object) -> Any:  # pragma: no cover - refuse() raised
    raise RuntimeError("no fallback")


def _headers_of(exc: BaseException) -> Any:
    from llm_circuit_breaker._judge.probe import response_headers

    return response_headers(exc)


class Gate:
    """A breaker plus one decoration's rules and fallback."""

    __slots__ = ("breaker", "fallback", "rules")

    def __init__(
        self,
        breaker: CircuitBreaker,
        rules: BreakerRules,
        fallback: Callable[..., Any] | None = None,
    ) -> None:
        self.breaker = breaker
        self.rules = rules
        self.fallback = fallback

    @property
    def awaits_store(self) -> bool:
        """Whether the breaker's circuit lives in an asyncio store: the ``a``-methods then."""
        return self.breaker.is_async

    def enter(self) -> Entry:
        """Admit one call (the breaker's ``enter``)."""
        return self.breaker.enter()

    def succeeded(self, permit: int) -> None:
        """Report that the call holding ``permit`` succeeded."""
        self.breaker.record_success(permit)

    # The rest pass through to the breaker when called: rare (a throttle's wait) or awaiting a
    # store anyway, they keep no bound method per decoration.

    def aenter(self) -> Awaitable[Entry]:
        """``enter`` of a breaker on an asyncio store (awaited)."""
        return self.breaker.aenter()

    def asucceeded(self, permit: int) -> Awaitable[None]:
        """``succeeded`` of a breaker on an asyncio store (awaited)."""
        return self.breaker.arecord_success(permit)

    def wait(self, wait: Wait) -> int:
        """Sleep until a throttle slot (sync shells): the permit."""
        return self.breaker.wait(wait)

    def await_slot(self, wait: Wait) -> Awaitable[int]:
        """The same with the running library's sleep (awaited)."""
        return self.breaker.await_slot(wait)

    def verdict(self, exc: BaseException) -> Verdict:
        """What ``exc`` means for this breaker under this decoration's rules."""
        from llm_circuit_breaker._judge.verdict import judge  # loaded by the first failure

        breaker = self.breaker
        verdict = judge(exc, breaker.config, rules=self.rules, name=breaker.name)
        lost = LOST.get()
        if lost is not None and lost.is_set():  # a hedge's loser: never a failure
            from dataclasses import replace

            return replace(verdict, outcome=Outcome.IGNORED, open_for=None)
        return verdict

    def failed(self, permit: int, exc: BaseException) -> None:
        """Report that the call holding ``permit`` raised ``exc`` (a rate limit's headers go
        to the throttle first: they say how full the provider's bucket is)."""
        v = self.verdict(exc)
        if v.outcome is Outcome.THROTTLED:
            self.breaker.observe(_headers_of(exc))
        self.breaker.record(
            permit, v.outcome, open_for=v.open_for, why=v.reason, error=exc, hint=v.hint
        )

    async def afailed(self, permit: int, exc: BaseException) -> None:
        """``failed`` for a breaker on an asyncio store."""
        v = self.verdict(exc)
        if v.outcome is Outcome.THROTTLED:
            await self.breaker.aobserve(_headers_of(exc))
        await self.breaker.arecord(
            permit, v.outcome, open_for=v.open_for, why=v.reason, error=exc, hint=v.hint
        )

    def abandoned(self, permit: int) -> None:
        """Report a call whose result the caller stopped reading (neither success nor failure)."""
        self.breaker.record(permit, Outcome.IGNORED)

    async def aabandoned(self, permit: int) -> None:
        """``abandoned`` for a breaker on an asyncio store."""
        await self.breaker.arecord(permit, Outcome.IGNORED)

    def refuse(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """What a refused call returns: the fallback's result (the shells raise the refusal
        themselves when there is no fallback)."""
        return (self.fallback or _no_fallback)(*args, **kwargs)


# What an :class:`Elsewhere` reads for its lock-free permit: negative (never admitted without
# asking), and never a local circuit's (``REJECTED``, -1, while not CLOSED and clean), so a
# shell tells the two apart by the permit it read, with no other attribute read.
ASK = -2


class Elsewhere:
    """What a shell reads in place of its breaker's local circuit when the admission is
    someone else's (a store's link, a concurrency cap, a token budget): never admitted
    without asking ``enter``. Its methods are the breaker's own, bound once; ``charge``
    counts a result's tokens against the token budget (None without one: a breaker with a
    token budget is always admitted elsewhere, so a local circuit never charges)."""

    __slots__ = ("awaits_store", "charge", "enter", "record_success")
    lock_free_permit = ASK

    def __init__(self, breaker: CircuitBreaker) -> None:
        self.enter = breaker.enter
        self.record_success = breaker.record_success
        self.charge = breaker.charge if breaker.config.token_budget is not None else None
        self.awaits_store = breaker.is_async


class ShellGate(Gate):
    """The gate a decoration's shell closes over (its one closure cell): the guarded
    function too, and ``core``, what admits its calls -- the breaker's local circuit when
    the admission is its own (``LocalCircuit.enter`` inline in the shell: CLOSED and clean
    admits with one attribute read, OPEN refuses with one clock read), else an
    :class:`Elsewhere`. Calling it runs the shell once more (for the tracing hook, which
    calls it with ``tracing.PASSING`` set to it: a shell keeps no reference to itself)."""

    __slots__ = ("core", "func")

    def __init__(
        self,
        breaker: CircuitBreaker,
        rules: BreakerRules,
        fallback: Callable[..., Any] | None,
        func: Callable[..., Any],
    ) -> None:
        self.breaker = breaker
        self.rules = rules
        self.fallback = fallback
        self.func = func
        self.core: LocalCircuit | Elsewhere = (
            breaker._local if breaker._enter is None else Elsewhere(breaker)
        )

    def __call__(self, *args: Any, **kwargs: Any) -> Any:  # pragma: no cover - subclasses'
        raise NotImplementedError


class _Meter:
    """What a returned stream's items say they used, counted against its breaker's token
    budget once, when the stream ends."""

    __slots__ = ("breaker", "cost", "request", "usage")

    def __init__(self, breaker: CircuitBreaker, request: object) -> None:
        self.breaker, self.request = breaker, request
        self.usage = StreamUsage()
        self.cost = TOKEN_COST.get()  # set by the HTTP helpers while a stream starts

    @staticmethod
    def of(gate: Gate, request: object) -> _Meter | None:
        """A meter for a stream of ``gate``'s breaker; None without a token budget."""
        breaker = gate.breaker
        return None if breaker.config.token_budget is None else _Meter(breaker, request)

    def charge(self, whole: bool) -> None:
        """Count the usage the items reported; for a ``whole`` stream that reported none,
        the estimate (the helpers' token cost, else the call's arguments)."""
        total = self.usage.total
        if total is None:
            if not whole:
                return
            total = self.cost or None
        response = None if total is None else {"usage": {"total_tokens": total}}
        self.breaker.charge(response, self.request)


def _url_of(stream: Any) -> str | None:
    try:
        return str(stream.response.url)  # the openai and anthropic SDKs' streams keep it
    except Exception:
        return None


class GuardedStream:
    """An iterator returned by a guarded function, reporting to its breaker when it ends. An
    SDK stream that ends before its provider's final item raises ``IncompleteStreamError`` (a
    failure) at its end; one that carried a failed response raises that provider error."""

    __slots__ = ("_gate", "_inner", "_meter", "_permit", "_watch")

    def __init__(self, inner: Any, gate: Gate, permit: int, request: object = None) -> None:
        self._inner = inner
        self._gate = gate
        self._permit: int | None = permit
        self._watch: ItemWatch | None = ItemWatch()
        self._meter = _Meter.of(gate, request)

    def _charge(self, whole: bool) -> None:
        meter, self._meter = self._meter, None
        if meter is not None:
            meter.charge(whole)

    def _report(self, exc: BaseException | None) -> None:
        permit, self._permit = self._permit, None
        if permit is None:
            return
        self._charge(exc is None)
        if exc is None:
            self._gate.succeeded(permit)
        else:
            self._gate.failed(permit, exc)

    def __iter__(self) -> GuardedStream:
        return self

    def __next__(self) -> Any:
        try:
            item = next(self._inner)
        except StopIteration:
            self._end()
            raise
        except BaseException as exc:
            self._report(exc)
            raise
        if self._watch is not None:
            self._watch = self._watch.see(item)
        if self._meter is not None:
            self._meter.usage.see(item)
        return item

    def _end(self) -> None:
        watch, self._watch = self._watch, None
        problem = None if watch is None else watch.problem(_url_of(self._inner))
        if problem is not None:
            self._report(problem)
            raise problem from None
        self._report(None)

    def __del__(self) -> None:
        # Collected without close(): what it holds is released (reported neither outcome).
        permit = self._permit
        if permit is not None:
            self._permit = None
            self._gate.breaker.dropped(permit)

    def close(self) -> None:
        """Close the stream; a stream closed before its end counts as neither outcome."""
        permit, self._permit = self._permit, None
        if permit is not None:
            self._charge(False)
            self._gate.abandoned(permit)
        close = getattr(self._inner, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> GuardedStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def __repr__(self) -> str:
        return f"GuardedStream({self._inner!r})"


class AsyncGuardedStream:
    """An async iterator returned by a guarded coroutine function, reporting when it ends (an
    SDK stream cut short or carrying a failed response raises at its end)."""

    __slots__ = ("_gate", "_inner", "_loop", "_meter", "_permit", "_watch")

    def __init__(self, inner: Any, gate: Gate, permit: int, request: object = None) -> None:
        self._inner = inner
        self._gate = gate
        self._permit: int | None = permit
        self._watch: ItemWatch | None = ItemWatch()
        self._meter = _Meter.of(gate, request)
        # an asyncio store is reported to on the loop that made the stream, even when dropped
        self._loop: Any = sys.modules["asyncio"].get_running_loop() if gate.awaits_store else None

    def __del__(self) -> None:
        # Collected without aclose(): what it holds is released (reported neither outcome).
        permit = self._permit
        if permit is not None:
            self._permit = None
            self._gate.breaker.dropped(permit, self._loop)

    def _charge(self, whole: bool) -> None:
        meter, self._meter = self._meter, None
        if meter is not None:
            meter.charge(whole)

    async def _report(self, exc: BaseException | None) -> None:
        permit, self._permit = self._permit, None
        if permit is None:
            return
        self._charge(exc is None)
        gate = self._gate
        if exc is None:
            if gate.awaits_store:
                await gate.asucceeded(permit)
            else:
                gate.succeeded(permit)
        elif gate.awaits_store:
            await gate.afailed(permit, exc)
        else:
            gate.failed(permit, exc)

    def __aiter__(self) -> AsyncGuardedStream:
        return self

    async def __anext__(self) -> Any:
        try:
            item = await self._inner.__anext__()
        except StopAsyncIteration:
            await self._end()
            raise
        except BaseException as exc:
            await self._report(exc)
            raise
        if self._watch is not None:
            self._watch = self._watch.see(item)
        if self._meter is not None:
            self._meter.usage.see(item)
        return item

    async def _end(self) -> None:
        watch, self._watch = self._watch, None
        problem = None if watch is None else watch.problem(_url_of(self._inner))
        if problem is not None:
            await self._report(problem)
            raise problem from None
        await self._report(None)

    async def aclose(self) -> None:
        """Close the stream; a stream closed before its end counts as neither outcome."""
        permit, self._permit = self._permit, None
        if permit is not None:
            self._charge(False)
            if self._gate.awaits_store:
                await self._gate.aabandoned(permit)
            else:
                self._gate.abandoned(permit)
        await aclose_inner(self._inner)

    async def __aenter__(self) -> AsyncGuardedStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def __repr__(self) -> str:
        return f"AsyncGuardedStream({self._inner!r})"
