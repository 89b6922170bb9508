"""Circuit breakers and retries for applications that call LLM APIs.

``@circuit_breaker`` fails fast while a provider is down, ``@with_retry`` retries what is worth
retrying (honouring the providers' ``Retry-After`` hints), both for sync and async code, with
breakers shared by name through ``breaker_registry``. ``LLMCircuitBreaker`` (and ``SSEEvent``)
load the requests / aiohttp helpers on first use: importing the package loads neither.
"""

import typing

from llm_circuit_breaker._core.state import CircuitState, Outcome
from llm_circuit_breaker.breaker.breaker import CircuitBreaker
from llm_circuit_breaker.breaker.registry import BreakerRegistry, breaker_registry
from llm_circuit_breaker.breaker.telemetry import (
    BreakerStats,
    StateChange,
    ThrottleEvent,
    ThrottleSignal,
)
from llm_circuit_breaker.config import (
    DEFAULT_RETRY_STATUS_CODES,
    CircuitBreakerConfig,
    RetryConfig,
)
from llm_circuit_breaker.errors import (
    CircuitOpenError,
    FallbacksExhaustedError,
    HTTPStatusError,
    IncompleteStreamError,
    InvalidResponseError,
    LLMCircuitBreakerError,
    RateLimitError,
    RequestTimeoutError,
    ServerError,
    ThrottledError,
    TransportError,
)
from llm_circuit_breaker.strategies.circuit import Guarded, circuit_breaker

if typing.TYPE_CHECKING:
    from llm_circuit_breaker.http._sse import SSEEvent
    from llm_circuit_breaker.http.client import LLMCircuitBreaker
    from llm_circuit_breaker.strategies.fallbacks import FallbackStats, with_fallbacks
    from llm_circuit_breaker.strategies.hedging import HedgeStats, with_hedging
    from llm_circuit_breaker.strategies.pool import PoolStats, with_pool
    from llm_circuit_breaker.strategies.retry import with_retry

__all__ = [
    "DEFAULT_RETRY_STATUS_CODES",
    "BreakerRegistry",
    "BreakerStats",
    "CircuitBreaker",
    "CircuitBreakerConfig",
    "CircuitOpenError",
    "CircuitState",
    "FallbackStats",
    "FallbacksExhaustedError",
    "Guarded",
    "HTTPStatusError",
    "HedgeStats",
    "IncompleteStreamError",
    "InvalidResponseError",
    "LLMCircuitBreaker",
    "LLMCircuitBreakerError",
    "Outcome",
    "PoolStats",
    "RateLimitError",
    "RequestTimeoutError",
    "RetryConfig",
    "SSEEvent",
    "ServerError",
    "StateChange",
    "ThrottleEvent",
    "ThrottleSignal",
    "ThrottledError",
    "TransportError",
    "breaker_registry",
    "circuit_breaker",
    "with_fallbacks",
    "with_hedging",
    "with_pool",
    "with_retry",
]

__version__ = "0.2.0"

_LAZY = {
    "FallbackStats": "llm_circuit_breaker.strategies.fallbacks",
    "with_fallbacks": "llm_circuit_breaker.strategies.fallbacks",
    "PoolStats": "llm_circuit_breaker.strategies.pool",
    "with_pool": "llm_circuit_breaker.strategies.pool",
    "HedgeStats": "llm_circuit_breaker.strategies.hedging",
    "with_hedging": "llm_circuit_breaker.strategies.hedging",
    "with_retry": "llm_circuit_breaker.strategies.retry",
    "LLMCircuitBreaker": "llm_circuit_breaker.http.client",
    "SSEEvent": "llm_circuit_breaker.http._sse",
}


def __getattr__(name: str) -> typing.Any:
    # The HTTP helpers, fallbacks, pools and hedging are loaded when first named: the decorators
    # never pay.
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'llm_circuit_breaker' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
