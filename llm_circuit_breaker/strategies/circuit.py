"""``@circuit_breaker``: guard plain functions, coroutine functions, generators and async
generators (and methods of each) with a shared breaker."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any, ParamSpec, Protocol, TypeVar, cast, overload

from llm_circuit_breaker import _validate as check
from llm_circuit_breaker.breaker.breaker import CircuitBreaker, Listener
from llm_circuit_breaker.breaker.registry import BreakerRegistry, breaker_registry
from llm_circuit_breaker.config import (
    RETRY_MARK,
    BreakerRules,
    CircuitBreakerConfig,
    FailurePredicate,
)
from llm_circuit_breaker.strategies._shells import shell_for
from llm_circuit_breaker.strategies.gate import Gate

__all__ = ["ExcludeTypes", "Guarded", "circuit_breaker"]

ExcludeTypes = type[BaseException] | tuple[type[BaseException], ...]

P = ParamSpec("P")
R = TypeVar("R")
R_co = TypeVar("R_co", covariant=True)


class Guarded(Protocol[P, R_co]):
    """A function wrapped by :func:`circuit_breaker`: same signature, plus ``.breaker``."""

    breaker: CircuitBreaker

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R_co: ...

    @overload
    def __get__(self, instance: None, owner: type[Any], /) -> Guarded[P, R_co]: ...
    @overload
    def __get__(self, instance: object, owner: type[Any], /) -> Callable[..., R_co]: ...


@overload
def circuit_breaker(name: Callable[P, R], /) -> Guarded[P, R]: ...
@overload
def circuit_breaker(
    name: str | None = None,
    *,
    registry: BreakerRegistry = ...,
    breaker: CircuitBreaker | None = None,
    exclude: ExcludeTypes = (),
    failure_predicate: FailurePredicate | None = None,
    fallback: Callable[..., Any] | None = None,
    on_state_change: Listener | None = None,
    call_timeout: float | None = None,
    **config_fields: Any,
) -> Callable[[Callable[P, R]], Guarded[P, R]]: ...


def circuit_breaker(
    name: str | Callable[..., Any] | None = None,
    *,
    registry: BreakerRegistry = breaker_registry,
    breaker: CircuitBreaker | None = None,
    exclude: ExcludeTypes = (),
    failure_predicate: FailurePredicate | None = None,
    fallback: Callable[..., Any] | None = None,
    on_state_change: Listener | None = None,
    call_timeout: float | None = None,
    **config_fields: Any,
) -> Any:
    """Guard a function with the circuit breaker ``name`` of ``registry``.

    Without a name the breaker is named after the function's module and qualified name; with
    ``breaker=`` that instance is used. ``config_fields`` are :class:`CircuitBreakerConfig`
    fields (an existing breaker must agree with the ones given). While the circuit is open the
    call raises :class:`CircuitOpenError` without running, or returns ``fallback(*args,
    **kwargs)`` when one is given. ``call_timeout`` bounds a coroutine function's call (and
    each item of an async generator) and raises the built-in ``TimeoutError``. A returned
    iterator or async iterator (an SDK's stream) is guarded until it ends. The wrapper exposes
    ``.breaker``.
    """
    if callable(name):  # used bare: @circuit_breaker
        return circuit_breaker()(name)
    if name is not None and not isinstance(name, str):
        raise TypeError(f"circuit_breaker name must be a str, got {name!r}")
    if "timeout" in config_fields:
        raise TypeError(
            "circuit_breaker(timeout=...) would do nothing: `timeout` is the HTTP helpers' "
            "per-attempt timeout. Use call_timeout=<seconds> to time out a coroutine function"
        )
    if breaker is not None and (name is not None or config_fields):
        raise TypeError("circuit_breaker takes either breaker= or a name and config fields")
    if fallback is not None and not callable(fallback):
        raise TypeError(f"fallback must be callable, got {fallback!r}")
    if call_timeout is not None:
        call_timeout = check.seconds("circuit_breaker", "call_timeout", call_timeout)
        check.warn_if_milliseconds("circuit_breaker", "call_timeout", call_timeout)
    if failure_predicate is not None and not callable(failure_predicate):
        raise TypeError(f"failure_predicate must be callable, got {failure_predicate!r}")
    # Bad names or values fail here, before any breaker is registered.
    config = CircuitBreakerConfig.from_mapping(config_fields) if config_fields else None
    rules = BreakerRules(check.exception_types("exclude", exclude), failure_predicate)

    def decorate(func: Callable[P, R]) -> Guarded[P, R]:
        if not callable(func):
            raise TypeError(f"circuit_breaker decorates callables, got {func!r}")
        warn_wrong_order(func)

        def shell(chosen: CircuitBreaker) -> Any:
            wrapper = shell_for(func, Gate(chosen, rules, fallback), call_timeout)
            if on_state_change is not None:
                chosen.add_listener(on_state_change)
            return wrapper

        if breaker is None and name is not None and "{" in name:  # one breaker per scope
            from llm_circuit_breaker.strategies.scope import ScopedName, scoped

            name_of = ScopedName(name, func)

            def shell_for_name(scope: str) -> Any:
                return shell(
                    registry.get_or_create_with(scope, config_fields, config=config, scoped=True)
                )

            wrapper = scoped(func, name_of, shell_for_name, registry)
            wrapper.breaker = None
            wrapper.scope = name  # the template: names the wrapper where one breaker would
            wrapper.breaker_for = lambda *a, **k: registry.get_or_create_with(
                name_of(a, k), config_fields, config=config, scoped=True
            )
            return cast("Guarded[P, R]", wrapper)
        chosen = breaker or registry.get_or_create_with(
            name or f"{func.__module__}.{func.__qualname__}", config_fields, config=config
        )
        wrapper = shell(chosen)
        wrapper.breaker = chosen
        return cast("Guarded[P, R]", wrapper)

    return decorate


def warn_wrong_order(func: Callable[..., Any]) -> None:
    """Warn (once per decoration) that ``circuit_breaker`` is stacked outside ``with_retry``."""
    if getattr(func, RETRY_MARK, False):
        warnings.warn(
            f"@circuit_breaker is applied outside @with_retry on {func.__qualname__}: the "
            "breaker then sees one call per whole retry loop, and retries keep hitting a dead "
            "provider. Put @with_retry above @circuit_breaker",
            UserWarning,
            stacklevel=3,
        )
