"""``@with_retry``: retries driven by tenacity, with LLM-aware decisions and waits.

The first attempt is a plain call. Only when it fails with a retryable error is a tenacity
``Retrying`` / ``AsyncRetrying`` loop entered (tenacity is imported then, not before), whose
attempt 1 replays that failure instead of calling again. The loop is driven by one
:class:`RetryPolicy` (a ``retry`` predicate, a ``wait`` and a ``stop``, plain callables over
tenacity's ``RetryCallState``) shared by the sync and async paths; what an error means comes
from the one verdict (:func:`._verdict.judge`). Generators and async generators are retried
while they have yielded nothing.
"""

from __future__ import annotations

import functools
import inspect
import warnings
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Generator,
    Iterable,
)
from types import CoroutineType
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, cast, overload

from llm_circuit_breaker._judge.results import non_answer, retried_by_default
from llm_circuit_breaker.breaker import clock as time_source
from llm_circuit_breaker.config import (
    DEFAULT_RETRY_STATUS_CODES,
    FALLBACK_MARK,
    RETRY_MARK,
    RetryConfig,
)
from llm_circuit_breaker.strategies import tracing
from llm_circuit_breaker.strategies.kinds import CallableKind, kind_of, method_wrapper, rewrapped

if TYPE_CHECKING:
    from tenacity import AsyncRetrying, Retrying

__all__ = ["DEFAULT_RETRY_STATUS_CODES", "RetryPolicy", "with_retry"]


import logging
import random
import sys
from typing import TYPE_CHECKING

from llm_circuit_breaker.errors import InvalidResponseError, ThrottledError

if TYPE_CHECKING:
    from tenacity import RetryCallState

    from llm_circuit_breaker._judge.verdict import Verdict


P = ParamSpec("P")
R = TypeVar("R")


class _Loops:
    """The tenacity loops of one decoration, built on first failure (tenacity loads then)."""

    def __init__(
        self,
        policy: RetryPolicy,
        sleep: Callable[[float], None],
        async_sleep: Callable[[float], Awaitable[None]],
    ) -> None:
        self.policy = policy
        self._sleep = sleep
        self._async_sleep = async_sleep

    @functools.cached_property
    def _strategies(self) -> dict[str, Any]:
        policy = self.policy
        return {
            "retry": policy.retry,
            "wait": policy.wait,
            "before_sleep": policy.before_sleep,
            "reraise": True,
        }

    def sync(self, started: float, skip_throttled: bool = False) -> Retrying:
        from tenacity import Retrying

        stop = self.policy.stopper(self.policy.deadline_at(started), skip_throttled)
        return Retrying(sleep=self._sleep, stop=stop, **self._strategies)

    def asynchronous(self, started: float, skip_throttled: bool = False) -> AsyncRetrying:
        from tenacity import AsyncRetrying

        stop = self.policy.stopper(self.policy.deadline_at(started), skip_throttled)
        return AsyncRetrying(sleep=self._async_sleep, stop=stop, **self._strategies)


def _replaying(first: BaseException, call: Callable[..., R]) -> Callable[..., R]:
    """``call``, except that its first use raises ``first`` (the plain attempt's failure)."""
    pending = [first]

    @functools.wraps(call)
    def attempt(*args: Any, **kwargs: Any) -> R:
        if pending:
            raise pending.pop()
        return call(*args, **kwargs)

    return attempt


def _areplaying(
    first: BaseException, call: Callable[..., Awaitable[R]]
) -> Callable[..., Awaitable[R]]:
    pending = [first]

    @functools.wraps(call)
    async def attempt(*args: Any, **kwargs: Any) -> R:
        if pending:
            raise pending.pop()
        return await call(*args, **kwargs)

    return attempt


@overload
def with_retry(func: Callable[P, R], /) -> Callable[P, R]: ...
@overload
def with_retry(max_retries: int, /) -> Callable[[Callable[P, R]], Callable[P, R]]: ...
@overload
def with_retry(
    *,
    max_retries: int = 3,
    sleep: Callable[[float], None] | None = ...,
    async_sleep: Callable[[float], Awaitable[None]] | None = ...,
    clock: Callable[[], float] | None = ...,
    retry_on_result: Callable[[Any], object] | None = ...,
    # RetryConfig's fields, listed for signature help (tests keep them in step)
    initial_delay: float = 1.0,
    max_delay: float = 30.0,
    backoff_factor: float = 2.0,
    jitter: bool = True,
    retry_on_status_codes: Iterable[int] = (408, 409, 429, 500, 502, 503, 504, 529),
    retry_on: type[BaseException] | tuple[type[BaseException], ...] = (),
    respect_retry_after: bool = True,
    deadline: float | None = None,
    on_retry: Callable[[int, BaseException, float], object] | None = None,
) -> Callable[[Callable[P, R]], Callable[P, R]]: ...


def with_retry(
    max_retries: int | Callable[..., Any] | None = None,
    /,
    *,
    sleep: Callable[[float], None] | None = None,
    async_sleep: Callable[[float], Awaitable[None]] | None = None,
    clock: Callable[[], float] | None = None,
    retry_on_result: Callable[[Any], object] | None = retried_by_default,
    **options: Any,
) -> Any:
    """Retry a function on the errors that are worth it.

    ``options`` are the :class:`~llm_circuit_breaker.config.RetryConfig` fields:
    ``max_retries=3, initial_delay=1.0, max_delay=30.0, backoff_factor=2.0, jitter=True,
    retry_on_status_codes=(408, 409, 429, 500, 502, 503, 504, 529), retry_on=(),
    respect_retry_after=True, deadline=None, on_retry=None`` (an unknown name is a
    ``TypeError`` with a did-you-mean hint). The delay before retry n is ``min(max_delay,
    initial_delay * backoff_factor ** (n-1))``, drawn uniformly from [0, that] with ``jitter``.
    A server hint (``retry-after-ms``, ``retry-after``) replaces it when <= ``max_delay``; a
    longer one ends the retries at once. ``deadline`` caps the whole call, waits included.
    The original exception is re-raised when retries run out. Over a ``circuit_breaker`` that
    opens, the next attempt is not waited for: its ``CircuitOpenError`` is raised at once.
    Waits and the deadline use the library's time source (``breaker.clock``: ``time.sleep``
    looked up when called, ``asyncio.sleep`` or ``trio.sleep`` as the running library says;
    a fake clock in tests); ``sleep`` / ``async_sleep`` / ``clock`` replace it for this
    decoration alone.

    A plain or coroutine function's result is retried too when ``retry_on_result(result)`` is
    true: by default an openai / anthropic completion (object or dict) that is ``empty`` or
    has ``invalid_tool_arguments`` (:mod:`llm_circuit_breaker.results`); ``None`` retries no
    result. When the retries run out on such a result, :class:`InvalidResponseError` is raised
    with its kind and the last response.
    """
    if callable(max_retries):  # used bare: @with_retry
        return with_retry()(max_retries)
    if max_retries is not None:
        options["max_retries"] = max_retries
    if retry_on_result is not None and not callable(retry_on_result):
        raise TypeError(f"retry_on_result must be callable or None, got {retry_on_result!r}")
    config = RetryConfig.from_options(options)
    policy = RetryPolicy(config, clock=clock, retry_on_result=retry_on_result)
    loops = _Loops(policy, sleep or time_source.sleep, async_sleep or time_source.async_sleep)

    def decorate(func: Callable[P, R]) -> Callable[P, R]:
        method = method_wrapper(func)
        if method is not None:  # stacked above @staticmethod / @classmethod
            inner: Any = func
            return cast("Callable[P, R]", rewrapped(method, decorate(inner.__func__)))
        if not callable(func):
            raise TypeError(f"with_retry decorates callables, got {func!r}")
        shells: dict[CallableKind, Callable[..., Any]] = {
            CallableKind.PLAIN: _sync_shell,
            CallableKind.COROUTINE: _async_shell,
            CallableKind.GENERATOR: _gen_shell,
            CallableKind.ASYNC_GENERATOR: _async_gen_shell,
        }
        wrapper = shells[kind_of(func)](func, loops)
        setattr(wrapper, RETRY_MARK, True)
        return wrapper  # type: ignore[no-any-return]

    return decorate


def _spelt_out() -> inspect.Signature:
    """``with_retry``'s signature as introspection shows it: every option with its default
    (``RetryConfig``'s fields, in order), though the options arrive in ``**options`` so that
    a misspelt one gets a did-you-mean ``TypeError``."""
    import dataclasses

    keyword = inspect.Parameter.KEYWORD_ONLY
    params = [
        inspect.Parameter(
            field.name,
            inspect.Parameter.POSITIONAL_OR_KEYWORD if field.name == "max_retries" else keyword,
            default=field.default,
            annotation=field.type,
        )
        for field in dataclasses.fields(RetryConfig)
    ]
    for name, default in (
        ("sleep", None),
        ("async_sleep", None),
        ("clock", None),
        ("retry_on_result", retried_by_default),
    ):
        params.append(inspect.Parameter(name, keyword, default=default))
    return inspect.Signature(params, return_annotation="Callable[[Callable[P, R]], Callable[P, R]]")


with_retry.__signature__ = _spelt_out()  # type: ignore[attr-defined]

# Results the default judgement (``retried_by_default``) never rejects: not looked at.
_NEVER_ANSWERS = frozenset({str, bytes, int, float, bool, type(None)})


def _sync_shell(
    func: Callable[..., R],
    loops: _Loops,
    results: bool = True,
    traced: bool = True,
    owner: list[object] | None = None,
) -> Callable[..., R]:
    """``owner``: the wrapper a caller sees when this shell is a generator shell's start (a
    ``with_fallbacks`` chain calls that one)."""
    policy = loops.policy
    timed = policy.config.deadline is not None
    check = policy.retry_on_result if results else None
    judged = policy.judged(func) if check is not None else func
    plain = _NEVER_ANSWERS if check is retried_by_default else frozenset()

    sdk_retries = _SdkRetries(func)

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> R:
        if tracing.hook is not None and traced and tracing.passing() is not wrapper:
            return tracing.hook.call(wrapper, None, args, kwargs)  # type: ignore[no-any-return]
        started = policy.clock() if timed else 0.0
        try:  # the first attempt judged here: no extra frame on the path that succeeds
            result = func(*args, **kwargs)
            if result.__class__ not in plain:
                if result.__class__ is CoroutineType:  # a lambda returning an SDK's coroutine
                    retried = _retried_coroutine(result, func, loops, results)
                    return cast("R", retried(*args, **kwargs))
                if check is not None and check(result):
                    raise policy.invalid(result)
            return result
        except Exception as exc:
            sdk_retries.notice(exc)
            if not policy.should_retry(exc):
                raise
            skip = _skipping_in_chain(wrapper if owner is None else owner[0])
            return loops.sync(started, skip)(_replaying(exc, judged), *args, **kwargs)

    return wrapper


def _retried_coroutine(
    first: Any, func: Callable[..., Any], loops: _Loops, results: bool
) -> Callable[..., Any]:
    """For a plain function that returned a coroutine (``lambda: client.create(...)``): a
    coroutine function's shell whose first attempt awaits ``first``, the later ones what
    ``func`` returns anew. The caller awaits what it gives, retries included."""
    pending = [first]

    @functools.wraps(func)
    def attempt(*args: Any, **kwargs: Any) -> Any:
        if pending:
            return pending.pop()
        return func(*args, **kwargs)

    return _async_shell(attempt, loops, results, traced=False)


def _async_shell(
    func: Callable[..., Awaitable[R]],
    loops: _Loops,
    results: bool = True,
    traced: bool = True,
    owner: list[object] | None = None,
) -> Callable[..., Awaitable[R]]:
    policy = loops.policy
    timed = policy.config.deadline is not None
    check = policy.retry_on_result if results else None
    judged = policy.ajudged(func) if check is not None else func
    plain = _NEVER_ANSWERS if check is retried_by_default else frozenset()

    sdk_retries = _SdkRetries(func)

    @functools.wraps(func)
    async def wrapper(*args: Any, **kwargs: Any) -> R:
        if tracing.hook is not None and traced and tracing.passing() is not wrapper:
            return await tracing.hook.acall(wrapper, None, args, kwargs)  # type: ignore[no-any-return]
        started = policy.clock() if timed else 0.0
        try:  # the first attempt judged here: no extra frame on the path that succeeds
            result = await func(*args, **kwargs)
            if check is not None and result.__class__ not in plain and check(result):
                raise policy.invalid(result)
            return result
        except Exception as exc:
            sdk_retries.notice(exc)
            if not policy.should_retry(exc):
                raise
            skip = _skipping_in_chain(wrapper if owner is None else owner[0])
            return await loops.asynchronous(started, skip)(
                _areplaying(exc, judged), *args, **kwargs
            )

    return wrapper


class _SdkRetries:
    """Warns once per decorated function when an error's request shows that the SDK under it
    already retried (``x-stainless-retry-count`` > 0): every attempt of ours is then several."""

    __slots__ = ("_name", "_warned")

    def __init__(self, func: Callable[..., Any]) -> None:
        self._name = getattr(func, "__qualname__", None) or repr(func)
        self._warned = False

    def notice(self, exc: BaseException) -> None:
        if self._warned:
            return
        count = _sdk_retry_count(exc)
        if count:
            self._warned = True
            from llm_circuit_breaker._validate import caller_stacklevel

            warnings.warn(
                f"with_retry around {self._name}: the SDK had already retried this request "
                f"{count} time(s) itself (x-stainless-retry-count), so attempts multiply; "
                "create the SDK client with max_retries=0 and let with_retry retry",
                UserWarning,
                stacklevel=caller_stacklevel(),
            )


def _sdk_retry_count(exc: BaseException) -> int:
    """The ``x-stainless-retry-count`` of the request behind an openai / anthropic error."""
    from llm_circuit_breaker._judge.probe import attr

    for holder in (exc, attr(exc, "response")):
        headers = attr(attr(holder, "request"), "headers")
        try:
            value = headers.get("x-stainless-retry-count") if headers is not None else None
            if value is not None:
                return int(value)
        except Exception:  # not a mapping, not a number: no sign of the SDK's retries
            continue
    return 0


_EXHAUSTED = object()  # a stream that ended before its first item


def _gen_shell(
    func: Callable[..., Generator[Any, Any, Any]], loops: _Loops
) -> Callable[..., Generator[Any, Any, Any]]:
    def start(*args: Any, **kwargs: Any) -> tuple[Generator[Any, Any, Any], Any]:
        stream = func(*args, **kwargs)
        try:
            return stream, next(stream)
        except StopIteration:
            return stream, _EXHAUSTED

    owner: list[object] = []
    retried_start = _sync_shell(
        functools.wraps(func)(start), loops, results=False, traced=False, owner=owner
    )

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Generator[Any, Any, Any]:
        if tracing.hook is not None and tracing.passing() is not wrapper:
            return (yield from tracing.hook.gen(wrapper, None, args, kwargs))
        # Retried until the first item arrives; after that a failure is the caller's to see.
        stream, first = retried_start(*args, **kwargs)
        if first is _EXHAUSTED:
            return
        try:
            yield first
            yield from stream
        finally:
            stream.close()

    owner.append(wrapper)
    return wrapper


def _async_gen_shell(
    func: Callable[..., AsyncGenerator[Any, Any]], loops: _Loops
) -> Callable[..., AsyncIterator[Any]]:
    async def start(*args: Any, **kwargs: Any) -> tuple[AsyncGenerator[Any, Any], Any]:
        stream = func(*args, **kwargs)
        try:
            return stream, await stream.__anext__()
        except StopAsyncIteration:
            return stream, _EXHAUSTED

    owner: list[object] = []
    retried_start = _async_shell(
        functools.wraps(func)(start), loops, results=False, traced=False, owner=owner
    )

    @functools.wraps(func)
    async def wrapper(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        if tracing.hook is not None and tracing.passing() is not wrapper:
            async for item in tracing.hook.agen(wrapper, None, args, kwargs):
                yield item
            return
        stream, first = await retried_start(*args, **kwargs)
        if first is _EXHAUSTED:
            return
        try:
            yield first
            async for item in stream:
                yield item
        finally:
            await stream.aclose()

    owner.append(wrapper)
    return wrapper


logger = logging.getLogger("llm_circuit_breaker.retry")

_MAX_HINT_JITTER = 1.0  # seconds: a server's wait is spread by up to 10%, at most this
# Waits for a throttle slot use no retry, but a call gives up after this many of them.
_MAX_THROTTLE_WAITS = 10


class RetryPolicy:
    """What to retry and how long to wait: the strategies handed to tenacity."""

    def __init__(
        self,
        config: RetryConfig,
        *,
        clock: Callable[[], float] | None = None,
        random_uniform: Callable[[float, float], float] = random.uniform,
        retry_on_result: Callable[[Any], object] | None = None,
    ) -> None:
        self.config = config
        self.clock = clock or time_source.now  # the library's, read anew on every call
        self._uniform = random_uniform
        self._last: tuple[BaseException, Verdict] | None = None
        self.retry_on_result = retry_on_result

    # -- decisions -------------------------------------------------------------------------

    def verdict(self, exc: BaseException) -> Verdict:
        """What ``exc`` means (the verdict module loads with the first failure). The shell,
        tenacity's ``retry`` and ``wait`` all ask about the same failure: judged once."""
        last = self._last
        if last is not None and last[0] is exc:
            return last[1]
        from llm_circuit_breaker._judge.verdict import judge

        verdict = judge(exc, retry=self.config)
        self._last = (exc, verdict)  # one tuple swap: safe for threads sharing the policy
        return verdict

    def should_retry(self, exc: BaseException) -> bool:
        """Whether ``exc`` is worth another attempt."""
        if isinstance(exc, InvalidResponseError):  # an answer that is none: asked of its result
            return self.rejects(exc.response)
        return self.verdict(exc).retry

    # -- results ---------------------------------------------------------------------------

    def rejects(self, result: object) -> bool:
        """Whether ``result`` is worth another attempt (``retry_on_result``)."""
        check = self.retry_on_result
        if check is None:
            return False
        return bool(check(result))

    def invalid(self, result: object) -> InvalidResponseError:
        """The error that stands for a rejected ``result`` (raised when retries run out)."""
        return InvalidResponseError(non_answer(result) or "retry_on_result", result)

    def judged(self, func: Callable[..., R]) -> Callable[..., R]:
        """``func``, raising :meth:`invalid` for a result to retry."""

        @functools.wraps(func)
        def attempt(*args: Any, **kwargs: Any) -> R:
            result = func(*args, **kwargs)
            if self.rejects(result):
                raise self.invalid(result)
            return result

        return attempt

    def ajudged(self, func: Callable[..., Awaitable[R]]) -> Callable[..., Awaitable[R]]:
        """:meth:`judged` for a coroutine function."""

        @functools.wraps(func)
        async def attempt(*args: Any, **kwargs: Any) -> R:
            result = await func(*args, **kwargs)
            if self.rejects(result):
                raise self.invalid(result)
            return result

        return attempt

    def delay(self, retry_number: int, exc: BaseException | None) -> float:
        """Seconds to wait before retry ``retry_number`` (1-based) after ``exc``.

        A server's hint is a minimum: with ``jitter`` it is spread upwards by up to 10% (at
        most 1 s) so that callers told the same wait do not return in lockstep.
        """
        config = self.config
        if exc is not None:
            hint = self.verdict(exc).hint
            if hint is not None and hint <= config.max_delay:
                if not config.jitter:
                    return hint
                return hint + self._uniform(0.0, min(hint * 0.1, _MAX_HINT_JITTER))
        exponent = min(retry_number - 1, 1000)  # 2.0 ** 1000 is finite; past that it overflows
        ceiling = min(config.max_delay, config.initial_delay * config.backoff_factor**exponent)
        return self._uniform(0.0, ceiling) if config.jitter else ceiling

    # -- tenacity strategies ---------------------------------------------------------------

    def retry(self, state: RetryCallState) -> bool:
        """tenacity ``retry``: retry a failed attempt whose error is retryable."""
        outcome = state.outcome
        if outcome is None or not outcome.failed:
            return False
        return self.should_retry(_error(state))

    def wait(self, state: RetryCallState) -> float:
        """tenacity ``wait``: the hint or the (jittered) exponential backoff."""
        return self.delay(state.attempt_number, _error(state))

    def stopper(
        self, deadline_at: float | None, skip_throttled: bool = False
    ) -> Callable[[RetryCallState], bool]:
        """tenacity ``stop`` for one call: attempts used up, or the next sleep ends too late;
        ``skip_throttled``: a throttle's refusal ends it (a ``with_fallbacks`` target)."""

        throttled = 0  # attempts refused by a throttle: waiting for a slot is not a retry

        def stop(state: RetryCallState) -> bool:
            nonlocal throttled
            if isinstance(_error(state), ThrottledError):
                if skip_throttled:
                    return True  # a with_fallbacks chain skips a throttled target at once
                throttled += 1
                if throttled > _MAX_THROTTLE_WAITS:
                    return True
            if state.attempt_number - throttled > self.config.max_retries:
                return True
            return deadline_at is not None and self.clock() + state.upcoming_sleep > deadline_at

        return stop

    def before_sleep(self, state: RetryCallState) -> None:
        """tenacity ``before_sleep``: log, count the retry and call ``on_retry`` (or raise the
        breaker's refusal at once when the breaker under us is open: no sleep first)."""
        from llm_circuit_breaker._redact import redact_text

        exc = _error(state)
        breaker = _breaker_of(state)
        if _falls_back(state, breaker):
            state.upcoming_sleep = 0.0  # what the next attempt gets: its fallback, now
            return
        _raise_if_refused(breaker, exc)
        _raise_if_unpaid(breaker, exc)
        delay = state.upcoming_sleep
        if logger.isEnabledFor(logging.INFO):
            from llm_circuit_breaker.breaker.telemetry import error_type, split_name

            name = getattr(breaker, "name", None)
            template, scope = (
                split_name(name, getattr(breaker, "template", None))
                if name
                else (state.get_fn_name(), "")
            )
            logger.info(
                "retrying %s in %.3fs after attempt %d failed: %s: %s",
                name or state.get_fn_name(),
                delay,
                state.attempt_number,
                type(exc).__name__,
                _printable(exc, redact_text),
                extra={
                    "breaker": template,
                    "scope": scope,
                    "attempt": state.attempt_number,
                    "delay_s": delay,
                    "error_type": error_type(exc),
                },
            )
        if breaker is not None:
            breaker.record_retry(state.attempt_number, exc, delay)
        on_retry = self.config.on_retry
        if on_retry is not None:
            try:
                on_retry(state.attempt_number, exc, delay)
            except Exception:
                from llm_circuit_breaker._redact import hide_context

                hide_context()
                logger.exception("on_retry callback raised; retrying anyway")

    def deadline_at(self, started: float) -> float | None:
        """When a call that started at ``started`` must be done."""
        deadline = self.config.deadline
        return None if deadline is None else started + deadline


def _breaker_of(state: RetryCallState) -> Any:
    """The breaker under the retried function for this call: its ``.breaker``, or for a scoped
    name (``"openai:{model}"``) the one its arguments name."""
    breaker = getattr(state.fn, "breaker", None)
    if breaker is None:
        breaker_for = getattr(state.fn, "breaker_for", None)
        if breaker_for is not None:
            try:
                breaker = breaker_for(*state.args, **state.kwargs)
            except (TypeError, ValueError):  # the call itself was malformed: nothing to count
                return None
    return breaker


def _falls_back(state: RetryCallState, breaker: Any) -> bool:
    """Whether the breaker under us is open now and its decoration has a ``fallback=``: the
    next attempt, made at once, returns the fallback's answer (no refusal is raised, no
    sleep comes first)."""
    if breaker is None or breaker.is_async or not getattr(state.fn, FALLBACK_MARK, False):
        return False
    return breaker.refusal_now() is not None


def _raise_if_refused(breaker: Any, exc: BaseException) -> None:
    """When the breaker under us is open now, retrying is pointless: raise its refusal at once,
    chained to the error that made it open (no sleep first)."""
    if breaker is None or breaker.is_async:
        return
    refusal = breaker.refusal_now()
    if refusal is not None:
        try:
            raise refusal from exc
        finally:
            del refusal


BUDGET_NOTE = "retry budget exhausted"


def _skipping_in_chain(wrapper: object) -> bool:
    """Whether ``wrapper`` is the target a ``with_fallbacks`` chain is calling (the chain is
    then loaded), so a throttle's refusal goes up to the chain instead of waiting for the
    slot; a ``with_retry`` deeper inside the target waits as anywhere else."""
    chain = sys.modules.get("llm_circuit_breaker.strategies.fallbacks")
    return chain is not None and chain.IN_CHAIN.get() is wrapper


def _raise_if_unpaid(breaker: Any, exc: BaseException) -> None:
    """A retry the breaker's retry budget cannot pay is not made: raise the last error at
    once, with a note saying why. Waiting for a throttle slot is no retry: it pays nothing."""
    spend = getattr(breaker, "try_spend_retry", None)
    if spend is None or isinstance(exc, ThrottledError) or spend():
        return
    notes = getattr(exc, "__notes__", None)
    if not isinstance(notes, list):  # what add_note() does (3.11+), also on 3.10
        notes = []
        setattr(exc, "__notes__", notes)  # noqa: B010 - typeshed knows __notes__ from 3.11 only
    if BUDGET_NOTE not in notes:
        notes.append(BUDGET_NOTE)
    raise exc


def _printable(exc: BaseException, redact: Callable[[str], str]) -> str:
    """``exc``'s message for a log line, redacted and cut; never raises (a ``__str__`` that
    raises must not turn a retry into that error)."""
    try:
        return redact(str(exc))[:300]
    except Exception:
        return "<message unavailable: str() raised>"


def _error(state: RetryCallState) -> BaseException:
    outcome = state.outcome
    exc = outcome.exception() if outcome is not None else None
    if exc is None:  # pragma: no cover - tenacity asks only about failed attempts
        raise RuntimeError("no failed attempt to inspect")
    return exc
