"""HTTP drivers for :class:`~llm_circuit_breaker.LLMCircuitBreaker`: requests and aiohttp.

Both share :mod:`._common` (request building, response -> result or error, redaction and an
SSE decoder); only the I/O differs.
"""

from llm_circuit_breaker.http._common import PreparedRequest, SSEEvent

__all__ = ["PreparedRequest", "SSEEvent"]
