"""``Quota``: a provider's rate limit as a continuously refilling bucket, with its headers."""

from __future__ import annotations

import dataclasses
import datetime
import math
import threading
import time
from collections.abc import Callable

from llm_circuit_breaker.breaker.clock import now as library_now
from llm_circuit_breaker.testing._reply import Reply, provider_error

__all__ = ["Quota"]


class Quota:
    """``limit`` requests per ``window`` seconds, refilled continuously (a token bucket of
    capacity ``limit``), as OpenAI-style providers enforce it.

    :meth:`reply` answers one request: ``ok`` with the ``x-ratelimit-*-requests`` headers when
    the bucket has a request left, else a 429 ``rate_limit_exceeded`` whose ``retry-after-ms``
    and ``retry-after`` are the real wait. With ``anthropic=True`` the headers are
    ``anthropic-ratelimit-requests-*`` (the reset an RFC 3339 time) and the 429 is Anthropic's
    ``rate_limit_error`` with ``retry-after``. Thread-safe. It reads the library's time
    source (``clock`` replaces it), so under ``frozen_time()`` / ``llm_clock`` a wait the
    library advances refills it too.
    """

    def __init__(
        self,
        limit: int,
        window: float = 60.0,
        *,
        clock: Callable[[], float] = library_now,
    ) -> None:
        if limit < 1 or not window > 0:
            raise ValueError(f"a quota needs limit >= 1 and window > 0, got {limit}, {window}")
        self.limit = limit
        self.rate = limit / window  # requests refilled per second
        self._clock = clock
        self._level = float(limit)
        self._at = clock()
        self._lock = threading.Lock()
        self.granted = 0
        self.refused = 0

    def _refill(self) -> float:
        now = self._clock()
        self._level = min(float(self.limit), self._level + max(0.0, now - self._at) * self.rate)
        self._at = now
        return self._level

    def take(self, *, anthropic: bool = False) -> tuple[bool, dict[str, str]]:
        """Spend one request if there is one; whether it was granted, and the headers (in
        Anthropic's names with ``anthropic=True``)."""
        with self._lock:
            level = self._refill()
            granted = level >= 1.0
            if granted:
                self._level -= 1.0
                self.granted += 1
            else:
                self.refused += 1
            headers = self._headers(anthropic)
            if not granted:
                wait = (1.0 - self._level) / self.rate
                if not anthropic:
                    headers["retry-after-ms"] = str(max(1, math.ceil(wait * 1000)))
                headers["retry-after"] = str(max(1, math.ceil(wait)))
        return granted, headers

    def _headers(self, anthropic: bool) -> dict[str, str]:
        full_in = (self.limit - self._level) / self.rate
        if anthropic:
            at = math.ceil(time.time() + full_in)  # whole seconds, never earlier than true
            reset = datetime.datetime.fromtimestamp(at, datetime.timezone.utc)
            return {
                "anthropic-ratelimit-requests-limit": str(self.limit),
                "anthropic-ratelimit-requests-remaining": str(int(self._level)),
                "anthropic-ratelimit-requests-reset": reset.strftime("%Y-%m-%dT%H:%M:%SZ"),
            }
        return {
            "x-ratelimit-limit-requests": str(self.limit),
            "x-ratelimit-remaining-requests": str(int(self._level)),
            "x-ratelimit-reset-requests": f"{full_in:.3f}s",
        }

    def reply(self, ok: Reply | None = None, *, anthropic: bool = False) -> Reply:
        """The answer to one request: ``ok`` (a chat completion by default) or a 429."""
        granted, headers = self.take(anthropic=anthropic)
        if granted:
            answer = ok or Reply.ok("ok")
            return dataclasses.replace(answer, headers={**answer.headers, **headers})
        if anthropic:
            return provider_error(429, anthropic=True, headers=headers)
        return Reply.error(
            429, "rate_limit_exceeded", "Rate limit reached for requests", headers=headers
        )
