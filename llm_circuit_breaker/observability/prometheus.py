"""Prometheus metrics for circuit breakers (extra ``prometheus``).

::

    from llm_circuit_breaker.observability.prometheus import PrometheusCollector
    PrometheusCollector().register()            # the default prometheus_client registry

A custom collector: every scrape reads the breakers' statistics, so guarded calls pay nothing.
Metrics (label ``breaker`` is the breaker's name):

* ``llm_circuit_breaker_calls_total{breaker, outcome}`` outcome = success | failure | ignored
  | throttled (a rate-limit 429) | rejected (refused while open; in metrics-only mode, would
  have been refused)
* ``llm_circuit_breaker_retries_total{breaker}``
* ``llm_circuit_breaker_state_changes_total{breaker, state}`` transitions into ``state``
* ``llm_circuit_breaker_state{breaker, state}`` 1 for the current state, 0 for the others
* ``llm_circuit_breaker_failure_count{breaker}`` consecutive failures counted in CLOSED
* ``llm_circuit_breaker_throttle_wait_seconds{breaker}`` histogram of the waits for a throttle
  slot (calls admitted while the throttle paced)
* ``llm_circuit_breaker_throttle_paused_seconds{breaker}`` seconds until a rate-limit pause ends
* ``llm_circuit_breaker_throttle_waiting{breaker}`` callers asleep until their slot
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from llm_circuit_breaker._core.state import CircuitState
from llm_circuit_breaker.breaker.registry import BreakerRegistry, breaker_registry
from llm_circuit_breaker.observability import OUTCOMES, calls_by_outcome, require

_client = require("prometheus_client", "prometheus")
from prometheus_client.core import (  # noqa: E402
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)

__all__ = ["PrometheusCollector"]


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


class PrometheusCollector:
    """Exposes the breakers of ``registry`` to Prometheus."""

    def __init__(self, registry: BreakerRegistry = breaker_registry) -> None:
        self.registry = registry

    def register(self, collector_registry: Any = None) -> PrometheusCollector:
        """Register on ``collector_registry`` (prometheus_client's default when None)."""
        (collector_registry or _client.REGISTRY).register(self)
        return self

    def collect(self) -> Iterator[Any]:
        calls = CounterMetricFamily(
            "llm_circuit_breaker_calls", "Guarded calls by outcome.", labels=["breaker", "outcome"]
        )
        retries = CounterMetricFamily(
            "llm_circuit_breaker_retries", "Retries of guarded calls.", labels=["breaker"]
        )
        changes = CounterMetricFamily(
            "llm_circuit_breaker_state_changes",
            "Transitions into each state.",
            labels=["breaker", "state"],
        )
        state = GaugeMetricFamily(
            "llm_circuit_breaker_state", "1 for the current state.", labels=["breaker", "state"]
        )
        failures = GaugeMetricFamily(
            "llm_circuit_breaker_failure_count",
            "Consecutive failures counted in CLOSED.",
            labels=["breaker"],
        )
        waits = HistogramMetricFamily(
            "llm_circuit_breaker_throttle_wait_seconds",
            "Waits for a throttle slot.",
            labels=["breaker"],
        )
        paused = GaugeMetricFamily(
            "llm_circuit_breaker_throttle_paused_seconds",
            "Seconds until a rate-limit pause ends.",
            labels=["breaker"],
        )
        waiting = GaugeMetricFamily(
            "llm_circuit_breaker_throttle_waiting",
            "Callers asleep until their throttle slot.",
            labels=["breaker"],
        )
        for breaker in self.registry.breakers():
            view = breaker.snapshot()
            by_outcome = calls_by_outcome(breaker)
            for outcome in OUTCOMES:
                calls.add_metric([breaker.name, outcome], by_outcome[outcome])
            retries.add_metric([breaker.name], view["stats"]["retries"])
            for each in CircuitState:
                changes.add_metric(
                    [breaker.name, each.value], view["stats"]["state_changes"][each.value]
                )
                state.add_metric(
                    [breaker.name, each.value], 1.0 if view["state"] == each.value else 0.0
                )
            failures.add_metric([breaker.name], view["failure_count"])
            histogram = breaker.wait_histogram
            buckets = [(_le(bound), count) for bound, count in histogram.buckets()]
            waits.add_metric([breaker.name], buckets, histogram.total)
            paused.add_metric([breaker.name], view["throttle"]["paused_for"] or 0.0)
            waiting.add_metric([breaker.name], view["throttle"]["waiting"] or 0)
        yield from (calls, retries, changes, state, failures, waits, paused, waiting)

    def describe(self) -> list[Any]:
        return []  # collected afresh at every scrape
