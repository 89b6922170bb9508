"""SPEC section 9: the throttle's level is the provider's ``remaining`` minus the calls in flight.

A response reports what the provider had counted when it took the call, not the calls this
client admitted after it and not answered yet (in flight, or on their way). Each booked call
carries its admission to the headers it brings back; those read by hand, or those of a call
admitted before any pacing, are taken as they come.
"""

from __future__ import annotations

import contextvars
import heapq
import itertools
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llm_circuit_breaker import (
    BreakerRegistry,
    CircuitBreaker,
    CircuitBreakerConfig,
    LLMCircuitBreaker,
    Outcome,
    circuit_breaker,
)
from llm_circuit_breaker._core.headers import parse_rate_limits
from llm_circuit_breaker._core.throttle import ADMITTED, ThrottleCore, Wait
from llm_circuit_breaker.httpx import AsyncCircuitBreakerTransport, CircuitBreakerTransport
from llm_circuit_breaker.storage import MemoryStateStore
from llm_circuit_breaker.testing import FakeClock, FakeLLMServer, Quota, Reply


def _headers(remaining: int, limit: int = 20, rate: float = 8.0) -> dict[str, str]:
    """A bucket of ``limit`` refilled at ``rate`` per second with ``remaining`` left (its
    reset: the time until full)."""
    return {
        "x-ratelimit-limit-requests": str(limit),
        "x-ratelimit-remaining-requests": str(remaining),
        "x-ratelimit-reset-requests": f"{(limit - remaining) / rate:.3f}s",
    }


def _limits(remaining: int, limit: int = 20, rate: float = 8.0) -> Any:
    return parse_rate_limits(_headers(remaining, limit, rate), 0.0)


def _paced_core() -> ThrottleCore:
    """A throttle that learned 20 requests refilled at 8/s, its bucket full at t=0."""
    throttle = ThrottleCore(CircuitBreakerConfig())
    contextvars.Context().run(throttle.observe, _limits(19), 0.0)  # by hand: 1 used
    throttle.requests.tat = 0.0  # full again
    return throttle


def test_a_response_does_not_forget_the_calls_booked_after_it() -> None:
    """Call A, then 4 more, booked at t=0; A's answer says 8 remain (others spent some). The
    4 booked after A are not in that count: 4 remain, not 8."""
    throttle = _paced_core()
    a = contextvars.Context()
    assert a.run(throttle.book, 0.0, 0.0, 30.0) == 0.0
    for _ in range(4):
        assert contextvars.Context().run(throttle.book, 0.0, 0.0, 30.0) == 0.0
    a.run(throttle.observe, _limits(8), 0.0)
    assert throttle.view(0.0)["requests_remaining"] == 4
    # what admits calls follows: 4 go at once, the fifth waits one refill
    waits = [contextvars.Context().run(throttle.book, 0.0, 0.0, 30.0) for _ in range(5)]
    assert waits == pytest.approx([0.0, 0.0, 0.0, 0.0, 0.125])


def test_the_answered_call_itself_is_not_subtracted_twice() -> None:
    """Nothing booked after A: A's answer is the level, as reported (A counted once)."""
    throttle = _paced_core()
    a = contextvars.Context()
    a.run(throttle.book, 0.0, 0.0, 30.0)
    a.run(throttle.observe, _limits(8), 0.0)
    assert throttle.view(0.0)["requests_remaining"] == 8


def test_the_count_is_as_of_the_slot_what_refilled_since_counts() -> None:
    """A booked at t=0 answers at t=0.5 (4 units refilled since the provider counted it):
    remaining 8 at t=0, 2 booked after A, refilled 4 -> 10 now."""
    throttle = _paced_core()
    a = contextvars.Context()
    a.run(throttle.book, 0.0, 0.0, 30.0)
    for _ in range(2):
        contextvars.Context().run(throttle.book, 0.0, 0.0, 30.0)
    a.run(throttle.observe, _limits(8), 0.5)
    assert throttle.view(0.5)["requests_remaining"] == 10


def test_headers_fed_by_hand_or_after_the_report_are_taken_as_they_come() -> None:
    """Outside any booked call (by hand, another breaker's call, a call that reported) the
    headers say the level now: nothing is known of what they counted."""
    throttle = _paced_core()
    other = _paced_core()
    a = contextvars.Context()
    a.run(throttle.book, 0.0, 0.0, 30.0)
    for _ in range(4):
        contextvars.Context().run(throttle.book, 0.0, 0.0, 30.0)
    contextvars.Context().run(throttle.observe, _limits(8), 0.0)  # by hand
    assert throttle.view(0.0)["requests_remaining"] == 8
    a.run(other.observe, _limits(8), 0.0)  # A's context, another throttle
    a.run(throttle.report, 0.0, False, True, None)  # A reported: its admission ends
    a.run(throttle.observe, _limits(8), 0.0)
    assert throttle.view(0.0)["requests_remaining"] == 8


def test_a_call_booked_after_that_reported_first_is_not_in_flight() -> None:
    """A, then B and C booked at t=0; C is answered and reports before A's answer comes: it
    was most likely counted first (and its headers are in the model already). A's answer
    says 8 remain: 7 (B still in flight)."""
    throttle = _paced_core()
    a, c = contextvars.Context(), contextvars.Context()
    a.run(throttle.book, 0.0, 0.0, 30.0)
    contextvars.Context().run(throttle.book, 0.0, 0.0, 30.0)
    c.run(throttle.book, 0.0, 0.0, 30.0)
    c.run(throttle.report, 0.0, False, True, None)
    a.run(throttle.observe, _limits(8), 0.0)
    assert throttle.view(0.0)["requests_remaining"] == 7


def test_calls_never_reported_are_forgotten_past_a_bound() -> None:
    """Calls whose report never comes back to their context (a stream read elsewhere) are
    not remembered for ever."""
    throttle = _paced_core()
    throttle.requests.configure(1e9, 1e9)
    for _ in range(5000):
        contextvars.Context().run(throttle.book, 0.0, 0.0, 30.0)
    assert len(throttle.flying) <= 4096


def test_a_slot_given_back_is_not_counted_in_flight() -> None:
    """A booked, then B who gives its slot up: A's answer counts nothing after it."""
    throttle = _paced_core()
    a, b = contextvars.Context(), contextvars.Context()
    a.run(throttle.book, 0.0, 0.0, 30.0)
    b.run(throttle.book, 0.0, 0.0, 30.0)
    b.run(throttle.cancel, 0.0)
    a.run(throttle.observe, _limits(8), 0.0)
    assert throttle.view(0.0)["requests_remaining"] == 8


def test_tokens_booked_after_a_call_are_subtracted_too() -> None:
    """tokens: 1024, 128/s. A books 128, then 256 more are booked; A's answer says 512
    remain: 256 now."""
    throttle = ThrottleCore(CircuitBreakerConfig(tokens_per_minute=128 * 60))
    throttle.tokens.configure(128.0, 1024.0)
    a = contextvars.Context()
    a.run(throttle.book, 0.0, 128.0, 30.0)
    contextvars.Context().run(throttle.book, 0.0, 256.0, 30.0)
    headers = {
        "x-ratelimit-limit-tokens": "1024",
        "x-ratelimit-remaining-tokens": "512",
        "x-ratelimit-reset-tokens": "4s",  # 128/s
    }
    limits = parse_rate_limits(headers, 0.0)
    assert limits is not None
    a.run(throttle.observe, limits, 0.0)
    assert throttle.view(0.0)["tokens_remaining"] == 256


@settings(max_examples=200, deadline=None)
@given(
    booked_before=st.integers(min_value=0, max_value=10),
    booked_after=st.integers(min_value=0, max_value=10),
    others=st.integers(min_value=0, max_value=10),
)
def test_the_level_is_what_the_provider_left_minus_what_was_booked_after(
    booked_before: int, booked_after: int, others: int
) -> None:
    """Whatever was booked before and after call A (none reported yet), and whatever others
    spent unseen, A's answer (taken when A was counted) leaves exactly: remaining - booked
    after A (all at once, no refill), never more than the throttle's own count."""
    throttle = _paced_core()
    book: Callable[[], float] = lambda: throttle.book(0.0, 0.0, 1e9)  # noqa: E731
    for _ in range(booked_before):
        contextvars.Context().run(book)
    a = contextvars.Context()
    a.run(book)
    for _ in range(booked_after):
        contextvars.Context().run(book)
    remaining = max(0, 20 - booked_before - 1 - others)  # what the provider had left for A
    a.run(throttle.observe, _limits(remaining), 0.0)
    level = throttle.view(0.0)["requests_remaining"]
    ours = 20 - booked_before - 1 - booked_after  # what the throttle booked, unaided
    assert level == max(0, min(remaining - booked_after, ours))


# -- a provider of 20 requests per 2 s, 8 callers, 50 ms per call, in simulated time -------


class _SimClock(FakeClock):
    """The simulation moves time; a caller's wait was already waited when it is asked."""

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)


def _simulate(breaker: CircuitBreaker, clock: _SimClock, quota: Quota, calls: int) -> int:
    """8 callers (each its own context, as threads are), calling back to back; every call
    takes 50 ms, counted by the provider as it is sent. The 429s the provider drew."""
    events: list[tuple[float, int, Callable[[], None]]] = []
    order = itertools.count()
    sent = 0

    def at(when: float, action: Callable[[], None]) -> None:
        heapq.heappush(events, (when, next(order), action))

    def caller(context: contextvars.Context) -> Callable[[], None]:
        def admit() -> None:
            nonlocal sent
            if sent >= calls:
                return
            sent += 1
            entry = context.run(breaker.enter)
            if isinstance(entry, Wait):  # a slot to wait for
                wait = entry
                at(clock() + wait.seconds, lambda: send(context.run(breaker.wait, wait)))
            else:
                assert isinstance(entry, int)
                send(entry)

        def send(permit: int) -> None:
            reply = quota.reply()
            at(clock() + 0.05, lambda: answer(permit, reply))

        def answer(permit: int, reply: Reply) -> None:
            context.run(breaker.observe, reply.headers)
            outcome = Outcome.SUCCESS if reply.status == 200 else Outcome.THROTTLED
            context.run(breaker.record, permit, outcome)
            admit()

        return admit

    for _ in range(8):
        at(clock(), caller(contextvars.Context()))
    while events:
        when, _, action = heapq.heappop(events)
        clock.advance(max(0.0, when - clock()))
        action()
    return quota.refused


@pytest.mark.parametrize("store", [False, True], ids=["local", "memory store"])
def test_eight_callers_against_a_small_quota_draw_no_429(store: bool) -> None:
    """80 calls, 8 at a time, against 20 requests per 2 s: the headers of each answer read
    against the calls booked after it, the throttle never sends more than the bucket holds
    (the 8 calls sent before any pacing included)."""
    clock = _SimClock(100.0)
    quota = Quota(20, 2.0, clock=clock)
    kwargs: dict[str, Any] = {"store": MemoryStateStore(clock=clock)} if store else {}
    breaker = CircuitBreaker("sim", CircuitBreakerConfig(), clock=clock, **kwargs)
    assert _simulate(breaker, clock, quota, 80) == 0
    assert quota.granted == 80


# -- through the HTTP helpers, the httpx transport and a decorator ------------------------


@pytest.fixture
def provider() -> Iterator[tuple[FakeLLMServer, list[Callable[[], None]]]]:
    """A server whose second answer is taken while 3 more calls are booked (by other
    callers) and says 10 of 20 remain; the first says 19 (8/s)."""
    during: list[Callable[[], None]] = []

    def reply(number: int) -> Reply:
        if number == 0:
            return Reply.ok("ok", headers=_headers(19))
        for book in during:
            book()
        return Reply.ok("ok", headers=_headers(10))

    with FakeLLMServer(responder=reply) as server:
        yield server, during


def _others_book(breaker: CircuitBreaker, count: int, at_once: bool = True) -> Callable[[], None]:
    """Other callers booking ``count`` calls (admitted at once, unless told they may wait)."""

    def book() -> None:
        for _ in range(count):
            entry = contextvars.Context().run(breaker.enter)
            assert isinstance(entry, int) or (not at_once and isinstance(entry, Wait))

    return book


@pytest.mark.parametrize("asynchronous", [False, True], ids=["call", "acall"])
async def test_the_http_helpers_carry_the_admission_to_the_headers(
    provider: tuple[FakeLLMServer, list[Callable[[], None]]], asynchronous: bool
) -> None:
    server, during = provider
    cb = LLMCircuitBreaker(registry=BreakerRegistry(clock=FakeClock()))
    url = server.url + "/v1/chat/completions"
    if asynchronous:
        await cb.acall(url, data={})
    else:
        cb.call(url, data={})
    during.append(_others_book(cb.breaker, 3))
    if asynchronous:
        await cb.acall(url, data={})
        await cb.aclose()
    else:
        cb.call(url, data={})
        cb.close()
    assert cb.breaker.throttle["requests_remaining"] == 7  # 10 reported, 3 booked after


@pytest.mark.parametrize("asynchronous", [False, True], ids=["Client", "AsyncClient"])
async def test_the_httpx_transport_carries_the_admission_to_the_headers(
    provider: tuple[FakeLLMServer, list[Callable[[], None]]], asynchronous: bool
) -> None:
    server, during = provider
    breaker = CircuitBreaker("transport", CircuitBreakerConfig(), clock=FakeClock())
    url = server.url + "/v1/chat/completions"
    if asynchronous:
        transport: Any = AsyncCircuitBreakerTransport(breaker)
        async with httpx.AsyncClient(transport=transport) as aclient:
            (await aclient.post(url, json={})).raise_for_status()
            during.append(_others_book(breaker, 3))
            (await aclient.post(url, json={})).raise_for_status()
    else:
        transport = CircuitBreakerTransport(breaker)
        with httpx.Client(transport=transport) as client:
            client.post(url, json={}).raise_for_status()
            during.append(_others_book(breaker, 3))
            client.post(url, json={}).raise_for_status()
    assert breaker.throttle["requests_remaining"] == 7


def test_headers_observed_by_hand_inside_a_decorated_call_count_it_in_flight(
    provider: tuple[FakeLLMServer, list[Callable[[], None]]],
) -> None:
    """``breaker.observe`` inside the guarded call (an SDK's raw response) is that call's;
    after it, outside any call, the same headers say the level as reported."""
    server, during = provider
    breaker = CircuitBreaker("by-hand", CircuitBreakerConfig(), clock=FakeClock())
    url = server.url + "/v1/chat/completions"

    @circuit_breaker(breaker=breaker)
    def call() -> httpx.Response:
        response = httpx.post(url, json={})
        breaker.observe(response.headers)
        return response

    call()
    during.append(_others_book(breaker, 3))
    response = call()
    assert breaker.throttle["requests_remaining"] == 7
    breaker.reset()
    breaker.observe(_headers(19))
    breaker.observe(response.headers)  # by hand, outside any call: 10 as reported
    assert breaker.throttle["requests_remaining"] == 10


@pytest.mark.parametrize(
    "outcome", [Outcome.SUCCESS, Outcome.FAILURE, Outcome.IGNORED, Outcome.THROTTLED]
)
@pytest.mark.parametrize("reset", [False, True], ids=["kept", "reset"])
def test_the_admission_ends_with_the_call_whatever_its_outcome(
    outcome: Outcome, reset: bool
) -> None:
    """A call that reports leaves no admission behind (nor does a reset make one count
    against a new bucket): headers read afterwards in its context are taken as they come."""
    breaker = CircuitBreaker("ends", CircuitBreakerConfig(), clock=FakeClock())
    breaker.observe(_headers(19, rate=1.0))  # 1/s: nothing refills meanwhile

    def caller() -> None:
        permit = breaker.admit()
        contextvars.Context().run(_others_book(breaker, 2))
        breaker.record(permit, outcome)  # a rate limit pauses: the others wait
        if reset:
            breaker.reset()
            breaker.observe(_headers(19, rate=1.0))
        contextvars.Context().run(_others_book(breaker, 2, at_once=False))
        breaker.observe(_headers(8, rate=1.0))

    contextvars.Context().run(caller)
    assert breaker.throttle["requests_remaining"] == 8


def _by_hand(remaining: int, limit: int = 20) -> dict[str, str]:
    """Headers with a refill of 1 a second: ``limit - remaining`` seconds to full."""
    return {
        "x-ratelimit-limit-requests": str(limit),
        "x-ratelimit-remaining-requests": str(remaining),
        "x-ratelimit-reset-requests": f"{limit - remaining}s",
    }


def test_calls_that_report_on_the_fast_path_leave_nothing_in_flight() -> None:
    """A 429 without headers paces calls for a while; the first success ends that, and the
    calls still in flight report on the lock-free path, not to the throttle. None stays
    counted in flight, and a later call in one of their contexts reads its own headers as
    they come (it read them against a stale admission, less 19 calls long gone: 7 for 19)."""
    clock = FakeClock()
    breaker = CircuitBreaker("fast-path", clock=clock)
    for _ in range(3):
        breaker.record_success(breaker.admit())  # the success counter is made
    breaker.record(breaker.admit(), Outcome.THROTTLED, hint=1.0)  # paced, provisionally
    clock.advance(5.0)
    contexts = [contextvars.Context() for _ in range(20)]
    permits = [context.run(breaker.admit) for context in contexts]
    clock.advance(5.0)
    for context, permit in zip(contexts, permits, strict=True):
        context.run(breaker.record_success, permit)
    assert breaker._local.throttle is not None and breaker._local.throttle.flying == {}

    @circuit_breaker(breaker=breaker)
    def call() -> None:
        breaker.observe(_by_hand(19))

    contexts[1].run(call)
    assert breaker.throttle["requests_remaining"] == 19


def test_a_stream_collected_inside_another_call_does_not_end_its_admission() -> None:
    """A guarded stream collected unclosed while another call of the breaker runs: its report
    (from the finaliser) is no report of that call, whose headers still count the four calls
    booked after it as in flight."""
    breaker = CircuitBreaker("dropped", clock=FakeClock())
    breaker.observe(_by_hand(19))
    inside = contextvars.Context()
    dropped = contextvars.Context().run(breaker.admit)  # the stream's call
    inside.run(breaker.admit)  # the call running when the collector runs
    for _ in range(4):
        contextvars.Context().run(breaker.admit)
    inside.run(breaker.dropped, dropped)
    inside.run(breaker.observe, _by_hand(8))
    assert breaker.throttle["requests_remaining"] == 4  # 8 as of its slot, less 4 in flight


def test_admissions_of_calls_that_report_elsewhere_do_not_pile_up() -> None:
    """A context alternating two paced breakers whose calls all report in other contexts
    (streams handed to a consumer): the admissions it keeps stay few (one more per call
    before: 2,000 after 2,000 calls, each holding both throttles)."""
    breakers = [CircuitBreaker(f"pile-{i}", clock=FakeClock()) for i in range(2)]
    for breaker in breakers:
        breaker.observe(_by_hand(19, limit=10**9))
    worker = contextvars.Context()
    for index in range(2000):
        breaker = breakers[index % 2]
        permit = worker.run(breaker.admit)
        contextvars.Context().run(breaker.record, permit, Outcome.SUCCESS)
    depth, admission = 0, worker.run(ADMITTED.get)
    while admission is not None:
        depth, admission = depth + 1, admission[3]
    assert depth <= 8
