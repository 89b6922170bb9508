"""OpenTelemetry metrics and span events for circuit breakers (extra ``otel``).

::

    from llm_circuit_breaker.observability.otel import OpenTelemetryInstrumentation
    OpenTelemetryInstrumentation(
        attributes={"openai:{model}": {"gen_ai.provider.name": "openai"}}
    ).instrument()

Metrics, read at collection (guarded calls pay nothing), with the names and labels of the
Prometheus collector: an OpenTelemetry Prometheus exporter shows the same series (the unit
becomes the suffix, counters end in ``_total``). Labels: ``breaker`` (the name, or the name
template of a scoped breaker), ``scope`` (the template's value, absent for a breaker named
outright; past ``max_metric_scopes`` values per template, ``other``):

* ``llm_circuit_breaker.calls`` (counter, ``outcome`` = success | failure | ignored |
  throttled (with ``reason``) | rejected (with ``enforced``))
* ``llm_circuit_breaker.retries`` (counter)
* ``llm_circuit_breaker.state_changes`` (counter, ``state``: transitions into it)
* ``llm_circuit_breaker.state`` (gauge, 1 for the current ``state``)
* ``llm_circuit_breaker.consecutive_failures`` (gauge)
* ``llm_circuit_breaker.throttle.wait`` (histogram, seconds a call waited for its throttle
  slot, recorded as calls are admitted while the throttle paces; explicit bucket boundaries)
* ``llm_circuit_breaker.throttle.paused`` (gauge, seconds until a rate-limit pause ends)
* ``llm_circuit_breaker.throttle.waiting`` (gauge, callers asleep until their slot)
* ``llm_circuit_breaker.concurrency.limit``, ``.concurrency.in_flight``,
  ``.concurrency.waiting`` (gauges: ``max_concurrent``, calls in flight and callers waiting
  for a slot in this process, for breakers with a limit)
* ``llm_circuit_breaker.hedges`` (counter, extra attempts ``with_hedging`` started because
  those in flight were slow) and ``llm_circuit_breaker.hedge_wins`` (counter, those that
  answered first)
* ``llm_circuit_breaker.retries_denied`` (counter, retries the retry budget could not pay:
  not made)
* ``llm_circuit_breaker.budget.spent_tokens`` and ``.budget.limit_tokens`` (gauges: tokens
  spent in the current ``token_budget`` window and the limit, for breakers with a budget)
* ``llm_circuit_breaker.fallback.calls`` (counter, ``chain``, ``target``, ``outcome`` = served |
  failed | refused) for the ``with_fallbacks`` chains given as ``fallbacks=``

Span events on the current span, each with ``llm_circuit_breaker.name`` (the breaker's filled
name), ``gen_ai.request.model`` (a scoped breaker's scope value) and the ``attributes`` given
for the breaker's name or template (say ``gen_ai.provider.name``):
``llm_circuit_breaker.rejected`` when the circuit refuses a call (or would have, in
metrics-only mode: ``llm_circuit_breaker.enforced`` false), ``llm_circuit_breaker.throttled``
when a throttle refuses one (``llm_circuit_breaker.reason``), ``llm_circuit_breaker.retry``
before a retry (``error.type``: the HTTP status, else the exception class) and
``llm_circuit_breaker.throttle_wait`` when a call waits for its throttle slot.
``with_hedging`` adds ``llm_circuit_breaker.hedge`` for each hedge it starts (the hedge's
breaker's filled name, ``llm_circuit_breaker.hedge.attempt``, ``.hedge.delay_s``), with or
without this instrumentation.

A span per logical call: while an instrumentation is on (``trace_calls=True``, the default),
each guarded logical call (a decorated call, an ``LLMCircuitBreaker`` helper call, an SDK
request through the httpx transport) is a CLIENT span following the GenAI conventions
(``gen_ai.operation.name``, ``gen_ai.provider.name``, ``gen_ai.request.model`` from the
scope's fields, the call's ``model`` argument or the request body, ``error.type``), nested
under the caller's span or a root; its attempts through a breaker are INTERNAL child spans
``llm_circuit_breaker.attempt`` with the breaker's filled name, and the events above land on
them. It records ``gen_ai.client.operation.duration`` and, for a stream, the time to its first
chunk (``gen_ai.client.operation.time_to_first_chunk``), in seconds with explicit boundaries.
A refusal's ``error.type`` is its class; a fallback that served is named on the call's span
(``llm_circuit_breaker.served_by``, ``gen_ai.response.model``); a returned stream collected
unclosed ends its span (``llm_circuit_breaker.dropped``); an SDK's own retry through the bare
transport is an attempt span under its first request's span, not a call of its own.
Without instrumentation a guarded call pays one read of the hook slot
(:mod:`llm_circuit_breaker.strategies.tracing`). ``instrumentation.traced(operation="chat",
provider="openai")`` decorates a function whose each call is one logical call above the guarded
ones it makes.

``instrument()`` is idempotent. Without ``registry=`` it covers every registry in the process,
made before or after. Instrumentations sharing a MeterProvider share its instruments: each
reports its own breakers (a breaker two of them cover is reported once).
"""

from __future__ import annotations

import functools
import threading
import weakref
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from typing import Any, TypeVar

from llm_circuit_breaker._core.state import CircuitState
from llm_circuit_breaker.breaker.registry import BreakerRegistry, registries
from llm_circuit_breaker.breaker.telemetry import WAIT_BUCKETS, Observed, split_name
from llm_circuit_breaker.observability import (
    OUTCOMES,
    ScopeCap,
    Series,
    error_type,
    fallback_counts,
    require,
    safe,
    series,
)
from llm_circuit_breaker.observability._spans import HOOK, Call
from llm_circuit_breaker.strategies.kinds import CallableKind, kind_of

_metrics = require("opentelemetry.metrics", "otel")
_trace = require("opentelemetry.trace", "otel")

__all__ = ["OUTCOMES", "OpenTelemetryInstrumentation"]

Attributes = Mapping[str, str]
F = TypeVar("F", bound=Callable[..., Any])

# The GenAI semantic conventions' advice for gen_ai.client.operation.duration (seconds).
DURATION_BUCKETS = (
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
)  # fmt: skip


class _Instruments:
    """One MeterProvider's instruments, reporting for every instrumentation that uses it (the
    SDK keeps the first callbacks of a name and drops a second instrument's, silently)."""

    def __init__(self, meter: Any) -> None:
        self.users: list[OpenTelemetryInstrumentation] = []
        self._rows: list[tuple[OpenTelemetryInstrumentation, Series]] | None = None
        meter.create_observable_counter(
            "llm_circuit_breaker.calls", [self._calls], unit="{call}",
            description="Guarded calls by outcome.",
        )  # fmt: skip
        meter.create_observable_counter(
            "llm_circuit_breaker.retries", [self._retries], unit="{retry}",
            description="Retries of guarded calls.",
        )  # fmt: skip
        meter.create_observable_counter(
            "llm_circuit_breaker.state_changes", [self._changes], unit="{transition}",
            description="Transitions into each state.",
        )  # fmt: skip
        meter.create_observable_gauge(
            "llm_circuit_breaker.state", [self._state], description="1 for the current state."
        )
        meter.create_observable_gauge(
            "llm_circuit_breaker.consecutive_failures", [self._failures], unit="{failure}",
            description="Consecutive failures counted in CLOSED.",
        )  # fmt: skip
        meter.create_observable_gauge(
            "llm_circuit_breaker.throttle.paused", [self._paused], unit="s",
            description="Seconds until a rate-limit pause ends.",
        )  # fmt: skip
        meter.create_observable_gauge(
            "llm_circuit_breaker.throttle.waiting", [self._waiting], unit="{call}",
            description="Callers asleep until their throttle slot.",
        )  # fmt: skip
        meter.create_observable_gauge(
            "llm_circuit_breaker.concurrency.limit", [self._limit], unit="{call}",
            description="Calls allowed in flight in this process (max_concurrent).",
        )  # fmt: skip
        meter.create_observable_gauge(
            "llm_circuit_breaker.concurrency.in_flight", [self._in_flight], unit="{call}",
            description="Calls in flight in this process, under max_concurrent.",
        )  # fmt: skip
        meter.create_observable_gauge(
            "llm_circuit_breaker.concurrency.waiting", [self._in_line], unit="{call}",
            description="Callers waiting for a slot under max_concurrent.",
        )  # fmt: skip
        meter.create_observable_counter(
            "llm_circuit_breaker.hedges", [self._hedges], unit="{attempt}",
            description="Hedged attempts started.",
        )  # fmt: skip
        meter.create_observable_counter(
            "llm_circuit_breaker.hedge_wins", [self._hedge_wins], unit="{attempt}",
            description="Hedged attempts that answered first.",
        )  # fmt: skip
        meter.create_observable_counter(
            "llm_circuit_breaker.retries_denied", [self._denied], unit="{retry}",
            description="Retries the retry budget could not pay (not made).",
        )  # fmt: skip
        meter.create_observable_gauge(
            "llm_circuit_breaker.budget.spent_tokens", [self._spent], unit="{token}",
            description="Tokens spent in the current token_budget window.",
        )  # fmt: skip
        meter.create_observable_gauge(
            "llm_circuit_breaker.budget.limit_tokens", [self._budget_limit], unit="{token}",
            description="Tokens allowed per token_budget window.",
        )  # fmt: skip
        meter.create_observable_counter(
            "llm_circuit_breaker.fallback.calls", [self._fallbacks], unit="{call}",
            description="Calls of each fallback chain's targets by outcome.",
        )  # fmt: skip
        self.waits = meter.create_histogram(
            "llm_circuit_breaker.throttle.wait", unit="s",
            description="Waits for a throttle slot.",
            explicit_bucket_boundaries_advisory=list(WAIT_BUCKETS),
        )  # fmt: skip
        self.duration = meter.create_histogram(
            "gen_ai.client.operation.duration", unit="s",
            description="Duration of GenAI client operations (logical calls, retries included).",
            explicit_bucket_boundaries_advisory=list(DURATION_BUCKETS),
        )  # fmt: skip
        self.first_chunk = meter.create_histogram(
            "gen_ai.client.operation.time_to_first_chunk", unit="s",
            description="Time from the start of a streamed call to its first chunk.",
            explicit_bucket_boundaries_advisory=list(DURATION_BUCKETS),
        )  # fmt: skip

    def rows(self, fresh: bool = False) -> list[tuple[OpenTelemetryInstrumentation, Series]]:
        """Every user's series; read afresh by the first callback of a collection (calls),
        reused by the others of the same collection."""
        rows = self._rows
        if fresh or rows is None:
            seen: set[int] = set()
            rows = []
            for user in list(self.users):
                for row in user.series():
                    kept = [b for b in row.breakers if id(b) not in seen]
                    if len(kept) == len(row.breakers):
                        rows.append((user, row))
                    elif kept:  # partly covered by an earlier user: report the rest
                        again = Series(row.breaker, row.scope)
                        for breaker in kept:
                            again.add(breaker)
                        rows.append((user, again))
                    seen.update(id(b) for b in row.breakers)
            self._rows = rows
        return rows

    def _calls(self, _options: Any) -> Iterable[Any]:
        for _user, row in self.rows(fresh=True):
            for (outcome, reason, enforced), count in row.calls.items():
                extra = {"outcome": outcome, "reason": reason, "enforced": enforced}
                yield _metrics.Observation(count, _labels(row, **extra))

    def _retries(self, _options: Any) -> Iterable[Any]:
        for _user, row in self.rows():
            yield _metrics.Observation(row.retries, _labels(row))

    def _changes(self, _options: Any) -> Iterable[Any]:
        for _user, row in self.rows():
            for state in CircuitState:
                count = row.state_changes.get(state.value, 0)
                yield _metrics.Observation(count, _labels(row, state=state.value))

    def _state(self, _options: Any) -> Iterable[Any]:
        for _user, row in self.rows():
            for state in CircuitState:
                count = row.states.get(state.value, 0)
                yield _metrics.Observation(count, _labels(row, state=state.value))

    def _failures(self, _options: Any) -> Iterable[Any]:
        for _user, row in self.rows():
            yield _metrics.Observation(row.consecutive_failures, _labels(row))

    def _paused(self, _options: Any) -> Iterable[Any]:
        for _user, row in self.rows():
            yield _metrics.Observation(row.paused_seconds, _labels(row))

    def _waiting(self, _options: Any) -> Iterable[Any]:
        for _user, row in self.rows():
            yield _metrics.Observation(row.waiting, _labels(row))

    def _limit(self, _options: Any) -> Iterable[Any]:
        for _user, row in self.rows():
            if row.concurrency_limit is not None:
                yield _metrics.Observation(row.concurrency_limit, _labels(row))

    def _in_flight(self, _options: Any) -> Iterable[Any]:
        for _user, row in self.rows():
            if row.concurrency_limit is not None:
                yield _metrics.Observation(row.in_flight, _labels(row))

    def _in_line(self, _options: Any) -> Iterable[Any]:
        for _user, row in self.rows():
            if row.concurrency_limit is not None:
                yield _metrics.Observation(row.concurrency_waiting, _labels(row))

    def _hedges(self, _options: Any) -> Iterable[Any]:
        for _user, row in self.rows():
            yield _metrics.Observation(row.hedges, _labels(row))

    def _hedge_wins(self, _options: Any) -> Iterable[Any]:
        for _user, row in self.rows():
            yield _metrics.Observation(row.hedge_wins, _labels(row))

    def _denied(self, _options: Any) -> Iterable[Any]:
        for _user, row in self.rows():
            yield _metrics.Observation(row.retries_denied, _labels(row))

    def _spent(self, _options: Any) -> Iterable[Any]:
        for _user, row in self.rows():
            if row.budget_limit is not None:
                yield _metrics.Observation(row.budget_spent, _labels(row))

    def _budget_limit(self, _options: Any) -> Iterable[Any]:
        for _user, row in self.rows():
            if row.budget_limit is not None:
                yield _metrics.Observation(row.budget_limit, _labels(row))

    def _fallbacks(self, _options: Any) -> Iterable[Any]:
        seen: set[str] = set()
        for user in list(self.users):
            chains = {k: v for k, v in user.fallbacks.items() if k not in seen}
            seen.update(chains)
            for chain, target, outcome, count in fallback_counts(chains):
                labels = {"chain": chain, "target": target, "outcome": outcome}
                yield _metrics.Observation(count, labels)


def _labels(row: Series, **extra: str) -> dict[str, str]:
    """A series' attributes; empty values are left out (Prometheus drops them too)."""
    labels = {"breaker": row.breaker, "scope": row.scope, **extra}
    return {key: value for key, value in labels.items() if value}


# MeterProvider -> its instruments, forgotten with the provider.
_shared: weakref.WeakKeyDictionary[Any, _Instruments] = weakref.WeakKeyDictionary()
_shared_lock = threading.Lock()


class OpenTelemetryInstrumentation:
    """Reports the breakers of ``registry`` (every registry in the process when None) through
    OpenTelemetry. ``attributes`` maps breaker names or name templates to attributes for the
    spans and span events (such as ``{"gen_ai.provider.name": "openai"}``);
    ``max_metric_scopes`` caps the ``scope`` values of one template in the metrics;
    ``fallbacks`` maps names to ``with_fallbacks`` chains whose stats to report;
    ``trace_calls`` (True) gives each guarded call its span and its duration in the
    histograms (False: only the metrics read at collection and the span events)."""

    def __init__(
        self,
        registry: BreakerRegistry | None = None,
        *,
        meter_provider: Any = None,
        tracer_provider: Any = None,
        attributes: Mapping[str, Attributes] | None = None,
        max_metric_scopes: int = 100,
        fallbacks: Mapping[str, Any] | None = None,
        trace_calls: bool = True,
    ) -> None:
        self.registry = registry
        self.trace_calls = trace_calls
        self.fallbacks = dict(fallbacks or {})
        self._tracer = _trace.get_tracer("llm_circuit_breaker", tracer_provider=tracer_provider)
        self._models = ScopeCap(max_metric_scopes)  # request models in the histograms
        self.attributes = {name: dict(values) for name, values in (attributes or {}).items()}
        self.cap = ScopeCap(max_metric_scopes)
        self._meter_provider = meter_provider
        self._instruments: _Instruments | None = None
        self._lock = threading.Lock()

    def series(self) -> list[Series]:
        """What this instrumentation reports now."""
        covered = registries() if self.registry is None else [self.registry]
        return series(covered, self.cap)

    def instrument(self) -> OpenTelemetryInstrumentation:
        """Report the metrics and listen to refusals, retries and waits (once: calling it
        again changes nothing)."""
        with self._lock:
            if self._instruments is not None:
                return self
            provider = self._meter_provider or _metrics.get_meter_provider()
            with _shared_lock:
                instruments = _shared.get(provider)
                if instruments is None:
                    meter = _metrics.get_meter("llm_circuit_breaker", meter_provider=provider)
                    instruments = _shared[provider] = _Instruments(meter)
                instruments.users.append(self)
            self._instruments = instruments
        if self.registry is None:
            BreakerRegistry.observe_all(self)
        else:
            self.registry.add_observer(self)
        if self.trace_calls:
            HOOK.add(self)
        return self

    def uninstrument(self) -> None:
        """Stop reporting: the metrics leave this instrumentation's breakers out and the span
        events stop."""
        with self._lock:
            instruments, self._instruments = self._instruments, None
        if instruments is not None:
            with _shared_lock:
                instruments.users.remove(self)
            BreakerRegistry.unobserve_all(self)
        HOOK.remove(self)

    def _event_attributes(self, breaker: Observed, **extra: Any) -> dict[str, Any]:
        name = breaker.name
        template, scope = split_name(name, getattr(breaker, "template", None))
        attributes: dict[str, Any] = {"llm_circuit_breaker.name": safe(name)}
        if scope:
            attributes["gen_ai.request.model"] = safe(scope)
        attributes.update(self.attributes.get(template, {}))
        attributes.update(self.attributes.get(name, {}))
        attributes.update(extra)
        return attributes

    def _event(self, breaker: Observed, event: str, **extra: Any) -> None:
        if self._instruments is None:
            return
        span = _trace.get_current_span()
        if span.is_recording():
            span.add_event(event, self._event_attributes(breaker, **extra))

    # -- observer: span events as things happen ----------------------------------------------

    def rejected(self, breaker: Observed, enforced: bool) -> None:
        self._event(
            breaker, "llm_circuit_breaker.rejected", **{"llm_circuit_breaker.enforced": enforced}
        )

    def throttled(self, breaker: Observed, reason: str) -> None:
        self._event(
            breaker, "llm_circuit_breaker.throttled", **{"llm_circuit_breaker.reason": reason}
        )

    def retried(self, breaker: Observed, attempt: int, error: BaseException, delay: float) -> None:
        self._event(
            breaker,
            "llm_circuit_breaker.retry",
            **{
                "error.type": error_type(error),
                "llm_circuit_breaker.retry.attempt": attempt,
                "llm_circuit_breaker.retry.delay": delay,
            },
        )

    def waited(self, breaker: Observed, seconds: float) -> None:
        instruments = self._instruments
        if instruments is None:
            return
        template, scope = split_name(breaker.name, getattr(breaker, "template", None))
        labels = {"breaker": template}
        scope = self.cap.label(template, scope)
        if scope:
            labels["scope"] = scope
        instruments.waits.record(seconds, labels)
        if seconds > 0.0:
            self._event(
                breaker,
                "llm_circuit_breaker.throttle_wait",
                **{"llm_circuit_breaker.throttle.wait": seconds},
            )

    # -- a span per logical call ---------------------------------------------------------------

    def traced(self, *, operation: str = "chat", provider: str | None = None) -> Callable[[F], F]:
        """Decorate a function so that each call is a CLIENT span (GenAI conventions) and
        counts in ``gen_ai.client.operation.duration``; see the module's docstring."""

        def decorate(func: F) -> F:
            return _traced(self, func, operation, provider)

        return decorate

    def _start(self, operation: str, provider: str | None, kwargs: dict[str, Any]) -> Call:
        model = kwargs.get("model")
        model = safe(model) if isinstance(model, str) else None
        attributes: dict[str, Any] = {"gen_ai.operation.name": operation}
        if provider:
            attributes["gen_ai.provider.name"] = provider
        if model:
            attributes["gen_ai.request.model"] = model
        name = f"{operation} {model}" if model else operation
        span = self._tracer.start_span(name, kind=_trace.SpanKind.CLIENT, attributes=attributes)
        return Call(self, span, attributes, logical=True)


def _traced(
    owner: OpenTelemetryInstrumentation, func: F, operation: str, provider: str | None
) -> F:
    """``func`` with a span per call (the four callable kinds); the guarded shells inside see
    the call and add their attempts to it."""
    kind = kind_of(func)

    if kind is CallableKind.COROUTINE:

        @functools.wraps(func)
        async def coroutine(*args: Any, **kwargs: Any) -> Any:
            call = owner._start(operation, provider, kwargs)
            tokens = call.enter()
            try:
                result = await func(*args, **kwargs)
            except BaseException as exc:
                call.end(exc)
                raise
            finally:
                call.exit(tokens)
            return call.returned(result)

        return coroutine  # type: ignore[return-value]

    if kind is CallableKind.GENERATOR:

        @functools.wraps(func)
        def generator(*args: Any, **kwargs: Any) -> Iterator[Any]:
            # Each step runs inside the span; between steps the caller's context is its own.
            call = owner._start(operation, provider, kwargs)
            stream: Any = None
            try:
                while True:
                    tokens = call.enter()
                    try:
                        if stream is None:
                            stream = iter(func(*args, **kwargs))
                        item = next(stream)
                    except StopIteration:
                        break
                    finally:
                        call.exit(tokens)
                    call.chunk()
                    yield item
            except BaseException as exc:
                if stream is not None and hasattr(stream, "close"):
                    stream.close()
                call.end(None if isinstance(exc, GeneratorExit) else exc)
                raise
            call.end()

        return generator  # type: ignore[return-value]

    if kind is CallableKind.ASYNC_GENERATOR:

        @functools.wraps(func)
        async def agen(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
            call = owner._start(operation, provider, kwargs)
            stream: Any = None
            try:
                while True:
                    tokens = call.enter()
                    try:
                        if stream is None:
                            stream = func(*args, **kwargs)
                        item = await stream.__anext__()
                    except StopAsyncIteration:
                        break
                    finally:
                        call.exit(tokens)
                    call.chunk()
                    yield item
            except BaseException as exc:
                if stream is not None:
                    await stream.aclose()
                call.end(None if isinstance(exc, GeneratorExit) else exc)
                raise
            call.end()

        return agen  # type: ignore[return-value]

    @functools.wraps(func)
    def plain(*args: Any, **kwargs: Any) -> Any:
        call = owner._start(operation, provider, kwargs)
        tokens = call.enter()
        try:
            result = func(*args, **kwargs)
        except BaseException as exc:
            call.end(exc)
            raise
        finally:
            call.exit(tokens)
        return call.returned(result)

    return plain  # type: ignore[return-value]
