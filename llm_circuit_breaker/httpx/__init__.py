"""Any httpx-based SDK guarded with no other code change (extra ``httpx``).

::

    import httpx, openai
    from llm_circuit_breaker.httpx import CircuitBreakerTransport
    client = openai.OpenAI(http_client=httpx.Client(transport=CircuitBreakerTransport("openai")))

:class:`CircuitBreakerTransport` / :class:`AsyncCircuitBreakerTransport` wrap another transport
(by default the HTTP transport of the client's own library: ``httpx``, or ``httpx2`` for SDKs
built on it) and put every attempt through a breaker and its throttle:

* A refused attempt sends nothing. The transport answers it itself: HTTP 503 (circuit open) or
  429 (throttled) with ``x-should-retry: false``, so an SDK never retries or sleeps on it
  whatever its ``max_retries``; :func:`refusal` reads the :class:`CircuitOpenError` /
  :class:`ThrottledError` (with ``retry_after``) back from the SDK's error.
* A response is judged by the same verdict as an exception (status, headers and body), and
  every response's rate-limit headers feed the throttle.
* A response body is guarded to its end: a disconnect, an error event inside a 200 stream and a
  stream cut before its final event count as failures (the last raises
  :class:`IncompleteStreamError`, also the library's ``RemoteProtocolError``, which the SDK
  surfaces); a body the caller stops reading counts as neither success nor failure.
* A successful answer that answers nothing (``llm_circuit_breaker.results``: an empty,
  length-empty or filtered completion or stream, broken tool-call arguments) counts as neither
  success nor failure, as it does under the decorators; the SDK reads it as it came.
* ``first_byte_timeout`` bounds a streaming request's wait for the response headers and
  ``idle_timeout`` a stream's longest silence after them (the read timeout of each read).

``breaker=`` is a name (a template such as ``"openai:{model}"`` is filled from the request's
JSON body and ``host``: one breaker per model), a :class:`CircuitBreaker`, or a callable
``request -> name``. Breakers are made in ``registry`` with the config ``fields`` given.
"""

from __future__ import annotations

from llm_circuit_breaker._judge.refusal import refusal_of as refusal
from llm_circuit_breaker.httpx._async.transport import AsyncCircuitBreakerTransport
from llm_circuit_breaker.httpx._sync.transport import CircuitBreakerTransport

__all__ = ["AsyncCircuitBreakerTransport", "CircuitBreakerTransport", "refusal"]
