"""CircuitBreakerConfig validation."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from llm_circuit_breaker import CircuitBreakerConfig


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("failure_threshold", 0),
        ("failure_threshold", -1),
        ("failure_threshold", 2.5),
        ("failure_threshold", True),
        ("reset_timeout", -1.0),
        ("reset_timeout", float("nan")),
        ("reset_timeout", float("inf")),
        ("success_threshold", 0),
        ("timeout", 0),
        ("timeout", "10"),
        ("half_open_max_calls", 0),
        ("half_open_probe_timeout", -5),
        ("failure_rate_threshold", 0.0),
        ("failure_rate_threshold", 1.5),
        ("slow_call_duration", 0),
    ],
)
def test_bad_values_name_field_and_value(field: str, value: Any) -> None:
    """A bad value is a ValueError naming the field and the value."""
    with pytest.raises(ValueError, match=field) as caught:
        CircuitBreakerConfig(**{field: value})
    assert repr(value) in str(caught.value)


def test_window_without_rate_is_refused() -> None:
    """window / minimum_calls mean nothing without failure_rate_threshold."""
    with pytest.raises(ValueError, match="window"):
        CircuitBreakerConfig(window=10.0)


def test_frozen_and_replaceable() -> None:
    """Configs are immutable; dataclasses.replace validates the copy."""
    config = CircuitBreakerConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.failure_threshold = 3  # type: ignore[misc]
    assert dataclasses.replace(config, failure_threshold=3).failure_threshold == 3
    with pytest.raises(ValueError):
        dataclasses.replace(config, failure_threshold=0)


def test_from_mapping_rejects_unknown_keys_with_hint() -> None:
    """Dict configs take exactly the field names; camelCase gets the snake_case hint."""
    assert CircuitBreakerConfig.from_mapping({"reset_timeout": 5}).reset_timeout == 5
    with pytest.raises(TypeError, match=r"'resetTimeout' \(did you mean 'reset_timeout'\?\)"):
        CircuitBreakerConfig.from_mapping({"resetTimeout": 5000})
    with pytest.raises(TypeError, match="'bogus'"):
        CircuitBreakerConfig.from_mapping({"bogus": 1})


def test_rate_mode_defaults() -> None:
    """The failure-rate mode has documented defaults for window and minimum_calls."""
    config = CircuitBreakerConfig(failure_rate_threshold=0.5)
    assert (config.effective_window, config.effective_minimum_calls) == (60.0, 10)
