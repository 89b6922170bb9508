"""The httpx transport's cost under the openai SDK, against the local fake provider.

    pip install -e ".[bench]" && python benchmarks/transport.py          # ~1 minute
    python benchmarks/transport.py --quick

Same run, same server, interleaved rounds (bare SDK, then through the transport, and again),
the median of the rounds' per-call times:

* per request, sync (``OpenAI``) and async (``AsyncOpenAI``), a small chat completion: the
  transport's extra time as a share of one local round trip (goal <= 3%);
* SSE events per second through the SDK, a stream of ``--events`` chunks, with and without
  the transport (goal >= 0.95x);
* a refusal's latency: an OPEN circuit under ``OpenAI(max_retries=2)``, the SDK's whole call
  until it raises (goal < 50 ms: no backoff sleep, nothing sent).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
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


def _events_per_second(client: Any, server: FakeLLMServer, events: int) -> float:
    server.script(Reply.openai_stream(["x"] * events))
    started = time.perf_counter()
    seen = sum(1 for _ in client.chat.completions.create(model="m", messages=MESSAGES, stream=True))
    assert seen == events
    return events / (time.perf_counter() - started)


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
    server: FakeLLMServer, calls: int, rounds: int, events: int
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Interleaved rounds in one event loop (the sync clients block it while they run)."""
    clients = _clients(server.url)
    times: dict[str, list[float]] = {name: [] for name in clients}
    rates: dict[str, list[float]] = {"bare": [], "transport": []}
    for name in ("bare", "transport"):  # warm up: connections, imports, the breaker
        _per_call(clients[name], 10)
    for name in ("abare", "atransport"):
        await _aper_call(clients[name], 10)
    for _ in range(rounds):
        for name in ("bare", "transport"):
            times[name].append(_per_call(clients[name], calls))
            rates[name].append(_events_per_second(clients[name], server, events))
        for name in ("abare", "atransport"):
            times[name].append(await _aper_call(clients[name], calls))
    for name in ("abare", "atransport"):
        await clients[name].close()
    return times, rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--events", type=int, default=20_000)
    args = parser.parse_args()
    calls, rounds = (100, 3) if args.quick else (1000, 7)
    events = 2000 if args.quick else args.events
    with FakeLLMServer() as server:
        server.default = Reply.ok("hi")
        times, rates = asyncio.run(_rounds(server, calls, rounds, events))
        sent = server.hits
        refusals = sorted(_refusals(server.url, calls))
        assert server.hits == sent, "a refusal reached the provider"
        assert len(refusals) == calls
    median = {name: statistics.median(values) for name, values in times.items()}
    rate = {name: statistics.median(values) for name, values in rates.items()}
    sync_share = (median["transport"] - median["bare"]) / median["bare"]
    async_share = (median["atransport"] - median["abare"]) / median["abare"]
    print("| measure | bare SDK | through the transport | ratio |")
    print("|---|---:|---:|---:|")
    print(
        f"| sync request (us) | {median['bare'] * 1e6:.0f} | {median['transport'] * 1e6:.0f} | "
        f"{median['transport'] / median['bare']:.3f} |"
    )
    print(
        f"| async request (us) | {median['abare'] * 1e6:.0f} | "
        f"{median['atransport'] * 1e6:.0f} | {median['atransport'] / median['abare']:.3f} |"
    )
    print(
        f"| SSE events/s (sync) | {rate['bare']:,.0f} | {rate['transport']:,.0f} | "
        f"{rate['transport'] / rate['bare']:.3f} |"
    )
    print(f"\ntransport overhead: sync {sync_share:+.1%}, async {async_share:+.1%} of a round trip")
    print(f"SSE throughput through the transport: {rate['transport'] / rate['bare']:.3f}x")
    print(
        f"a refusal under max_retries=2: median {statistics.median(refusals) * 1e3:.2f} ms, "
        f"slowest {refusals[-1] * 1e3:.2f} ms of {len(refusals)}"
    )


if __name__ == "__main__":
    main()
