"""``with_fallbacks``: try each target in order; skip a dead provider without waiting.

::

    @circuit_breaker("openai")
    def ask_openai(prompt: str) -> str: ...

    @circuit_breaker("anthropic")
    def ask_claude(prompt: str) -> str: ...

    ask = with_fallbacks(ask_openai, ask_claude)

A target whose breaker is OPEN (or whose throttle slot is further than ``throttle_max_wait``)
refuses at once, so it is passed over without a call or a sleep. What each error means comes
from the one verdict: a provider's fault (a breaker failure, a refusal, a rate limit, quota, a
timeout, a 5xx/529, a broken connection) moves on; the caller's fault (400, 401, 403, 404,
422 and the other errors the breaker ignores) is raised at once; a context-length error moves on
only with ``on_context_length=True``, a content-policy refusal (a 400 content-policy error, or
an answer stopped by a content filter) only with ``on_content_policy=True``. A stream fails
over only before its first item. When every target failed: :class:`FallbacksExhaustedError`
with each target's error in order (a target that is itself a chain or a pool and raised one
had no answer: the chain moves on). The error that ends the chain reaches the earlier
targets' errors through ``__context__``.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import logging
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from contextvars import ContextVar
from typing import Any, TypeVar, cast

from llm_circuit_breaker._core.state import Outcome
from llm_circuit_breaker._judge.refusal import refusal_of
from llm_circuit_breaker._judge.results import content_filter
from llm_circuit_breaker._redact import shown
from llm_circuit_breaker.breaker.clock import running_library
from llm_circuit_breaker.errors import FallbacksExhaustedError, InvalidResponseError
from llm_circuit_breaker.strategies import scope, tracing
from llm_circuit_breaker.strategies.gate import PLAIN, aclose_inner
from llm_circuit_breaker.strategies.kinds import CallableKind, kind_of

__all__ = ["FallbackStats", "with_fallbacks"]


logger = logging.getLogger("llm_circuit_breaker.fallback")

F = TypeVar("F", bound=Callable[..., Any])
Arguments = tuple[tuple[Any, ...], dict[str, Any]]  # a call's positional and keyword arguments

# True while a chain waits for a target's first answer: a with_retry inside the target then
# raises a throttle's refusal at once (the chain skips the target) instead of waiting the slot.
IN_CHAIN: ContextVar[object] = ContextVar("llm_circuit_breaker_in_chain", default=None)

_SCOPE_SOURCE = scope.__file__  # where a scoped name that its arguments cannot fill is raised

# Kinds that say the provider, not the request, is at fault: another provider may answer.
_PROVIDER_FAULTS = frozenset(
    {"timeout", "connection", "pool", "rate_limit", "quota", "overloaded", "server", "conflict"}
)


@dataclasses.dataclass
class FallbackStats:
    """Per target: calls it answered, calls it failed (and the chain moved on), calls it
    refused without running (its circuit open or its throttle too far)."""

    served: int = 0
    failed: int = 0
    refused: int = 0


class _Chain:
    """The targets, their names, and the decision after each error (shared by the shells)."""

    def __init__(
        self,
        targets: tuple[Callable[..., Any], ...],
        on_context_length: bool,
        on_content_policy: bool = False,
    ):
        self.targets = targets
        self.names = _distinct([_name(t) for t in targets])
        self.on_context_length = on_context_length
        self.on_content_policy = on_content_policy
        self.stats = {name: FallbackStats() for name in self.names}

    def moves_on(self, index: int, exc: BaseException, call: Arguments = ((), {})) -> bool:
        """Whether the chain goes on after target ``index`` raised ``exc`` for a call with
        ``call``'s arguments (counted)."""
        if not isinstance(exc, Exception):
            return False  # KeyboardInterrupt, cancellation ...
        if isinstance(exc, TypeError) and _unfit(self.targets[index], exc, call):
            return False  # the same arguments go to every target: the caller's fault
        name = self.names[index]
        if refusal_of(exc) is not None:
            self.stats[name].refused += 1
            self._announce(index, exc, "refused", call)
            return True
        from llm_circuit_breaker._judge.verdict import judge  # loaded by the first failure

        verdict = judge(exc)
        policy = verdict.kind.value == "content_policy" or (
            isinstance(exc, InvalidResponseError) and exc.kind == "content_filter"
        )
        if policy:  # a refusal: another provider may answer, if the caller says so
            provider = self.on_content_policy
        else:
            provider = (
                verdict.outcome in (Outcome.FAILURE, Outcome.THROTTLED)
                or verdict.kind.value in _PROVIDER_FAULTS
                or (verdict.kind.value == "context_length" and self.on_context_length)
                or isinstance(exc, FallbacksExhaustedError)  # a nested chain or pool: no answer
            )
        if provider:
            self.stats[name].failed += 1
            self._announce(index, exc, verdict.reason or verdict.kind.value, call)
        return provider

    def failed(
        self, index: int, exc: Exception, errors: list[Exception], call: Arguments = ((), {})
    ) -> None:
        """Keep ``exc`` and go on, or raise it when it is the caller's fault (the earlier
        targets' errors reachable from it through ``__context__``)."""
        if errors:
            _link(exc, errors[-1])
        if not self.moves_on(index, exc, call):
            raise exc
        errors.append(exc)

    def served(self, index: int) -> None:
        self.stats[self.names[index]].served += 1

    def refused_answer(self, result: Any) -> InvalidResponseError | None:
        """The error standing for ``result`` when it is a content-filter stop the chain moves
        on from (``on_content_policy``), else None."""
        if self.on_content_policy and (content_filter(result) or _filtered_events(result)):
            return InvalidResponseError("content_filter", result)
        return None

    def _announce(self, index: int, exc: BaseException, why: str, call: Arguments) -> None:
        from llm_circuit_breaker.breaker.telemetry import error_type, split_name

        last = index + 1 >= len(self.targets)
        # the filled names of scoped targets ("openai:gpt-4o"), else the chain's names
        name = _filled(self.targets[index], call) or self.names[index]
        then = "" if last else _filled(self.targets[index + 1], call) or self.names[index + 1]
        template = getattr(self.targets[index], "scope", None)
        breaker, scope = split_name(name, template if isinstance(template, str) else None)
        following = "no target left" if last else f"trying {then!r}"
        kind = error_type(exc)
        logger.info(
            "fallback: %r %s (%s); %s",
            name,
            why,
            kind,
            following,
            extra={
                "breaker": shown(breaker),
                "scope": shown(scope),
                "reason": why,
                "error_type": kind,
            },
        )
        trace = sys.modules.get("opentelemetry.trace")  # loaded only if the app uses it
        if trace is None:
            return
        span = trace.get_current_span()
        if span.is_recording():
            span.add_event(
                "llm_circuit_breaker.fallback",
                {
                    "llm_circuit_breaker.name": name,
                    "llm_circuit_breaker.fallback.next": then,
                    "error.type": kind,
                },
            )

    def exhausted(self, errors: list[Exception]) -> FallbacksExhaustedError:
        error = FallbacksExhaustedError(errors)
        if errors:  # raised outside any handler: chained by hand, as an except block would
            error.__context__ = errors[-1]
        return error


def _filtered_events(result: Any) -> bool:
    """Whether ``result`` is the list of events of a streamed answer a content filter stopped,
    as the HTTP helpers' ``call()`` returns it (its ``non_answer`` names the kind)."""
    return isinstance(result, list) and getattr(result, "non_answer", None) == "content_filter"


def _link(exc: BaseException, earlier: BaseException) -> None:
    """Make ``earlier`` (which reaches the errors before it) reachable from ``exc`` through
    ``__context__``, at the end of what ``exc`` already chains to."""
    seen: set[int] = set()
    current = exc
    while current.__context__ is not None and len(seen) < 64:
        if current is earlier or id(current) in seen:
            return  # already reachable, or a cycle
        seen.add(id(current))
        current = current.__context__
    if current is not earlier and id(current) not in seen:
        current.__context__ = earlier


def _unfit(target: Callable[..., Any], exc: TypeError, call: Arguments) -> bool:
    """Whether ``exc`` says that ``call``'s arguments do not fit ``target``: a missing or an
    unexpected argument, or a scoped breaker name they cannot fill (raised by the scope's own
    code). Read only on a failure, so a call that succeeds pays nothing."""
    frame = exc.__traceback__
    while frame is not None and frame.tb_next is not None:
        frame = frame.tb_next
    if frame is not None and frame.tb_frame.f_code.co_filename == _SCOPE_SOURCE:
        return True
    args, kwargs = call
    try:
        inspect.signature(target).bind(*args, **kwargs)
    except TypeError:
        return True
    except ValueError:  # a callable without a signature to read: a failure like any other
        return False
    return False


def _filled(target: Callable[..., Any], call: Arguments) -> str | None:
    """The filled name of the breaker a call of ``target`` with ``call``'s arguments goes
    through (a scoped target's ``breaker_for``), or None."""
    breaker = getattr(target, "breaker", None)
    if breaker is None and callable(getattr(target, "breaker_for", None)):
        args, kwargs = call
        try:
            breaker = target.breaker_for(*args, **kwargs)  # type: ignore[attr-defined]
        except Exception:  # arguments its name cannot be filled from: the template then
            return None
    name = getattr(breaker, "name", None)
    return name if isinstance(name, str) else None


def _name(target: Callable[..., Any]) -> str:
    """A target's breaker name, its name template (scoped), else its own name; for a
    ``functools.partial`` that of the function it binds (the filled name when it binds a
    scoped function's fields: ``partial(ask, model="gpt-4o")`` is ``"openai:gpt-4o"``)."""
    breaker = getattr(target, "breaker", None)
    name = getattr(breaker, "name", None) or getattr(target, "scope", None)
    if isinstance(name, str):
        return name
    if isinstance(target, functools.partial):
        return _filled(target.func, (target.args, target.keywords)) or _name(target.func)
    return str(getattr(target, "__qualname__", None) or repr(target))


def _distinct(names: list[str]) -> list[str]:
    """``names`` with a repeated one numbered (``ask``, ``ask #2``): two lambdas, or two
    targets made by one factory, keep stats of their own."""
    seen: dict[str, int] = {}
    distinct = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        distinct.append(name if seen[name] == 1 else f"{name} #{seen[name]}")
    return distinct


def with_fallbacks(
    primary: F,
    *alternatives: Callable[..., Any],
    on_context_length: bool = False,
    on_content_policy: bool = False,
) -> F:
    """A callable of the same kind as ``primary`` (sync, async, generator, async generator)
    that tries ``primary``, then each alternative, with the same arguments.

    The result exposes ``.fallback_stats``: per target name (its breaker's, else its own),
    calls served, failed and refused.
    """
    targets: tuple[Callable[..., Any], ...] = (primary, *alternatives)
    for target in targets:
        if not callable(target):
            raise TypeError(f"with_fallbacks takes callables, got {target!r}")
    kinds = {kind_of(t) for t in targets}
    if len(kinds) > 1:
        raise TypeError(
            "with_fallbacks targets must be of one kind (all sync functions, all coroutine "
            f"functions, all generators or all async generators), got {sorted(map(str, kinds))}"
        )
    chain = _Chain(targets, on_context_length, on_content_policy)
    kind = kinds.pop()
    wrapper = {
        CallableKind.ASYNC_GENERATOR: _async_gen_chain,
        CallableKind.COROUTINE: _async_chain,
        CallableKind.GENERATOR: _gen_chain,
        CallableKind.PLAIN: _sync_chain,
    }[kind](chain)
    functools.update_wrapper(wrapper, primary)
    vars(wrapper)["fallback_stats"] = chain.stats
    return cast("F", wrapper)


def _sync_chain(chain: _Chain) -> Callable[..., Any]:
    def call(*args: Any, **kwargs: Any) -> Any:
        if tracing.hook is not None and tracing.passing() is not call:
            return tracing.hook.call(call, None, args, kwargs)
        errors: list[Exception] = []
        token = IN_CHAIN.set(None)
        try:
            for index, target in enumerate(chain.targets):
                IN_CHAIN.set(target)  # this target's own with_retry skips a throttle
                try:
                    result = target(*args, **kwargs)
                    if result.__class__ not in PLAIN and hasattr(result.__class__, "__next__"):
                        # a returned stream fails over until its first item
                        result = Resumed(result, first_of(result))
                    refusal = chain.refused_answer(result)
                    if refusal is not None:
                        raise refusal
                except Exception as exc:
                    chain.failed(index, exc, errors, (args, kwargs))
                    continue
                chain.served(index)
                return result
        finally:
            IN_CHAIN.reset(token)
        raise chain.exhausted(errors)

    return call


def _async_chain(chain: _Chain) -> Callable[..., Any]:
    async def call(*args: Any, **kwargs: Any) -> Any:
        if tracing.hook is not None and tracing.passing() is not call:
            return await tracing.hook.acall(call, None, args, kwargs)
        errors: list[Exception] = []
        token = IN_CHAIN.set(None)
        try:
            for index, target in enumerate(chain.targets):
                IN_CHAIN.set(target)  # this target's own with_retry skips a throttle
                try:
                    result = await target(*args, **kwargs)
                    if hasattr(result, "__anext__"):  # fails over until its first item
                        result = AsyncResumed(result, await afirst_of(result))
                    refusal = chain.refused_answer(result)
                    if refusal is not None:
                        raise refusal
                except Exception as exc:
                    chain.failed(index, exc, errors, (args, kwargs))
                    continue
                chain.served(index)
                return result
        finally:
            IN_CHAIN.reset(token)
        raise chain.exhausted(errors)

    return call


def _gen_chain(chain: _Chain) -> Callable[..., Any]:
    def call(*args: Any, **kwargs: Any) -> Iterator[Any]:
        if tracing.hook is not None and tracing.passing() is not call:
            yield from tracing.hook.gen(call, None, args, kwargs)
            return
        errors: list[Exception] = []
        for index, target in enumerate(chain.targets):
            stream = target(*args, **kwargs)
            token = IN_CHAIN.set(target)
            try:
                first = next(stream, END)
            except Exception as exc:
                chain.failed(index, exc, errors, (args, kwargs))
                continue
            finally:
                IN_CHAIN.reset(token)
            chain.served(index)
            if first is not END:
                yield first
                yield from stream
            return
        raise chain.exhausted(errors)

    return call


def _async_gen_chain(chain: _Chain) -> Callable[..., Any]:
    async def call(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        if tracing.hook is not None and tracing.passing() is not call:
            async for item in tracing.hook.agen(call, None, args, kwargs):
                yield item
            return
        errors: list[Exception] = []
        for index, target in enumerate(chain.targets):
            stream = target(*args, **kwargs)
            token = IN_CHAIN.set(target)
            try:
                first = await first_item(stream)
            except Exception as exc:
                chain.failed(index, exc, errors, (args, kwargs))
                continue
            finally:
                IN_CHAIN.reset(token)
            chain.served(index)
            try:
                if first is not END:
                    yield first
                    async for item in stream:
                        yield item
            finally:
                await stream.aclose()
            return
        raise chain.exhausted(errors)

    return call


END = object()  # a stream that ended before its first item


async def first_item(stream: Any) -> Any:
    """The async stream's first item, or :data:`END`."""
    try:
        return await stream.__anext__()
    except StopAsyncIteration:
        return END


def first_of(stream: Any) -> Any:
    """A returned stream's first item, or :data:`END`; a failure (or an interrupt) closes
    the stream first, so that an SDK stream left behind gives its connection back."""
    try:
        return next(stream, END)
    except BaseException:
        close = getattr(stream, "close", None)
        if close is not None:
            try:
                close()
            except Exception:  # the stream's error is the one to raise
                logger.debug("closing a stream that failed before its first item raised")
        raise


async def afirst_of(stream: Any) -> Any:
    """:func:`first_of` for a returned async stream."""
    try:
        return await first_item(stream)
    except BaseException:
        try:
            await aclose_left(stream)
        except Exception:  # the stream's error is the one to raise
            logger.debug("closing a stream that failed before its first item raised")
        raise


async def aclose_left(stream: Any) -> None:
    """Close an async stream left behind, also from a cancelled trio task (shielded: else
    the close's first await would be cancelled too and the connection left open)."""
    if running_library() == "trio":
        import trio

        with trio.CancelScope(shield=True):
            await aclose_inner(stream)
        return
    await aclose_inner(stream)


class Resumed:
    """A stream whose first item was read to decide on the failover: that item, then the
    rest; other attributes (``close``, ``response`` ...) are the stream's own."""

    def __init__(self, stream: Any, first: Any) -> None:
        self._stream = stream
        self._first = first

    def __iter__(self) -> Resumed:
        return self

    def __next__(self) -> Any:
        first, self._first = self._first, END
        if first is not END:
            return first
        return next(self._stream)

    def __enter__(self) -> Resumed:
        return self

    def __exit__(self, *exc_info: object) -> None:
        close = getattr(self._stream, "close", None)
        if close is not None:
            close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


class AsyncResumed:
    """:class:`Resumed` for an async stream."""

    def __init__(self, stream: Any, first: Any) -> None:
        self._stream = stream
        self._first = first

    def __aiter__(self) -> AsyncResumed:
        return self

    async def __anext__(self) -> Any:
        first, self._first = self._first, END
        if first is not END:
            return first
        return await self._stream.__anext__()

    async def __aenter__(self) -> AsyncResumed:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        close = getattr(self._stream, "aclose", None) or getattr(self._stream, "close", None)
        if close is not None:
            result = close()
            if inspect.isawaitable(result):
                await result

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)
