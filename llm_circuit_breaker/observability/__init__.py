"""Metrics exporters, each behind its extra and imported only when asked for.

* :mod:`llm_circuit_breaker.observability.prometheus` (extra ``prometheus``)
* :mod:`llm_circuit_breaker.observability.otel` (extra ``otel``)

Both read the breakers' statistics when metrics are collected, so a guarded call pays nothing
for them, and both expose the same series (:func:`series`): one metric name, one set of labels,
whichever exporter an application runs. A breaker made from a name template
(``"openai:{model}"``) is labelled ``breaker="openai:{model}", scope="gpt-4o"``; a breaker named
outright ``breaker="openai", scope=""``. At most ``max_metric_scopes`` scope values of one
template get their own series, the rest add up under ``scope="other"``.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterable, Mapping
from typing import Any

from llm_circuit_breaker._core.state import CircuitState
from llm_circuit_breaker._redact import shown
from llm_circuit_breaker.breaker.breaker import CircuitBreaker
from llm_circuit_breaker.breaker.registry import BreakerRegistry
from llm_circuit_breaker.breaker.telemetry import (
    THROTTLE_REASONS,
    WAIT_BUCKETS,
    BreakerStats,
    error_type,
    latency_of,
    split_name,
)

__all__ = [
    "FALLBACK_OUTCOMES",
    "OTHER",
    "OUTCOMES",
    "ScopeCap",
    "Series",
    "calls_by_outcome",
    "error_type",
    "fallback_counts",
    "safe",
    "series",
]

OUTCOMES = ("success", "failure", "ignored", "throttled", "rejected")
OTHER = "other"  # the scope value that aggregates the scopes past ``max_metric_scopes``

BOUNDS = (*WAIT_BUCKETS, float("inf"))  # the throttle-wait histogram's upper bounds
CallKey = tuple[str, str, str]  # (outcome, reason, enforced): "" where it does not apply


safe = shown
"""``text`` as a metric label or span attribute: credentials masked (a breaker named after a
keyed URL, a scope filled with a key ...), by the redaction of messages and logs."""


def calls_by_outcome(
    breaker: CircuitBreaker, stats: BreakerStats | None = None
) -> dict[CallKey, int]:
    """The breaker's calls by ``(outcome, reason, enforced)``. Every call ends in exactly one:
    ``throttled`` carries the ``reason`` (``rate_limit`` for a provider's 429 and for a
    throttle slot too far away, ``concurrency``, ``retry_budget``, ``token_budget``);
    ``rejected`` carries ``enforced`` (``"false"``: a metrics-only breaker let the call run)."""
    stats = breaker.stats if stats is None else stats
    refusals = stats.throttle_refusals
    calls: dict[CallKey, int] = {
        ("success", "", ""): stats.successes,
        ("failure", "", ""): stats.failures,
        ("ignored", "", ""): stats.ignored,
        ("throttled", "rate_limit", ""): stats.throttled + refusals.get("rate_limit", 0),
    }
    for reason in THROTTLE_REASONS[1:]:
        if refusals.get(reason):
            calls["throttled", reason, ""] = refusals[reason]
    enforced = "true" if breaker.config.enabled else "false"
    calls["rejected", "", enforced] = stats.rejections
    return calls


@dataclasses.dataclass(slots=True)
class Series:
    """What the exporters report for one ``(breaker, scope)`` pair (several breakers summed
    under ``scope="other"``); both labels with any credential in them masked."""

    breaker: str
    scope: str
    calls: dict[CallKey, int] = dataclasses.field(default_factory=dict)
    retries: int = 0
    state_changes: dict[str, int] = dataclasses.field(default_factory=dict)
    states: dict[str, int] = dataclasses.field(default_factory=dict)  # breakers in each state
    consecutive_failures: int = 0
    wait_counts: list[int] = dataclasses.field(default_factory=lambda: [0] * len(BOUNDS))
    wait_sum: float = 0.0
    paused_seconds: float = 0.0  # the longest pause of the breakers summed here
    waiting: int = 0
    # max_concurrent, summed over the breakers here that have one (None: none has)
    concurrency_limit: int | None = None
    in_flight: int = 0
    concurrency_waiting: int = 0
    hedges: int = 0  # extra attempts with_hedging started because those in flight were slow
    hedge_wins: int = 0  # of those, the ones that answered first
    retries_denied: int = 0  # retries the retry budget could not pay (not made)
    # token_budget, summed over the breakers here that have one (None: none has)
    budget_limit: float | None = None
    budget_spent: float = 0.0  # tokens spent in the current windows of those breakers
    breakers: list[CircuitBreaker] = dataclasses.field(default_factory=list)

    @property
    def labels(self) -> dict[str, str]:
        """``{"breaker": ..., "scope": ...}``."""
        return {"breaker": self.breaker, "scope": self.scope}

    def add(self, breaker: CircuitBreaker) -> None:
        """Add one breaker's numbers."""
        self.breakers.append(breaker)
        stats = breaker.stats
        for key, count in calls_by_outcome(breaker, stats).items():
            self.calls[key] = self.calls.get(key, 0) + count
        self.retries += stats.retries
        self.retries_denied += stats.retries_denied
        for state, count in stats.state_changes.items():
            self.state_changes[state] = self.state_changes.get(state, 0) + count
        if breaker.store is None:  # read in this process: no snapshot's copying
            current, failures, throttle = breaker.state, breaker.failure_count, breaker.throttle
        else:  # one store round trip for the lot
            view = breaker.snapshot()
            current, failures, throttle = view["state"], view["failure_count"], view["throttle"]
        for state in CircuitState:
            self.states[state.value] = self.states.get(state.value, 0) + (current == state.value)
        self.consecutive_failures += failures
        histogram = breaker.wait_histogram
        for index, count in enumerate(histogram.counts):
            self.wait_counts[index] += count
        self.wait_sum += histogram.total
        self.paused_seconds = max(self.paused_seconds, throttle["paused_for"] or 0.0)
        self.waiting += int(throttle["waiting"] or 0)
        limit = breaker.concurrency  # counted in this process, whatever the store
        if limit is not None:
            self.concurrency_limit = (self.concurrency_limit or 0) + int(limit["limit"])
            self.in_flight += int(limit["in_flight"])
            self.concurrency_waiting += int(limit["waiting"])
        if breaker.config.token_budget is not None:
            budget = breaker.budget
            self.budget_limit = (self.budget_limit or 0.0) + float(budget["limit"] or 0.0)
            self.budget_spent += float(budget["spent"] or 0.0)
        latency = latency_of(breaker)
        self.hedges += latency.hedges_started
        self.hedge_wins += latency.hedges_won

    def wait_buckets(self) -> list[tuple[float, int]]:
        """Cumulative ``[(upper bound, waits at most that long), ...]`` ending at +Inf."""
        running, out = 0, []
        for bound, count in zip(BOUNDS, self.wait_counts, strict=True):
            running += count
            out.append((bound, running))
        return out


class ScopeCap:
    """Which scope values of each template get their own series: the first
    ``max_metric_scopes`` seen, for as long as the exporter lives (a series does not come and
    go with the breakers a registry drops); the rest are labelled ``scope="other"``."""

    def __init__(self, max_metric_scopes: int = 100) -> None:
        if (
            isinstance(max_metric_scopes, bool)
            or not isinstance(max_metric_scopes, int)
            or max_metric_scopes < 0
        ):
            raise ValueError(f"max_metric_scopes must be an int >= 0, got {max_metric_scopes!r}")
        self.max_metric_scopes = max_metric_scopes
        self._kept: dict[str, set[str]] = {}
        self._lock = threading.Lock()

    def label(self, template: str, scope: str) -> str:
        """The ``scope`` label for a breaker of ``template`` filled with ``scope``."""
        if not scope:
            return scope
        with self._lock:
            kept = self._kept.setdefault(template, set())
            if scope in kept:
                return scope
            if len(kept) < self.max_metric_scopes and scope != OTHER:
                kept.add(scope)
                return scope
        return OTHER


def series(registries: Iterable[BreakerRegistry], cap: ScopeCap) -> list[Series]:
    """The series of every breaker in ``registries`` (a breaker in two registries counts
    once), in label order."""
    seen: set[int] = set()
    rows: dict[tuple[str, str], Series] = {}
    for registry in registries:
        for breaker in registry.breakers():
            if id(breaker) in seen:
                continue
            seen.add(id(breaker))
            template, scope = split_name(breaker.name, breaker.template)
            key = (safe(template), safe(cap.label(template, scope)))
            row = rows.get(key)
            if row is None:
                row = rows[key] = Series(*key)
            row.add(breaker)
    return [rows[key] for key in sorted(rows)]


FALLBACK_OUTCOMES = ("served", "failed", "refused")


def fallback_counts(chains: Mapping[str, Any]) -> list[tuple[str, str, str, int]]:
    """``(chain, target, outcome, count)`` of each ``with_fallbacks`` chain: ``chains`` maps a
    chain's name to the decorated function (its ``.fallback_stats``) or to those stats."""
    return [
        (chain, target, outcome, getattr(counts, outcome))
        for chain, found in sorted(chains.items())
        for target, counts in getattr(found, "fallback_stats", found).items()
        for outcome in FALLBACK_OUTCOMES
    ]


def require(module: str, extra: str) -> Any:
    """Import ``module`` or raise an ImportError that names the extra to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            f"{module} is not installed: pip install 'llm-circuit-guard[{extra}]'"
        ) from exc
