"""OpenTelemetry metrics and span events for circuit breakers (extra ``otel``).

::

    from llm_circuit_breaker.observability.otel import OpenTelemetryInstrumentation
    OpenTelemetryInstrumentation(attributes={"openai": {"gen_ai.system": "openai"}}).instrument()

Metrics (observable instruments, read at collection: guarded calls pay nothing), each with
``llm_circuit_breaker.name`` plus the breaker's attributes:

* ``llm_circuit_breaker.calls`` (counter, ``outcome`` = success | failure | ignored |
  throttled | rejected)
* ``llm_circuit_breaker.retries`` (counter)
* ``llm_circuit_breaker.state_changes`` (counter, ``llm_circuit_breaker.state``)
* ``llm_circuit_breaker.state`` (gauge, 1 for the current ``llm_circuit_breaker.state``)
* ``llm_circuit_breaker.throttle.wait`` (histogram, seconds a call waited for its throttle
  slot, recorded as calls are admitted while the throttle paces)
* ``llm_circuit_breaker.throttle.paused_for`` (gauge, seconds until a rate-limit pause ends)
* ``llm_circuit_breaker.throttle.waiting`` (gauge, callers asleep until their slot)

Span events on the current span: ``llm_circuit_breaker.rejected`` when a call is refused (or
would have been, in metrics-only mode), ``llm_circuit_breaker.retry`` before a retry, with
``error.type`` (the HTTP status, else the exception class), and ``llm_circuit_breaker.throttled``
when a call waits for its throttle slot (``llm_circuit_breaker.throttle.wait`` seconds).
``attributes`` maps breaker names to extra attributes, such as the GenAI conventions'
``gen_ai.system`` and ``gen_ai.request.model``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from llm_circuit_breaker._core.state import CircuitState
from llm_circuit_breaker.breaker.breaker import CircuitBreaker
from llm_circuit_breaker.breaker.registry import BreakerRegistry, breaker_registry
from llm_circuit_breaker.breaker.telemetry import Observed
from llm_circuit_breaker.observability import OUTCOMES, calls_by_outcome, error_type, require

_metrics = require("opentelemetry.metrics", "otel")
_trace = require("opentelemetry.trace", "otel")

__all__ = ["OpenTelemetryInstrumentation"]

Attributes = Mapping[str, str]


class OpenTelemetryInstrumentation:
    """Reports the breakers of ``registry`` through OpenTelemetry."""

    def __init__(
        self,
        registry: BreakerRegistry = breaker_registry,
        *,
        meter_provider: Any = None,
        attributes: Mapping[str, Attributes] | None = None,
    ) -> None:
        self.registry = registry
        self.attributes = dict(attributes or {})
        self._meter = _metrics.get_meter("llm_circuit_breaker", meter_provider=meter_provider)

    def instrument(self) -> OpenTelemetryInstrumentation:
        """Create the instruments and listen to refusals and retries."""
        meter = self._meter
        meter.create_observable_counter(
            "llm_circuit_breaker.calls",
            [self._calls],
            unit="{call}",
            description="Guarded calls by outcome.",
        )
        meter.create_observable_counter(
            "llm_circuit_breaker.retries",
            [self._retries],
            unit="{retry}",
            description="Retries of guarded calls.",
        )
        meter.create_observable_counter(
            "llm_circuit_breaker.state_changes", [self._changes], unit="{transition}",
            description="Transitions into each state.",
        )  # fmt: skip
        meter.create_observable_gauge(
            "llm_circuit_breaker.state", [self._state], description="1 for the current state."
        )
        meter.create_observable_gauge(
            "llm_circuit_breaker.throttle.paused_for", [self._paused], unit="s",
            description="Seconds until a rate-limit pause ends.",
        )  # fmt: skip
        meter.create_observable_gauge(
            "llm_circuit_breaker.throttle.waiting", [self._waiting], unit="{call}",
            description="Callers asleep until their throttle slot.",
        )  # fmt: skip
        self._waits = meter.create_histogram(
            "llm_circuit_breaker.throttle.wait", unit="s",
            description="Waits for a throttle slot.",
        )  # fmt: skip
        self.registry.add_observer(self)
        return self

    def _labels(self, breaker: Observed, **extra: Any) -> dict[str, Any]:
        return {
            "llm_circuit_breaker.name": breaker.name,
            **self.attributes.get(breaker.name, {}),
            **extra,
        }

    def _calls(self, _options: Any) -> Iterable[Any]:
        for breaker in self.registry.breakers():
            by_outcome = calls_by_outcome(breaker)
            for outcome in OUTCOMES:
                yield _metrics.Observation(
                    by_outcome[outcome], self._labels(breaker, outcome=outcome)
                )

    def _retries(self, _options: Any) -> Iterable[Any]:
        for breaker in self.registry.breakers():
            yield _metrics.Observation(breaker.stats.retries, self._labels(breaker))

    def _changes(self, _options: Any) -> Iterable[Any]:
        for breaker in self.registry.breakers():
            for state, count in breaker.stats.state_changes.items():
                yield _metrics.Observation(
                    count, self._labels(breaker, **{"llm_circuit_breaker.state": state})
                )

    def _state(self, _options: Any) -> Iterable[Any]:
        for breaker in self.registry.breakers():
            current = breaker.state
            for state in CircuitState:
                value = 1 if state is current else 0
                yield _metrics.Observation(
                    value, self._labels(breaker, **{"llm_circuit_breaker.state": state.value})
                )

    def _paused(self, _options: Any) -> Iterable[Any]:
        for breaker in self.registry.breakers():
            paused = breaker.throttle["paused_for"] or 0.0
            yield _metrics.Observation(paused, self._labels(breaker))

    def _waiting(self, _options: Any) -> Iterable[Any]:
        for breaker in self.registry.breakers():
            yield _metrics.Observation(breaker.throttle["waiting"] or 0, self._labels(breaker))

    # -- observer: span events as things happen ----------------------------------------------

    def rejected(self, breaker: Observed, enforced: bool) -> None:
        span = _trace.get_current_span()
        if span.is_recording():
            attributes = self._labels(breaker, **{"llm_circuit_breaker.enforced": enforced})
            span.add_event("llm_circuit_breaker.rejected", attributes)

    def retried(self, breaker: Observed, attempt: int, error: BaseException, delay: float) -> None:
        span = _trace.get_current_span()
        if span.is_recording():
            attributes = self._labels(
                breaker,
                **{
                    "error.type": error_type(error),
                    "llm_circuit_breaker.retry.attempt": attempt,
                    "llm_circuit_breaker.retry.delay": delay,
                },
            )
            span.add_event("llm_circuit_breaker.retry", attributes)

    def waited(self, breaker: CircuitBreaker, seconds: float) -> None:
        self._waits.record(seconds, self._labels(breaker))
        if seconds > 0.0:
            span = _trace.get_current_span()
            if span.is_recording():
                attributes = self._labels(breaker, **{"llm_circuit_breaker.throttle.wait": seconds})
                span.add_event("llm_circuit_breaker.throttled", attributes)
