"""Circuit states and the validated, immutable breaker configuration."""

from __future__ import annotations

import dataclasses
import enum
import math
import re
from collections.abc import Mapping
from typing import Any

__all__ = ["CircuitBreakerConfig", "CircuitState", "config_fields"]

# Defaults of the optional sliding-window mode, used once failure_rate_threshold is set.
DEFAULT_WINDOW = 60.0
DEFAULT_MINIMUM_CALLS = 10


class CircuitState(str, enum.Enum):
    """The three states of a circuit; the values are the names, so they compare equal to str."""

    CLOSED = "CLOSED"
    OPEN = "OPEN"
    HALF_OPEN = "HALF_OPEN"

    def __str__(self) -> str:
        return self.value


class _WrongType(TypeError, ValueError):
    """A config value of the wrong type: a TypeError that is also a bad value (ValueError)."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class CircuitBreakerConfig:
    """How a circuit opens and recovers. All times are seconds (floats).

    ``failure_threshold`` consecutive failures in CLOSED open the circuit; after
    ``reset_timeout`` seconds it admits ``half_open_max_calls`` probes at once, and
    ``success_threshold`` consecutive probe successes close it again. ``timeout`` is the
    per-attempt timeout of the HTTP helpers. The optional sliding-window mode opens the circuit
    too when, over the last ``window`` seconds and once ``minimum_calls`` were seen, the share of
    failures reaches ``failure_rate_threshold``. With ``slow_call_duration`` a call that succeeds
    but takes longer than that counts as a failure. ``enabled=False`` is metrics-only mode: the
    circuit opens and closes as usual and refusals are counted, but no call is refused.
    """

    failure_threshold: int = 5
    reset_timeout: float = 30.0
    success_threshold: int = 3
    timeout: float = 10.0
    half_open_max_calls: int = 1
    half_open_probe_timeout: float = 60.0
    failure_rate_threshold: float | None = None
    window: float | None = None
    minimum_calls: int | None = None
    slow_call_duration: float | None = None
    enabled: bool = True

    def __post_init__(self) -> None:
        _check_int(self, "failure_threshold", 1)
        _check_time(self, "reset_timeout", allow_zero=True)
        _check_int(self, "success_threshold", 1)
        _check_time(self, "timeout")
        _check_int(self, "half_open_max_calls", 1)
        _check_time(self, "half_open_probe_timeout")
        if self.failure_rate_threshold is not None:
            rate = _number(self, "failure_rate_threshold")
            if not 0.0 < rate <= 1.0:
                _bad(self, "failure_rate_threshold", "must be in (0, 1]")
        elif self.window is not None or self.minimum_calls is not None:
            _bad(self, "window" if self.window is not None else "minimum_calls",
                 "only applies together with failure_rate_threshold")  # fmt: skip
        if self.window is not None:
            _check_time(self, "window")
        if self.minimum_calls is not None:
            _check_int(self, "minimum_calls", 1)
        if self.slow_call_duration is not None:
            _check_time(self, "slow_call_duration")
        if not isinstance(self.enabled, bool):
            raise _WrongType(f"{type(self).__name__}.enabled must be a bool, got {self.enabled!r}")

    @property
    def effective_window(self) -> float:
        """The window in seconds of the failure-rate mode (its default when unset)."""
        return DEFAULT_WINDOW if self.window is None else float(self.window)

    @property
    def effective_minimum_calls(self) -> int:
        """The calls the failure-rate mode needs to see before it may open the circuit."""
        return DEFAULT_MINIMUM_CALLS if self.minimum_calls is None else self.minimum_calls

    @classmethod
    def from_mapping(
        cls, fields: Mapping[str, Any], *, base: CircuitBreakerConfig | None = None
    ) -> CircuitBreakerConfig:
        """Build a config from field names, rejecting unknown keys with a ``TypeError``."""
        check_field_names(fields, cls, "circuit breaker config")
        return dataclasses.replace(base or cls(), **fields)


def config_fields(cls: type[Any]) -> tuple[str, ...]:
    """The field names of a config dataclass, in declaration order."""
    return tuple(f.name for f in dataclasses.fields(cls))


def check_field_names(
    fields: Mapping[str, Any], known: type[Any] | tuple[str, ...], what: str
) -> None:
    """Raise ``TypeError`` naming every key of ``fields`` not in ``known`` (names or a
    dataclass), with the snake_case spelling as a hint for a camelCase key."""
    if isinstance(known, type):
        known = config_fields(known)
    unknown = [key for key in fields if key not in known]
    if not unknown:
        return
    hints = []
    for key in unknown:
        snake = re.sub(r"(?<!^)([A-Z])", r"_\1", str(key)).lower()
        hints.append(f"{key!r} (did you mean {snake!r}?)" if snake in known else repr(key))
    raise TypeError(
        f"unknown {what} option(s): {', '.join(hints)}; known options: {', '.join(known)}"
    )


def _bad(config: object, name: str, why: str) -> None:
    raise ValueError(f"{type(config).__name__}.{name} {why}, got {getattr(config, name)!r}")


def _number(config: object, name: str) -> float:
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _WrongType(f"{type(config).__name__}.{name} must be a number, got {value!r}")
    return float(value)


def _check_int(config: object, name: str, minimum: int) -> None:
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _WrongType(f"{type(config).__name__}.{name} must be an int, got {value!r}")
    if value < minimum:
        _bad(config, name, f"must be >= {minimum}")


def _check_time(config: object, name: str, *, allow_zero: bool = False) -> None:
    value = _number(config, name)
    if math.isnan(value) or math.isinf(value) or value < 0 or (value == 0 and not allow_zero):
        _bad(
            config, name, "must be a finite number of seconds " + (">= 0" if allow_zero else "> 0")
        )
