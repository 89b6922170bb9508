"""Test helpers for code that uses circuit breakers: no sleeping, no network.

With pytest, the fixtures ``llm_breakers``, ``llm_clock`` and ``fake_llm`` do the following
for you (see :mod:`.pytest_plugin`).

* :func:`frozen_time` makes a :class:`FakeClock` the library's time source for a block: every
  breaker, retry and throttle without a clock of its own reads it, and waits advance it::

      with frozen_time() as clock:
          ...                    # the circuit opens
          clock.advance(30.0)    # reset_timeout has passed: the circuit is HALF_OPEN

  :func:`instant` keeps the real clock and skips every wait. A :class:`FakeClock` can also be
  given to one breaker (``clock=``) or one ``with_retry`` (``sleep=``, ``clock=``) alone.

* :class:`FakeLLMServer` is a real aiohttp server on 127.0.0.1 (random port) that answers
  like an LLM provider, scripted reply by reply with :class:`Reply` (statuses, headers, JSON
  bodies, delays, SSE streams, dropped connections)::

      with FakeLLMServer() as server:
          server.script(Reply.error(503), Reply.ok("hello"))
          LLMCircuitBreaker().call(server.url + "/v1/chat/completions", data={...})

* :class:`Quota` enforces a provider's rate limit (a continuously refilling bucket) with its
  ``x-ratelimit-*`` headers and real ``retry-after`` waits::

      quota = Quota(60)                                       # 60 requests per minute
      server = FakeLLMServer(responder=lambda n: quota.reply())
"""

from llm_circuit_breaker.testing._clock import FakeClock, frozen_time, instant
from llm_circuit_breaker.testing._quota import Quota
from llm_circuit_breaker.testing._reply import Reply
from llm_circuit_breaker.testing._server import FakeLLMServer, RecordedRequest

__all__ = [
    "FakeClock",
    "FakeLLMServer",
    "Quota",
    "RecordedRequest",
    "Reply",
    "frozen_time",
    "instant",
]
