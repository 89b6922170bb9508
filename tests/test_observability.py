"""Exporters: exact Prometheus samples, OpenTelemetry points and span events, metrics-only mode."""

from __future__ import annotations

import importlib
import subprocess
import sys
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry

from llm_circuit_breaker import (
    BreakerRegistry,
    CircuitBreakerConfig,
    CircuitOpenError,
    CircuitState,
    circuit_breaker,
    with_retry,
)
from llm_circuit_breaker.errors import http_status_error
from llm_circuit_breaker.observability.otel import OpenTelemetryInstrumentation
from llm_circuit_breaker.observability.prometheus import PrometheusCollector
from llm_circuit_breaker.testing import FakeClock
from tests.scripted import scripted_call


def _script(registry: BreakerRegistry, clock: FakeClock) -> Any:
    """2 successes, 1 ignored 400, a 503 retried twice then 2 more failures -> OPEN, 3 refusals."""
    outcomes: list[BaseException | None] = [None, None, http_status_error(400)]

    @with_retry(max_retries=2, sleep=clock.sleep, jitter=False)
    @circuit_breaker("openai", registry=registry, failure_threshold=3)
    def call(error: BaseException | None) -> str:
        if error is not None:
            raise error
        return "ok"

    for outcome in outcomes:
        try:
            call(outcome)
        except Exception:
            pass
    with pytest.raises(Exception, match="503"):
        call(http_status_error(503))
    for _ in range(3):
        with pytest.raises(CircuitOpenError):
            call(None)
    return call


def test_prometheus_exact_counts(clock: FakeClock) -> None:
    """A scrape after scripted outcomes gives exact counter values and the state gauge."""
    registry = BreakerRegistry(clock=clock)
    prom = CollectorRegistry()
    PrometheusCollector(registry).register(prom)
    _script(registry, clock)

    def sample(name: str, **labels: str) -> float | None:
        return prom.get_sample_value(name, {"breaker": "openai", **labels})

    assert sample("llm_circuit_breaker_calls_total", outcome="success") == 2
    assert sample("llm_circuit_breaker_calls_total", outcome="ignored") == 1
    assert sample("llm_circuit_breaker_calls_total", outcome="failure") == 3
    assert sample("llm_circuit_breaker_calls_total", outcome="rejected") == 3
    assert sample("llm_circuit_breaker_retries_total") == 2
    assert sample("llm_circuit_breaker_state_changes_total", state="OPEN") == 1
    assert sample("llm_circuit_breaker_state", state="OPEN") == 1
    assert sample("llm_circuit_breaker_state", state="CLOSED") == 0
    clock.advance(30.0)
    assert sample("llm_circuit_breaker_state", state="HALF_OPEN") == 1


def test_opentelemetry_points_and_span_events(clock: FakeClock) -> None:
    """Metric points match the stats; retries and refusals are events on the current span."""
    reader = InMemoryMetricReader()
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    registry = BreakerRegistry(clock=clock)
    OpenTelemetryInstrumentation(
        registry,
        meter_provider=MeterProvider(metric_readers=[reader]),
        attributes={"openai": {"gen_ai.system": "openai", "gen_ai.request.model": "gpt-4o-mini"}},
    ).instrument()
    with tracer_provider.get_tracer("test").start_as_current_span("request"):
        _script(registry, clock)

    points: dict[tuple[str, tuple[tuple[str, Any], ...]], Any] = {}
    for resource in reader.get_metrics_data().resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    points[(metric.name, tuple(sorted(point.attributes.items())))] = point.value

    def value(name: str, **extra: Any) -> Any:
        base = {
            "llm_circuit_breaker.name": "openai",
            "gen_ai.system": "openai",
            "gen_ai.request.model": "gpt-4o-mini",
        }
        return points[(name, tuple(sorted({**base, **extra}.items())))]

    assert value("llm_circuit_breaker.calls", outcome="failure") == 3
    assert value("llm_circuit_breaker.calls", outcome="rejected") == 3
    assert value("llm_circuit_breaker.retries") == 2
    assert value("llm_circuit_breaker.state", **{"llm_circuit_breaker.state": "OPEN"}) == 1
    (span,) = spans.get_finished_spans()
    names = [event.name for event in span.events]
    assert names.count("llm_circuit_breaker.retry") == 2
    assert names.count("llm_circuit_breaker.rejected") == 3
    retry = next(e for e in span.events if e.name == "llm_circuit_breaker.retry")
    assert retry.attributes["error.type"] == "503"
    assert retry.attributes["gen_ai.system"] == "openai"


def test_metrics_only_mode_never_refuses(clock: FakeClock) -> None:
    """enabled=False: the circuit opens as usual and refusals are counted, but none happens."""
    registry = BreakerRegistry(clock=clock)
    ran = 0

    @circuit_breaker("shadow", registry=registry, failure_threshold=2, enabled=False)
    def call(fail: bool) -> str:
        nonlocal ran
        ran += 1
        if fail:
            raise ConnectionError
        return "ok"

    for _ in range(2):
        with pytest.raises(ConnectionError):
            call(True)
    breaker = registry.get("shadow")
    assert breaker.state is CircuitState.OPEN
    for _ in range(5):
        assert call(False) == "ok"  # would have been refused
    assert ran == 7
    assert breaker.stats.rejections == 5
    assert breaker.state is CircuitState.OPEN  # shadow calls do not move the circuit
    clock.advance(30.0)
    assert call(False) == "ok"  # a real probe this time
    assert breaker.success_count == 1
    assert CircuitBreakerConfig(enabled=False).enabled is False


def test_importing_the_package_imports_no_exporter() -> None:
    """import llm_circuit_breaker pulls in neither prometheus_client nor opentelemetry."""
    code = "import sys, llm_circuit_breaker; print(sorted(m for m in sys.modules if m.startswith(('prometheus_client', 'opentelemetry'))))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("module", "missing", "extra"),
    [("prometheus", "prometheus_client", "prometheus"), ("otel", "opentelemetry", "otel")],
)
def test_missing_extra_names_it(
    monkeypatch: pytest.MonkeyPatch, module: str, missing: str, extra: str
) -> None:
    """Without the extra, importing an exporter says which extra to install."""
    for name in list(sys.modules):
        if name == missing or name.startswith(missing + "."):
            monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, missing, None)
    monkeypatch.delitem(sys.modules, f"llm_circuit_breaker.observability.{module}", raising=False)
    with pytest.raises(ImportError, match=rf"llm-circuit-guard\[{extra}\]"):
        importlib.import_module(f"llm_circuit_breaker.observability.{module}")


def _throttled_script(registry: BreakerRegistry, clock: FakeClock) -> None:
    """One rate-limit 429 (retry-after 2 s), then a call that waits out the pause."""
    outcomes: list[BaseException | None] = [
        http_status_error(429, {"retry-after": "2"}, {"error": {"code": "rate_limit_exceeded"}}),
        None,
    ]

    call = scripted_call(outcomes, name="openai", registry=registry)

    with pytest.raises(Exception, match="429"):
        call()
    assert call() == "ok"


def test_prometheus_throttle_metrics(clock: FakeClock) -> None:
    """The throttled outcome, the wait histogram and the paused-for gauge, exactly."""
    registry = BreakerRegistry(clock=clock)
    prom = CollectorRegistry()
    PrometheusCollector(registry).register(prom)
    _throttled_script(registry, clock)
    (waited,) = clock.sleeps

    def sample(name: str, **labels: str) -> float | None:
        return prom.get_sample_value(name, {"breaker": "openai", **labels})

    assert sample("llm_circuit_breaker_calls_total", outcome="throttled") == 1
    assert sample("llm_circuit_breaker_calls_total", outcome="success") == 1
    assert sample("llm_circuit_breaker_throttle_wait_seconds_count") == 1
    assert sample("llm_circuit_breaker_throttle_wait_seconds_sum") == pytest.approx(waited)
    assert sample("llm_circuit_breaker_throttle_wait_seconds_bucket", le="1.0") == 0
    assert sample("llm_circuit_breaker_throttle_wait_seconds_bucket", le="2.5") == 1
    assert sample("llm_circuit_breaker_throttle_paused_seconds") == 0.0
    assert sample("llm_circuit_breaker_throttle_waiting") == 0


def test_opentelemetry_throttle_histogram_and_event(clock: FakeClock) -> None:
    """The wait lands in the histogram and as a span event; the paused gauge reads the pause."""
    reader = InMemoryMetricReader()
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    registry = BreakerRegistry(clock=clock)
    OpenTelemetryInstrumentation(
        registry, meter_provider=MeterProvider(metric_readers=[reader])
    ).instrument()
    with tracer_provider.get_tracer("test").start_as_current_span("request"):
        _throttled_script(registry, clock)
    (waited,) = clock.sleeps
    metrics = {
        metric.name: metric.data.data_points
        for resource in reader.get_metrics_data().resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
    }
    (histogram,) = metrics["llm_circuit_breaker.throttle.wait"]
    assert histogram.count == 1 and histogram.sum == pytest.approx(waited)
    (paused,) = metrics["llm_circuit_breaker.throttle.paused_for"]
    assert paused.value == 0.0
    calls = {p.attributes["outcome"]: p.value for p in metrics["llm_circuit_breaker.calls"]}
    assert calls["throttled"] == 1
    (span,) = spans.get_finished_spans()
    (event,) = [e for e in span.events if e.name == "llm_circuit_breaker.throttled"]
    assert event.attributes["llm_circuit_breaker.throttle.wait"] == pytest.approx(waited)
