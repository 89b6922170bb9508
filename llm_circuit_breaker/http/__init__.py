"""The HTTP client: ``LLMCircuitBreaker`` (:mod:`.client`) over the requests driver
(:mod:`._sync`) and the aiohttp driver (:mod:`._async`), which share :mod:`._common` (request
building, response -> result or error, redaction and an SSE decoder); only the I/O differs.
"""

from llm_circuit_breaker.http._common import PreparedRequest
from llm_circuit_breaker.http._sse import SSEEvent

__all__ = ["PreparedRequest", "SSEEvent"]
