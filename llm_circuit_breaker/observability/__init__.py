"""Metrics exporters, each behind its extra and imported only when asked for.

* :mod:`llm_circuit_breaker.observability.prometheus` (extra ``prometheus``)
* :mod:`llm_circuit_breaker.observability.otel` (extra ``otel``)

Both read the breakers' statistics when metrics are collected, so a guarded call pays nothing
for them; refusals and retries reach the OpenTelemetry exporter as they happen (span events).
"""

from __future__ import annotations

from typing import Any

from llm_circuit_breaker.breaker.breaker import CircuitBreaker

__all__ = ["OUTCOMES", "calls_by_outcome", "error_type"]

OUTCOMES = ("success", "failure", "ignored", "throttled", "rejected")


def calls_by_outcome(breaker: CircuitBreaker) -> dict[str, int]:
    """The breaker's calls by outcome: success, failure, ignored, throttled (a rate-limit
    429), rejected."""
    stats = breaker.stats
    return {
        "success": stats.successes,
        "failure": stats.failures,
        "ignored": stats.ignored,
        "throttled": stats.throttled,
        "rejected": stats.rejections,
    }


def error_type(error: BaseException) -> str:
    """A low-cardinality ``error.type``: the HTTP status when there is one, else the class."""
    from llm_circuit_breaker._judge.classify import classify

    status = classify(error).status
    if status is not None:
        return str(status)
    cls = type(error)
    return (
        cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    )


def require(module: str, extra: str) -> Any:
    """Import ``module`` or raise an ImportError that names the extra to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            f"{module} is not installed: pip install 'llm-circuit-guard[{extra}]'"
        ) from exc
