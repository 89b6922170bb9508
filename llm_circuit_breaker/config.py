"""The validated, immutable configurations: of a circuit and of a retry policy.

Each option is declared once, here; the decorators, the HTTP client and dict configs are built
from these dataclasses, and so share their defaults, checks and error messages.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Literal

from llm_circuit_breaker import _validate as check

__all__ = [
    "DEFAULT_CONFIG",
    "DEFAULT_RETRY_STATUS_CODES",
    "BreakerRules",
    "CircuitBreakerConfig",
    "FailurePredicate",
    "OnRetry",
    "RetryConfig",
]

# Defaults of the optional sliding-window mode, used once failure_rate_threshold is set.
DEFAULT_WINDOW = 60.0
DEFAULT_MINIMUM_CALLS = 10
# A server-directed open lasts at most this many reset timeouts unless max_open_for says.
DEFAULT_MAX_OPEN_FACTOR = 10
DEFAULT_RETRY_STATUS_CODES = (408, 409, 429, 500, 502, 503, 504, 529)
RETRY_MARK = "__llm_circuit_breaker_retry__"  # set on with_retry wrappers (decorator order)
# set on circuit_breaker wrappers with a fallback: a refusal under with_retry is not raised
FALLBACK_MARK = "__llm_circuit_breaker_fallback__"
OnRetry = Callable[[int, BaseException, float], object]  # (attempt that failed, error, delay)
FailurePredicate = Callable[[BaseException], bool]


_NAMES: dict[type, tuple[str, ...]] = {}  # option names by config class (read per new breaker)


class _Options:
    """Shared by the config dataclasses: building from a dict of option names."""

    __slots__ = ()
    __dataclass_fields__: ClassVar[dict[str, Any]]
    _what: ClassVar[str]
    _time_fields: ClassVar[tuple[str, ...]]

    @classmethod
    def option_names(cls) -> tuple[str, ...]:
        """The option names, in declaration order (not the class constants)."""
        names = _NAMES.get(cls)
        if names is None:
            names = _NAMES[cls] = tuple(f.name for f in dataclasses.fields(cls))
        return names

    @classmethod
    def check_names(cls, options: Mapping[str, Any]) -> None:
        """``TypeError`` with a did-you-mean hint for every unknown option name."""
        if options:  # none to check: the common case of a scope's breaker made on first use
            check.check_option_names(options, cls.option_names(), cls._what)

    def _warn_milliseconds(self) -> None:
        for name in self._time_fields:
            check.warn_if_milliseconds(type(self).__name__, name, getattr(self, name))


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class CircuitBreakerConfig(_Options):
    """How a circuit opens and recovers. All times are seconds (floats).

    ``failure_threshold`` consecutive failures in CLOSED open the circuit; after
    ``reset_timeout`` seconds it admits ``half_open_max_calls`` probes at once, and
    ``success_threshold`` consecutive probe successes close it again. ``timeout`` is the
    per-attempt timeout of the HTTP helpers. The optional sliding-window mode opens the circuit
    too when, over the last ``window`` seconds and once ``minimum_calls`` were seen, the share of
    failures reaches ``failure_rate_threshold``. With ``slow_call_duration`` a call that succeeds
    but takes longer than that counts as a failure. A server's long retry hint opens the circuit
    for the hinted time, at most ``max_open_for`` (default 10 x ``reset_timeout``). A rate
    limit (429 that is not quota) is not a failure with ``throttle`` (the default): it pauses
    the breaker's throttle instead, which also paces calls from ``requests_per_minute`` /
    ``tokens_per_minute`` or the providers' rate-limit headers; a caller waits for its slot
    up to ``throttle_max_wait`` seconds (0: never waits) and gets ``ThrottledError`` beyond.
    A pause (a 429's hint, or headers saying nothing is left) lasts at most
    ``throttle_max_pause`` seconds.
    ``retry_budget`` (default 0.2; None: off) lets retries add that share of the first
    attempts of the last 10 s, beside ``retry_budget_floor`` retries per second always
    allowed. ``token_budget`` (default None) caps the tokens spent per ``token_budget_window``
    seconds (default a day): past it calls get ``BudgetExceededError``.
    ``enabled=False`` is metrics-only mode: the circuit opens and closes as usual and refusals
    are counted, but no call is refused.
    ``max_concurrent`` caps this process's calls of the breaker in flight (a returned stream
    holds its slot until it ends or is closed); more wait in line up to ``throttle_max_wait``
    and get ``ThrottledError`` (reason "concurrency") beyond. ``"adaptive"`` finds the cap by
    AIMD, between 1 and ``max_concurrent_ceiling``.
    """

    _what: ClassVar[str] = "circuit breaker config"
    _time_fields: ClassVar[tuple[str, ...]] = (
        "reset_timeout",
        "timeout",
        "half_open_probe_timeout",
        "window",
        "slow_call_duration",
    )

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
    max_open_for: float | None = None
    throttle: bool = True
    throttle_max_wait: float = 30.0
    throttle_max_pause: float = 300.0
    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None
    enabled: bool = True
    max_concurrent: int | Literal["adaptive"] | None = None
    max_concurrent_ceiling: int = 256
    retry_budget: float | None = 0.2
    retry_budget_floor: float = 10.0
    token_budget: float | None = None
    token_budget_window: float = 86_400.0

    def __post_init__(self) -> None:
        name = type(self).__name__
        self._check_budgets(name)
        check.count(name, "failure_threshold", self.failure_threshold, 1)
        check.seconds(name, "reset_timeout", self.reset_timeout, allow_zero=True)
        check.count(name, "success_threshold", self.success_threshold, 1)
        check.seconds(name, "timeout", self.timeout)
        check.count(name, "half_open_max_calls", self.half_open_max_calls, 1)
        check.seconds(name, "half_open_probe_timeout", self.half_open_probe_timeout)
        rate = self.failure_rate_threshold
        if rate is not None:
            if isinstance(rate, bool) or not isinstance(rate, (int, float)):
                raise check.OptionTypeError(
                    f"{name}.failure_rate_threshold must be a number, got {rate!r}"
                )
            if not 0.0 < rate <= 1.0:
                raise ValueError(f"{name}.failure_rate_threshold must be in (0, 1], got {rate!r}")
        elif self.window is not None or self.minimum_calls is not None:
            field = "window" if self.window is not None else "minimum_calls"
            raise ValueError(
                f"{name}.{field} only applies together with failure_rate_threshold, "
                f"got {getattr(self, field)!r}"
            )
        if self.window is not None:
            check.seconds(name, "window", self.window)
        if self.minimum_calls is not None:
            check.count(name, "minimum_calls", self.minimum_calls, 1)
        for field in ("slow_call_duration", "max_open_for"):
            if getattr(self, field) is not None:
                check.seconds(name, field, getattr(self, field))
        check.seconds(name, "throttle_max_wait", self.throttle_max_wait, allow_zero=True)
        check.seconds(name, "throttle_max_pause", self.throttle_max_pause)
        for field in ("requests_per_minute", "tokens_per_minute"):
            value = getattr(self, field)
            if value is not None:
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise check.OptionTypeError(f"{name}.{field} must be a number, got {value!r}")
                if not (math.isfinite(value) and 0 < value <= 1e12):
                    raise ValueError(f"{name}.{field} must be a positive rate, got {value!r}")
        limit: object = self.max_concurrent
        if limit is not None and limit != "adaptive":
            if isinstance(limit, str):
                raise ValueError(
                    f'{name}.max_concurrent must be an int >= 1, "adaptive" or None, got {limit!r}'
                )
            check.count(name, "max_concurrent", limit, 1)
        check.count(name, "max_concurrent_ceiling", self.max_concurrent_ceiling, 1)
        for flag in ("throttle", "enabled"):
            if not isinstance(getattr(self, flag), bool):
                raise check.OptionTypeError(
                    f"{name}.{flag} must be a bool, got {getattr(self, flag)!r}"
                )
        self._warn_milliseconds()

    def _check_budgets(self, name: str) -> None:
        for field in ("retry_budget", "retry_budget_floor", "token_budget"):
            value = getattr(self, field)
            if value is None and field != "retry_budget_floor":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise check.OptionTypeError(f"{name}.{field} must be a number, got {value!r}")
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name}.{field} must be a finite number >= 0, got {value!r}")
        check.seconds(name, "token_budget_window", self.token_budget_window)

    @property
    def effective_window(self) -> float:
        """The window in seconds of the failure-rate mode (its default when unset)."""
        return DEFAULT_WINDOW if self.window is None else float(self.window)

    @property
    def effective_minimum_calls(self) -> int:
        """The calls the failure-rate mode needs to see before it may open the circuit."""
        return DEFAULT_MINIMUM_CALLS if self.minimum_calls is None else self.minimum_calls

    @property
    def effective_max_open_for(self) -> float:
        """The longest a server's hint may hold the circuit open."""
        if self.max_open_for is not None:
            return float(self.max_open_for)
        return max(DEFAULT_MAX_OPEN_FACTOR * self.reset_timeout, 1.0)

    @classmethod
    def from_mapping(
        cls, fields: Mapping[str, Any], *, base: CircuitBreakerConfig | None = None
    ) -> CircuitBreakerConfig:
        """Build a config from field names, rejecting unknown keys with a ``TypeError``."""
        cls.check_names(check.check_mapping(fields, "a circuit breaker config"))
        return dataclasses.replace(base or cls(), **fields)

    def as_fields(self) -> dict[str, Any]:
        """Every field and its value."""
        return {name: getattr(self, name) for name in self.option_names()}


DEFAULT_CONFIG = CircuitBreakerConfig()
"""The defaults, one frozen object shared by every breaker made without a config."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class RetryConfig(_Options):
    """How :func:`~llm_circuit_breaker.with_retry` retries. All times are seconds.

    At most ``max_retries`` retries; the delay before retry n is ``min(max_delay,
    initial_delay * backoff_factor ** (n-1))``, drawn uniformly from [0, that] with ``jitter``.
    A status is retried when it is in ``retry_on_status_codes``; connection failures and
    timeouts always, and the exception types in ``retry_on``. A server hint replaces the
    computed delay when ``respect_retry_after`` and it is <= ``max_delay``; a longer one ends
    the retries. ``deadline`` bounds the whole call, waits included. ``on_retry(attempt, error,
    delay)`` is called before each wait.
    """

    _what: ClassVar[str] = "retry"
    _time_fields: ClassVar[tuple[str, ...]] = ("initial_delay", "max_delay", "deadline")

    max_retries: int = 3
    initial_delay: float = 1.0
    max_delay: float = 30.0
    backoff_factor: float = 2.0
    jitter: bool = True
    retry_on_status_codes: tuple[int, ...] = DEFAULT_RETRY_STATUS_CODES
    retry_on: tuple[type[BaseException], ...] = ()
    respect_retry_after: bool = True
    deadline: float | None = None
    on_retry: OnRetry | None = None

    def __post_init__(self) -> None:
        name = "with_retry"
        self._warn_milliseconds()  # first: initial_delay=1000 also fails the max_delay check
        check.count(name, "max_retries", self.max_retries, 0)
        check.seconds(name, "initial_delay", self.initial_delay, allow_zero=True)
        check.seconds(name, "max_delay", self.max_delay, allow_zero=True)
        factor = self.backoff_factor
        if isinstance(factor, bool) or not isinstance(factor, (int, float)):
            raise check.OptionTypeError(f"{name}.backoff_factor must be a number, got {factor!r}")
        if not 1.0 <= factor <= 1000.0:
            raise ValueError(f"{name}.backoff_factor must be in [1, 1000], got {factor!r}")
        if self.max_delay < self.initial_delay:
            raise ValueError(
                f"{name}.max_delay ({self.max_delay!r}) must not be less than "
                f"initial_delay ({self.initial_delay!r})"
            )
        if self.deadline is not None:
            check.seconds(name, "deadline", self.deadline)
        try:
            codes = tuple(self.retry_on_status_codes)
        except TypeError:
            raise check.OptionTypeError(
                f"{name}.retry_on_status_codes must be a collection of HTTP statuses, "
                f"got {self.retry_on_status_codes!r}"
            ) from None
        for code in codes:
            if isinstance(code, bool) or not isinstance(code, int) or not 100 <= code <= 599:
                raise ValueError(
                    f"{name}.retry_on_status_codes holds {code!r}, not an HTTP status 100-599"
                )
        object.__setattr__(self, "retry_on_status_codes", codes)
        object.__setattr__(self, "retry_on", check.exception_types("retry_on", self.retry_on))
        for flag in ("jitter", "respect_retry_after"):
            if not isinstance(getattr(self, flag), bool):
                raise check.OptionTypeError(
                    f"{name}.{flag} must be a bool, got {getattr(self, flag)!r}"
                )
        if self.on_retry is not None and not callable(self.on_retry):
            raise check.OptionTypeError(f"on_retry must be callable, got {self.on_retry!r}")

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> RetryConfig:
        """Build from option names, rejecting unknown ones with a did-you-mean ``TypeError``."""
        cls.check_names(check.check_mapping(options, "retry"))
        return cls(**options)


@dataclasses.dataclass(frozen=True, slots=True)
class BreakerRules:
    """What one decoration or helper adds to the defaults: ignored types and a predicate that
    decides, instead of the defaults, whether an exception counts as a failure."""

    exclude: tuple[type[BaseException], ...] = ()
    failure_predicate: FailurePredicate | None = None
