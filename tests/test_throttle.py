"""The throttle: rate limits pace calls instead of tripping the circuit."""

from __future__ import annotations

import asyncio
import datetime
import time
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llm_circuit_breaker import (
    BreakerRegistry,
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitState,
    LLMCircuitBreaker,
    Outcome,
    StateChange,
    ThrottledError,
    ThrottleEvent,
    ThrottleSignal,
    circuit_breaker,
    with_retry,
)
from llm_circuit_breaker._core.headers import parse_duration, parse_rate_limits
from llm_circuit_breaker._core.throttle import ThrottleCore
from llm_circuit_breaker.errors import http_status_error
from llm_circuit_breaker.testing import FakeClock, FakeLLMServer, Reply
from tests.scripted import scripted_call


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1s", 1.0),
        ("6m0s", 360.0),
        ("500ms", 0.5),
        ("20ms", 0.02),
        ("12ms", 0.012),
        ("2m59.56s", 179.56),
        ("1h2m3s", 3723.0),
        ("7.66s", 7.66),
        ("0", 0.0),
        ("17", 17.0),
        ("abc", None),
        ("1x", None),
        ("s", None),
        ("", None),
    ],
)
def test_reset_durations(text: str, seconds: float | None) -> None:
    """Every reset format providers send parses (ms before m), garbage does not."""
    parsed = parse_duration(text)
    assert parsed == pytest.approx(seconds) if seconds is not None else parsed is None


def test_openai_and_anthropic_headers() -> None:
    """Both header families give the same shape; Azure's -1 means unknown."""
    now = time.time()
    openai = parse_rate_limits(
        {
            "x-ratelimit-limit-requests": "60",
            "x-ratelimit-remaining-requests": "0",
            "x-ratelimit-reset-requests": "6m0s",
            "x-ratelimit-remaining-tokens": "-1",
            "x-ratelimit-reset-tokens": "12ms",
        },
        now,
    )
    assert openai is not None and openai.requests is not None and openai.tokens is not None
    assert (openai.requests.limit, openai.requests.remaining, openai.requests.reset) == (
        60,
        0,
        360.0,
    )
    assert openai.tokens.remaining is None and openai.tokens.reset == pytest.approx(0.012)
    stamp = datetime.datetime.fromtimestamp(now + 4, datetime.timezone.utc).isoformat()
    anthropic = parse_rate_limits(
        {
            "anthropic-ratelimit-requests-limit": "50",
            "anthropic-ratelimit-requests-remaining": "0",
            "anthropic-ratelimit-requests-reset": stamp.replace("+00:00", "Z"),
        },
        now,
    )
    assert anthropic is not None and anthropic.requests is not None
    assert anthropic.requests.reset == pytest.approx(4.0, abs=0.01)
    assert parse_rate_limits({"content-type": "json"}, now) is None


def _paced(clock: FakeClock, **fields: object) -> CircuitBreaker:
    return CircuitBreaker("paced", CircuitBreakerConfig(**fields), clock=clock)  # type: ignore[arg-type]


def test_configured_rate_bursts_then_spaces_calls(clock: FakeClock) -> None:
    """requests_per_minute=6: six calls at once, then one every 10 s, each caller in line."""
    breaker = _paced(clock, requests_per_minute=6, throttle_max_wait=60.0)
    for _ in range(6):
        breaker.record_success(breaker.admit())
    assert clock.sleeps == []
    for _ in range(3):
        breaker.record_success(breaker.admit())
    assert clock.sleeps == [10.0, 10.0, 10.0]


def test_a_slot_too_far_away_is_refused_at_once(clock: FakeClock) -> None:
    """Past throttle_max_wait the caller gets ThrottledError(retry_after) without calling."""
    breaker = _paced(clock, requests_per_minute=6, throttle_max_wait=5.0)
    calls = 0

    @circuit_breaker(breaker=breaker)
    def call() -> None:
        nonlocal calls
        calls += 1

    for _ in range(6):
        call()
    with pytest.raises(ThrottledError) as caught:
        call()
    assert calls == 6 and caught.value.retry_after == pytest.approx(10.0)
    assert breaker.state is CircuitState.CLOSED and clock.sleeps == []


def test_waiting_callers_get_successive_slots_and_a_cancelled_one_frees_its_own(
    clock: FakeClock,
) -> None:
    """FIFO: each reservation is the next free slot; giving one up returns it."""
    throttle = ThrottleCore(CircuitBreakerConfig(requests_per_minute=60))
    now = clock()
    throttle.requests.tat = now + 60.0  # the bucket is empty: one slot per second
    slots = [throttle.reserve(now) - now for _ in range(3)]
    assert slots == pytest.approx([1.0, 2.0, 3.0])
    throttle.cancel()
    assert throttle.reserve(now) - now == pytest.approx(3.0)


class _PausedMeanwhile(FakeClock):
    """A clock whose first sleep lets another call draw a 429 (retry-after 30 s) first."""

    def __init__(self) -> None:
        super().__init__(start=1000.0)
        self.meanwhile: Callable[[], None] | None = None

    def sleep(self, seconds: float) -> None:
        if self.meanwhile is not None:
            self.meanwhile, meanwhile = None, self.meanwhile
            meanwhile()
        super().sleep(seconds)


def _paused_while_one_waits(throttle_max_wait: float) -> tuple[FakeClock, CircuitBreaker]:
    """Six requests a minute, the bucket spent (one call still in flight): the next caller
    waits 10 s for its slot, and while it sleeps the call in flight draws a 429 (30 s)."""
    clock = _PausedMeanwhile()
    breaker = _paced(clock, requests_per_minute=6, throttle_max_wait=throttle_max_wait)
    for _ in range(5):
        breaker.record_success(breaker.admit())
    in_flight = breaker.admit()
    clock.meanwhile = lambda: breaker.record(in_flight, Outcome.THROTTLED, hint=30.0)
    return clock, breaker


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
async def test_a_pause_set_while_a_caller_waits_holds_it_back(asynchronous: bool) -> None:
    """A caller asleep until its slot (10 s away) when another call draws a 429 asking for
    30 s: it does not go at its slot but after the pause, in a new slot."""
    clock, breaker = _paused_while_one_waits(throttle_max_wait=60.0)
    started = clock()
    permit = await breaker.aadmit() if asynchronous else breaker.admit()
    assert clock() - started >= 30.0  # not at its slot, 10 s away
    assert clock.sleeps[0] == pytest.approx(10.0) and len(clock.sleeps) == 2
    breaker.record_success(permit)
    assert breaker.throttle["waiting"] == 0 and breaker.stats.throttled == 1
    assert breaker.state is CircuitState.CLOSED


def test_a_pause_past_throttle_max_wait_refuses_the_waiting_caller() -> None:
    """The same, with throttle_max_wait=20: the woken caller gets ThrottledError, no call."""
    _, breaker = _paused_while_one_waits(throttle_max_wait=20.0)
    with pytest.raises(ThrottledError) as caught:
        breaker.admit()
    assert 19.0 <= caught.value.retry_after <= 22.0  # what is left of the pause
    assert breaker.throttle["waiting"] == 0 and breaker.stats.rejections == 0


async def test_cancelling_a_waiting_task_frees_its_slot() -> None:
    """A task cancelled while it waits for its slot gives the slot back."""
    breaker = CircuitBreaker("cancel", CircuitBreakerConfig(requests_per_minute=60))
    for _ in range(60):
        breaker.record_success(await breaker.aadmit())
    waiting = asyncio.create_task(breaker.aadmit())
    await asyncio.sleep(0.01)
    assert breaker.throttle["waiting"] == 1
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert breaker.throttle["waiting"] == 0
    assert breaker.throttle["requests_remaining"] == 0


def test_a_rate_limit_pauses_instead_of_failing(clock: FakeClock) -> None:
    """A 429 with retry-after: no breaker failure, and the next call waits the hint plus a small
    positive jitter (never earlier than asked)."""
    breaker = _paced(clock, failure_threshold=1)
    limited = http_status_error(
        429, {"retry-after": "2"}, {"error": {"code": "rate_limit_exceeded"}}
    )
    outcomes = [limited, None]

    call = scripted_call(outcomes, breaker=breaker)

    with pytest.raises(Exception, match="429"):
        call()
    assert breaker.state is CircuitState.CLOSED and breaker.failure_count == 0
    assert call() == "ok"
    (waited,) = clock.sleeps
    assert 2.0 <= waited <= 2.2
    assert breaker.stats.throttled == 1


def test_without_a_hint_the_pause_doubles_and_shrinks(clock: FakeClock) -> None:
    """AIMD: consecutive 429s without a hint pause 1, 2, 4 s; successes halve it."""
    throttle = ThrottleCore(CircuitBreakerConfig())
    assert [throttle.rate_limited(0.0, None) for _ in range(3)] == [1.0, 2.0, 4.0]
    throttle.succeeded(100.0)
    assert throttle.backoff == 2.0
    throttle.succeeded(100.0)
    throttle.succeeded(100.0)
    assert throttle.backoff == 0.0 and not throttle.active


def test_headers_pace_calls(clock: FakeClock) -> None:
    """remaining 0 of 60 per minute, refilled in 6m0s: the next call waits one refill."""
    breaker = _paced(clock)
    breaker.observe(
        {
            "x-ratelimit-limit-requests": "60",
            "x-ratelimit-remaining-requests": "0",
            "x-ratelimit-reset-requests": "6m0s",
        }
    )
    view = breaker.throttle
    assert view["requests_remaining"] == 0 and view["reset_in"] == pytest.approx(360.0)
    breaker.record_success(breaker.admit())
    assert clock.sleeps == [pytest.approx(6.0)]


@settings(max_examples=200, deadline=None)
@given(
    per_minute=st.integers(min_value=1, max_value=600),
    gaps=st.lists(st.floats(min_value=0.0, max_value=5.0), min_size=1, max_size=200),
)
def test_the_paced_calls_never_exceed_the_bucket(per_minute: int, gaps: list[float]) -> None:
    """Whatever the arrivals, the slots handed out fit a bucket of `per_minute` refilled at
    per_minute/60 per second: in any span of s seconds at most capacity + s * rate calls."""
    throttle = ThrottleCore(CircuitBreakerConfig(requests_per_minute=per_minute))
    now, slots = 0.0, []
    for gap in gaps:
        now += gap
        slots.append(throttle.reserve(now))
    rate = per_minute / 60.0
    assert slots == sorted(slots)
    for first in range(len(slots)):
        for last in range(first, len(slots)):
            span = slots[last] - slots[first]
            assert last - first + 1 <= per_minute + span * rate + 1e-6


def test_with_retry_waits_a_throttled_call_without_spending_retries(clock: FakeClock) -> None:
    """ThrottledError is retried like a 429 with its retry_after; it uses no retry."""
    breaker = _paced(clock, requests_per_minute=6, throttle_max_wait=0.0)
    calls = 0

    @with_retry(max_retries=1, max_delay=60.0, jitter=False, sleep=clock.sleep, clock=clock)
    @circuit_breaker(breaker=breaker)
    def call() -> None:
        nonlocal calls
        calls += 1

    for _ in range(8):
        call()
    assert calls == 8
    assert clock.sleeps == pytest.approx([10.0, 10.0])


def test_the_http_helpers_feed_every_response(llm_server: FakeLLMServer) -> None:
    """A success's rate-limit headers reach the throttle through the HTTP helpers."""
    llm_server.default = Reply.ok(
        headers={
            "x-ratelimit-limit-requests": "100",
            "x-ratelimit-remaining-requests": "42",
            "x-ratelimit-reset-requests": "34.8s",
        }
    )
    cb = LLMCircuitBreaker(registry=BreakerRegistry(clock=FakeClock()))
    cb.call(llm_server.url, data={})
    assert cb.breaker.throttle["requests_remaining"] == 42
    cb.close()


def test_throttle_off_restores_failures(clock: FakeClock) -> None:
    """throttle=False: a 429 is a failure again and nothing is paced."""
    breaker = _paced(clock, throttle=False, failure_threshold=1)

    @circuit_breaker(breaker=breaker)
    def call() -> None:
        raise http_status_error(429)

    with pytest.raises(Exception, match="429"):
        call()
    assert breaker.state is CircuitState.OPEN


def test_token_costs_come_from_the_request_body(llm_server: FakeLLMServer) -> None:
    """tokens_per_minute paces by each body's estimate: max_tokens + the prompt's length / 4."""
    from llm_circuit_breaker._core.throttle import estimate_tokens

    body = {"max_tokens": 500, "messages": [{"role": "user", "content": "x" * 380}]}
    assert estimate_tokens(body) == pytest.approx(
        500 + len('[{"role": "user", "content": "' + "x" * 380 + '"}]') / 4
    )
    assert estimate_tokens("not a body") == 0.0
    clock = FakeClock()
    cb = LLMCircuitBreaker(
        circuit_breaker={"tokens_per_minute": 1250, "throttle_max_wait": 10.0},
        retry={"max_retries": 0, "max_delay": 5.0},  # a wait past max_delay is not retried
        registry=BreakerRegistry(clock=clock),
    )
    cost = estimate_tokens(body)  # about 600
    cb.call(llm_server.url, data=body)  # of 1250 tokens: at once
    cb.call(llm_server.url, data=body)  # what is left
    assert clock.sleeps == []
    with pytest.raises(ThrottledError) as caught:
        cb.call(llm_server.url, data=body)  # refilled at 1250/60 per second: past the wait
    expected = (cost - (1250 - 2 * cost)) / (1250 / 60)
    assert caught.value.retry_after == pytest.approx(expected, rel=0.01)
    assert llm_server.hits == 2
    cb.close()


def test_listeners_hear_throttled_and_unthrottled_not_a_state_change(clock: FakeClock) -> None:
    """A rate limit announces THROTTLED (with the pause), the first success after the pause
    UNTHROTTLED; the circuit never changes state, and a second 429 within the pause is quiet."""
    breaker = _paced(clock)
    heard: list[object] = []
    breaker.add_listener(heard.append)
    limited = http_status_error(429, {"retry-after": "2"}, {"error": {"code": "rate_limit"}})
    for _ in range(2):
        breaker.record(breaker.admit(), Outcome.THROTTLED, hint=2.0, error=limited)
    assert breaker.state is CircuitState.CLOSED
    (paused,) = heard
    assert isinstance(paused, ThrottleEvent) and paused.event is ThrottleSignal.THROTTLED
    assert (paused.old, paused.new) == ("UNTHROTTLED", "THROTTLED")
    assert 2.0 <= paused.paused_for <= 2.2 and "429" in paused.reason
    breaker.record_success(breaker.admit())  # waits out the pause first
    assert [e.new for e in heard if isinstance(e, ThrottleEvent)] == [
        ThrottleSignal.THROTTLED,
        ThrottleSignal.UNTHROTTLED,
    ]
    assert not [e for e in heard if isinstance(e, StateChange)]
    assert breaker.wait_histogram.counts[-1] == 0 and sum(breaker.wait_histogram.counts) >= 2


def _stream_client() -> LLMCircuitBreaker:
    return LLMCircuitBreaker(
        circuit_breaker={"tokens_per_minute": 1250, "throttle_max_wait": 10.0},
        retry={"max_retries": 0, "max_delay": 5.0},
        registry=BreakerRegistry(clock=FakeClock()),
    )


_STREAM_BODY = {"max_tokens": 500, "messages": [{"role": "user", "content": "x" * 380}]}


def test_streams_reserve_their_token_cost(llm_server: FakeLLMServer) -> None:
    """stream admits with the body's token estimate: the third stream of ~600 tokens under
    1250 per minute is refused before anything is sent."""
    llm_server.script(*[Reply.openai_stream(["a", "b"]) for _ in range(3)])
    with _stream_client() as cb:
        for _ in range(2):
            assert len(list(cb.stream(llm_server.url, data=_STREAM_BODY))) >= 2
        with pytest.raises(ThrottledError):
            list(cb.stream(llm_server.url, data=_STREAM_BODY))
    assert llm_server.hits == 2


async def test_async_streams_reserve_their_token_cost(llm_server: FakeLLMServer) -> None:
    """astream does the same with aiohttp."""
    llm_server.script(*[Reply.openai_stream(["a", "b"]) for _ in range(3)])
    async with _stream_client() as cb:
        for _ in range(2):
            events = [e async for e in cb.astream(llm_server.url, data=_STREAM_BODY)]
            assert len(events) >= 2
        with pytest.raises(ThrottledError):
            [e async for e in cb.astream(llm_server.url, data=_STREAM_BODY)]
    assert llm_server.hits == 2


def test_decorators_read_the_rate_limit_headers_of_a_429(clock: FakeClock) -> None:
    """A decorated call that gets a 429 feeds its x-ratelimit headers to the throttle: the
    bucket is known (empty, 60 per minute) and the next call waits for its refill."""
    breaker = _paced(clock, throttle_max_wait=60.0)
    headers = {
        "retry-after-ms": "500",
        "x-ratelimit-limit-requests": "60",
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "60s",
    }
    outcomes: list[BaseException | None] = [
        http_status_error(429, headers, {"error": {"code": "rate_limit_exceeded"}}),
        None,
        None,
    ]

    call = scripted_call(outcomes, breaker=breaker)

    with pytest.raises(Exception, match="429"):
        call()
    assert breaker.throttle["requests_remaining"] == 0
    assert call() == "ok" and call() == "ok"
    assert len(clock.sleeps) == 2 and all(0.5 <= s <= 1.05 for s in clock.sleeps)
