"""``@circuit_breaker``: guard plain functions, coroutine functions, generators and async
generators (and methods of each) with a shared breaker."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any, Literal, ParamSpec, Protocol, TypeVar, cast, overload

from llm_circuit_breaker import _validate as check
from llm_circuit_breaker.breaker.breaker import CircuitBreaker, Listener
from llm_circuit_breaker.breaker.registry import BreakerRegistry, breaker_registry
from llm_circuit_breaker.config import (
    FALLBACK_MARK,
    RETRY_MARK,
    BreakerRules,
    CircuitBreakerConfig,
    FailurePredicate,
)
from llm_circuit_breaker.errors import CircuitOpenError
from llm_circuit_breaker.strategies.gate import Gate

__all__ = ["ExcludeTypes", "Guarded", "circuit_breaker"]


import functools
import inspect
import weakref
from collections.abc import AsyncIterator, Awaitable, Generator, Iterator
from types import FunctionType

from llm_circuit_breaker._core.budget import StreamUsage
from llm_circuit_breaker._core.state import CircuitState, Outcome
from llm_circuit_breaker._core.throttle import TOKEN_COST, Wait
from llm_circuit_breaker.breaker.clock import running_library
from llm_circuit_breaker.strategies import tracing
from llm_circuit_breaker.strategies.gate import (
    ASK,
    SCALARS,
    Elsewhere,
    ShellGate,
    aguard_stream,
    guard_returned,
    guarded_later,
    is_stream,
    no_answer,
)
from llm_circuit_breaker.strategies.kinds import (
    CallableKind,
    default_name,
    kind_of,
    method_wrapper,
    rewrapped,
)

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
    first_token_timeout: float | None = None,
    # CircuitBreakerConfig's fields, listed for signature help (tests keep them in step)
    failure_threshold: int = 5,
    reset_timeout: float = 30.0,
    success_threshold: int = 3,
    half_open_max_calls: int = 1,
    half_open_probe_timeout: float = 60.0,
    failure_rate_threshold: float | None = None,
    window: float | None = None,
    minimum_calls: int | None = None,
    slow_call_duration: float | None = None,
    max_open_for: float | None = None,
    throttle: bool = True,
    throttle_max_wait: float = 30.0,
    throttle_max_pause: float = 300.0,
    requests_per_minute: float | None = None,
    tokens_per_minute: float | None = None,
    enabled: bool = True,
    max_concurrent: int | Literal["adaptive"] | None = None,
    max_concurrent_ceiling: int = 256,
    retry_budget: float | None = 0.2,
    retry_budget_floor: float = 10.0,
    token_budget: float | None = None,
    token_budget_window: float = 86_400.0,
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
    first_token_timeout: float | None = None,
    **config_fields: Any,
) -> Any:
    """Guard a function with the circuit breaker ``name`` of ``registry``.

    Without a name the breaker is named after the function's module and qualified name; with
    ``breaker=`` that instance is used. ``config_fields`` are :class:`CircuitBreakerConfig`
    fields (an existing breaker must agree with the ones given). While the circuit is open the
    call raises :class:`CircuitOpenError` without running, or returns ``fallback(*args,
    **kwargs)`` when one is given. ``call_timeout`` bounds a coroutine function's call (and
    each item of an async generator) and raises the built-in ``TimeoutError``.
    ``first_token_timeout`` bounds the wait from the call to the first *content* item of a
    generator's, an async generator's or a returned stream's items (pings, keep-alives,
    role-only deltas do not count) and raises ``RequestTimeoutError``, a failure. A returned
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
    if "config" in config_fields:
        raise TypeError(
            "circuit_breaker takes the config's fields themselves (failure_threshold=5, "
            "reset_timeout=30.0, ...), not config=; or pass breaker=CircuitBreaker(name, config)"
        )
    if breaker is not None and not isinstance(breaker, CircuitBreaker):
        raise TypeError(f"breaker must be a CircuitBreaker, got {breaker!r}")
    if not isinstance(registry, BreakerRegistry):
        raise TypeError(f"registry must be a BreakerRegistry, got {registry!r}")
    if breaker is not None and (name is not None or config_fields):
        raise TypeError("circuit_breaker takes either breaker= or a name and config fields")
    if fallback is not None and not callable(fallback):
        raise TypeError(f"fallback must be callable, got {fallback!r}")
    if call_timeout is not None:
        call_timeout = check.seconds("circuit_breaker", "call_timeout", call_timeout)
        check.warn_if_milliseconds("circuit_breaker", "call_timeout", call_timeout)
    if first_token_timeout is not None:
        first_token_timeout = check.seconds(
            "circuit_breaker", "first_token_timeout", first_token_timeout
        )
        check.warn_if_milliseconds("circuit_breaker", "first_token_timeout", first_token_timeout)
    if failure_predicate is not None and not callable(failure_predicate):
        raise TypeError(f"failure_predicate must be callable, got {failure_predicate!r}")
    # Bad names or values fail here, before any breaker is registered.
    config = CircuitBreakerConfig.from_mapping(config_fields) if config_fields else None
    rules = (
        _NO_RULES  # shared: frozen, and what most decorations add
        if exclude == () and failure_predicate is None
        else BreakerRules(check.exception_types("exclude", exclude), failure_predicate)
    )

    def decorate(func: Callable[P, R]) -> Guarded[P, R]:
        method = method_wrapper(func)
        if method is not None:  # stacked above @staticmethod / @classmethod
            inner: Any = func
            return cast("Guarded[P, R]", rewrapped(method, decorate(inner.__func__)))
        if not callable(func):
            raise TypeError(f"circuit_breaker decorates callables, got {func!r}")
        warn_wrong_order(func)
        if breaker is None and name is not None and "{" in name:  # one breaker per scope
            from llm_circuit_breaker.strategies.scope import ScopedName, Scopes, scoped

            name_of = ScopedName(name, func)
            kind = kind_of(func)
            one_shell = first_token_timeout is None and kind in _SCOPED_SHELLS
            on_made = None
            if one_shell and (call_timeout is not None or on_state_change is not None):

                def on_made(made: CircuitBreaker) -> None:
                    _check_scoped(func, made, call_timeout)
                    if on_state_change is not None:  # once: a scope is met again
                        made._local.add_listener(on_state_change, once=True)

            elif one_shell and kind is not CallableKind.COROUTINE:  # an asyncio store refused

                def on_made(made: CircuitBreaker) -> None:
                    _check_scoped(func, made, call_timeout)

            scopes = Scopes(
                name_of,
                registry,
                config_fields,
                config,
                on_made,
                stored_only=call_timeout is None and on_state_change is None,
            )
            if one_shell:  # one shell for every scope: a scope costs its breaker alone
                wrapper: Any = _SCOPED_SHELLS[kind](func, scopes, rules, fallback, call_timeout)
            else:
                timeouts = (call_timeout, first_token_timeout)
                shell = functools.partial(_shell, func, rules, fallback, *timeouts, on_state_change)
                wrapper = scoped(func, scopes, shell)
            wrapper.breaker = None
            if fallback is not None:
                setattr(wrapper, FALLBACK_MARK, True)
            wrapper.scope = name  # the template: names the wrapper where one breaker would
            wrapper.breaker_for = lambda *a, **k: registry.get_or_create_with(
                name_of(a, k), config_fields, config=config, scoped=True
            )
            return cast("Guarded[P, R]", wrapper)
        named = name or default_name(func)
        chosen = breaker or (
            registry.get_or_create_with(named, config_fields, config=config)
            if config_fields
            else registry.get_or_create(named)  # its inline path: nothing to compare
        )
        wrapper = _shell(
            func, rules, fallback, call_timeout, first_token_timeout, on_state_change, chosen
        )
        wrapper.breaker = chosen
        if fallback is not None:
            setattr(wrapper, FALLBACK_MARK, True)
        return cast("Guarded[P, R]", wrapper)

    return decorate


def _shell(
    func: Callable[..., Any],
    rules: BreakerRules,
    fallback: Callable[..., Any] | None,
    call_timeout: float | None,
    first_token_timeout: float | None,
    on_state_change: Listener | None,
    chosen: CircuitBreaker,
) -> Any:
    """``func``'s shell on ``chosen`` (a module function: decorating makes no closure for it).
    Its listener is added once per breaker: decorations that name one breaker with the same
    ``on_state_change`` (or a scope's shell made again after its cache dropped it) add it
    again."""
    inner: Callable[..., Any] = func
    if first_token_timeout is not None:
        from llm_circuit_breaker.strategies.first_token import bounded

        inner = bounded(func, first_token_timeout, chosen.name)
    wrapper = shell_for(inner, chosen, rules, fallback, call_timeout)
    if on_state_change is not None:  # once per breaker: decorations that share it add it again
        chosen._local.add_listener(on_state_change, once=True)
    return wrapper


def warn_wrong_order(func: Callable[..., Any]) -> None:
    """Warn (once per decoration) that ``circuit_breaker`` is stacked outside ``with_retry``."""
    if getattr(func, RETRY_MARK, False):
        from llm_circuit_breaker._validate import caller_stacklevel

        warnings.warn(
            f"@circuit_breaker is applied outside @with_retry on {func.__qualname__}: the "
            "breaker then sees one call per whole retry loop, and retries keep hitting a dead "
            "provider. Put @with_retry above @circuit_breaker",
            UserWarning,
            stacklevel=caller_stacklevel(),  # the decorating line, however it got here
        )


def shell_for(
    func: Callable[..., Any],
    breaker: CircuitBreaker,
    rules: BreakerRules,
    fallback: Callable[..., Any] | None,
    call_timeout: float | None,
) -> Any:
    """The shell that fits ``func``: plain, coroutine, generator or async generator, with
    ``func``'s name, docstring, signature and attributes (as ``functools.wraps`` gives)."""
    kind = kind_of(func)
    if kind is CallableKind.ASYNC_GENERATOR:
        gate = _AsyncGenGate(breaker, rules, fallback, func)
        gate.timeout = call_timeout
        return _dressed(_async_gen_shell(gate), func)
    if kind is CallableKind.COROUTINE:
        call = func if call_timeout is None else _timed(func, call_timeout, breaker.name)
        return _dressed(_async_shell(_AsyncGate(breaker, rules, fallback, call)), func)
    if breaker.is_async:
        raise TypeError(
            f"circuit {breaker.name!r} keeps its state in an asyncio store: it can guard "
            f"coroutine functions and async generators, not {func.__qualname__}"
        )
    if call_timeout is not None:
        raise TypeError(
            f"call_timeout applies to coroutine functions and async generators; "
            f"{func.__qualname__} is neither (a thread cannot be timed out safely)"
        )
    if kind is CallableKind.GENERATOR:
        return _dressed(_gen_shell(_GenGate(breaker, rules, fallback, func)), func)
    return _dressed(_sync_shell(_SyncGate(breaker, rules, fallback, func)), func)


_TYPE_PARAMS = "__type_params__" in functools.WRAPPER_ASSIGNMENTS  # Python 3.12+


def _dressed(wrapper: Callable[..., Any], func: Callable[..., Any]) -> Any:
    """``wrapper`` given ``func``'s attributes exactly as ``functools.update_wrapper`` gives
    them (the same names in the same order, ``__dict__``'s contents, then ``__wrapped__``); a
    function's read outright, without the partial, the loop over names and the ``getattr`` /
    ``setattr`` calls: a function has every one of them."""
    if func.__class__ is not FunctionType:
        return functools.update_wrapper(wrapper, func)
    wrapper.__module__ = func.__module__
    wrapper.__name__ = func.__name__
    wrapper.__qualname__ = func.__qualname__
    wrapper.__doc__ = func.__doc__
    wrapper.__annotations__ = func.__annotations__
    if _TYPE_PARAMS:
        wrapper.__type_params__ = func.__type_params__  # type: ignore[attr-defined]
    attributes = func.__dict__
    if attributes:
        wrapper.__dict__.update(attributes)
    wrapper.__wrapped__ = func  # type: ignore[attr-defined]
    return wrapper


# What the unscoped shells read as module globals (cached reads), not closure cells: a shell
# closes over its gate alone (one cell) and reads the rest from it.
_new = BaseException.__new__
_INF = float("inf")
_OPEN = CircuitState.OPEN
_NO_RULES = BreakerRules()


class _SyncGate(ShellGate):
    __slots__ = ()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return _sync_shell(self)(*args, **kwargs)


class _AsyncGate(ShellGate):
    __slots__ = ()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return _async_shell(self)(*args, **kwargs)


class _GenGate(ShellGate):
    __slots__ = ()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return _gen_shell(self)(*args, **kwargs)


class _AsyncGenGate(ShellGate):
    __slots__ = ("timeout",)
    timeout: float | None  # each item's (``call_timeout``), or None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return _async_gen_shell(self)(*args, **kwargs)


def _sync_shell(gate: ShellGate) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if tracing.hook is not None and tracing.passing() is not gate:
            return tracing.hook.call(gate, gate.breaker, args, kwargs)
        core: Any = gate.core
        permit: Any = core.lock_free_permit  # CLOSED and clean: admitted, no call
        via = None  # the Elsewhere that admitted the call, if one did
        if permit < 0:
            if permit != ASK:  # the local circuit: failing fast, decided and raised here
                now, open_until = core.source.now(), core.open_until
                if now < open_until and core.state is _OPEN and core.plain_refusals:
                    next(core._rejections)
                    if gate.fallback is None:
                        raise _new(
                            CircuitOpenError,
                            core.name,
                            None if open_until == _INF else open_until - now,
                            core.open_reason,
                        ) from core.cause
                    return gate.refuse(args, kwargs)
            else:
                via = core
            permit = core.enter()
            if permit.__class__ is not int:  # a throttle slot to wait for, or a refusal
                if permit.__class__ is Wait:
                    permit = gate.wait(permit)
                elif gate.fallback is None:  # raised in this frame: failing fast is a hot path
                    try:
                        raise permit
                    finally:
                        del permit  # else frame -> error -> traceback -> frame: a cycle
                else:
                    return gate.refuse(args, kwargs)
        try:
            result = gate.func(*args, **kwargs)
        except BaseException as exc:
            gate.failed(permit, exc)
            raise
        if result.__class__ not in SCALARS:  # a stream, a coroutine, a completion, ...
            if result.__class__ is not dict and guarded_later(result):
                return guard_returned(result, gate, permit, kwargs)
            if no_answer(result):  # ignored: a non-answer is no outage
                if via is not None and via.charge is not None:
                    via.charge(result, kwargs)
                gate.abandoned(permit)
                return result
        if via is not None and via.charge is not None:
            via.charge(result, kwargs)
        core.record_success(permit)
        return result

    return wrapper


def _async_shell(gate: ShellGate) -> Callable[..., Any]:
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        if tracing.hook is not None and tracing.passing() is not gate:
            return await tracing.hook.acall(gate, gate.breaker, args, kwargs)
        core: Any = gate.core
        permit: Any = core.lock_free_permit  # CLOSED and clean: admitted, no call
        via = None  # the Elsewhere that admitted the call, if one did
        if permit < 0:
            if permit != ASK:  # the local circuit: failing fast, decided and raised here
                now, open_until = core.source.now(), core.open_until
                if now < open_until and core.state is _OPEN and core.plain_refusals:
                    next(core._rejections)
                    if gate.fallback is None:
                        raise _new(
                            CircuitOpenError,
                            core.name,
                            None if open_until == _INF else open_until - now,
                            core.open_reason,
                        ) from core.cause
                    return await _awaited(gate.refuse(args, kwargs))
                permit = core.enter()
            else:
                via = core
                permit = (await gate.aenter()) if via.awaits_store else via.enter()
            if permit.__class__ is not int:
                if permit.__class__ is Wait:
                    permit = await gate.await_slot(permit)
                elif gate.fallback is None:  # raised in this frame: failing fast is a hot path
                    try:
                        raise permit
                    finally:
                        del permit  # else frame -> error -> traceback -> frame: a cycle
                else:
                    return await _awaited(gate.refuse(args, kwargs))
        try:
            result = await gate.func(*args, **kwargs)
        except BaseException as exc:
            if via is not None and via.awaits_store:
                await gate.afailed(permit, exc)
            else:
                gate.failed(permit, exc)
            raise
        answered = True
        if result.__class__ not in SCALARS:  # a stream, a completion, ...
            if result.__class__ is not dict and is_stream(result):
                return aguard_stream(result, gate, permit, kwargs)
            answered = not no_answer(result)  # ignored if not: a non-answer is no outage
        if via is None:
            if answered:
                core.record_success(permit)
            else:
                gate.abandoned(permit)
            return result
        if via.charge is not None:
            via.charge(result, kwargs)
        if via.awaits_store:
            await (gate.asucceeded(permit) if answered else gate.aabandoned(permit))
        elif answered:
            via.record_success(permit)
        else:
            gate.abandoned(permit)
        return result

    return wrapper


def _check_scoped(func: Callable[..., Any], breaker: CircuitBreaker, timeout: float | None) -> None:
    """What :func:`shell_for` refuses, for a scope's new breaker under a shared shell."""
    if breaker.is_async and kind_of(func) is not CallableKind.COROUTINE:
        raise TypeError(
            f"circuit {breaker.name!r} keeps its state in an asyncio store: it can guard "
            f"coroutine functions and async generators, not {func.__qualname__}"
        )
    if timeout is not None and kind_of(func) is not CallableKind.COROUTINE:
        raise TypeError(
            f"call_timeout applies to coroutine functions and async generators; "
            f"{func.__qualname__} is neither (a thread cannot be timed out safely)"
        )


def _scoped_sync_shell(
    func: Callable[..., Any],
    scopes: Any,
    rules: BreakerRules,
    fallback: Callable[..., Any] | None,
    call_timeout: float | None,
) -> Callable[..., Any]:
    """:func:`_sync_shell` for every scope of a scoped decoration: the call's breaker is
    looked up per call (a cache hit inline), its methods read from it; a gate is made only
    for what is rare (a failure, a returned stream)."""
    key_of, keyed, mark_used, missed = scopes.key_of, scopes.keyed, scopes.mark_used, scopes.missed
    position, keyword = scopes.inline
    cached, made = scopes.get, scopes.__missing__
    no_fallback, scalars, waiting = fallback is None, SCALARS, Wait

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        # a one-field template's argument found in this frame (a str or an int is its own
        # key; keyed() gives any other's, see Scopes); key_of for the rest
        if position < len(args):
            key = args[position]
            if key.__class__ is not str and key.__class__ is not int:
                key = keyed(key)
        elif keyword in kwargs:
            key = kwargs[keyword]
            if key.__class__ is not str and key.__class__ is not int:
                key = keyed(key)
        else:
            key = key_of(args, kwargs)
        try:  # the cached path inline; a miss goes to the cache's __missing__, nothing raised
            breaker = cached(key)
            if breaker is None:
                breaker = made(key)  # last in the LRU order already
            else:
                mark_used(breaker.name)
        except (KeyError, TypeError):  # dropped by the registry, or an unhashable argument
            breaker = missed(key)
        if tracing.hook is not None and tracing.passing() is not me():
            return tracing.hook.call(me(), breaker, args, kwargs)
        enter = breaker._enter
        permit: Any = breaker._local.enter() if enter is None else enter()
        if permit.__class__ is not int:  # a throttle slot to wait for, or a refusal
            if permit.__class__ is waiting:
                permit = breaker.wait(permit)
            elif no_fallback:  # raised in this frame: failing fast is a hot path
                try:
                    raise permit
                finally:
                    del permit  # else frame -> error -> traceback -> frame: a cycle
            else:
                return fallback(*args, **kwargs)  # type: ignore[misc]
        try:
            result = func(*args, **kwargs)
        except BaseException as exc:
            Gate(breaker, rules, fallback).failed(permit, exc)
            raise
        if result.__class__ not in scalars:  # a stream, a coroutine, a completion, ...
            if result.__class__ is not dict and guarded_later(result):
                return guard_returned(result, Gate(breaker, rules, fallback), permit, kwargs)
            if no_answer(result):  # ignored: a non-answer is no outage
                if breaker._budget is not None:
                    breaker.charge(result, kwargs)
                breaker.record(permit, Outcome.IGNORED)
                return result
        if breaker._budget is not None:  # a token budget, perhaps
            breaker.charge(result, kwargs)
        record = breaker._record_success
        if record is None:
            breaker._local.record_success(permit)
        else:
            record(permit)
        return result

    me = weakref.ref(wrapper)  # the shell names itself without a reference cycle
    return wrapper


def _scoped_async_shell(
    func: Callable[..., Any],
    scopes: Any,
    rules: BreakerRules,
    fallback: Callable[..., Any] | None,
    call_timeout: float | None,
) -> Callable[..., Any]:
    """:func:`_async_shell` for every scope of a scoped decoration (see
    :func:`_scoped_sync_shell`)."""
    key_of, keyed, mark_used, missed = scopes.key_of, scopes.keyed, scopes.mark_used, scopes.missed
    position, keyword = scopes.inline
    cached, made = scopes.get, scopes.__missing__
    no_fallback, scalars, waiting = fallback is None, SCALARS, Wait

    @functools.wraps(func)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        # a one-field template's argument found in this frame (a str or an int is its own
        # key; keyed() gives any other's, see Scopes); key_of for the rest
        if position < len(args):
            key = args[position]
            if key.__class__ is not str and key.__class__ is not int:
                key = keyed(key)
        elif keyword in kwargs:
            key = kwargs[keyword]
            if key.__class__ is not str and key.__class__ is not int:
                key = keyed(key)
        else:
            key = key_of(args, kwargs)
        try:  # the cached path inline; a miss goes to the cache's __missing__, nothing raised
            breaker = cached(key)
            if breaker is None:
                breaker = made(key)  # last in the LRU order already
            else:
                mark_used(breaker.name)
        except (KeyError, TypeError):  # dropped by the registry, or an unhashable argument
            breaker = missed(key)
        if tracing.hook is not None and tracing.passing() is not me():
            return await tracing.hook.acall(me(), breaker, args, kwargs)
        awaits_store = breaker._alink is not None
        if awaits_store:
            permit: Any = await breaker.aenter()
        else:
            enter = breaker._enter
            permit = breaker._local.enter() if enter is None else enter()
        if permit.__class__ is not int:
            if permit.__class__ is waiting:
                permit = await breaker.await_slot(permit)
            elif no_fallback:  # raised in this frame: failing fast is a hot path
                try:
                    raise permit
                finally:
                    del permit  # else frame -> error -> traceback -> frame: a cycle
            else:
                return await _awaited(fallback(*args, **kwargs))  # type: ignore[misc]
        try:
            if call_timeout is None:
                result = await func(*args, **kwargs)
            else:
                result = await _within(func(*args, **kwargs), call_timeout, breaker.name)
        except BaseException as exc:
            gate = Gate(breaker, rules, fallback)
            if awaits_store:
                await gate.afailed(permit, exc)
            else:
                gate.failed(permit, exc)
            raise
        if result.__class__ not in scalars:  # a stream, a completion, ...
            if result.__class__ is not dict and is_stream(result):
                return aguard_stream(result, Gate(breaker, rules, fallback), permit, kwargs)
            if no_answer(result):  # ignored: a non-answer is no outage
                if breaker._budget is not None:
                    breaker.charge(result, kwargs)
                if awaits_store:
                    await breaker.arecord(permit, Outcome.IGNORED)
                else:
                    breaker.record(permit, Outcome.IGNORED)
                return result
        if breaker._budget is not None:  # a token budget, perhaps
            breaker.charge(result, kwargs)
        if awaits_store:
            await breaker.arecord_success(permit)
        else:
            record = breaker._record_success
            if record is None:
                breaker._local.record_success(permit)
            else:
                record(permit)
        return result

    me = weakref.ref(wrapper)  # the shell names itself without a reference cycle
    return wrapper


# The kinds a scoped decoration guards with one shell for all its scopes.
_SCOPED_SHELLS: dict[CallableKind, Callable[..., Callable[..., Any]]] = {
    CallableKind.PLAIN: _scoped_sync_shell,
    CallableKind.COROUTINE: _scoped_async_shell,
}


def _metered(
    items: Generator[Any, Any, Any], charge: Callable[[object, object], None], request: object
) -> Generator[Any, Any, Any]:
    """``items`` passed through, their ``usage`` read; at their end, charged to the budget."""
    usage = StreamUsage()
    cost = TOKEN_COST.get()  # set by the HTTP helpers while a stream starts
    try:
        while True:
            try:
                item = next(items)
            except StopIteration as stop:
                _charge_stream(charge, usage, request, cost)
                return stop.value
            usage.see(item)
            yield item
    finally:
        items.close()


async def _ametered(
    items: AsyncIterator[Any], charge: Callable[[object, object], None], request: object
) -> AsyncIterator[Any]:
    """:func:`_metered` for an async stream."""
    usage = StreamUsage()
    cost = TOKEN_COST.get()
    async for item in items:
        usage.see(item)
        yield item
    _charge_stream(charge, usage, request, cost)


def _charge_stream(
    charge: Callable[[object, object], None], usage: StreamUsage, request: object, cost: float
) -> None:
    total = usage.total if usage.total is not None else (cost or None)
    charge(None if total is None else {"usage": {"total_tokens": total}}, request)


def _gen_shell(gate: ShellGate) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        # Admitted when iteration starts, so a generator that is never iterated holds no permit.
        if tracing.hook is not None and tracing.passing() is not gate:
            return (yield from tracing.hook.gen(gate, gate.breaker, args, kwargs))
        core: Any = gate.core
        permit: Any = core.enter()
        if permit.__class__ is not int:
            if permit.__class__ is Wait:
                permit = gate.wait(permit)
            elif gate.fallback is None:
                try:
                    raise permit
                finally:
                    del permit  # else frame -> error -> traceback -> frame: a cycle
            else:
                return (yield from gate.refuse(args, kwargs))
        items = gate.func(*args, **kwargs)
        if core.__class__ is Elsewhere and core.charge is not None:  # a token budget
            items = _metered(items, core.charge, kwargs)
        try:
            result = yield from items
        except GeneratorExit:  # closed early: neither outcome, nothing to judge
            gate.abandoned(permit)
            raise
        except BaseException as exc:
            gate.failed(permit, exc)
            raise
        core.record_success(permit)
        return result

    return wrapper


def _async_gen_shell(gate: _AsyncGenGate) -> Callable[..., Any]:
    async def wrapper(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        if tracing.hook is not None and tracing.passing() is not gate:
            async for item in tracing.hook.agen(gate, gate.breaker, args, kwargs):
                yield item
            return
        core: Any = gate.core
        via = core if core.lock_free_permit == ASK else None  # an Elsewhere admits
        awaits_store = via is not None and via.awaits_store
        permit: Any = (await gate.aenter()) if awaits_store else core.enter()
        if permit.__class__ is not int:
            if permit.__class__ is Wait:
                permit = await gate.await_slot(permit)
            elif gate.fallback is None:
                try:
                    raise permit
                finally:
                    del permit  # else frame -> error -> traceback -> frame: a cycle
            else:
                async for item in _as_async_iterator(gate.refuse(args, kwargs)):
                    yield item
                return
        stream = gate.func(*args, **kwargs)
        try:
            # Without an item timeout or a budget the items come straight from the stream: no
            # async generator between them and the caller.
            timeout = gate.timeout
            items = stream if timeout is None else _items(stream, timeout, gate.breaker.name)
            if via is not None and via.charge is not None:
                items = _ametered(items, via.charge, kwargs)
            async for item in items:
                yield item
        except BaseException as exc:
            # closed early (GeneratorExit), failed or cancelled: close what is still open
            await stream.aclose()
            if exc.__class__ is GeneratorExit:  # closed early: neither outcome, nothing to judge
                if awaits_store:
                    await gate.aabandoned(permit)
                elif via is not None:
                    gate.abandoned(permit)
                else:
                    core.record_abandoned(permit)
            elif awaits_store:
                await gate.afailed(permit, exc)
            else:
                gate.failed(permit, exc)
            raise
        if awaits_store:
            await gate.asucceeded(permit)
        else:
            core.record_success(permit)

    return wrapper


def _timeout_error(name: str, timeout: float) -> TimeoutError:
    return TimeoutError(
        f"call guarded by circuit {name!r} took longer than call_timeout={timeout:g}s"
    )


def _timed(func: Callable[..., Any], timeout: float, name: str) -> Callable[..., Any]:
    async def call(*args: Any, **kwargs: Any) -> Any:
        return await _within(func(*args, **kwargs), timeout, name)

    return call


async def _within(awaitable: Awaitable[Any], timeout: float, name: str) -> Any:
    """Await ``awaitable`` for at most ``timeout`` seconds, timed by the running library."""
    if running_library() == "trio":
        import trio

        try:
            with trio.fail_after(timeout):
                return await awaitable
        except trio.TooSlowError:
            raise _timeout_error(name, timeout) from None
    import asyncio  # loaded already: a coroutine is running

    try:
        return await asyncio.wait_for(awaitable, timeout)
    except asyncio.TimeoutError:  # not the built-in TimeoutError on Python 3.10
        raise _timeout_error(name, timeout) from None


async def _items(stream: Any, item_timeout: float, name: str) -> AsyncIterator[Any]:
    """Iterate ``stream``; waiting longer than ``item_timeout`` for one item times out."""
    while True:
        try:
            item = await _within(stream.__anext__(), item_timeout, name)
        except StopAsyncIteration:
            return
        yield item


async def _awaited(result: Any) -> Any:
    return (await result) if inspect.isawaitable(result) else result


async def _as_async_iterator(result: Any) -> AsyncIterator[Any]:
    result = await _awaited(result)
    if hasattr(result, "__aiter__"):
        async for item in result:
            yield item
    else:
        for item in cast("Iterator[Any]", result):
            yield item
