"""``with_pool``: send each call to one of several equivalent deployments, chosen by what
their breakers know.

::

    @circuit_breaker("azure-east")
    def east(prompt: str) -> str: ...

    @circuit_breaker("azure-west")
    def west(prompt: str) -> str: ...

    ask = with_pool(east, west)  # strategy="headroom"

Each call goes to **one** target among those whose circuit is not OPEN and whose throttle is
not paused beyond ``throttle_max_wait``; the others are passed over without a call. The
strategy ranks the rest:

* ``headroom``: the most capacity left in the throttle's model of the provider's bucket: a
  target with requests and tokens left before one with either spent (or paused), then the
  most requests left, then the most tokens left (unknown counts as full: a deployment not
  heard from yet is tried), ties to the fewest calls in flight;
* ``least_busy``: the fewest calls in flight through the pool;
* ``latency``: the lowest recent time to the first item (an average that follows the last
  calls; a target not measured yet is tried first);
* ``weighted``: in proportion to ``weights`` (smooth weighted round robin: deterministic);
* ``round_robin``: each in turn.

Ties go to each target in turn. A provider fault moves the call to the next target in the
ranking (as :func:`with_fallbacks` does: the same verdict decides, a stream fails over only
before its first item); a caller's fault is raised at once. When every target failed:
:class:`FallbacksExhaustedError` with each error (the refusals of the targets passed over
last); when every target was passed over or refused: the refusal that ends soonest.

A target's breaker is its decorator's ``.breaker`` (a scoped one's ``.breaker_for(...)`` with
the call's arguments), or the ``.breaker`` of the object whose method it is (an
``LLMCircuitBreaker``'s ``call`` / ``acall``, also through ``functools.partial``). A target
without one is always eligible and counts as full.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any, Literal, TypeVar, cast

from llm_circuit_breaker._judge.refusal import refusal_of
from llm_circuit_breaker.breaker import clock as time_source
from llm_circuit_breaker.breaker.breaker import CircuitBreaker
from llm_circuit_breaker.errors import FallbacksExhaustedError, ThrottledError
from llm_circuit_breaker.strategies import tracing
from llm_circuit_breaker.strategies.fallbacks import (
    _PROVIDER_FAULTS,
    END,
    AsyncResumed,
    Resumed,
    _distinct,
    _name,
    afirst_of,
    first_item,
    first_of,
)
from llm_circuit_breaker.strategies.gate import PLAIN
from llm_circuit_breaker.strategies.kinds import CallableKind, kind_of

__all__ = ["STRATEGIES", "PoolStats", "Strategy", "with_pool"]

logger = logging.getLogger("llm_circuit_breaker")

F = TypeVar("F", bound=Callable[..., Any])
Strategy = Literal["headroom", "least_busy", "latency", "weighted", "round_robin"]
STRATEGIES: tuple[str, ...] = ("headroom", "least_busy", "latency", "weighted", "round_robin")

_SMOOTHING = 0.3  # weight of the newest latency in the running average
_FULL = (0.0, -math.inf, -math.inf)  # the headroom key of a bucket not heard from


@dataclasses.dataclass
class PoolStats:
    """Per target: calls it answered, calls it failed (the pool moved on), calls it refused
    without running (its circuit open, its throttle too far), calls the pool passed over
    without trying it (OPEN or paused when the call came), calls in flight through the pool
    now, and its recent time to first item in seconds (None until measured)."""

    served: int = 0
    failed: int = 0
    refused: int = 0
    skipped: int = 0
    in_flight: int = 0
    latency: float | None = None


class _Plan:
    """One call's targets in the order to try them, and the refusals of those passed over."""

    __slots__ = ("names", "order", "passed")

    def __init__(self) -> None:
        self.order: list[int] = []
        self.passed: list[Exception] = []
        self.names: dict[int, str] = {}  # the breaker's real (filled) name, when known


class _Pool:
    """The targets, what the pool learnt of them, and the choice of each call."""

    def __init__(
        self,
        targets: tuple[Callable[..., Any], ...],
        strategy: str,
        weights: tuple[float, ...] | None,
        clock: Callable[[], float],
    ) -> None:
        self.targets = targets
        self.names = _distinct([_target_name(t) for t in targets])
        self.strategy = strategy
        self.weights = weights or (1.0,) * len(targets)
        self.clock = clock
        self.stats = {name: PoolStats() for name in self.names}
        # Held for bookkeeping only, never across a call; reentrant: a returned stream dropped
        # unread gives its place back from __del__, which may run inside the bookkeeping.
        self._lock = threading.RLock()
        self._turn = 0
        self._current = [0.0] * len(targets)  # smooth weighted round robin

    # -- choosing --------------------------------------------------------------------------

    def plan(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> _Plan:
        """Rank the eligible targets for a call with ``args`` / ``kwargs``."""
        plan = _Plan()
        headroom: dict[int, tuple[float, ...]] = {}
        for index, target in enumerate(self.targets):
            breaker = _breaker_of(target, args, kwargs)
            if breaker is None:
                headroom[index] = _FULL
                continue
            plan.names[index] = breaker.name
            refusal, view = _refusal(breaker)
            if refusal is not None:
                plan.passed.append(refusal)
                self._count(index, "skipped")
                continue
            headroom[index] = _FULL if view is None else _headroom(view)
        with self._lock:
            n = len(self.targets)
            start = self._turn
            self._turn = (start + 1) % n
            first = self._weighted(list(headroom)) if self.strategy == "weighted" else None
            ranked = []
            for i, room in headroom.items():
                stats = self.stats[self.names[i]]
                turn = (i - start) % n  # ties go to each target in turn
                if self.strategy == "headroom":
                    key: tuple[float, ...] = (*room, stats.in_flight, turn)
                elif self.strategy == "least_busy":
                    key = (stats.in_flight, turn)
                elif self.strategy == "latency":
                    key = (stats.latency or 0.0, stats.in_flight, turn)
                elif self.strategy == "weighted":
                    key = (i != first, -self.weights[i], turn)
                else:
                    key = (turn,)
                ranked.append((key, i))
            plan.order = [i for _, i in sorted(ranked)]
        return plan

    def _weighted(self, eligible: Sequence[int]) -> int | None:
        """The next target of a smooth weighted round robin over ``eligible`` (lock held)."""
        if not eligible:
            return None
        total = 0.0
        for i in eligible:
            self._current[i] += self.weights[i]
            total += self.weights[i]
        chosen = max(eligible, key=lambda i: self._current[i])
        self._current[chosen] -= total
        return chosen

    # -- bookkeeping -----------------------------------------------------------------------

    def _count(self, index: int, what: str) -> None:
        with self._lock:
            stats = self.stats[self.names[index]]
            setattr(stats, what, getattr(stats, what) + 1)

    def start(self, index: int) -> float:
        """A call goes to target ``index``: it is in flight; when it started."""
        with self._lock:
            self.stats[self.names[index]].in_flight += 1
        return self.clock()

    def served(self, index: int, started: float, *, release: bool = True) -> None:
        """Target ``index`` answered (its first item came) ``started`` seconds ago."""
        elapsed = max(0.0, self.clock() - started)
        with self._lock:
            stats = self.stats[self.names[index]]
            stats.served += 1
            stats.latency = _averaged(stats.latency, elapsed)
            if release:
                stats.in_flight -= 1

    def release(self, index: int) -> None:
        """A call of target ``index`` ended (a stream closed, a call abandoned)."""
        with self._lock:
            self.stats[self.names[index]].in_flight -= 1

    def failed(self, index: int, started: float, exc: Exception, plan: _Plan) -> bool:
        """Target ``index`` raised ``exc``: whether the pool moves on (counted)."""
        elapsed = max(0.0, self.clock() - started)
        refused = refusal_of(exc) is not None
        provider = refused or _provider_fault(exc)
        with self._lock:
            stats = self.stats[self.names[index]]
            stats.in_flight -= 1
            if refused:
                stats.refused += 1
            elif provider:
                stats.failed += 1
                if stats.latency is not None and elapsed > stats.latency:
                    stats.latency = _averaged(stats.latency, elapsed)  # slow failures count
        if provider:
            self._announce(index, exc, plan)
        return provider

    def _announce(self, index: int, exc: BaseException, plan: _Plan) -> None:
        name = plan.names.get(index, self.names[index])
        position = plan.order.index(index) if index in plan.order else len(plan.order)
        following = plan.order[position + 1 :]
        then = plan.names.get(following[0], self.names[following[0]]) if following else ""
        logger.info(
            "pool: %r failed (%s); %s",
            name,
            type(exc).__name__,
            f"trying {then!r}" if then else "no target left",
        )
        trace = sys.modules.get("opentelemetry.trace")  # loaded only if the app uses it
        if trace is None:
            return
        span = trace.get_current_span()
        if span.is_recording():
            from llm_circuit_breaker.breaker.telemetry import error_type

            span.add_event(
                "llm_circuit_breaker.fallback",
                {
                    "llm_circuit_breaker.name": name,
                    "llm_circuit_breaker.fallback.next": then,
                    "error.type": error_type(exc),
                },
            )

    def exhausted(self, errors: list[Exception], plan: _Plan) -> Exception:
        """What a call raises when no target answered."""
        refusals = [e for e in errors if refusal_of(e) is not None] + plan.passed
        if len(refusals) == len(errors) + len(plan.passed) and refusals:
            return min(refusals, key=_soonest)  # nothing failed: the pool is refusing
        return FallbacksExhaustedError([*errors, *plan.passed])


def _refusal(
    breaker: CircuitBreaker,
) -> tuple[Exception | None, dict[str, float | int | None] | None]:
    """Why ``breaker`` would refuse a call now (open, or paused beyond its wait), and what
    its throttle says."""
    try:
        refusal = breaker.refusal_now()
        if refusal is not None:
            return refusal, None
        view = breaker.throttle
    except Exception:  # a store that cannot say: let the call find out
        return None, None
    paused = view.get("paused_for") or 0.0
    if paused > breaker.config.throttle_max_wait:
        return ThrottledError(breaker.name, float(paused)), view
    return None, view


def _headroom(view: dict[str, float | int | None]) -> tuple[float, ...]:
    """The headroom ranking key of a throttle's ``view`` (smaller is more room): room left at
    all, then requests left, then tokens left (unknown: full)."""
    if (view.get("paused_for") or 0.0) > 0.0:
        return (1.0, 0.0, 0.0)
    requests, tokens = view.get("requests_remaining"), view.get("tokens_remaining")
    requests = math.inf if requests is None else float(requests)
    tokens = math.inf if tokens is None else float(tokens)
    return (0.0 if requests > 0 and tokens > 0 else 1.0, -requests, -tokens)


def _averaged(average: float | None, sample: float) -> float:
    return sample if average is None else average + _SMOOTHING * (sample - average)


def _soonest(refusal: Exception) -> float:
    found = refusal_of(refusal)
    wait = getattr(found, "retry_after", None)
    return wait if isinstance(wait, float | int) else math.inf


def _provider_fault(exc: Exception) -> bool:
    """Whether another target may answer after ``exc`` (with_fallbacks' rule)."""
    if isinstance(exc, FallbacksExhaustedError):
        return True  # a pool or chain inside the pool had no answer
    from llm_circuit_breaker._core.state import Outcome
    from llm_circuit_breaker._judge.verdict import judge  # loaded by the first failure

    verdict = judge(exc)
    return (
        verdict.outcome in (Outcome.FAILURE, Outcome.THROTTLED)
        or verdict.kind.value in _PROVIDER_FAULTS
    )


def _target_name(target: Any) -> str:
    """A target's name in ``pool_stats``: its breaker's (a scoped one's template), else its
    own."""
    breaker = _breaker_of(target, (), {}, fill=False)
    return breaker.name if breaker is not None else _name(target)


def _breaker_of(
    target: Any, args: tuple[Any, ...], kwargs: dict[str, Any], *, fill: bool = True
) -> CircuitBreaker | None:
    """The breaker a call of ``target`` with ``args`` / ``kwargs`` goes through, if known
    (``fill=False``: not a scoped one, which would be made for those arguments)."""
    try:
        while isinstance(target, functools.partial):
            args = (*target.args, *args)
            kwargs = {**target.keywords, **kwargs}
            target = target.func
        found = getattr(target, "breaker", None)
        if found is None and fill and callable(getattr(target, "breaker_for", None)):
            found = target.breaker_for(*args, **kwargs)  # a scoped decorator
        if found is None and not hasattr(target, "breaker_for"):
            owner = getattr(target, "__self__", None)  # a method of an object with a breaker
            found = getattr(owner, "breaker", None) if owner is not None else None
    except Exception:  # a missing argument, a scoped facade: the call will say
        return None
    return found if isinstance(found, CircuitBreaker) else None


def with_pool(
    *targets: F,
    strategy: Strategy = "headroom",
    weights: Sequence[float] | None = None,
    clock: Callable[[], float] | None = None,
) -> F:
    """A callable of the same kind as the targets (sync, async, generator, async generator)
    that sends each call, with its arguments, to one target chosen by ``strategy``
    (``"headroom"``, ``"least_busy"``, ``"latency"``, ``"weighted"``, ``"round_robin"``),
    moving on to the next best after a provider fault.

    ``weights`` (one positive number per target) go with ``strategy="weighted"``. The result
    exposes ``.pool_stats``: per target name, :class:`PoolStats`. ``clock`` is for tests
    (by default the library's time source, which ``llm_clock`` / ``frozen_time()`` replace).
    """
    if not targets:
        raise TypeError("with_pool needs at least one target")
    for target in targets:
        if not callable(target):
            raise TypeError(f"with_pool takes callables, got {target!r}")
    if strategy not in STRATEGIES:
        raise ValueError(f"with_pool strategy must be one of {STRATEGIES}, got {strategy!r}")
    chosen_weights = None
    if weights is not None:
        if strategy != "weighted":
            raise ValueError(f"with_pool weights go with strategy='weighted', not {strategy!r}")
        chosen_weights = tuple(weights)
        if len(chosen_weights) != len(targets) or not all(
            isinstance(w, int | float) and not isinstance(w, bool) and 0 < w < math.inf
            for w in chosen_weights
        ):
            raise ValueError(
                f"with_pool weights must be {len(targets)} positive finite numbers, one per "
                f"target, got {weights!r}"
            )
    kinds = {kind_of(t) for t in targets}
    if len(kinds) > 1:
        raise TypeError(
            "with_pool targets must be of one kind (all sync functions, all coroutine "
            f"functions, all generators or all async generators), got {sorted(map(str, kinds))}"
        )
    pool = _Pool(tuple(targets), strategy, chosen_weights, clock or time_source.now)
    wrapper = {
        CallableKind.ASYNC_GENERATOR: _async_gen_pool,
        CallableKind.COROUTINE: _async_pool,
        CallableKind.GENERATOR: _gen_pool,
        CallableKind.PLAIN: _sync_pool,
    }[kinds.pop()](pool)
    functools.update_wrapper(wrapper, targets[0], updated=())  # not the first's .breaker
    wrapper.__qualname__ = f"with_pool({', '.join(pool.names)})"  # its name as a target
    vars(wrapper)["pool_stats"] = pool.stats
    return cast("F", wrapper)


class _Release:
    """Gives a returned stream's place in flight back once: at its end, its error, its
    close, or when it is dropped unread."""

    __slots__ = ("_release",)

    def __init__(self, release: Callable[[], None]) -> None:
        self._release: Callable[[], None] | None = release

    def __call__(self) -> None:
        release, self._release = self._release, None
        if release is not None:
            release()


class _HeldStream(Resumed):
    """A returned stream the pool chose: in flight on its target (``least_busy``,
    ``headroom``'s ties, ``pool_stats``) until it ends or is closed, as a breaker's slot."""

    def __init__(self, stream: Any, first: Any, release: Callable[[], None]) -> None:
        super().__init__(stream, first)
        self._done = _Release(release)

    def __next__(self) -> Any:
        try:
            return super().__next__()
        except BaseException:  # its end, or its error
            self._done()
            raise

    def close(self) -> None:
        """Close the stream; its call is no longer in flight."""
        try:
            close = getattr(self._stream, "close", None)
            if close is not None:
                close()
        finally:
            self._done()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        self._done()


class _AsyncHeldStream(AsyncResumed):
    """:class:`_HeldStream` for a returned async stream."""

    def __init__(self, stream: Any, first: Any, release: Callable[[], None]) -> None:
        super().__init__(stream, first)
        self._done = _Release(release)

    async def __anext__(self) -> Any:
        try:
            return await super().__anext__()
        except BaseException:  # its end, its error, or a cancellation
            self._done()
            raise

    async def aclose(self) -> None:
        """Close the stream; its call is no longer in flight."""
        try:
            await super().__aexit__(None, None, None)
        finally:
            self._done()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __del__(self) -> None:
        self._done()


def _sync_pool(pool: _Pool) -> Callable[..., Any]:
    def call(*args: Any, **kwargs: Any) -> Any:
        if tracing.hook is not None and tracing.passing() is not call:
            return tracing.hook.call(call, None, args, kwargs)
        plan = pool.plan(args, kwargs)
        errors: list[Exception] = []
        for index in plan.order:
            started = pool.start(index)
            try:
                result = pool.targets[index](*args, **kwargs)
                if result.__class__ not in PLAIN and hasattr(result.__class__, "__next__"):
                    first = first_of(result)  # fails over until its first item
                    pool.served(index, started, release=False)
                    return _HeldStream(result, first, functools.partial(pool.release, index))
            except Exception as exc:
                if not pool.failed(index, started, exc, plan):
                    raise
                errors.append(exc)
                continue
            except BaseException:
                pool.release(index)
                raise
            pool.served(index, started)
            return result
        raise pool.exhausted(errors, plan)

    return call


def _async_pool(pool: _Pool) -> Callable[..., Any]:
    async def call(*args: Any, **kwargs: Any) -> Any:
        if tracing.hook is not None and tracing.passing() is not call:
            return await tracing.hook.acall(call, None, args, kwargs)
        plan = pool.plan(args, kwargs)
        errors: list[Exception] = []
        for index in plan.order:
            started = pool.start(index)
            try:
                result = await pool.targets[index](*args, **kwargs)
                if hasattr(result, "__anext__"):
                    first = await afirst_of(result)
                    pool.served(index, started, release=False)
                    return _AsyncHeldStream(result, first, functools.partial(pool.release, index))
            except Exception as exc:
                if not pool.failed(index, started, exc, plan):
                    raise
                errors.append(exc)
                continue
            except BaseException:  # cancelled
                pool.release(index)
                raise
            pool.served(index, started)
            return result
        raise pool.exhausted(errors, plan)

    return call


def _gen_pool(pool: _Pool) -> Callable[..., Any]:
    def call(*args: Any, **kwargs: Any) -> Iterator[Any]:
        if tracing.hook is not None and tracing.passing() is not call:
            yield from tracing.hook.gen(call, None, args, kwargs)
            return
        plan = pool.plan(args, kwargs)
        errors: list[Exception] = []
        for index in plan.order:
            started = pool.start(index)
            try:
                stream = pool.targets[index](*args, **kwargs)
                first = next(stream, END)
            except Exception as exc:
                if not pool.failed(index, started, exc, plan):
                    raise
                errors.append(exc)
                continue
            except BaseException:
                pool.release(index)
                raise
            pool.served(index, started, release=False)
            try:  # in flight until the stream ends
                if first is not END:
                    yield first
                    yield from stream
            finally:
                pool.release(index)
            return
        raise pool.exhausted(errors, plan)

    return call


def _async_gen_pool(pool: _Pool) -> Callable[..., Any]:
    async def call(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        if tracing.hook is not None and tracing.passing() is not call:
            async for item in tracing.hook.agen(call, None, args, kwargs):
                yield item
            return
        plan = pool.plan(args, kwargs)
        errors: list[Exception] = []
        for index in plan.order:
            started = pool.start(index)
            stream = None
            try:
                stream = pool.targets[index](*args, **kwargs)
                first = await first_item(stream)
            except Exception as exc:
                if not pool.failed(index, started, exc, plan):
                    raise
                errors.append(exc)
                continue
            except BaseException:
                pool.release(index)
                if stream is not None:
                    await stream.aclose()
                raise
            pool.served(index, started, release=False)
            try:
                if first is not END:
                    yield first
                    async for item in stream:
                        yield item
            finally:
                pool.release(index)
                await stream.aclose()
            return
        raise pool.exhausted(errors, plan)

    return call
