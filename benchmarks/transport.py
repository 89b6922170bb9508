"""The httpx transport's cost under the openai SDK, against the local fake provider.

    pip install -e ".[bench]" && python benchmarks/transport.py          # ~1 minute
    python benchmarks/transport.py --quick

Same run, same server, interleaved rounds (bare SDK, then through the transport, and again).
The server runs in a process of its own, so that it does not share the clients' interpreter
lock; each round gives a ratio of the two, and the median ratio is reported:

* per request, sync (``OpenAI``) and async (``AsyncOpenAI``), a small chat completion: the
  transport's extra time as a share of one local round trip (goal <= 3%), and in absolute
  terms with no network at all (``httpx.MockTransport``), which is free of the loopback's noise;
* SSE events per second through the SDK, a stream of ``--events`` chunks, with and without
  the transport (goal >= 0.95x);
* a refusal's latency: an OPEN circuit under ``OpenAI(max_retries=2)``, the SDK's whole call
  until it raises (goal < 50 ms: no backoff sleep, nothing sent).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import statistics
import threading
import time
from typing import Any

import httpx
import openai

from llm_circuit_breaker import BreakerRegistry
from llm_circuit_breaker.httpx import AsyncCircuitBreakerTransport, CircuitBreakerTransport
from llm_circuit_breaker.testing import FakeLLMServer, Reply

MESSAGES = [{"role": "user", "content": "hi"}]


def _clients(url: str) -> dict[str, Any]:
    registry = BreakerRegistry()
    guarded = httpx.Client(transport=CircuitBreakerTransport("bench", registry=registry))
    aguarded = httpx.AsyncClient(
        transport=AsyncCircuitBreakerTransport("abench", registry=registry)
    )
    kwargs: dict[str, Any] = {"api_key": "sk-bench", "base_url": url + "/v1", "max_retries": 0}
    return {
        "bare": openai.OpenAI(**kwargs, http_client=httpx.Client()),
        "transport": openai.OpenAI(**kwargs, http_client=guarded),
        "abare": openai.AsyncOpenAI(**kwargs, http_client=httpx.AsyncClient()),
        "atransport": openai.AsyncOpenAI(**kwargs, http_client=aguarded),
    }


def _per_call(client: Any, calls: int) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        client.chat.completions.create(model="m", messages=MESSAGES)
    return (time.perf_counter() - started) / calls


async def _aper_call(client: Any, calls: int) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        await client.chat.completions.create(model="m", messages=MESSAGES)
    return (time.perf_counter() - started) / calls


def _events_per_second(client: Any, events: int) -> float:
    started = time.perf_counter()
    stream = client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
    seen = sum(1 for _ in stream)
    assert seen == events
    return events / (time.perf_counter() - started)


def _serve(events: int, ports: Any, stop: Any) -> None:
    """The fake provider in a process of its own: a stream of ``events`` chunks when asked to
    stream, else a small completion."""
    stream = Reply.openai_stream(["x"] * events)
    answer = Reply.ok("hi")
    server = FakeLLMServer()

    def reply(number: int) -> Reply:
        body = server.requests[number].json
        return stream if isinstance(body, dict) and body.get("stream") else answer

    server.responder = reply
    with server:
        ports.put(server.port)
        stop.wait()
        server.requests.clear()


def _refusals(url: str, calls: int) -> list[float]:
    """Each refused call's wall time, in seconds, through an SDK that would retry twice."""
    registry = BreakerRegistry()
    transport = CircuitBreakerTransport("refused", registry=registry)
    client = openai.OpenAI(
        api_key="sk-bench", base_url=url + "/v1", max_retries=2,
        http_client=httpx.Client(transport=transport),
    )  # fmt: skip
    registry.get_or_create("refused").force_open()
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        try:
            client.chat.completions.create(model="m", messages=MESSAGES)
        except openai.APIStatusError:
            times.append(time.perf_counter() - started)
    client.close()
    return times


async def _rounds(
    url: str, calls: int, rounds: int, events: int
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Interleaved rounds in one event loop (the sync clients block it while they run)."""
    clients = _clients(url)
    times: dict[str, list[float]] = {name: [] for name in clients}
    rates: dict[str, list[float]] = {"bare": [], "transport": []}
    for name in ("bare", "transport"):  # warm up: connections, imports, the breaker
        _per_call(clients[name], 10)
    for name in ("abare", "atransport"):
        await _aper_call(clients[name], 10)
    for _ in range(rounds):
        for name in ("bare", "transport"):
            times[name].append(_per_call(clients[name], calls))
            rates[name].append(_events_per_second(clients[name], events))
        for name in ("abare", "atransport"):
            times[name].append(await _aper_call(clients[name], calls))
    for name in ("abare", "atransport"):
        await clients[name].close()
    return times, rates


# What an OpenAI answer carries besides its body (the rate-limit headers report plenty left).
ANSWER_HEADERS = {
    "date": "Sat, 05 Dec 2026 12:00:00 GMT",
    "content-type": "application/json",
    "transfer-encoding": "chunked",
    "connection": "keep-alive",
    "access-control-expose-headers": "X-Request-ID",
    "openai-organization": "org-bench",
    "openai-processing-ms": "412",
    "openai-version": "2020-10-01",
    "strict-transport-security": "max-age=31536000; includeSubDomains; preload",
    "x-ratelimit-limit-requests": "10000",
    "x-ratelimit-limit-tokens": "30000000",
    "x-ratelimit-remaining-requests": "9999",
    "x-ratelimit-remaining-tokens": "29999990",
    "x-ratelimit-reset-requests": "6ms",
    "x-ratelimit-reset-tokens": "0s",
    "x-request-id": "req_0123456789abcdef",
    "cf-cache-status": "DYNAMIC",
    "server": "cloudflare",
    "cf-ray": "8f0e0e0e0e0e0e0e-AMS",
    "alt-svc": 'h3=":443"; ma=86400',
}
# A chat request of a few turns (~3 KB of JSON), as the SDK sends it.
REQUEST = {
    "model": "gpt-4o-mini",
    "messages": [
        {"role": "system", "content": "You are a helpful assistant. " * 10},
        *(
            {"role": role, "content": f"turn {i}: " + "some words of the conversation " * 8}
            for i, role in enumerate(["user", "assistant"] * 4)
        ),
    ],
    "max_tokens": 256,
    "temperature": 0.2,
}
SDK_HEADERS = {
    "x-stainless-lang": "python",
    "x-stainless-package-version": "1.99.0",
    "x-stainless-os": "Linux",
    "x-stainless-arch": "x64",
    "x-stainless-runtime": "CPython",
    "x-stainless-runtime-version": "3.11.7",
    "x-stainless-async": "false",
    "x-stainless-retry-count": "0",
    "x-stainless-read-timeout": "600",
    "authorization": "Bearer sk-bench",
    "openai-organization": "org-bench",
}


def _in_process_cost(calls: int, rounds: int, *, openai_like: bool) -> tuple[float, float]:
    """Microseconds of CPU (``time.process_time``) the transport adds to a request with no
    network at all (an ``httpx.MockTransport`` answers with an unread body, as a connection
    would), and the bare request's: the best of ``rounds`` each. ``openai_like``: a 3 KB
    request with the SDK's headers, answered with OpenAI's headers (rate limits: the throttle
    paces every call); else ``{"model": "m"}`` answered with a content type alone."""
    payload = json.dumps(Reply.ok("hi").json).encode()
    headers = ANSWER_HEADERS if openai_like else {"content-type": "application/json"}
    request = REQUEST if openai_like else {"model": "m"}
    request_headers = SDK_HEADERS if openai_like else {}

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers=headers, stream=httpx.ByteStream(payload))

    registry = BreakerRegistry()
    bare = httpx.Client(transport=httpx.MockTransport(answer))
    guarded = httpx.Client(
        transport=CircuitBreakerTransport("mock", httpx.MockTransport(answer), registry=registry)
    )
    best = {"bare": float("inf"), "guarded": float("inf")}
    url = "http://provider/v1/chat/completions"
    for _ in range(rounds):
        for name, client in (("bare", bare), ("guarded", guarded)):
            started = time.process_time()
            for _ in range(calls):
                client.post(url, json=request, headers=request_headers).read()
            best[name] = min(best[name], (time.process_time() - started) / calls)
    return (best["guarded"] - best["bare"]) * 1e6, best["bare"] * 1e6


def _threaded(url: str, threads: int, calls: int, rounds: int) -> dict[str, float]:
    """Requests per second from ``threads`` threads sharing one client (bare httpx, and
    through the transport), against the server process: the median of ``rounds``."""
    registry = BreakerRegistry()
    clients = {
        "bare": httpx.Client(limits=httpx.Limits(max_connections=threads)),
        "transport": httpx.Client(
            transport=CircuitBreakerTransport(
                "threads",
                httpx.HTTPTransport(limits=httpx.Limits(max_connections=threads)),
                registry=registry,
            )
        ),
    }
    target = url + "/v1/chat/completions"

    def rate(client: httpx.Client) -> float:
        barrier = threading.Barrier(threads + 1)

        def work() -> None:
            barrier.wait()
            for _ in range(calls):
                client.post(target, json=REQUEST, headers=SDK_HEADERS).read()

        pool = [threading.Thread(target=work) for _ in range(threads)]
        for thread in pool:
            thread.start()
        barrier.wait()
        started = time.perf_counter()
        for thread in pool:
            thread.join()
        return threads * calls / (time.perf_counter() - started)

    for client in clients.values():  # warm up: connections, the breaker
        rate(client)
    rates: dict[str, list[float]] = {name: [] for name in clients}
    for _ in range(rounds):
        for name, client in clients.items():
            rates[name].append(rate(client))
    for client in clients.values():
        client.close()
    return {name: statistics.median(values) for name, values in rates.items()}


def _ratio(guarded: list[float], bare: list[float]) -> float:
    """The median of the rounds' ratios (each round's pair ran back to back)."""
    return statistics.median(g / b for g, b in zip(guarded, bare, strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--events", type=int, default=20_000)
    args = parser.parse_args()
    calls, rounds = (100, 3) if args.quick else (1000, 9)
    events = 2000 if args.quick else args.events
    context = multiprocessing.get_context("spawn")
    ports, stop = context.Queue(), context.Event()
    serving = context.Process(target=_serve, args=(events, ports, stop), daemon=True)
    serving.start()
    try:
        url = f"http://127.0.0.1:{ports.get(timeout=60)}"
        times, rates = asyncio.run(_rounds(url, calls, rounds, events))
        threaded = _threaded(url, 32, 10 if args.quick else 40, rounds)
    finally:
        stop.set()
        serving.join(10)
    with FakeLLMServer() as server:  # in this process: it counts what reaches it
        refusals = sorted(_refusals(server.url, calls))
        assert server.hits == 0, "a refusal reached the provider"
        assert len(refusals) == calls
    in_process, bare_cpu = _in_process_cost(calls * 3, rounds, openai_like=False)
    in_openai, bare_openai = _in_process_cost(calls * 3, rounds, openai_like=True)
    median = {name: statistics.median(values) for name, values in times.items()}
    rate = {name: statistics.median(values) for name, values in rates.items()}
    sync_ratio = _ratio(times["transport"], times["bare"])
    async_ratio = _ratio(times["atransport"], times["abare"])
    sse_ratio = _ratio(rates["transport"], rates["bare"])
    print("| measure | bare SDK | through the transport | ratio (median of rounds) |")
    print("|---|---:|---:|---:|")
    print(
        f"| sync request (us) | {median['bare'] * 1e6:.0f} | {median['transport'] * 1e6:.0f} | "
        f"{sync_ratio:.3f} |"
    )
    print(
        f"| async request (us) | {median['abare'] * 1e6:.0f} | "
        f"{median['atransport'] * 1e6:.0f} | {async_ratio:.3f} |"
    )
    print(
        f"| SSE events/s (sync) | {rate['bare']:,.0f} | {rate['transport']:,.0f} | "
        f"{sse_ratio:.3f} |"
    )
    print(
        f"\ntransport overhead: sync {sync_ratio - 1:+.1%}, async {async_ratio - 1:+.1%} of a "
        "round trip"
    )
    print(f"SSE throughput through the transport: {sse_ratio:.3f}x")
    print(
        f"without a network (httpx.MockTransport): {in_process:+.1f} us of CPU per request "
        f"(bare httpx {bare_cpu:.1f} us); a 3 KB request answered with OpenAI's rate-limit "
        f"headers {in_openai:+.1f} us (bare {bare_openai:.1f} us)"
    )
    print(
        f"32 threads, one client: bare httpx {threaded['bare']:,.0f} requests/s, through the "
        f"transport {threaded['transport']:,.0f} ({threaded['transport'] / threaded['bare']:.3f}x)"
    )
    print(
        f"a refusal under max_retries=2: median {statistics.median(refusals) * 1e3:.2f} ms, "
        f"slowest {refusals[-1] * 1e3:.2f} ms of {len(refusals)}"
    )


if __name__ == "__main__":
    main()
