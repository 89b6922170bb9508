"""Budgets (SPEC section 16): retries as a share of first attempts, and a cap on tokens spent."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llm_circuit_breaker import (
    BreakerRegistry,
    BudgetExceededError,
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitState,
    ServerError,
    ThrottledError,
    ThrottleEvent,
    ThrottleSignal,
    circuit_breaker,
    with_fallbacks,
    with_retry,
)
from llm_circuit_breaker._core.budget import WINDOW, RetryBudget, SpendCap, usage_tokens
from llm_circuit_breaker.httpx import CircuitBreakerTransport, refusal
from llm_circuit_breaker.testing import frozen_time

# -- the pure retry budget ------------------------------------------------------------------

_steps = st.lists(
    st.tuples(
        st.floats(min_value=0.0, max_value=3.0, allow_nan=False),
        st.sampled_from(["first", "retry"]),
    ),
    max_size=300,
)


@settings(max_examples=200, deadline=None)
@given(
    steps=_steps,
    ratio=st.floats(min_value=0.0, max_value=1.0),
    floor=st.floats(min_value=0.0, max_value=5.0),
)
def test_retries_in_a_window_never_pass_reserve_plus_share(
    steps: list[tuple[float, str]], ratio: float, floor: float
) -> None:
    """Whenever a retry is paid, the retries of the trailing 9 s (it included) do not exceed
    the floor's reserve plus ``ratio`` of the first attempts of the trailing 10 s."""
    budget = RetryBudget(ratio, floor)
    now, firsts, retries = 0.0, [], []
    for dt, kind in steps:
        now += dt
        if kind == "first":
            budget.deposit(now)
            firsts.append(now)
        elif budget.try_withdraw(now):
            retries.append(now)
            recent = sum(1 for t in retries if t > now - (WINDOW - 1.0))
            paid_for = sum(1 for t in firsts if t > now - WINDOW)
            assert recent <= floor * WINDOW + ratio * paid_for + 1e-9


@settings(max_examples=50, deadline=None)
@given(rate=st.integers(min_value=20, max_value=200), ratio=st.floats(0.05, 0.5))
def test_under_steady_failure_retries_stay_near_the_share(rate: int, ratio: float) -> None:
    """A breaker whose every call wants a retry, at ``rate`` calls/s for 100 s: retries made
    are at most ``ratio`` of the first attempts plus the floor's rate and its reserve."""
    floor = 1.0
    budget = RetryBudget(ratio, floor)
    made = 0
    seconds = 100
    for i in range(rate * seconds):
        now = i / rate
        budget.deposit(now)
        made += budget.try_withdraw(now)
    assert made <= ratio * rate * seconds + floor * seconds + floor * WINDOW + 1
    assert made >= ratio * rate * seconds * 0.9  # and the budget is not stingy either


@settings(max_examples=200, deadline=None)
@given(steps=_steps, ratio=st.floats(0.0, 1.0), floor=st.floats(0.0, 5.0))
def test_a_counter_settled_at_each_step_pays_as_direct_deposits(
    steps: list[tuple[float, str]], ratio: float, floor: float
) -> None:
    """First attempts counted by a lock-free counter and settled before each decision pay
    for exactly the retries that deposits made at their time would; paid retries whose own
    attempts the counter then sees are not taken for first attempts."""
    direct, counted = RetryBudget(ratio, floor), RetryBudget(ratio, floor)
    now, calls = 0.0, 0
    for dt, kind in steps:
        now += dt
        calls += 1  # every attempt made (first or paid retry) reaches the call count
        if kind == "first":
            direct.deposit(now)
            counted.settle(now, calls)
            continue
        counted.settle(now, calls - 1)  # the retry is decided before its own attempt
        paid = direct.try_withdraw(now)
        assert counted.try_withdraw(now) is paid
        if paid:
            counted.skip()
        else:
            calls -= 1  # not made: never counted
        assert counted.balance(now) == pytest.approx(direct.balance(now))


def test_a_quiet_breaker_may_retry_its_reserve_at_once() -> None:
    """With no traffic the floor's reserve (floor x 10 s) is there at once, then nothing until
    the window moves on."""
    budget = RetryBudget(0.2, 10.0)
    assert all(budget.try_withdraw(5.0) for _ in range(100))
    assert not budget.try_withdraw(5.0)
    assert budget.try_withdraw(5.0 + WINDOW)


def test_first_attempts_counted_without_the_lock_pay_in_proportion_to_their_age() -> None:
    """A lock-free count folded in late: attempts older than the window pay only their share;
    retries the budget paid for are not counted as first attempts."""
    budget = RetryBudget(1.0, 0.0)
    budget.settle(0.0, 0)
    budget.settle(100.0, 1000)  # 1000 attempts over 100 s: 100 of them within the window
    assert budget.balance(100.0) == pytest.approx(100.0)
    budget.skip()
    budget.settle(100.5, 1001)  # the one new attempt was the paid-for retry
    assert budget.balance(100.5) == pytest.approx(100.0)
    budget.settle(101.0, 990)  # a count read before the last one: nothing new
    budget.settle(101.0, 1002)
    assert budget.balance(101.0) == pytest.approx(101.0)


# -- the pure spend cap ---------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    spends=st.lists(
        st.tuples(st.floats(0.0, 50.0), st.floats(0.0, 500.0, allow_nan=False)), max_size=60
    ),
    limit=st.floats(1.0, 2000.0),
)
def test_a_spend_cap_refuses_exactly_while_spent_within_its_window(
    spends: list[tuple[float, float]], limit: float
) -> None:
    """Refused iff the window's spend reached the limit; the refusal lasts until the window
    that began with its first spend ends, and then nothing is spent."""
    cap = SpendCap(limit, 100.0)
    now = 0.0
    start, spent = None, 0.0
    for dt, tokens in spends:
        now += dt
        if start is not None and now >= start + 100.0:
            start, spent = None, 0.0
        wait = cap.refusal(now)
        if start is not None and spent >= limit:
            assert wait == pytest.approx(start + 100.0 - now)
            continue  # a refused call spends nothing
        assert wait is None
        cap.spend(now, tokens)
        if tokens > 0:
            start = now if start is None else start
            spent += tokens
        assert cap.view(now)["spent"] == pytest.approx(spent)


@pytest.mark.parametrize(
    ("response", "tokens"),
    [
        ({"usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}}, 7.0),
        ({"usage": {"input_tokens": 10, "output_tokens": 5}}, 15.0),
        ({"usage_metadata": {"total_token_count": 9}}, 9.0),
        ({"choices": []}, None),
        ("text", None),
        ({"usage": {"total_tokens": True}}, None),
    ],
)
def test_usage_is_read_from_openai_anthropic_and_gemini_shapes(response: Any, tokens: Any) -> None:
    """``usage_tokens`` reads the total, or input plus output, and None when nothing is said."""
    assert usage_tokens(response) == tokens


# -- the retry budget through the breaker ------------------------------------------------------


def test_with_retry_raises_the_last_error_at_once_when_the_budget_cannot_pay() -> None:
    """No reserve and no first attempts yet: the retry is not made, the last error is raised
    with a note, and the denial is counted (``retries_denied``, reason ``retry_budget``)."""
    calls = 0

    @with_retry(max_retries=3)
    @circuit_breaker("llm", registry=BreakerRegistry(), retry_budget_floor=0.0)
    def call() -> str:
        nonlocal calls
        calls += 1
        raise ServerError(503, {}, "down")

    with frozen_time(0.0), pytest.raises(ServerError) as caught:
        call()
    assert calls == 1
    assert "retry budget exhausted" in getattr(caught.value, "__notes__", [])
    stats = call.breaker.stats  # type: ignore[attr-defined]
    assert stats.retries_denied == 1 and stats.retries == 0
    assert stats.throttle_refusals["retry_budget"] == 1


def test_first_attempts_pay_for_a_share_of_retries() -> None:
    """Ten first attempts at ratio 0.2 pay for two retries; the third is denied."""
    breaker = CircuitBreaker("llm", CircuitBreakerConfig(retry_budget_floor=0.0))
    with frozen_time(0.0):
        for _ in range(10):
            breaker.record_success(breaker.admit())
        assert [breaker.try_spend_retry() for _ in range(3)] == [True, True, False]
        assert breaker.stats.retries_denied == 1
        assert breaker.retry_budget is not None and breaker.retry_budget["balance"] < 1


def test_retry_budget_none_never_denies_and_metrics_only_only_counts() -> None:
    """``retry_budget=None`` turns the budget off; ``enabled=False`` counts a denial but lets
    the retry through."""
    off = CircuitBreaker("off", CircuitBreakerConfig(retry_budget=None, retry_budget_floor=0.0))
    assert all(off.try_spend_retry() for _ in range(1000)) and off.retry_budget is None
    shadow = CircuitBreaker("shadow", CircuitBreakerConfig(retry_budget_floor=0.0, enabled=False))
    with frozen_time(0.0):
        assert shadow.try_spend_retry()
    assert shadow.stats.retries_denied == 1


def test_the_sdk_s_own_retry_is_refused_like_a_throttled_attempt() -> None:
    """Through the transport a request with ``x-stainless-retry-count`` > 0 pays from the
    budget; unpaid, it is answered 429 with ``x-should-retry: false`` and nothing is sent."""
    sent: list[httpx.Request] = []

    def provider(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(200, json={"ok": True})

    registry = BreakerRegistry()
    transport = CircuitBreakerTransport(
        "llm", httpx.MockTransport(provider), registry=registry, retry_budget_floor=0.0
    )
    with frozen_time(0.0), httpx.Client(transport=transport) as client:
        first = client.post("http://x/v1/chat", json={}, headers={"x-stainless-retry-count": "0"})
        retry = client.post("http://x/v1/chat", json={}, headers={"x-stainless-retry-count": "1"})
    assert first.status_code == 200 and len(sent) == 1
    assert retry.status_code == 429 and retry.headers["x-should-retry"] == "false"
    assert isinstance(retry.extensions[_refusal_key()], ThrottledError)
    breaker = registry.get("llm")
    assert breaker is not None and breaker.stats.retries_denied == 1
    assert breaker.stats.retries == 0


def _refusal_key() -> str:
    from llm_circuit_breaker._judge.refusal import REFUSAL

    return REFUSAL


# -- the spend cap through the breaker ---------------------------------------------------------


class _Completion:
    def __init__(self, tokens: int) -> None:
        self.usage = {"total_tokens": tokens}


def test_a_spent_token_budget_refuses_without_calling_and_is_no_failure() -> None:
    """Returned objects' ``usage`` is counted; past the budget the call is refused with
    ``BudgetExceededError`` (nothing runs, the circuit stays CLOSED), listeners hear
    ``BUDGET_EXCEEDED`` once, and the window's end lets calls through again."""
    calls = 0
    events: list[Any] = []

    @circuit_breaker(
        "llm",
        registry=BreakerRegistry(),
        token_budget=100,
        token_budget_window=60.0,
        on_state_change=events.append,
    )
    def call() -> _Completion:
        nonlocal calls
        calls += 1
        return _Completion(60)

    breaker = call.breaker
    with frozen_time(0.0) as clock:
        call()
        call()
        assert breaker.budget == {"spent": 120.0, "limit": 100.0, "resets_in": 60.0}
        with pytest.raises(BudgetExceededError) as caught:
            call()
        assert calls == 2
        error = caught.value
        assert (error.name, error.spent, error.limit) == ("llm", 120.0, 100.0)
        assert error.retry_after == pytest.approx(60.0)
        assert breaker.state is CircuitState.CLOSED and breaker.stats.failures == 0
        assert breaker.stats.throttle_refusals["token_budget"] == 1
        budget_events = [e for e in events if isinstance(e, ThrottleEvent)]
        assert [e.new for e in budget_events] == [ThrottleSignal.BUDGET_EXCEEDED]
        assert breaker.snapshot()["budget"]["spent"] == 120.0
        clock.advance(60.0)
        call()
    assert calls == 3


def test_a_token_budget_of_zero_refuses_every_call() -> None:
    """``token_budget=0`` is a cap of nothing (a kill switch): the first call of every window
    is refused too, never let through because nothing was spent yet."""
    calls = 0

    @circuit_breaker("off", registry=BreakerRegistry(), token_budget=0, token_budget_window=60)
    def call() -> _Completion:
        nonlocal calls
        calls += 1
        return _Completion(1)

    with frozen_time(0.0) as clock:
        for _ in range(3):
            with pytest.raises(BudgetExceededError) as caught:
                call()
            assert (caught.value.spent, caught.value.limit) == (0.0, 0.0)
            assert caught.value.retry_after == pytest.approx(60.0)
            clock.advance(61.0)  # a new window changes nothing
    assert calls == 0
    assert call.breaker.stats.throttle_refusals["token_budget"] == 3


def test_without_usage_the_request_s_estimate_is_counted() -> None:
    """A result without ``usage``: the call's keyword arguments are estimated like a request
    body (``max_tokens`` plus the prompt's length / 4)."""

    @circuit_breaker("est", registry=BreakerRegistry(), token_budget=1000)
    def call(**request: Any) -> str:
        return "answer"

    messages = [{"role": "user", "content": "x" * 100}]
    with frozen_time(0.0):
        call(messages=messages, max_tokens=50)
    spent = call.breaker.budget["spent"]
    assert spent == pytest.approx(50 + len(json.dumps(messages)) / 4)


def test_with_fallbacks_moves_on_to_a_cheaper_model_when_the_budget_is_spent() -> None:
    """A spent budget on the expensive model: the call goes to the next target, unsent."""
    registry = BreakerRegistry()
    sent: list[str] = []

    @circuit_breaker("big", registry=registry, token_budget=10)
    def big() -> _Completion:
        sent.append("big")
        return _Completion(50)

    @circuit_breaker("small", registry=registry)
    def small() -> _Completion:
        sent.append("small")
        return _Completion(5)

    chain = with_fallbacks(big, small)
    with frozen_time(0.0):
        chain()
        chain()
    assert sent == ["big", "small"]


async def test_an_async_function_s_usage_is_counted_too() -> None:
    """Coroutine functions count their returned ``usage`` the same way."""

    @circuit_breaker("async", registry=BreakerRegistry(), token_budget=10)
    async def call() -> _Completion:
        return _Completion(11)

    with frozen_time(0.0):
        await call()
        with pytest.raises(BudgetExceededError):
            await call()


def test_budget_config_is_validated_naming_the_field() -> None:
    """Negative or non-numeric budgets are refused with the field's name."""
    with pytest.raises(ValueError, match="retry_budget"):
        CircuitBreakerConfig(retry_budget=-0.1)
    with pytest.raises(TypeError, match="token_budget"):
        CircuitBreakerConfig(token_budget="lots")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="token_budget_window"):
        CircuitBreakerConfig(token_budget_window=0)


def test_budget_exceeded_error_pickles_and_reads_well() -> None:
    """The error keeps its context and round-trips through pickle."""
    import pickle

    error = BudgetExceededError("llm", 3.5, 120.0, 100.0)
    again = pickle.loads(pickle.dumps(error))
    assert (again.name, again.retry_after, again.spent, again.limit) == ("llm", 3.5, 120.0, 100.0)
    assert "120 of 100 tokens" in str(error) and refusal(error) is error


def _metered(replies: list[tuple[str, bytes]]) -> tuple[httpx.Client, BreakerRegistry]:
    """A client whose transport guards breaker ``llm`` (token budget 1,000) over canned
    answers, each given as (content type, body), streamed as a real transport streams."""
    answers = iter(replies)

    def provider(request: httpx.Request) -> httpx.Response:
        kind, body = next(answers)
        return httpx.Response(200, headers={"content-type": kind}, stream=httpx.ByteStream(body))

    registry = BreakerRegistry()
    transport = CircuitBreakerTransport(
        "llm", httpx.MockTransport(provider), registry=registry, token_budget=1000
    )
    return httpx.Client(transport=transport), registry


def _events(*payloads: dict[str, Any], event: str | None = None) -> bytes:
    head = f"event: {event}\n" if event else ""
    return b"".join(f"{head}data: {json.dumps(p)}\n\n".encode() for p in payloads)


def test_the_transport_counts_usage_of_json_and_streamed_answers() -> None:
    """A JSON answer's ``usage``, an openai stream's final usage chunk, anthropic's input
    and cumulative output, and the request's estimate for an answer that says nothing."""
    openai_stream = (
        _events(
            {"choices": [{"delta": {"content": "hi"}, "finish_reason": None}], "usage": None},
            {"choices": [{"delta": {}, "finish_reason": "stop"}], "usage": None},
            {
                "choices": [],
                "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10},
            },
        )
        + b"data: [DONE]\n\n"
    )
    anthropic_stream = (
        _events(
            {
                "type": "message_start",
                "message": {"usage": {"input_tokens": 20, "output_tokens": 1}},
            },
            event="message_start",
        )
        + _events(
            {"type": "content_block_delta", "delta": {"text": "hi"}}, event="content_block_delta"
        )
        + _events({"type": "message_delta", "usage": {"output_tokens": 5}}, event="message_delta")
        + _events({"type": "message_stop"}, event="message_stop")
    )
    client, registry = _metered(
        [
            ("application/json", json.dumps({"usage": {"total_tokens": 100}}).encode()),
            ("text/event-stream", openai_stream),
            ("text/event-stream", anthropic_stream),
            ("application/json", b'{"id": "no usage"}'),
        ]
    )
    breaker_spent = []
    with frozen_time(0.0), client:
        for _ in range(3):
            client.post("http://x/v1/chat", json={"messages": []}).read()
            breaker_spent.append(registry.get("llm").budget["spent"])  # type: ignore[union-attr]
        client.post("http://x/v1/chat", json={"max_tokens": 40}).read()
        spent = registry.get("llm").budget["spent"]  # type: ignore[union-attr]
    assert breaker_spent == [100.0, 110.0, 135.0]
    assert spent == pytest.approx(135.0 + 40 + len(b'{"max_tokens":40}') / 4)


def test_the_transport_refuses_a_spent_budget_without_sending() -> None:
    """Past the budget the transport answers 429 (nothing sent) with the
    ``BudgetExceededError`` attached, and ``refusal()`` reads it."""
    client, _ = _metered(
        [("application/json", json.dumps({"usage": {"total_tokens": 1500}}).encode())]
    )
    with frozen_time(0.0), client:
        client.post("http://x/v1/chat", json={}).read()
        refused = client.post("http://x/v1/chat", json={})
    assert refused.status_code == 429 and refused.headers["x-should-retry"] == "false"
    found = refused.extensions[_refusal_key()]
    assert isinstance(found, BudgetExceededError) and found.spent == 1500.0


class _Chunk:
    def __init__(self, usage: dict[str, int] | None) -> None:
        self.usage = usage


def test_a_decorated_stream_counts_its_final_usage_or_its_estimate() -> None:
    """A generator's items are read for ``usage`` (openai's last chunk); one that says
    nothing is charged its call's estimate when it ends."""
    registry = BreakerRegistry()

    @circuit_breaker("gen", registry=registry, token_budget=1000)
    def stream(**request: Any) -> Any:
        yield _Chunk(None)
        yield _Chunk({"prompt_tokens": 4, "completion_tokens": 6})

    @circuit_breaker("quiet", registry=registry, token_budget=1000)
    def quiet(**request: Any) -> Any:
        yield "text"

    with frozen_time(0.0):
        assert len(list(stream(max_tokens=9))) == 2
        list(quiet(max_tokens=9))
    assert stream.breaker.budget["spent"] == 10.0
    assert quiet.breaker.budget["spent"] == 9.0


async def test_an_async_stream_counts_anthropic_input_and_output() -> None:
    """Anthropic's ``message_start`` input plus its cumulative ``message_delta`` output."""

    @circuit_breaker("agen", registry=BreakerRegistry(), token_budget=1000)
    async def stream() -> Any:
        yield {"type": "message_start", "message": {"usage": {"input_tokens": 12}}}
        yield {"type": "message_delta", "usage": {"output_tokens": 2}}
        yield {"type": "message_delta", "usage": {"output_tokens": 8}}

    with frozen_time(0.0):
        assert len([item async for item in stream()]) == 3
    assert stream.breaker.budget["spent"] == 20.0


def test_the_http_helpers_count_usage_of_calls_and_streams() -> None:
    """``LLMCircuitBreaker.call`` counts the answer's ``usage``; ``stream`` the usage of its
    events (or the request's estimate)."""
    from llm_circuit_breaker import LLMCircuitBreaker
    from llm_circuit_breaker.testing import FakeLLMServer

    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
    with FakeLLMServer() as server:
        helper = LLMCircuitBreaker("llm", {"token_budget": 1000}, registry=BreakerRegistry())
        url = server.url + "/v1/chat/completions"
        answer = helper.call(url, data=body)
        assert helper.breaker.budget["spent"] == answer["usage"]["total_tokens"]
        list(helper.stream(url, data=dict(body, stream=True)))
        assert helper.breaker.budget["spent"] > answer["usage"]["total_tokens"]


def test_prometheus_counts_budget_refusals_by_reason() -> None:
    """A denied retry and a spent token budget are ``throttled`` outcomes with reasons
    ``retry_budget`` and ``token_budget`` in ``llm_circuit_breaker_calls_total``."""
    from prometheus_client import CollectorRegistry

    from llm_circuit_breaker.observability.prometheus import PrometheusCollector

    registry = BreakerRegistry()
    breaker = registry.get_or_create(
        "llm", CircuitBreakerConfig(retry_budget_floor=0.0, token_budget=1)
    )
    prom = CollectorRegistry()
    PrometheusCollector(registry).register(prom)
    with frozen_time(0.0):
        assert not breaker.try_spend_retry()
        breaker.spend(5)
        with pytest.raises(BudgetExceededError):
            breaker.admit()

    def sample(reason: str) -> float | None:
        labels = {"breaker": "llm", "scope": "", "outcome": "throttled", "reason": reason}
        return prom.get_sample_value("llm_circuit_breaker_calls_total", {**labels, "enforced": ""})

    assert sample("retry_budget") == 1.0
    assert sample("token_budget") == 1.0


def test_a_store_backed_breaker_keeps_its_budgets_too() -> None:
    """With a (sync) state store the spend cap refuses before the store is asked."""
    from llm_circuit_breaker.storage.memory import MemoryStateStore

    breaker = CircuitBreaker("llm", CircuitBreakerConfig(token_budget=10), store=MemoryStateStore())
    with frozen_time(0.0):
        breaker.record_success(breaker.admit())
        breaker.spend(10)
        with pytest.raises(BudgetExceededError):
            breaker.admit()
        assert breaker.budget["spent"] == 10.0


async def test_an_asyncio_store_s_breaker_refuses_a_spent_budget_before_asking_it(
    redis_server: Any, redis_client: Any
) -> None:
    """With an asyncio Redis store, a spent budget is refused by ``aenter`` (nothing runs)
    and retries still pay from the (in-process) retry budget."""
    from llm_circuit_breaker.storage.redis import RedisStateStore

    store = RedisStateStore.from_url(redis_server.url, asyncio=True, timeout=2)
    calls = 0

    @circuit_breaker("aio-budget", registry=BreakerRegistry(store=store), token_budget=10)
    async def call() -> _Completion:
        nonlocal calls
        calls += 1
        return _Completion(10)

    await call()
    with pytest.raises(BudgetExceededError):
        await call()
    assert calls == 1
    assert call.breaker.try_spend_retry()
    await store.client.aclose()


def test_with_pool_moves_on_from_a_deployment_whose_budget_is_spent() -> None:
    """Every call of a pool whose first deployment spent its budget is served by the other,
    and the spent one is never called again."""
    from llm_circuit_breaker import with_pool

    registry = BreakerRegistry()
    sent: list[str] = []

    @circuit_breaker("east", registry=registry, token_budget=10)
    def east() -> _Completion:
        sent.append("east")
        return _Completion(50)

    @circuit_breaker("west", registry=registry)
    def west() -> _Completion:
        sent.append("west")
        return _Completion(5)

    pool = with_pool(east, west, strategy="round_robin")
    with frozen_time(0.0):
        for _ in range(6):
            pool()
    assert sent.count("east") == 1 and sent.count("west") == 5
