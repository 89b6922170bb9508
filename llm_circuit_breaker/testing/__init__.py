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

* :class:`FakeLLMServer` is a real aiohttp server on 127.0.0.1 (random port) that speaks
  OpenAI (chat completions, Responses) and Anthropic (messages), plain and streamed, to the
  real SDKs; ``with`` runs it in a thread, ``async with`` in the running loop. Scenario
  switches: ``healthy()``, ``outage(status=503)``, ``rate_limit(requests_per_minute=...)``,
  ``truncate_streams()``, ``slow_first_token(seconds)``; replies scripted with :class:`Reply`
  (statuses, headers, JSON bodies, delays, SSE streams, dropped connections) come first::

      with FakeLLMServer() as server:
          client = openai.OpenAI(base_url=server.openai_base_url, api_key="sk-test")
          server.outage(status=503)            # every call fails as OpenAI's 503 does
          server.script(Reply.ok("hello"))     # ... except the next one

* :class:`Quota` enforces a provider's rate limit (a continuously refilling bucket) with its
  ``x-ratelimit-*`` headers and real ``retry-after`` waits::

      quota = Quota(60)                                       # 60 requests per minute
      server = FakeLLMServer(responder=lambda n: quota.reply())

* :class:`ChaosTransport` is an httpx transport for chaos drills in staging: under a
  ``CircuitBreakerTransport`` it injects provider faults (``status_500``, ``status_529``,
  ``status_429``, ``timeout``, ``disconnect``, ``truncate``, ``slow_first_token``) at given
  rates, the same ones for the same ``seed``. Never on by default::

      chaos = ChaosTransport(seed=7, status_529=0.05, truncate=0.02)
      httpx.Client(transport=CircuitBreakerTransport("openai", chaos))
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from llm_circuit_breaker.testing._clock import FakeClock, frozen_time, instant
    from llm_circuit_breaker.testing._quota import Quota
    from llm_circuit_breaker.testing._reply import Reply
    from llm_circuit_breaker.testing._server import FakeLLMServer, RecordedRequest
    from llm_circuit_breaker.testing.chaos import ChaosTransport

__all__ = [
    "ChaosTransport",
    "FakeClock",
    "FakeLLMServer",
    "Quota",
    "RecordedRequest",
    "Reply",
    "frozen_time",
    "instant",
]

# Where each name lives, imported on first use: pytest loads the plugin (a module of this
# package) in every session of an environment that has the package installed, and a session
# whose tests use none of it should not pay for aiohttp and httpx.
_HOMES = {
    "ChaosTransport": "chaos",
    "FakeClock": "_clock",
    "FakeLLMServer": "_server",
    "Quota": "_quota",
    "RecordedRequest": "_server",
    "Reply": "_reply",
    "frozen_time": "_clock",
    "instant": "_clock",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
