"""Circuit breakers and retries for applications that call LLM APIs.

``@circuit_breaker`` fails fast while a provider is down, ``@with_retry`` retries what is worth
retrying (honouring the providers' ``Retry-After`` hints), both for sync and async code, with
breakers shared by name through ``breaker_registry``.
"""

from llm_circuit_breaker._state import Outcome
from llm_circuit_breaker.breaker import BreakerStats, CircuitBreaker, StateChange
from llm_circuit_breaker.config import CircuitBreakerConfig, CircuitState
from llm_circuit_breaker.decorators import Guarded, circuit_breaker
from llm_circuit_breaker.errors import (
    CircuitOpenError,
    HTTPStatusError,
    LLMCircuitBreakerError,
    RateLimitError,
    RequestTimeoutError,
    ServerError,
    TransportError,
)
from llm_circuit_breaker.facade import LLMCircuitBreaker
from llm_circuit_breaker.http import SSEEvent
from llm_circuit_breaker.registry import BreakerRegistry, breaker_registry
from llm_circuit_breaker.retry import DEFAULT_RETRY_STATUS_CODES, with_retry

__all__ = [
    "DEFAULT_RETRY_STATUS_CODES",
    "BreakerRegistry",
    "BreakerStats",
    "CircuitBreaker",
    "CircuitBreakerConfig",
    "CircuitOpenError",
    "CircuitState",
    "Guarded",
    "HTTPStatusError",
    "LLMCircuitBreaker",
    "LLMCircuitBreakerError",
    "Outcome",
    "RateLimitError",
    "RequestTimeoutError",
    "SSEEvent",
    "ServerError",
    "StateChange",
    "TransportError",
    "breaker_registry",
    "circuit_breaker",
    "with_retry",
]

__version__ = "0.1.0"
