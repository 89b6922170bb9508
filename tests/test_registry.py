"""BreakerRegistry: one breaker per name, snapshots, conflicts."""

from __future__ import annotations

import json

import pytest

from llm_circuit_breaker import BreakerRegistry, CircuitBreaker, CircuitBreakerConfig, Outcome
from llm_circuit_breaker.testing import FakeClock


def test_get_unknown_lists_known_names() -> None:
    """get() of an unknown name raises KeyError listing the names there are."""
    registry = BreakerRegistry()
    registry.get_or_create("openai")
    registry.get_or_create("anthropic")
    with pytest.raises(KeyError, match="'anthropic', 'openai'"):
        registry.get("gemini")


def test_get_or_create_reuses_and_detects_conflicts() -> None:
    """Same name, same breaker; a different config is a ValueError naming the field."""
    registry = BreakerRegistry()
    first = registry.get_or_create("openai", CircuitBreakerConfig(failure_threshold=3))
    assert registry.get_or_create("openai") is first
    assert registry.get_or_create("openai", CircuitBreakerConfig(failure_threshold=3)) is first
    with pytest.raises(ValueError, match="reset_timeout=5.0"):
        registry.get_or_create(
            "openai", CircuitBreakerConfig(failure_threshold=3, reset_timeout=5.0)
        )
    assert "openai" in registry and list(registry) == ["openai"] and len(registry) == 1


def test_snapshot_is_json_serialisable(clock: FakeClock) -> None:
    """snapshot() passes json.dumps, with the documented keys, in every state."""
    registry = BreakerRegistry(clock=clock)
    breaker = registry.get_or_create("openai", CircuitBreakerConfig(failure_threshold=1))
    held = registry.get_or_create("held")
    held.force_open()
    breaker.record(breaker.admit(), Outcome.FAILURE)
    snap = json.loads(json.dumps(registry.snapshot(), allow_nan=False))
    assert set(snap["openai"]) == {
        "state",
        "failure_count",
        "success_count",
        "opened_at",
        "retry_after",
        "throttle",
        "budget",
        "concurrency",
        "stats",
    }
    assert set(snap["openai"]["throttle"]) == {
        "paused_for",
        "requests_remaining",
        "tokens_remaining",
        "reset_in",
        "waiting",
    }
    assert snap["openai"]["state"] == "OPEN"
    assert snap["openai"]["retry_after"] == 30.0
    assert snap["openai"]["stats"]["failures"] == 1
    assert snap["held"]["retry_after"] is None


def test_add_and_remove() -> None:
    """Existing breakers can be registered and removed by name."""
    registry = BreakerRegistry()
    breaker = registry.add(CircuitBreaker("x"))
    with pytest.raises(ValueError, match="already named"):
        registry.add(CircuitBreaker("x"))
    registry.remove("x")
    assert "x" not in registry
    with pytest.raises(KeyError):
        registry.remove("x")
    assert breaker.name == "x"


def test_config_must_be_a_config() -> None:
    """Something else than a config (or a mapping of its fields) is a TypeError, not a crash
    later; a mapping with an unknown field is one too."""
    with pytest.raises(TypeError, match="CircuitBreakerConfig"):
        BreakerRegistry().get_or_create("x", [("failure_threshold", 1)])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="did you mean"):
        BreakerRegistry().get_or_create("x", {"failure_treshold": 1})
