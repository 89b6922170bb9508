"""A provider that slows down past 8 calls in flight and answers 529 past 16: a fixed limit,
the adaptive limit and no limit side by side.

    pip install -e ".[bench]" && python benchmarks/concurrency.py     # 30 s, 32 callers each
    python benchmarks/concurrency.py --duration 10 --callers 24       # shorter

Each client gets its own provider: an aiohttp app on 127.0.0.1 (in a thread with its own
event loop) that counts the requests it is answering. A request arriving while more than
``--overload`` (16) are in flight gets a 529 with Anthropic's ``overloaded_error`` body at
once; the others are answered after ``--latency`` (0.2 s) x max(1, in flight / ``--knee``
(8)): past 8 in flight the provider serves no more calls per second, it only makes each wait
longer. Its capacity is thus knee / latency calls per second (40/s by default).

The clients are coroutine functions guarded by ``@circuit_breaker`` (``failure_threshold``
high, so that no circuit opens: the limit alone is compared) posting with one aiohttp
session each; ``--callers`` tasks per client call back to back for ``--duration`` seconds and
sleep 50 ms after an error (as a retrying client would, at least). ``fixed`` has
``max_concurrent=8``, ``adaptive`` ``max_concurrent="adaptive"``, ``unlimited`` no limit.
Reported: answered calls per second, 529s / requests sent, the calls refused by the limit
(``ThrottledError``, none with the default ``throttle_max_wait``) and, for the adaptive client,
the limit it ended on.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import threading
import time
from typing import Any

import aiohttp
from aiohttp import web

from llm_circuit_breaker import BreakerRegistry, ThrottledError, circuit_breaker
from llm_circuit_breaker.errors import http_status_error

CLIENTS = {"fixed": 8, "adaptive": "adaptive", "unlimited": None}
OVERLOADED = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
ANSWER = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}],
}


class Provider:
    """The overloaded provider, served from a thread of its own."""

    def __init__(self, latency: float, knee: int, overload: int) -> None:
        self.latency, self.knee, self.overload = latency, knee, overload
        self.in_flight = 0
        self.statuses: collections.Counter[int] = collections.Counter()
        self.peak = 0
        self.url = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    async def _handle(self, request: web.Request) -> web.Response:
        await request.read()
        if self.in_flight >= self.overload:
            self.statuses[529] += 1
            return web.json_response(OVERLOADED, status=529)
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            await asyncio.sleep(self.latency * max(1.0, self.in_flight / self.knee))
        finally:
            self.in_flight -= 1
        self.statuses[200] += 1
        return web.json_response(ANSWER)

    def _run(self) -> None:
        loop = self._loop = asyncio.new_event_loop()
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", 0, backlog=1024)
        loop.run_until_complete(site.start())
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}/v1/chat/completions"
        self._ready.set()
        loop.run_forever()
        loop.run_until_complete(self._runner.cleanup())
        loop.close()

    def start(self) -> None:
        self._thread.start()
        self._ready.wait(30)

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)


async def _client(
    name: str, provider: Provider, callers: int, until: float, registry: BreakerRegistry
) -> dict[str, Any]:
    seen: collections.Counter[str] = collections.Counter()
    limit = CLIENTS[name]
    fields: dict[str, Any] = {"failure_threshold": 10**9}
    if limit is not None:
        fields["max_concurrent"] = limit
    connector = aiohttp.TCPConnector(limit=0)  # the limit under test, not aiohttp's pool
    async with aiohttp.ClientSession(connector=connector) as session:

        @circuit_breaker(name, registry=registry, **fields)
        async def complete() -> Any:
            async with session.post(provider.url, json={"model": "m"}) as response:
                body = await response.json()
                if response.status != 200:
                    raise http_status_error(response.status, response.headers, body)
                return body

        async def caller() -> None:
            while time.monotonic() < until:
                try:
                    await complete()
                except ThrottledError:
                    seen["refused by the limit"] += 1
                    await asyncio.sleep(0.05)
                except Exception as exc:  # every error a caller sees is counted by type
                    status = getattr(exc, "status_code", None)
                    seen[f"HTTP {status}" if status else type(exc).__name__] += 1
                    await asyncio.sleep(0.05)
                else:
                    if time.monotonic() <= until:
                        seen["answered"] += 1

        tasks = [asyncio.create_task(caller()) for _ in range(callers)]
        await asyncio.wait(tasks, timeout=max(0.0, until - time.monotonic()) + 5.0)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    result: dict[str, Any] = {"seen by callers": dict(seen)}
    view = registry.get(name).concurrency
    if view is not None:
        result["limit at the end"] = view["limit"]
    return result


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    providers = {name: Provider(args.latency, args.knee, args.overload) for name in args.clients}
    for provider in providers.values():
        provider.start()
    registry = BreakerRegistry()
    until = time.monotonic() + args.duration
    try:
        outcomes = await asyncio.gather(
            *(_client(n, providers[n], args.callers, until, registry) for n in args.clients)
        )
    finally:
        for provider in providers.values():
            provider.stop()
    results: dict[str, Any] = {
        "seconds": args.duration,
        "callers": args.callers,
        "capacity per second": args.knee / args.latency,
    }
    for name, outcome in zip(args.clients, outcomes, strict=True):
        provider = providers[name]
        sent = sum(provider.statuses.values())
        answered = outcome["seen by callers"].get("answered", 0)
        results[name] = {
            "answered per second": round(answered / args.duration, 2),
            "requests sent": sent,
            "529s": provider.statuses[529],
            "529 share": round(provider.statuses[529] / max(1, sent), 4),
            "peak in flight at the provider": provider.peak,
            **outcome,
        }
    if "unlimited" in results and "adaptive" in results:
        base = results["unlimited"]["answered per second"]
        results["adaptive vs unlimited"] = round(
            results["adaptive"]["answered per second"] / max(base, 1e-9), 3
        )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=30.0, help="seconds (default 30)")
    parser.add_argument("--callers", type=int, default=32, help="tasks per client (32)")
    parser.add_argument("--latency", type=float, default=0.2, help="answer time up to the knee")
    parser.add_argument("--knee", type=int, default=8, help="in flight before it slows down")
    parser.add_argument("--overload", type=int, default=16, help="in flight before 529s")
    parser.add_argument("--clients", nargs="*", default=list(CLIENTS), choices=list(CLIENTS))
    args = parser.parse_args()
    results = asyncio.run(main_async(args))
    print(json.dumps(results, indent=2))
    print(
        f"\n{args.callers} callers per client, {args.duration:g} s, provider capacity "
        f"{results['capacity per second']:g}/s (slower past {args.knee}, 529 past "
        f"{args.overload} in flight)"
    )
    print("\n| client | answered / s | 529 share | peak in flight | limit at the end |")
    print("|---|---:|---:|---:|---:|")
    for name in args.clients:
        row = results[name]
        print(
            f"| {name} | {row['answered per second']:.1f} | {row['529 share']:.2%} | "
            f"{row['peak in flight at the provider']} | {row.get('limit at the end', '-')} |"
        )
    if "adaptive vs unlimited" in results:
        print(f"\nadaptive / unlimited answered per second: {results['adaptive vs unlimited']}")


if __name__ == "__main__":
    main()
