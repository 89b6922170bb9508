"""``LLMCircuitBreaker``'s own keyword arguments, and where a misplaced option belongs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from llm_circuit_breaker import _validate as check
from llm_circuit_breaker.config import CircuitBreakerConfig, RetryConfig

__all__ = ["breaker_fields", "refuse_options"]

_OPTIONS = (
    "name",
    "circuit_breaker",
    "retry",
    "registry",
    "headers",
    "session",
    "client_session",
    "max_response_bytes",
    "max_event_bytes",
)


def refuse_options(unknown: Mapping[str, Any]) -> None:
    """``TypeError`` for unknown keyword arguments, pointing breaker and retry options to the
    dict they belong in (``timeout`` -> ``circuit_breaker={"timeout": ...}``)."""
    for key in unknown:
        for option, config in (("circuit_breaker", CircuitBreakerConfig), ("retry", RetryConfig)):
            try:
                config.check_names({key: None})
            except TypeError as exc:
                if "did you mean" in str(exc):
                    raise TypeError(
                        f"LLMCircuitBreaker: {key!r} is a {option} option ({exc}); "
                        f"pass it as {option}={{...}}"
                    ) from None
                continue
            raise TypeError(
                f"LLMCircuitBreaker: {key!r} is a {option} option: pass it as "
                f"{option}={{{key!r}: ...}} (times are seconds)"
            )
    check.check_option_names(unknown, _OPTIONS, "LLMCircuitBreaker")


def breaker_fields(value: Mapping[str, Any] | CircuitBreakerConfig | None) -> dict[str, Any]:
    """The ``circuit_breaker=`` argument as checked :class:`CircuitBreakerConfig` fields."""
    if value is None:
        return {}
    if isinstance(value, CircuitBreakerConfig):
        return value.as_fields()
    fields = dict(check.check_mapping(value, "circuit_breaker"))
    CircuitBreakerConfig.from_mapping(fields)  # names and values checked here
    return fields
