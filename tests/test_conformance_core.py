"""Sections 1, 2, 3 and 5 read sentence by sentence, as an independent user would write them:
the shapes of callables the decorators take, the errors' hierarchy, pickling and redaction,
and the exceptions that fight back (a ``__str__`` that raises, a status that is a string,
headers held as bytes).
"""

from __future__ import annotations

import asyncio
import copy
import functools
import gc
import inspect
import logging
import pickle
import sys
import warnings
from collections.abc import AsyncIterator, Callable, Iterator
from http import HTTPStatus
from typing import Any, ClassVar
from unittest.mock import AsyncMock, Mock

import pytest

from llm_circuit_breaker import (
    BreakerRegistry,
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitOpenError,
    CircuitState,
    FallbacksExhaustedError,
    HTTPStatusError,
    Outcome,
    RateLimitError,
    ServerError,
    breaker_registry,
    circuit_breaker,
    with_retry,
)
from llm_circuit_breaker.errors import http_status_error
from llm_circuit_breaker.storage import MemoryStateStore, RedisStateStore
from llm_circuit_breaker.testing import FakeClock

SECRET = "sk-proj-abcdefghijklmnopqrstuvwxyz0123456789"


def _no_sleep(_seconds: float) -> None:
    pass


# -- section 3: methods, classmethods, staticmethods, partials, callable objects ------------


def _client_class() -> Any:
    """Methods of each kind under each decorator, stacked in either order."""

    class Client:
        calls = 0

        @staticmethod
        @circuit_breaker("static-inside", registry=BreakerRegistry())
        def static_inside(x: int) -> int:
            return x + 1

        @circuit_breaker("static-outside", registry=BreakerRegistry())
        @staticmethod
        def static_outside(x: int) -> int:
            return x + 1

        @classmethod
        @circuit_breaker("class-inside", registry=BreakerRegistry())
        def class_inside(cls, x: int) -> tuple[type, int]:
            return cls, x

        @circuit_breaker("class-outside", registry=BreakerRegistry())  # type: ignore[arg-type]
        @classmethod
        def class_outside(cls, x: int) -> tuple[type, int]:
            return cls, x

        @with_retry(max_retries=2, jitter=False, sleep=_no_sleep)
        @staticmethod
        def retried_static(x: int) -> int:
            Client.calls += 1
            if Client.calls < 2:
                raise ServerError(503)
            return x

        @with_retry(max_retries=2, jitter=False, sleep=_no_sleep)  # type: ignore[arg-type]
        @classmethod
        def retried_class(cls, x: int) -> tuple[type, int]:
            return cls, x

    return Client


def test_a_staticmethod_is_guarded_whichever_decorator_comes_first() -> None:
    """``@circuit_breaker`` above or below ``@staticmethod`` guards the function, called on the
    class or on an instance, with no instance slipped in as an argument."""
    client = _client_class()
    assert client.static_inside(1) == 2
    assert client().static_inside(1) == 2
    assert client.static_outside(1) == 2
    assert client().static_outside(1) == 2
    assert client.static_outside.breaker.name == "static-outside"
    assert client.static_outside.breaker.stats.successes == 2


def test_a_classmethod_is_guarded_whichever_decorator_comes_first() -> None:
    """``@circuit_breaker`` above ``@classmethod`` is no ``TypeError``: the class is bound."""
    client = _client_class()
    assert client.class_inside(3) == (client, 3)
    assert client().class_outside(3) == (client, 3)
    assert client.class_outside(4) == (client, 4)
    assert client.class_outside.breaker.stats.successes == 2


def test_with_retry_above_staticmethod_and_classmethod_retries_the_function() -> None:
    """``@with_retry`` over ``@staticmethod`` retries with the right arguments, and over
    ``@classmethod`` binds the class."""
    client = _client_class()
    assert client().retried_static(7) == 7
    assert client.calls == 2
    assert client.retried_class(1) == (client, 1)


def test_the_decorators_signatures_show_the_specs_defaults() -> None:
    """``inspect.signature`` shows each option with the default section 3 gives it."""
    retry = inspect.signature(with_retry).parameters
    assert {name: retry[name].default for name in list(retry)[:10]} == {
        "max_retries": 3,
        "initial_delay": 1.0,
        "max_delay": 30.0,
        "backoff_factor": 2.0,
        "jitter": True,
        "retry_on_status_codes": (408, 409, 429, 500, 502, 503, 504, 529),
        "retry_on": (),
        "respect_retry_after": True,
        "deadline": None,
        "on_retry": None,
    }
    guard = inspect.signature(circuit_breaker).parameters
    assert guard["name"].default is None
    assert guard["registry"].default is breaker_registry
    for option in ("breaker", "failure_predicate", "fallback", "on_state_change", "call_timeout"):
        assert guard[option].default is None
    assert guard["exclude"].default == ()
    assert guard["config_fields"].kind is inspect.Parameter.VAR_KEYWORD


def test_a_breaker_without_a_name_is_named_after_what_a_partial_wraps() -> None:
    """Without a name the breaker is named after the function's module and qualified name:
    for a ``functools.partial`` the wrapped function's (no ``AttributeError``)."""
    registry = BreakerRegistry()

    def complete(model: str, prompt: str) -> str:
        return f"{model}:{prompt}"

    guarded = circuit_breaker(registry=registry)(functools.partial(complete, "gpt-4o"))
    assert guarded("hi") == "gpt-4o:hi"
    assert guarded.breaker.name == f"{__name__}.{complete.__qualname__}"


def test_a_breaker_without_a_name_is_named_after_a_callable_objects_class() -> None:
    """A callable object's breaker is named after its class; a coroutine ``__call__`` makes
    the wrapper a coroutine function."""
    registry = BreakerRegistry()

    class Completer:
        async def __call__(self, prompt: str) -> str:
            return prompt

    guarded = circuit_breaker(registry=registry)(Completer())
    assert inspect.iscoroutinefunction(guarded)
    assert guarded.breaker.name == f"{__name__}.{Completer.__qualname__}"


def test_mocks_are_guarded_as_what_they_stand_for() -> None:
    """A ``Mock`` is a plain callable (its breaker named after its class), an ``AsyncMock`` a
    coroutine function: the wrappers are coroutine functions exactly when they are."""
    registry = BreakerRegistry()
    mock = Mock(side_effect=[ServerError(500), "ok"])
    guarded = with_retry(jitter=False, sleep=_no_sleep)(circuit_breaker(registry=registry)(mock))
    assert not inspect.iscoroutinefunction(guarded)
    assert guarded() == "ok"
    assert mock.call_count == 2
    assert list(registry) == ["unittest.mock.Mock"]

    async def no_sleep(_seconds: float) -> None:
        pass

    amock = AsyncMock(side_effect=[ServerError(500), "async ok"])
    aguarded = with_retry(jitter=False, async_sleep=no_sleep)(
        circuit_breaker("amock", registry=registry)(amock)
    )
    assert inspect.iscoroutinefunction(aguarded)
    assert asyncio.run(aguarded()) == "async ok"
    assert registry.get("amock").stats.failures == 1


def test_a_registry_of_the_wrong_type_is_a_clear_type_error() -> None:
    """Bad input raises a clear error, never an ``AttributeError`` from inside."""
    with pytest.raises(TypeError, match="registry must be a BreakerRegistry"):
        circuit_breaker("x", registry={})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="breaker must be a CircuitBreaker"):
        circuit_breaker(breaker="openai")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="fields themselves"):
        circuit_breaker("x", config=CircuitBreakerConfig())


def test_exclude_and_retry_on_take_a_list_of_types() -> None:
    """``exclude=[...]`` and ``retry_on=[...]`` work as their tuples do."""
    registry = BreakerRegistry()

    @circuit_breaker("listed", registry=registry, failure_threshold=1, exclude=[KeyError])
    def lookup() -> None:
        raise KeyError("missing")

    with pytest.raises(KeyError):
        lookup()
    assert registry.get("listed").state is CircuitState.CLOSED

    calls = []

    @with_retry(retry_on=[LookupError], jitter=False, sleep=_no_sleep)
    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise LookupError("later")
        return "ok"

    assert flaky() == "ok"
    assert len(calls) == 3


# -- section 2: the registry and dict configs ----------------------------------------------


def test_a_dict_config_is_built_and_checked_with_a_did_you_mean() -> None:
    """``get_or_create`` and ``CircuitBreaker`` take a mapping of field names too; an unknown
    or camelCase key is a ``TypeError`` with a did-you-mean hint, as in every entry point."""
    registry = BreakerRegistry()
    breaker = registry.get_or_create("dict", config={"failure_threshold": 2})
    assert breaker.config.failure_threshold == 2
    assert registry.get_or_create("dict", config={"failure_threshold": 2}) is breaker
    with pytest.raises(ValueError, match="failure_threshold=3"):
        registry.get_or_create("dict", config={"failure_threshold": 3})
    with pytest.raises(TypeError, match="did you mean 'failure_threshold'"):
        registry.get_or_create("other", config={"failureThreshold": 2})
    assert "other" not in registry
    assert CircuitBreaker("own", {"reset_timeout": 5.0}).config.reset_timeout == 5.0
    with pytest.raises(TypeError, match="did you mean 'reset_timeout'"):
        CircuitBreaker("own", {"reset_timout": 5.0})
    with pytest.raises(TypeError, match="config must be a CircuitBreakerConfig"):
        CircuitBreaker("own", 5)  # type: ignore[arg-type]


def test_one_listener_given_to_several_decorations_hears_each_change_once() -> None:
    """Functions that name one breaker with the same ``on_state_change`` share the breaker:
    the listener is told of each state change once, not once per decoration."""
    registry = BreakerRegistry()
    heard: list[CircuitState] = []

    def alert(change: Any) -> None:
        heard.append(change.new)

    @circuit_breaker("shared", registry=registry, on_state_change=alert, failure_threshold=1)
    def complete() -> None:
        raise ServerError(500)

    @circuit_breaker("shared", registry=registry, on_state_change=alert)
    def embed() -> str:
        return "ok"

    with pytest.raises(ServerError):
        complete()
    assert heard == [CircuitState.OPEN]
    embed.breaker.reset()
    assert heard == [CircuitState.OPEN, CircuitState.CLOSED]

    class Pager:
        def __init__(self) -> None:
            self.pages = 0

        def page(self, change: Any) -> None:
            self.pages += 1

    pager = Pager()  # a bound method is a new object at each read: equal, not identical
    for _ in range(3):
        circuit_breaker("shared", registry=registry, on_state_change=pager.page)(embed)
    embed.breaker.force_open()
    assert pager.pages == 1


def test_a_plain_function_returning_an_async_iterator_is_guarded_with_async_for() -> None:
    """The stream's kind, not the function's, decides how it is iterated: a plain function
    that returns an async iterator gives one to ``async for``, guarded until its end (an
    error while iterating is a failure)."""
    registry = BreakerRegistry()

    async def chunks(fail: bool) -> AsyncIterator[int]:
        yield 1
        if fail:
            raise ServerError(502)
        yield 2

    @circuit_breaker("sync-to-async", registry=registry, failure_threshold=1)
    def stream(fail: bool) -> AsyncIterator[int]:
        return chunks(fail)

    async def main() -> None:
        assert [item async for item in stream(False)] == [1, 2]
        assert registry.get("sync-to-async").stats.successes == 1
        with pytest.raises(ServerError):
            async for _ in stream(True):
                pass

    asyncio.run(main())
    assert registry.get("sync-to-async").state is CircuitState.OPEN


def test_a_coroutine_function_returning_an_iterator_is_guarded_with_for() -> None:
    """A coroutine function that returns a plain iterator gives one to ``for``, guarded until
    its end."""
    registry = BreakerRegistry()

    def chunks(fail: bool) -> Iterator[int]:
        yield 1
        if fail:
            raise ServerError(502)
        yield 2

    @circuit_breaker("async-to-sync", registry=registry, failure_threshold=1)
    async def stream(fail: bool) -> Iterator[int]:
        return chunks(fail)

    assert list(asyncio.run(stream(False))) == [1, 2]
    assert registry.get("async-to-sync").stats.successes == 1
    failing = asyncio.run(stream(True))
    with pytest.raises(ServerError):
        list(failing)
    assert registry.get("async-to-sync").state is CircuitState.OPEN


def test_retry_on_does_not_retry_quota_or_a_hint_longer_than_max_delay() -> None:
    """``retry_on`` adds types to what is retried; a listed type that carries quota
    exhaustion, or a hint past ``max_delay``, is still raised at once (section 3)."""
    quota = http_status_error(429, body={"error": {"code": "insufficient_quota"}})
    too_long = RateLimitError(429, {"retry-after": "120"})
    short = RateLimitError(429, {"retry-after": "2"})
    for error, attempts in ((quota, 1), (too_long, 1), (short, 2)):
        calls: list[BaseException] = []

        @with_retry(retry_on=RateLimitError, jitter=False, max_retries=1, sleep=_no_sleep)
        def complete(error: BaseException = error, calls: list[BaseException] = calls) -> None:
            calls.append(error)
            raise error

        with pytest.raises(RateLimitError):
            complete()
        assert len(calls) == attempts, error


def test_with_retry_over_a_breaker_with_a_fallback_answers_with_the_fallback() -> None:
    """``with_retry`` over ``circuit_breaker(fallback=...)``: the failure that opens the
    circuit is followed, without sleeping, by the fallback's answer (the circuit is open:
    the fallback is called), not by a ``CircuitOpenError``."""
    registry = BreakerRegistry()
    sleeps: list[float] = []

    @with_retry(max_retries=3, jitter=False, sleep=sleeps.append)
    @circuit_breaker("fb", registry=registry, failure_threshold=1, fallback=lambda p: "busy")
    def complete(prompt: str) -> str:
        raise ServerError(503)

    assert complete("hi") == "busy"
    assert sum(sleeps) == 0.0
    assert registry.get("fb").stats.failures == 1

    async def no_sleep(_seconds: float) -> None:
        pass

    async def busy(prompt: str) -> str:
        return "async busy"

    @with_retry(max_retries=3, jitter=False, async_sleep=no_sleep)
    @circuit_breaker("afb", registry=registry, failure_threshold=1, fallback=busy)
    async def acomplete(prompt: str) -> str:
        raise ServerError(503)

    assert asyncio.run(acomplete("hi")) == "async busy"


def test_a_lambda_returning_a_coroutine_is_guarded_until_it_is_awaited() -> None:
    """``circuit_breaker`` over ``lambda p: client.create(p)`` (an async SDK's coroutine,
    returned by a plain function): the outcome is the awaited one, so failures count and
    open the circuit, and an open circuit refuses without calling."""
    registry = BreakerRegistry()
    calls: list[str] = []

    async def create(prompt: str) -> str:
        calls.append(prompt)
        raise ServerError(503)

    guarded = circuit_breaker("lambda", registry=registry, failure_threshold=2)(
        lambda prompt: create(prompt)
    )

    async def main() -> None:
        for _ in range(2):
            with pytest.raises(ServerError):
                await guarded("hi")
        with pytest.raises(CircuitOpenError):
            guarded("refused")

    asyncio.run(main())
    assert registry.get("lambda").state is CircuitState.OPEN
    assert calls == ["hi", "hi"]


def test_with_retry_retries_a_lambda_returning_a_coroutine() -> None:
    """``with_retry`` over a plain function that returns a coroutine retries what it awaits:
    each attempt calls the function anew, the caller awaits the whole."""
    registry = BreakerRegistry()
    calls: list[str] = []

    async def create(prompt: str) -> str:
        calls.append(prompt)
        if len(calls) < 3:
            raise ServerError(503)
        return f"ok {prompt}"

    async def no_sleep(_seconds: float) -> None:
        pass

    guarded = with_retry(max_retries=3, jitter=False, async_sleep=no_sleep)(
        circuit_breaker("lambda-retry", registry=registry)(lambda prompt: create(prompt))
    )
    assert asyncio.run(guarded("x")) == "ok x"
    assert calls == ["x", "x", "x"]
    stats = registry.get("lambda-retry").stats
    assert (stats.failures, stats.successes, stats.retries) == (2, 1, 2)


# -- section 3: with_retry and exceptions that fight back -----------------------------------


class _Unprintable(ConnectionError):
    """A connection failure whose ``str()`` and ``repr()`` raise."""

    def __str__(self) -> str:
        raise RuntimeError("no str for you")

    def __repr__(self) -> str:
        raise RuntimeError("no repr for you")


def test_a_retry_is_logged_even_when_the_error_cannot_be_printed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Retries are logged at INFO; an error whose ``__str__`` raises is still retried (and the
    original error re-raised when retries run out), never replaced by the logging's error."""
    calls = []

    @with_retry(max_retries=2, jitter=False, sleep=_no_sleep)
    def connect() -> None:
        calls.append(1)
        raise _Unprintable()

    with caplog.at_level(logging.INFO, logger="llm_circuit_breaker"), pytest.raises(_Unprintable):
        connect()
    assert len(calls) == 3
    retries = [r for r in caplog.records if r.name == "llm_circuit_breaker.retry"]
    assert len(retries) == 2
    assert "_Unprintable" in retries[0].getMessage()


def test_a_failing_listener_or_predicate_logs_no_credential_of_the_calls_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Log records never contain credentials: a listener or a ``failure_predicate`` that
    raises is logged with its own traceback, not the guarded call's error it was raised
    while handling (whose message holds a key)."""
    registry = BreakerRegistry()

    def listener(change: Any) -> None:
        raise RuntimeError("listener bug")

    def predicate(error: BaseException) -> bool:
        raise RuntimeError("predicate bug")

    @circuit_breaker(
        "leaky",
        registry=registry,
        failure_threshold=1,
        on_state_change=listener,
        failure_predicate=predicate,
    )
    def call() -> None:
        raise ConnectionError(f"proxy said: Authorization: Bearer {SECRET}")

    with (
        caplog.at_level(logging.INFO, logger="llm_circuit_breaker"),
        pytest.raises(ConnectionError),
    ):
        call()
    assert registry.get("leaky").state is CircuitState.OPEN
    assert "listener bug" in caplog.text
    assert "predicate bug" in caplog.text
    assert SECRET not in caplog.text


@pytest.mark.skipif(sys.version_info < (3, 11), reason="exception groups are 3.11+")
def test_an_exception_group_of_cancellations_is_ignored_like_a_cancellation() -> None:
    """A task group that was cancelled raises a group of cancellations: like a lone
    ``CancelledError`` it is no failure; a group holding a provider error is one."""
    registry = BreakerRegistry()

    @circuit_breaker("groups", registry=registry, failure_threshold=1, exclude=KeyError)
    def call(error: BaseException) -> None:
        raise error

    ignorable = [
        BaseExceptionGroup("cancelled", [asyncio.CancelledError(), KeyboardInterrupt()]),  # noqa: F821
        ExceptionGroup("excluded", [KeyError("a"), KeyError("b")]),  # noqa: F821
    ]
    for error in ignorable:
        with pytest.raises(BaseExceptionGroup):  # noqa: F821
            call(error)
    assert registry.get("groups").state is CircuitState.CLOSED
    assert registry.get("groups").stats.ignored == 2
    with pytest.raises(BaseExceptionGroup):  # noqa: F821
        call(BaseExceptionGroup("mixed", [asyncio.CancelledError(), ServerError(503)]))  # noqa: F821
    assert registry.get("groups").state is CircuitState.OPEN


def test_an_error_whose_response_reads_its_body_asynchronously_leaves_no_coroutine() -> None:
    """Duck typing reads ``response.json()``; an async client's response (aiohttp's) gives a
    coroutine, which is closed, not left to warn "never awaited" (``filterwarnings=error``
    makes that a failure of the test that collects it)."""

    class AsyncResponse:
        status = 503
        headers: ClassVar[dict[str, str]] = {}

        async def json(self) -> dict[str, Any]:
            return {"error": {"message": "overloaded"}}

    class ProviderError(Exception):
        def __init__(self) -> None:
            super().__init__("503")
            self.response = AsyncResponse()

    registry = BreakerRegistry()

    @circuit_breaker("async-body", registry=registry, failure_threshold=1)
    def call() -> None:
        raise ProviderError()

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ProviderError):
            call()
        gc.collect()
    assert registry.get("async-body").state is CircuitState.OPEN


# -- section 1: the sliding window ----------------------------------------------------------


# a failure rate over 50% of at least 4 calls in 60 s opens (consecutive failures never do)
_RATE = CircuitBreakerConfig(
    failure_threshold=100, failure_rate_threshold=0.5, window=60.0, minimum_calls=4
)


def _failing_when_asked(breaker: CircuitBreaker) -> Callable[[bool], str]:
    """A call guarded by ``breaker`` that raises a 500 when asked to fail."""

    @circuit_breaker(breaker=breaker)
    def call(fail: bool) -> str:
        if fail:
            raise ServerError(500)
        return "ok"

    return call


def test_the_failure_rate_opens_once_minimum_calls_were_seen_whatever_the_last_outcome(
    clock: FakeClock,
) -> None:
    """Three failures then a success: the fourth call reaches ``minimum_calls`` with a 75%
    failure rate over the window, above the 50% threshold: the circuit opens."""
    breaker = CircuitBreaker("rate", _RATE, clock=clock)

    call = _failing_when_asked(breaker)
    for _ in range(3):
        with pytest.raises(ServerError):
            call(True)
    assert breaker.state is CircuitState.CLOSED  # three calls: fewer than minimum_calls
    assert call(False) == "ok"
    assert breaker.state is CircuitState.OPEN
    with pytest.raises(CircuitOpenError, match="failure rate 75%"):
        call(False)


def test_a_success_under_the_rate_threshold_keeps_the_circuit_closed(clock: FakeClock) -> None:
    """A failure, then successes: 25% over four calls stays under the threshold."""
    breaker = CircuitBreaker("rate-low", _RATE, clock=clock)

    call = _failing_when_asked(breaker)
    with pytest.raises(ServerError):
        call(True)
    for _ in range(5):
        assert call(False) == "ok"
    assert breaker.state is CircuitState.CLOSED


@pytest.mark.parametrize("where", ["core", "memory", "redis"])
def test_a_success_that_reaches_minimum_calls_opens_in_every_store(
    where: str, clock: FakeClock, request: pytest.FixtureRequest
) -> None:
    """The Lua decides as the core does: F, F, F then S opens the circuit (75% of 4 calls)."""
    store: Any = None
    if where == "memory":
        store = MemoryStateStore(clock=clock)
    elif where == "redis":
        client = request.getfixturevalue("redis_client")
        store = RedisStateStore(client, prefix="conformance", clock=clock)
    breaker = CircuitBreaker(f"rate-{where}", _RATE, clock=clock, store=store)
    for outcome in (Outcome.FAILURE, Outcome.FAILURE, Outcome.FAILURE):
        breaker.record(breaker.admit(), outcome)
    assert breaker.state is CircuitState.CLOSED
    breaker.record_success(breaker.admit())
    assert breaker.state is CircuitState.OPEN


# -- section 5: errors --------------------------------------------------------------------


def test_rate_limit_and_server_errors_default_their_status() -> None:
    """``RateLimitError`` is the 429 and ``ServerError`` a 5xx: made without a status, they say
    so (a test double needs only the headers)."""
    limited = RateLimitError(headers={"Retry-After": "2"})
    assert limited.status_code == 429
    assert limited.retry_after == 2.0
    assert ServerError().status_code == 500
    assert pickle.loads(pickle.dumps(limited)).status_code == 429


def test_a_status_given_as_a_string_of_digits_is_the_number() -> None:
    """``HTTPStatusError("503")`` is a 503 (what the breaker and the retries read); a status
    that is no number is a ``ValueError`` naming it."""
    error = HTTPStatusError("503")  # type: ignore[arg-type]
    assert error.status_code == 503
    assert type(error.status_code) is int
    assert HTTPStatusError(HTTPStatus.BAD_GATEWAY).status_code == 502
    assert HTTPStatusError(429.0).status_code == 429  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="status_code"):
        HTTPStatusError(True)
    with pytest.raises(ValueError, match="status_code"):
        HTTPStatusError("teapot")  # type: ignore[arg-type]


def test_an_sdk_error_whose_status_is_a_string_is_classified_by_it() -> None:
    """Duck typing reads ``status_code="400"`` as 400: the caller's fault, ignored by the
    breaker; ``"503"`` as a failure that ``with_retry`` retries."""
    registry = BreakerRegistry()

    class SdkError(Exception):
        def __init__(self, status: str) -> None:
            super().__init__(status)
            self.status_code = status

    @circuit_breaker("strings", registry=registry, failure_threshold=1)
    def bad_request() -> None:
        raise SdkError("400")

    with pytest.raises(SdkError):
        bad_request()
    assert registry.get("strings").state is CircuitState.CLOSED

    calls = []

    @with_retry(jitter=False, sleep=_no_sleep)
    def overloaded() -> str:
        calls.append(1)
        if len(calls) < 2:
            raise SdkError("503")
        return "ok"

    assert overloaded() == "ok"


@pytest.mark.parametrize(
    "headers",
    [
        {"retry-after": b"3"},
        {b"Retry-After": b"3"},
        [("Retry-After", "3")],
        [(b"retry-after", b"3")],
    ],
    ids=["bytes-value", "bytes-name", "pairs", "byte-pairs"],
)
def test_retry_hints_are_read_from_bytes_and_pairs_of_headers(headers: Any) -> None:
    """Header names match whatever holds them: raw ``bytes`` names and values (as an HTTP
    library's raw headers are) and a list of pairs."""
    assert RateLimitError(429, headers).retry_after == 3.0


def _exhausted() -> FallbacksExhaustedError:
    return FallbacksExhaustedError(
        [ServerError(503), ValueError(f"Authorization: Bearer {SECRET}")]
    )


def test_fallbacks_exhausted_error_pickles_and_copies() -> None:
    """Every error of the hierarchy survives ``pickle`` (a worker process's result) and
    ``copy``: its type, message and the errors it holds."""
    error = _exhausted()
    for clone in (pickle.loads(pickle.dumps(error)), copy.copy(error), copy.deepcopy(error)):
        assert type(clone) is FallbacksExhaustedError
        assert str(clone) == str(error)
        assert [type(e) for e in clone.errors] == [ServerError, ValueError]


def test_fallbacks_exhausted_error_repr_shows_no_credential() -> None:
    """``repr()`` never contains credentials, also those in the errors it holds."""
    error = _exhausted()
    assert SECRET not in repr(error)
    assert SECRET not in str(error)
    assert "FallbacksExhaustedError" in repr(error)


def test_fallbacks_exhausted_error_holds_errors_that_cannot_be_printed() -> None:
    """An error whose ``__str__`` raises does not stop the chain's error being made."""
    error = FallbacksExhaustedError([_Unprintable(), ServerError(500)])
    assert "_Unprintable" in str(error)
    assert "HTTP 500" in str(error)
    assert len(error.errors) == 2


def test_http_status_error_whose_body_cannot_be_printed_still_prints() -> None:
    """``str()`` of a status error never raises, whatever its body holds."""

    class Hostile:
        def __str__(self) -> str:
            raise RuntimeError("no")

    error = ServerError(502, None, {"error": {"message": Hostile()}})
    assert str(error).startswith("HTTP 502")


@pytest.fixture
def many_errors() -> list[BaseException]:
    return [ServerError(503), RateLimitError(429, {"retry-after": "1"})]


@pytest.mark.skipif(sys.version_info < (3, 11), reason="ExceptionGroup is 3.11+")
def test_fallbacks_exhausted_error_is_an_exception_group(
    many_errors: list[BaseException],
) -> None:
    """On 3.11+ the error is an ``ExceptionGroup``; ``derive`` keeps the type (``except*``)."""
    error = FallbacksExhaustedError(many_errors)  # type: ignore[arg-type]
    assert isinstance(error, ExceptionGroup)  # noqa: F821
    rest = error.derive([many_errors[0]])  # type: ignore[list-item]
    assert type(rest) is FallbacksExhaustedError


def test_a_config_mapping_names_only_the_fields_it_must_match() -> None:
    """SPEC §2: naming an existing breaker with no config fields at all reuses it as it is; a
    mapping of fields is checked field by field (as the decorators' fields are)."""
    registry = BreakerRegistry()
    breaker = registry.get_or_create("x", CircuitBreakerConfig(failure_threshold=3))
    assert registry.get_or_create("x", {}) is breaker
    assert registry.get_or_create("x", {"failure_threshold": 3}) is breaker
    with pytest.raises(ValueError, match="failure_threshold"):
        registry.get_or_create("x", {"failure_threshold": 4})
    with pytest.raises(TypeError, match="failure_threshold"):
        registry.get_or_create("y", {"failureThreshold": 4})
    assert registry.get_or_create("z", {"failure_threshold": 7}).config.failure_threshold == 7


def test_a_returned_coroutine_never_awaited_gives_its_permit_back() -> None:
    """A plain function that returns an SDK's coroutine holds its permit until the coroutine
    is awaited; one never awaited (a task cancelled before it ran, a coroutine dropped) gives
    it back once collected: no concurrency slot or probe held for good."""

    async def sdk_create() -> str:
        return "answer"

    registry = BreakerRegistry()

    @circuit_breaker("never-awaited", registry=registry, max_concurrent=1, throttle_max_wait=0)
    def ask() -> Any:
        return sdk_create()

    async def main() -> str:
        task = asyncio.ensure_future(ask())
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        del task
        for _ in range(3):  # the loop lets go of the cancelled task
            await asyncio.sleep(0)
        gc.collect()
        return await ask()  # type: ignore[no-any-return]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the dropped coroutines' own warning
        assert asyncio.run(main()) == "answer"
        dropped = ask()
        del dropped
        gc.collect()
        assert asyncio.run(ask()) == "answer"
    assert registry.get("never-awaited").concurrency["in_flight"] == 0  # type: ignore[index]
