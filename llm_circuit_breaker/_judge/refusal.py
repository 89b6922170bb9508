"""Refusals that travel inside another library's error (the httpx transport's answer)."""

from __future__ import annotations

from collections.abc import Mapping

from llm_circuit_breaker.errors import CircuitOpenError, ThrottledError

__all__ = ["REFUSAL", "refusal_of"]

# The key of ``response.extensions`` under which the httpx transport leaves its refusal.
REFUSAL = "llm_circuit_breaker.refusal"


def refusal_of(exc: BaseException) -> CircuitOpenError | ThrottledError | None:
    """The :class:`CircuitOpenError` / :class:`ThrottledError` behind ``exc``: itself, one in
    its ``__cause__`` chain, or the one the httpx transport attached to the response an SDK's error
    carries (``exc.response.extensions``). None when the call was not refused. Never raises."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen and len(seen) < 32:
        seen.add(id(current))
        if isinstance(current, CircuitOpenError | ThrottledError):
            return current
        try:
            extensions = getattr(getattr(current, "response", None), "extensions", None)
            found = extensions.get(REFUSAL) if isinstance(extensions, Mapping) else None
        except Exception:  # a hostile attribute: no refusal here
            found = None
        if isinstance(found, CircuitOpenError | ThrottledError):
            return found
        current = current.__cause__  # explicit chaining only: not an error met while handling one
    return None
