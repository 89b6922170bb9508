"""Prometheus metrics for circuit breakers (extra ``prometheus``).

::

    from llm_circuit_breaker.observability.prometheus import PrometheusCollector
    PrometheusCollector().register()            # the default prometheus_client registry

A custom collector: every scrape reads the breakers' statistics, so guarded calls pay nothing.
The names and labels are those of the OpenTelemetry instrumentation as an OpenTelemetry
Prometheus exporter shows them. Every series has ``breaker`` (the name, or the name template of
a scoped breaker: ``openai:{model}``) and ``scope`` (the template's value, ``gpt-4o``; empty for
a breaker named outright; past ``max_metric_scopes`` values per template, ``other``):

* ``llm_circuit_breaker_calls_total{outcome, reason, enforced}`` every call ends in exactly one
  outcome: success | failure | ignored | throttled (``reason`` = rate_limit (a 429, or a
  throttle slot too far away) | concurrency | retry_budget | token_budget) | rejected (the
  circuit refused it; ``enforced="false"``: a metrics-only breaker let it run, counted once)
* ``llm_circuit_breaker_retries_total``
* ``llm_circuit_breaker_state_changes_total{state}`` transitions into ``state``
* ``llm_circuit_breaker_state{state}`` 1 for the current state, 0 for the others (under
  ``scope="other"``: how many breakers are in it)
* ``llm_circuit_breaker_consecutive_failures`` consecutive failures counted in CLOSED
* ``llm_circuit_breaker_throttle_wait_seconds`` histogram of the waits for a throttle slot
  (calls admitted while the throttle paced)
* ``llm_circuit_breaker_throttle_paused_seconds`` seconds until a rate-limit pause ends
* ``llm_circuit_breaker_throttle_waiting`` callers asleep until their slot
* ``llm_circuit_breaker_concurrency_limit``, ``llm_circuit_breaker_concurrency_in_flight``,
  ``llm_circuit_breaker_concurrency_waiting``: ``max_concurrent`` (its current value when
  adaptive), the calls in flight and the callers waiting for a slot, in this process (only
  for breakers with a limit)
* ``llm_circuit_breaker_retries_denied_total`` retries the retry budget could not pay (not
  made; also counted as ``calls_total{outcome="throttled", reason="retry_budget"}``)
* ``llm_circuit_breaker_budget_spent_tokens``, ``llm_circuit_breaker_budget_limit_tokens``
  tokens spent in the current ``token_budget`` window and the limit (only for breakers with
  a token budget)
* ``llm_circuit_breaker_hedges_total`` extra attempts ``with_hedging`` started on the breaker
  because those in flight were slow; ``llm_circuit_breaker_hedge_wins_total`` those that
  answered first
* ``llm_circuit_breaker_fallback_calls_total{chain, target, outcome}`` for the
  ``with_fallbacks`` chains given as ``fallbacks=``: calls each target served, failed (the
  chain moved on) or refused without running
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from llm_circuit_breaker._core.state import CircuitState
from llm_circuit_breaker.breaker.registry import BreakerRegistry, registries
from llm_circuit_breaker.observability import ScopeCap, fallback_counts, require, series

_client = require("prometheus_client", "prometheus")
from prometheus_client.core import (  # noqa: E402
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)

__all__ = ["PrometheusCollector"]

_LABELS = ["breaker", "scope"]


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


class PrometheusCollector:
    """Exposes the breakers of ``registry`` (every registry in the process when None) to
    Prometheus; ``max_metric_scopes`` caps the ``scope`` values of one template;
    ``fallbacks`` maps names to ``with_fallbacks`` chains whose stats to expose."""

    def __init__(
        self,
        registry: BreakerRegistry | None = None,
        *,
        max_metric_scopes: int = 100,
        fallbacks: Mapping[str, Any] | None = None,
    ) -> None:
        self.registry = registry
        self.cap = ScopeCap(max_metric_scopes)
        self.fallbacks = dict(fallbacks or {})

    def register(self, collector_registry: Any = None) -> PrometheusCollector:
        """Register on ``collector_registry`` (prometheus_client's default when None)."""
        (collector_registry or _client.REGISTRY).register(self)
        return self

    def collect(self) -> Iterator[Any]:
        calls = CounterMetricFamily(
            "llm_circuit_breaker_calls",
            "Guarded calls by outcome.",
            labels=[*_LABELS, "outcome", "reason", "enforced"],
        )
        retries = CounterMetricFamily(
            "llm_circuit_breaker_retries", "Retries of guarded calls.", labels=_LABELS
        )
        changes = CounterMetricFamily(
            "llm_circuit_breaker_state_changes",
            "Transitions into each state.",
            labels=[*_LABELS, "state"],
        )
        state = GaugeMetricFamily(
            "llm_circuit_breaker_state", "1 for the current state.", labels=[*_LABELS, "state"]
        )
        failures = GaugeMetricFamily(
            "llm_circuit_breaker_consecutive_failures",
            "Consecutive failures counted in CLOSED.",
            labels=_LABELS,
        )
        waits = HistogramMetricFamily(
            "llm_circuit_breaker_throttle_wait_seconds",
            "Waits for a throttle slot.",
            labels=_LABELS,
        )
        paused = GaugeMetricFamily(
            "llm_circuit_breaker_throttle_paused_seconds",
            "Seconds until a rate-limit pause ends.",
            labels=_LABELS,
        )
        waiting = GaugeMetricFamily(
            "llm_circuit_breaker_throttle_waiting",
            "Callers asleep until their throttle slot.",
            labels=_LABELS,
        )
        limits = GaugeMetricFamily(
            "llm_circuit_breaker_concurrency_limit",
            "Calls allowed in flight in this process (max_concurrent).",
            labels=_LABELS,
        )
        in_flight = GaugeMetricFamily(
            "llm_circuit_breaker_concurrency_in_flight",
            "Calls in flight in this process, under max_concurrent.",
            labels=_LABELS,
        )
        in_line = GaugeMetricFamily(
            "llm_circuit_breaker_concurrency_waiting",
            "Callers waiting for a slot under max_concurrent.",
            labels=_LABELS,
        )
        hedges = CounterMetricFamily(
            "llm_circuit_breaker_hedges", "Hedged attempts started.", labels=_LABELS
        )
        hedge_wins = CounterMetricFamily(
            "llm_circuit_breaker_hedge_wins", "Hedged attempts that answered first.", labels=_LABELS
        )
        denied = CounterMetricFamily(
            "llm_circuit_breaker_retries_denied",
            "Retries the retry budget could not pay (not made).",
            labels=_LABELS,
        )
        spent = GaugeMetricFamily(
            "llm_circuit_breaker_budget_spent_tokens",
            "Tokens spent in the current token_budget window.",
            labels=_LABELS,
        )
        budget_limits = GaugeMetricFamily(
            "llm_circuit_breaker_budget_limit_tokens",
            "Tokens allowed per token_budget window.",
            labels=_LABELS,
        )
        covered = registries() if self.registry is None else [self.registry]
        for row in series(covered, self.cap):
            labels = [row.breaker, row.scope]
            for (outcome, reason, enforced), count in row.calls.items():
                calls.add_metric([*labels, outcome, reason, enforced], count)
            retries.add_metric(labels, row.retries)
            denied.add_metric(labels, row.retries_denied)
            if row.budget_limit is not None:
                spent.add_metric(labels, row.budget_spent)
                budget_limits.add_metric(labels, row.budget_limit)
            for each in CircuitState:
                changes.add_metric([*labels, each.value], row.state_changes.get(each.value, 0))
                state.add_metric([*labels, each.value], row.states.get(each.value, 0))
            failures.add_metric(labels, row.consecutive_failures)
            buckets = [(_le(bound), count) for bound, count in row.wait_buckets()]
            waits.add_metric(labels, buckets, row.wait_sum)
            paused.add_metric(labels, row.paused_seconds)
            waiting.add_metric(labels, row.waiting)
            if row.concurrency_limit is not None:
                limits.add_metric(labels, row.concurrency_limit)
                in_flight.add_metric(labels, row.in_flight)
                in_line.add_metric(labels, row.concurrency_waiting)
            hedges.add_metric(labels, row.hedges)
            hedge_wins.add_metric(labels, row.hedge_wins)
        yield from (calls, retries, changes, state, failures, waits, paused, waiting)
        yield from (limits, in_flight, in_line, hedges, hedge_wins, denied, spent, budget_limits)
        if self.fallbacks:
            chains = CounterMetricFamily(
                "llm_circuit_breaker_fallback_calls",
                "Calls of each fallback chain's targets by outcome.",
                labels=["chain", "target", "outcome"],
            )
            for chain, target, outcome, count in fallback_counts(self.fallbacks):
                chains.add_metric([chain, target, outcome], count)
            yield chains

    def describe(self) -> list[Any]:
        return []  # collected afresh at every scrape
