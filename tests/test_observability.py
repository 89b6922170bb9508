"""Exporters: exact Prometheus samples, OpenTelemetry points and span events, metrics-only mode."""

from __future__ import annotations

import importlib
import logging
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
    ThrottledError,
    circuit_breaker,
    with_retry,
)
from llm_circuit_breaker.breaker.telemetry import WAIT_BUCKETS
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


def calls(prom: CollectorRegistry, breaker: str, scope: str = "", **labels: str) -> float | None:
    """One ``llm_circuit_breaker_calls_total`` sample (``reason`` and ``enforced`` empty unless
    given)."""
    wanted = {"breaker": breaker, "scope": scope, "reason": "", "enforced": "", **labels}
    return prom.get_sample_value("llm_circuit_breaker_calls_total", wanted)


def otel_points(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    """Data points by metric name."""
    data = reader.get_metrics_data()
    return {
        metric.name: list(metric.data.data_points)
        for resource in (data.resource_metrics if data is not None else ())
        for scope in resource.scope_metrics
        for metric in scope.metrics
    }


def test_prometheus_exact_counts(clock: FakeClock) -> None:
    """A scrape after scripted outcomes gives exact counter values and the state gauge."""
    registry = BreakerRegistry(clock=clock)
    prom = CollectorRegistry()
    PrometheusCollector(registry).register(prom)
    _script(registry, clock)

    def sample(name: str, **labels: str) -> float | None:
        return prom.get_sample_value(name, {"breaker": "openai", "scope": "", **labels})

    assert calls(prom, "openai", outcome="success") == 2
    assert calls(prom, "openai", outcome="ignored") == 1
    assert calls(prom, "openai", outcome="failure") == 3
    assert calls(prom, "openai", outcome="rejected", enforced="true") == 3
    assert calls(prom, "openai", outcome="throttled", reason="rate_limit") == 0
    assert sample("llm_circuit_breaker_retries_total") == 2
    assert sample("llm_circuit_breaker_state_changes_total", state="OPEN") == 1
    assert sample("llm_circuit_breaker_state", state="OPEN") == 1
    assert sample("llm_circuit_breaker_state", state="CLOSED") == 0
    clock.advance(30.0)
    assert sample("llm_circuit_breaker_state", state="HALF_OPEN") == 1


def test_opentelemetry_points_and_span_events(clock: FakeClock) -> None:
    """Metric points match the stats, labelled as in Prometheus; retries and refusals are events
    on the current span carrying the GenAI attributes given for the breaker."""
    reader = InMemoryMetricReader()
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    registry = BreakerRegistry(clock=clock)
    OpenTelemetryInstrumentation(
        registry,
        meter_provider=MeterProvider(metric_readers=[reader]),
        attributes={"openai": {"gen_ai.provider.name": "openai"}},
    ).instrument()
    with tracer_provider.get_tracer("test").start_as_current_span("request"):
        _script(registry, clock)

    points = {
        (name, tuple(sorted(point.attributes.items()))): point.value
        for name, each in otel_points(reader).items()
        for point in each
        if hasattr(point, "value")
    }

    def value(name: str, **extra: Any) -> Any:
        return points[(name, tuple(sorted({"breaker": "openai", **extra}.items())))]

    assert value("llm_circuit_breaker.calls", outcome="failure") == 3
    assert value("llm_circuit_breaker.calls", outcome="rejected", enforced="true") == 3
    assert value("llm_circuit_breaker.calls", outcome="throttled", reason="rate_limit") == 0
    assert value("llm_circuit_breaker.retries") == 2
    assert value("llm_circuit_breaker.state", state="OPEN") == 1
    assert value("llm_circuit_breaker.consecutive_failures") == 3
    (span,) = spans.get_finished_spans()
    names = [event.name for event in span.events]
    assert names.count("llm_circuit_breaker.retry") == 2
    assert names.count("llm_circuit_breaker.rejected") == 3
    retry = next(e for e in span.events if e.name == "llm_circuit_breaker.retry")
    assert retry.attributes["error.type"] == "503"
    assert retry.attributes["gen_ai.provider.name"] == "openai"
    assert retry.attributes["llm_circuit_breaker.name"] == "openai"
    assert "gen_ai.system" not in retry.attributes


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
    assert breaker.stats.calls == 2  # the 5 let through count once, as rejections
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
        return prom.get_sample_value(name, {"breaker": "openai", "scope": "", **labels})

    assert calls(prom, "openai", outcome="throttled", reason="rate_limit") == 1
    assert calls(prom, "openai", outcome="success") == 1
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
    metrics = otel_points(reader)
    (histogram,) = metrics["llm_circuit_breaker.throttle.wait"]
    assert histogram.count == 1 and histogram.sum == pytest.approx(waited)
    assert tuple(histogram.explicit_bounds) == WAIT_BUCKETS  # seconds, not the SDK's ms buckets
    (paused,) = metrics["llm_circuit_breaker.throttle.paused"]
    assert paused.value == 0.0
    calls = {p.attributes["outcome"]: p.value for p in metrics["llm_circuit_breaker.calls"]}
    assert calls["throttled"] == 1
    (span,) = spans.get_finished_spans()
    (event,) = [e for e in span.events if e.name == "llm_circuit_breaker.throttle_wait"]
    assert event.attributes["llm_circuit_breaker.throttle.wait"] == pytest.approx(waited)


# -- outcomes add up ------------------------------------------------------------------------


def _total_calls(prom: CollectorRegistry, breaker: str) -> float:
    return sum(
        sample.value
        for metric in prom.collect()
        if metric.name == "llm_circuit_breaker_calls"
        for sample in metric.samples
        if sample.name.endswith("_total") and sample.labels["breaker"] == breaker
    )


def test_every_call_ends_in_exactly_one_outcome(clock: FakeClock) -> None:
    """Successes, an ignored 400, a 429, a throttle refusal, failures and refusals sum to the
    calls made; the throttle refusal is counted as throttled with reason rate_limit."""
    registry = BreakerRegistry(clock=clock)
    prom = CollectorRegistry()
    PrometheusCollector(registry).register(prom)
    rate_limited = http_status_error(
        429, {"retry-after": "20"}, {"error": {"code": "rate_limit_exceeded"}}
    )
    outcomes: list[BaseException | None] = [
        None,
        http_status_error(400),
        rate_limited,  # then a call refused by the throttle: it pops nothing
        None,
        http_status_error(503),
        http_status_error(503),  # then a call refused by the open circuit
    ]
    call = scripted_call(
        outcomes, name="openai", registry=registry, failure_threshold=2, throttle_max_wait=1.0
    )
    made = 0
    for _ in range(3):
        made += 1
        try:
            call()
        except Exception:
            pass
    made += 1
    with pytest.raises(ThrottledError):
        call()
    clock.advance(25.0)
    for _ in range(4):
        made += 1
        try:
            call()
        except Exception:
            pass
    assert calls(prom, "openai", outcome="throttled", reason="rate_limit") == 2
    assert calls(prom, "openai", outcome="rejected", enforced="true") == 1
    assert calls(prom, "openai", outcome="success") == 2
    assert calls(prom, "openai", outcome="failure") == 2
    assert _total_calls(prom, "openai") == made
    assert registry.get("openai").stats.throttle_refusals["rate_limit"] == 1


def test_metrics_only_mode_counts_each_call_once(clock: FakeClock) -> None:
    """Three calls of a metrics-only breaker count three times: two failures, then one that it
    would have refused, labelled enforced="false" (and not also counted as its success)."""
    registry = BreakerRegistry(clock=clock)
    prom = CollectorRegistry()
    PrometheusCollector(registry).register(prom)
    call = scripted_call(
        [ConnectionError(), ConnectionError(), None],
        name="shadow",
        registry=registry,
        failure_threshold=2,
        enabled=False,
    )
    for _ in range(2):
        with pytest.raises(ConnectionError):
            call()
    assert call() == "ok"
    assert calls(prom, "shadow", outcome="failure") == 2
    assert calls(prom, "shadow", outcome="rejected", enforced="false") == 1
    assert calls(prom, "shadow", outcome="success") == 0
    assert _total_calls(prom, "shadow") == 3


def test_retries_of_a_scoped_breaker_are_counted(clock: FakeClock) -> None:
    """with_retry over "openai:{model}" counts its retries on the call's own breaker, emits the
    retry event with the filled name, and raises at once when that circuit is open."""
    registry = BreakerRegistry(clock=clock)
    prom = CollectorRegistry()
    PrometheusCollector(registry).register(prom)
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    OpenTelemetryInstrumentation(
        registry,
        meter_provider=MeterProvider(metric_readers=[InMemoryMetricReader()]),
        attributes={"openai:{model}": {"gen_ai.provider.name": "openai"}},
    ).instrument()

    @with_retry(max_retries=2, sleep=clock.sleep, jitter=False)
    @circuit_breaker("openai:{model}", registry=registry, failure_threshold=3)
    def call(model: str) -> str:
        raise http_status_error(503)

    tracer = tracer_provider.get_tracer("test")
    with tracer.start_as_current_span("request"), pytest.raises(Exception, match="503"):
        call("gpt-4o")
    labels = {"breaker": "openai:{model}", "scope": "gpt-4o"}
    assert prom.get_sample_value("llm_circuit_breaker_retries_total", labels) == 2
    (span,) = spans.get_finished_spans()
    retry = next(e for e in span.events if e.name == "llm_circuit_breaker.retry")
    assert retry.attributes["llm_circuit_breaker.name"] == "openai:gpt-4o"
    assert retry.attributes["gen_ai.request.model"] == "gpt-4o"
    assert retry.attributes["gen_ai.provider.name"] == "openai"
    sleeps = len(clock.sleeps)
    with pytest.raises(CircuitOpenError):
        call("gpt-4o")
    assert len(clock.sleeps) == sleeps  # refused at once: no sleep before the refusal


def test_scopes_past_the_cap_add_up_under_other(clock: FakeClock) -> None:
    """Series carry template and scope apart; past max_metric_scopes, scopes sum under
    scope="other", so a client-chosen model name cannot blow up a scrape."""
    registry = BreakerRegistry(clock=clock)
    prom = CollectorRegistry()
    PrometheusCollector(registry, max_metric_scopes=2).register(prom)

    @circuit_breaker("openai:{model}", registry=registry)
    def call(model: str) -> str:
        return model

    for model in ("a", "b", "c", "d", "e", "e"):
        call(model)
    template = "openai:{model}"
    assert calls(prom, template, "a", outcome="success") == 1
    assert calls(prom, template, "b", outcome="success") == 1
    assert calls(prom, template, "other", outcome="success") == 4
    assert calls(prom, template, "c", outcome="success") is None
    state = {"breaker": template, "scope": "other", "state": "CLOSED"}
    assert prom.get_sample_value("llm_circuit_breaker_state", state) == 3
    with pytest.raises(ValueError, match="max_metric_scopes"):
        PrometheusCollector(registry, max_metric_scopes=-1)


# -- names ------------------------------------------------------------------------------------


def _families(prom: CollectorRegistry) -> dict[str, set[frozenset[str]]]:
    """Sample name -> the label-name sets it appears with (empty labels dropped, as
    Prometheus drops them; the OpenTelemetry exporter's own scope labels left out)."""
    found: dict[str, set[frozenset[str]]] = {}
    for metric in prom.collect():
        for sample in metric.samples:
            if not sample.name.startswith("llm_circuit_breaker") or sample.name.endswith(
                "_created"
            ):
                continue
            if "throttle_wait" in sample.name and not sample.value:
                continue  # OpenTelemetry records waits as they happen: none yet, no series
            names = frozenset(
                k for k, v in sample.labels.items() if v and not k.startswith("otel_")
            )
            found.setdefault(sample.name, set()).add(names)
    return found


def test_opentelemetry_and_prometheus_expose_the_same_names(clock: FakeClock) -> None:
    """Through OpenTelemetry's own Prometheus exporter, the instrumentation shows exactly the
    metric names and labels of the Prometheus collector."""
    exporter = pytest.importorskip("opentelemetry.exporter.prometheus")
    registry = BreakerRegistry(clock=clock)
    chat = _failover(registry)
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    PrometheusCollector(registry, fallbacks={"chat": chat}).register(ours)
    reader = exporter.PrometheusMetricReader(registry=theirs, disable_target_info=True)
    OpenTelemetryInstrumentation(
        registry, meter_provider=MeterProvider(metric_readers=[reader]), fallbacks={"chat": chat}
    ).instrument()
    _throttled_script(registry, clock)

    @circuit_breaker("openai:{model}", registry=registry)
    def scoped(model: str) -> str:
        return model

    scoped("gpt-4o")
    chat()
    _budget_script(registry, clock)
    assert _families(theirs) == _families(ours)
    assert "llm_circuit_breaker_budget_spent_tokens" in _families(ours)
    assert "llm_circuit_breaker_retries_denied_total" in _families(ours)
    assert "llm_circuit_breaker_fallback_calls_total" in _families(ours)
    assert "llm_circuit_breaker_calls_total" in _families(ours)


def test_a_second_instrumentation_on_one_meter_provider_reports_too(clock: FakeClock) -> None:
    """Two instrumentations of two registries on one MeterProvider both report; instrument()
    twice adds nothing (no doubled span events)."""
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    first, second = BreakerRegistry(clock=clock), BreakerRegistry(clock=clock)
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    one = OpenTelemetryInstrumentation(first, meter_provider=provider).instrument()
    assert one.instrument() is one
    OpenTelemetryInstrumentation(second, meter_provider=provider).instrument()
    scripted_call([None], name="a", registry=first)()
    with tracer_provider.get_tracer("test").start_as_current_span("request"):
        scripted_call([ConnectionError(), None], name="b", registry=second, failure_threshold=1)
        failing = scripted_call([ConnectionError()], name="c", registry=first, failure_threshold=1)
        with pytest.raises(ConnectionError):
            failing()
        with pytest.raises(CircuitOpenError):
            failing()
    breakers = {
        point.attributes["breaker"] for point in otel_points(reader)["llm_circuit_breaker.calls"]
    }
    assert breakers == {"a", "b", "c"}
    (span,) = spans.get_finished_spans()
    assert [e.name for e in span.events].count("llm_circuit_breaker.rejected") == 1


def test_instrument_without_a_registry_covers_every_registry(clock: FakeClock) -> None:
    """instrument() with no registry reports the registries made before and after it."""
    reader = InMemoryMetricReader()
    before = BreakerRegistry(clock=clock)
    instrumentation = OpenTelemetryInstrumentation(
        meter_provider=MeterProvider(metric_readers=[reader])
    ).instrument()
    try:
        after = BreakerRegistry(clock=clock)
        scripted_call([None], name="made-before", registry=before)()
        scripted_call([None], name="made-after", registry=after)()
        breakers = {
            p.attributes["breaker"] for p in otel_points(reader)["llm_circuit_breaker.calls"]
        }
        assert {"made-before", "made-after"} <= breakers
    finally:
        instrumentation.uninstrument()
    assert "made-after" not in {
        p.attributes["breaker"] for p in otel_points(reader).get("llm_circuit_breaker.calls", [])
    }


# -- logs -------------------------------------------------------------------------------------


def test_logs_are_structured_on_child_loggers(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Opening logs WARNING on llm_circuit_breaker.state with extra fields, recovering INFO; a
    retry logs on .retry with the breaker, scope, attempt, delay and error type."""
    registry = BreakerRegistry(clock=clock)

    @with_retry(max_retries=1, sleep=clock.sleep, jitter=False)
    @circuit_breaker("openai:{model}", registry=registry, failure_threshold=2)
    def call(model: str, fail: bool) -> str:
        if fail:
            raise http_status_error(503)
        return "ok"

    caplog.set_level("DEBUG", logger="llm_circuit_breaker")
    with pytest.raises(Exception, match="503"):
        call("gpt-4o", True)
    clock.advance(60.0)
    assert call("gpt-4o", False) == "ok"
    (retry,) = [r for r in caplog.records if r.name == "llm_circuit_breaker.retry"]
    assert (retry.breaker, retry.scope, retry.attempt, retry.error_type) == (  # type: ignore[attr-defined]
        "openai:{model}",
        "gpt-4o",
        1,
        "503",
    )
    assert retry.delay_s >= 0  # type: ignore[attr-defined]
    changes = [r for r in caplog.records if r.name == "llm_circuit_breaker.state"]
    opened = next(r for r in changes if r.new_state == "OPEN")  # type: ignore[attr-defined]
    assert opened.levelname == "WARNING"
    assert (opened.breaker, opened.scope, opened.old_state) == (  # type: ignore[attr-defined]
        "openai:{model}",
        "gpt-4o",
        "CLOSED",
    )
    assert opened.reason  # type: ignore[attr-defined]
    recovered = [r for r in changes if r.new_state != "OPEN"]  # type: ignore[attr-defined]
    assert recovered and all(r.levelname == "INFO" for r in recovered)
    assert any(
        isinstance(h, logging.NullHandler)
        for h in logging.getLogger("llm_circuit_breaker").handlers
    )


# -- a span per logical call ------------------------------------------------------------------


def _tracing() -> tuple[InMemorySpanExporter, TracerProvider, InMemoryMetricReader, MeterProvider]:
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    reader = InMemoryMetricReader()
    return spans, tracer_provider, reader, MeterProvider(metric_readers=[reader])


def test_a_logical_call_is_one_client_span_with_its_attempts_as_events(clock: FakeClock) -> None:
    """traced(): one CLIENT span per call, GenAI attributes, the retries and the failure's
    error.type on it, nested under the caller's span; the duration histogram in seconds."""
    from opentelemetry.trace import SpanKind, StatusCode

    from llm_circuit_breaker.observability.otel import DURATION_BUCKETS

    spans, tracer_provider, reader, meter_provider = _tracing()
    registry = BreakerRegistry(clock=clock)
    otel = OpenTelemetryInstrumentation(
        registry, meter_provider=meter_provider, tracer_provider=tracer_provider
    ).instrument()

    @otel.traced(operation="chat", provider="openai")
    @with_retry(max_retries=2, sleep=clock.sleep, jitter=False)
    @circuit_breaker("openai:{model}", registry=registry, failure_threshold=5)
    def chat(prompt: str, *, model: str) -> str:
        if prompt == "fail":
            raise http_status_error(503)
        return "ok"

    assert chat("hi", model="gpt-4o") == "ok"
    tracer = tracer_provider.get_tracer("test")
    with tracer.start_as_current_span("request"), pytest.raises(Exception, match="503"):
        chat("fail", model="gpt-4o")
    finished = spans.get_finished_spans()
    (parent,) = [s for s in finished if s.name == "request"]
    ok, failed = [s for s in finished if s.kind is SpanKind.CLIENT]
    assert (ok.name, ok.parent) == ("chat gpt-4o", None)
    assert ok.attributes == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "gpt-4o",
        "llm_circuit_breaker.name": "openai:gpt-4o",  # told by its attempt
    }
    attempts = [s for s in finished if s.name == "llm_circuit_breaker.attempt"]
    assert len(attempts) == 4  # one, then three (two retries): children, never CLIENT spans
    assert failed.parent is not None and failed.parent.span_id == parent.context.span_id
    assert failed.attributes["error.type"] == "503"
    assert failed.status.status_code is StatusCode.ERROR
    retries = [e for e in failed.events if e.name == "llm_circuit_breaker.retry"]
    assert [e.attributes["llm_circuit_breaker.name"] for e in retries] == ["openai:gpt-4o"] * 2
    assert not parent.events  # the events went to the logical call's span
    points = otel_points(reader)["gen_ai.client.operation.duration"]
    assert {p.attributes.get("error.type") for p in points} == {None, "503"}
    assert all(tuple(p.explicit_bounds) == DURATION_BUCKETS for p in points)
    failed_point = next(p for p in points if p.attributes.get("error.type") == "503")
    (exemplar,) = failed_point.exemplars
    assert exemplar.trace_id == failed.context.trace_id


async def test_a_traced_stream_times_its_first_chunk() -> None:
    """An async generator's span covers the whole stream; the first chunk is timed."""
    spans, tracer_provider, reader, meter_provider = _tracing()
    otel = OpenTelemetryInstrumentation(
        BreakerRegistry(), meter_provider=meter_provider, tracer_provider=tracer_provider
    ).instrument()

    @otel.traced(operation="chat", provider="anthropic")
    async def stream(model: str) -> Any:
        for piece in ("Hel", "lo"):
            yield piece

    assert [piece async for piece in stream(model="claude")] == ["Hel", "lo"]
    (span,) = spans.get_finished_spans()
    assert span.name == "chat claude"
    (first,) = otel_points(reader)["gen_ai.client.operation.time_to_first_chunk"]
    assert first.count == 1


def test_try_admit_counts_the_call_it_refuses_for_a_throttle_wait(clock: FakeClock) -> None:
    """try_admit() refuses a call that would have to wait for its slot: a throttled outcome."""
    from llm_circuit_breaker import CircuitBreaker, Outcome

    breaker = CircuitBreaker("paced", clock=clock)
    breaker.record(breaker.admit(), Outcome.THROTTLED, hint=5.0)
    assert breaker.try_admit() == -1
    assert breaker.stats.throttle_refusals["rate_limit"] == 1


def _failover(registry: BreakerRegistry) -> Any:
    """A chain of two targets whose first fails once with a 503."""
    from llm_circuit_breaker import with_fallbacks

    primary = scripted_call([http_status_error(503)], name="primary", registry=registry)
    backup = scripted_call([None, None], name="backup", registry=registry)
    return with_fallbacks(primary, backup)


def test_fallback_chains_are_counted_per_target(clock: FakeClock) -> None:
    """fallbacks= exposes each chain's targets: served, failed (moved on), refused."""
    registry = BreakerRegistry(clock=clock)
    chat = _failover(registry)
    prom = CollectorRegistry()
    PrometheusCollector(registry, fallbacks={"chat": chat}).register(prom)
    reader = InMemoryMetricReader()
    OpenTelemetryInstrumentation(
        registry, meter_provider=MeterProvider(metric_readers=[reader]), fallbacks={"chat": chat}
    ).instrument()
    assert chat() == "ok"

    def sample(target: str, outcome: str) -> float | None:
        labels = {"chain": "chat", "target": target, "outcome": outcome}
        return prom.get_sample_value("llm_circuit_breaker_fallback_calls_total", labels)

    assert (sample("primary", "failed"), sample("backup", "served")) == (1, 1)
    assert sample("primary", "served") == 0
    points = {
        (p.attributes["target"], p.attributes["outcome"]): p.value
        for p in otel_points(reader)["llm_circuit_breaker.fallback.calls"]
    }
    assert points[("primary", "failed")] == 1 and points[("backup", "served")] == 1


# -- budgets ----------------------------------------------------------------------------------


def _budget_script(registry: BreakerRegistry, clock: FakeClock) -> None:
    """A breaker with a 1,000-token budget that spends 300 (one answer's usage), and one whose
    retry budget (no floor, no share) denies its only retry."""

    @circuit_breaker("capped", registry=registry, token_budget=1000)
    def capped() -> dict[str, Any]:
        return {"usage": {"total_tokens": 300}}

    capped()

    @with_retry(max_retries=2, sleep=clock.sleep, jitter=False)
    @circuit_breaker("stingy", registry=registry, retry_budget=0.0, retry_budget_floor=0.0)
    def stingy() -> None:
        raise http_status_error(503)

    with pytest.raises(Exception, match="503"):
        stingy()


def test_budget_gauges_and_denied_retries(clock: FakeClock) -> None:
    """Tokens spent and the limit per breaker with a token budget, and the retries the retry
    budget denied: exact, through Prometheus and OpenTelemetry alike."""
    registry = BreakerRegistry(clock=clock)
    prom = CollectorRegistry()
    PrometheusCollector(registry).register(prom)
    reader = InMemoryMetricReader()
    OpenTelemetryInstrumentation(
        registry, meter_provider=MeterProvider(metric_readers=[reader])
    ).instrument()
    _budget_script(registry, clock)

    def sample(name: str, breaker: str) -> float | None:
        return prom.get_sample_value(name, {"breaker": breaker, "scope": ""})

    assert sample("llm_circuit_breaker_budget_spent_tokens", "capped") == 300
    assert sample("llm_circuit_breaker_budget_limit_tokens", "capped") == 1000
    assert sample("llm_circuit_breaker_budget_limit_tokens", "stingy") is None  # no cap
    assert sample("llm_circuit_breaker_retries_denied_total", "stingy") == 1
    assert sample("llm_circuit_breaker_retries_denied_total", "capped") == 0
    points = otel_points(reader)

    def values(name: str) -> dict[str, float]:
        return {p.attributes["breaker"]: p.value for p in points[name]}

    assert values("llm_circuit_breaker.budget.spent_tokens") == {"capped": 300}
    assert values("llm_circuit_breaker.budget.limit_tokens") == {"capped": 1000}
    assert values("llm_circuit_breaker.retries_denied") == {"capped": 0, "stingy": 1}
