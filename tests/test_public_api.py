"""The public surface: re-exports only, sorted and complete, every name documented."""

from __future__ import annotations

import inspect
from pathlib import Path

import llm_circuit_breaker
from llm_circuit_breaker import errors


def test_all_is_sorted_and_complete() -> None:
    """__all__ is sorted (constants first, then case-sensitively) and names every export."""
    names = llm_circuit_breaker.__all__
    assert names == sorted(names, key=lambda n: (not n.isupper(), n))
    public = {
        n for n in vars(llm_circuit_breaker) if not n.startswith("_") and n not in {"annotations"}
    } | {
        "LLMCircuitBreaker",
        "SSEEvent",
        "FallbackStats",
        "HedgeStats",
        "with_fallbacks",
        "PoolStats",
        "with_pool",
        "with_hedging",
        "with_retry",
    }  # loaded on first use
    modules = {n for n in public if inspect.ismodule(getattr(llm_circuit_breaker, n))}
    assert set(names) == public - modules


def test_every_public_name_has_a_docstring() -> None:
    """Every exported class and function says what it is."""
    for name in llm_circuit_breaker.__all__:
        obj = getattr(llm_circuit_breaker, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert inspect.getdoc(obj), name


def test_errors_module_draws_the_tree() -> None:
    """errors.py documents the hierarchy in its module docstring."""
    assert "LLMCircuitBreakerError" in (errors.__doc__ or "")
    assert "RequestTimeoutError" in (errors.__doc__ or "")


def test_py_typed_is_shipped() -> None:
    """The package is marked as typed."""
    assert Path(llm_circuit_breaker.__file__).with_name("py.typed").is_file()
