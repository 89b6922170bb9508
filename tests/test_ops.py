"""The PromQL of the metrics guide, the alert rules and the Grafana dashboard, checked with ``promtool``
against sample series shaped as the exporters shape them."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
OPS = ROOT / "docs" / "ops"
METRICS_GUIDE = ROOT / "docs" / "how-to" / "metrics.md"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed")

# One minute apart: each line is a counter's increase per minute, or a gauge's value.
SERIES = {
    'llm_circuit_breaker_calls_total{breaker="openai", outcome="success"}': "0+54x15",
    'llm_circuit_breaker_calls_total{breaker="openai", outcome="failure"}': "0+6x15",
    'llm_circuit_breaker_calls_total{breaker="openai", outcome="ignored"}': "0+0x15",
    'llm_circuit_breaker_calls_total{breaker="openai", outcome="throttled", reason="rate_limit"}': (
        "0+30x15"
    ),
    'llm_circuit_breaker_calls_total{breaker="openai", outcome="rejected", enforced="true"}': (
        "0+30x15"
    ),
    'llm_circuit_breaker_calls_total{breaker="shadow", outcome="success"}': "0+60x15",
    'llm_circuit_breaker_calls_total{breaker="shadow", outcome="failure"}': "0+0x15",
    'llm_circuit_breaker_calls_total{breaker="shadow", outcome="ignored"}': "0+0x15",
    'llm_circuit_breaker_calls_total{breaker="shadow", outcome="throttled", reason="rate_limit"}': (
        "0+0x15"
    ),
    'llm_circuit_breaker_calls_total{breaker="shadow", outcome="rejected", enforced="false"}': (
        "0+60x15"
    ),
    'llm_circuit_breaker_retries_total{breaker="openai"}': "0+12x15",
    'llm_circuit_breaker_retries_total{breaker="shadow"}': "0+0x15",
    'llm_circuit_breaker_state{breaker="openai", state="OPEN"}': "1 0 1 0 1 0 1 0 1 0 1 0 1 0 1 0",
    'llm_circuit_breaker_state{breaker="openai", state="HALF_OPEN"}': "0 1 0 1 0 1 0 1 0 1 0 1 0 1 0 1",
    'llm_circuit_breaker_state{breaker="openai", state="CLOSED"}': "0x15",
    'llm_circuit_breaker_state{breaker="shadow", state="OPEN"}': "1x15",
    'llm_circuit_breaker_state{breaker="shadow", state="HALF_OPEN"}': "0x15",
    'llm_circuit_breaker_state{breaker="shadow", state="CLOSED"}': "0x15",
    'llm_circuit_breaker_throttle_paused_seconds{breaker="openai"}': "20x15",
    'llm_circuit_breaker_throttle_paused_seconds{breaker="shadow"}': "0x15",
    'llm_circuit_breaker_retries_denied_total{breaker="openai"}': "0+3x15",
    'llm_circuit_breaker_retries_denied_total{breaker="shadow"}': "0+0x15",
    'llm_circuit_breaker_budget_spent_tokens{breaker="openai"}': "0+9000x15",
    'llm_circuit_breaker_budget_limit_tokens{breaker="openai"}': "100000x15",
}

# What each query of the metrics guide answers over SERIES at 10 minutes, in the guide's order. openai:
# 0.9 successes, 0.1 failures, 0.5 throttled, 0.5 rejected and 0.2 retries a second; shadow
# (metrics-only): 1 success and 1 would-be refusal a second.
GUIDE_ANSWERS: list[list[tuple[str, float]]] = [
    [('{breaker="openai"}', 0.1), ('{breaker="shadow"}', 0.0)],  # failure ratio (not 1.0)
    [('{breaker="openai"}', 0.5), ('{breaker="shadow"}', 0.0)],  # refused share
    [('{breaker="openai"}', 0.5)],  # calls saved per second
    [('{breaker="openai"}', 1.0), ('{breaker="shadow"}', 1.0)],  # cut off
    [('{breaker="openai"}', 0.1), ('{breaker="shadow"}', 0.0)],  # retries per call
    [('{breaker="openai"}', 0.025), ('{breaker="shadow"}', 0.0)],  # retries denied per call
    [('{breaker="openai"}', 0.9)],  # share of the token budget spent (90,000 of 100,000)
]


def guide_queries() -> list[str]:
    """The metrics guide's PromQL: each ``promql`` block holds queries apart by blank lines, each
    under a comment saying what it answers."""
    text = METRICS_GUIDE.read_text(encoding="utf-8")
    queries = []
    for block in re.findall(r"```promql\n(.*?)```", text, re.DOTALL):
        for chunk in block.strip().split("\n\n"):
            lines = [line for line in chunk.splitlines() if not line.startswith("#")]
            queries.append(" ".join(line.strip() for line in lines))
    return queries


def _promtool_test(tmp_path: Path, tests: list[dict[str, Any]], rules: list[str]) -> None:
    """Run ``promtool test rules`` on ``tests`` (JSON is YAML) and fail with its output."""
    assert PROMTOOL is not None
    spec = {"rule_files": rules, "evaluation_interval": "1m", "tests": tests}
    path = tmp_path / "test.yml"
    path.write_text(json.dumps(spec), encoding="utf-8")
    done = subprocess.run(
        [PROMTOOL, "test", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


def _input_series() -> list[dict[str, str]]:
    return [{"series": series, "values": values} for series, values in SERIES.items()]


def test_the_guide_has_its_queries() -> None:
    """Every query of the metrics guide has its expected answer here."""
    assert len(guide_queries()) == len(GUIDE_ANSWERS)


@needs_promtool
def test_guide_queries_answer_what_they_claim(tmp_path: Path) -> None:
    """Each query of the metrics guide is valid PromQL giving the numbers its comment promises (the
    failure ratio is 0.1 for 10% failures, not the 1.0 of a query matched on ``outcome``)."""
    tests = [
        {
            "interval": "1m",
            "input_series": _input_series(),
            "promql_expr_test": [
                {
                    "expr": query,
                    "eval_time": "10m",
                    "exp_samples": [{"labels": labels, "value": value} for labels, value in want],
                }
                for query, want in zip(guide_queries(), GUIDE_ANSWERS, strict=True)
            ],
        }
    ]
    _promtool_test(tmp_path, tests, [])


@needs_promtool
def test_alert_rules_are_valid() -> None:
    """``promtool check rules`` accepts the shipped alert rules."""
    assert PROMTOOL is not None
    done = subprocess.run(
        [PROMTOOL, "check", "rules", str(OPS / "alerts.yml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


@needs_promtool
def test_alerts_fire_on_the_series_they_watch(tmp_path: Path) -> None:
    """A circuit that flaps between OPEN and HALF_OPEN, a paused throttle, a refused share
    and a failure ratio over their thresholds fire; the metrics-only breaker's would-be
    refusals do not count as refused, and a ratio at the threshold does not fire."""

    def alert(name: str, labels: dict[str, str], severity: str) -> dict[str, Any]:
        return {
            "alertname": name,
            "eval_time": "15m",
            "exp_alerts": [{"exp_labels": {**labels, "severity": severity}}],
        }

    openai = {"breaker": "openai"}
    flaky = {  # half its calls fail: over the failure-ratio threshold
        'llm_circuit_breaker_calls_total{breaker="flaky", outcome="success"}': "0+30x15",
        'llm_circuit_breaker_calls_total{breaker="flaky", outcome="failure"}': "0+30x15",
    }
    tests = [
        {
            "interval": "1m",
            "input_series": _input_series()
            + [{"series": series, "values": values} for series, values in flaky.items()],
            "alert_rule_test": [
                {
                    "alertname": "LLMCircuitOpen",
                    "eval_time": "15m",
                    "exp_alerts": [
                        {"exp_labels": {**openai, "severity": "warning"}},
                        {"exp_labels": {"breaker": "shadow", "severity": "warning"}},
                    ],
                },
                alert("LLMCallsRefused", openai, "warning"),
                alert("LLMThrottlePaused", openai, "info"),
                # openai's 10% exactly is not over 10%; flaky's 50% is.
                alert("LLMFailureRatioHigh", {"breaker": "flaky"}, "warning"),
            ],
        }
    ]
    for entry in tests[0]["alert_rule_test"]:
        for expected in entry["exp_alerts"]:
            expected["exp_annotations"] = _annotations(entry["alertname"], expected["exp_labels"])
    _promtool_test(tmp_path, tests, [str(OPS / "alerts.yml")])


def _annotations(alertname: str, labels: dict[str, str]) -> dict[str, str]:
    """The annotations the rule renders for ``labels`` (promtool compares them too)."""
    yaml = pytest.importorskip("yaml")
    rules = yaml.safe_load((OPS / "alerts.yml").read_text(encoding="utf-8"))
    (rule,) = [r for g in rules["groups"] for r in g["rules"] if r.get("alert") == alertname]
    value = {"LLMCallsRefused": "50%", "LLMFailureRatioHigh": "50%"}.get(alertname, "")
    out = {}
    for key, template in rule["annotations"].items():
        text = template.replace("{{ $labels.breaker }}", labels["breaker"])
        text = text.replace("{{ $labels.scope }}", labels.get("scope", ""))
        out[key] = text.replace("{{ $value | humanizePercentage }}", value)
    return out


@needs_promtool
def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """Every query of the Grafana dashboard parses and evaluates (template variables filled)."""
    dashboard = json.loads((OPS / "grafana-dashboard.json").read_text(encoding="utf-8"))
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    assert len(exprs) >= 8
    filled = [e.replace("$__rate_interval", "5m").replace("$breaker", ".*") for e in exprs]
    tests = [
        {
            "interval": "1m",
            "input_series": [],
            "promql_expr_test": [
                {
                    "expr": f"absent(({expr}) > 1e300)",
                    "eval_time": "1m",
                    "exp_samples": [{"value": 1}],
                }
                for expr in filled
            ],
        }
    ]
    _promtool_test(tmp_path, tests, [])
