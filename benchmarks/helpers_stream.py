"""Client CPU per server-sent event: ``LLMCircuitBreaker.stream`` / ``astream`` beside raw
``requests`` / ``aiohttp`` reading the same stream, in the same run.

A minimal aiohttp server runs in a subprocess (its CPU is not counted) and streams ``--events``
OpenAI-shaped chat chunks, the last with a finish reason and usage, then ``data: [DONE]``. Each
client reads the whole stream; what is measured is the client thread's CPU
(``time.thread_time``) per event, best of ``--rounds``, the four clients interleaved::

    python benchmarks/helpers_stream.py             # 2,000 events, best of 7
    python benchmarks/helpers_stream.py --quick

The raw baselines are the usual idioms: ``requests``' ``iter_lines()`` and aiohttp's ``async
for line in response.content``, each line starting ``data: `` parsed with ``json.loads``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import requests

from llm_circuit_breaker import LLMCircuitBreaker

_SERVER = r"""
import json, sys
from aiohttp import web

def body(n):
    chunk = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
             "model": "m", "choices": [{"index": 0, "delta": {"content": "tok"},
             "finish_reason": None}]}
    parts = [b"data: " + json.dumps(chunk).encode() + b"\n\n"] * (n - 1)
    last = dict(chunk, choices=[{"index": 0, "delta": {}, "finish_reason": "stop"}],
                usage={"prompt_tokens": 5, "completion_tokens": n, "total_tokens": n + 5})
    parts.append(b"data: " + json.dumps(last).encode() + b"\n\n")
    parts.append(b"data: [DONE]\n\n")
    return b"".join(parts)

BODY = body(int(sys.argv[2]))

async def handle(request):
    await request.read()
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    for i in range(0, len(BODY), 16384):
        await response.write(BODY[i:i + 16384])
    await response.write_eof()
    return response

app = web.Application()
app.router.add_post("/v1/chat/completions", handle)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
"""

_DATA = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait(port: int) -> None:
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("the SSE server did not start")


def raw_requests(session: requests.Session, url: str) -> int:
    n = 0
    with session.post(url, json=_DATA, stream=True, timeout=30) as response:
        for line in response.iter_lines():
            if line.startswith(b"data: "):
                payload = line[6:]
                if payload == b"[DONE]":
                    break
                json.loads(payload)
                n += 1
    return n


def helper_stream(cb: LLMCircuitBreaker, url: str) -> int:
    return sum(1 for _ in cb.stream(url, data=_DATA))


async def raw_aiohttp(session: aiohttp.ClientSession, url: str) -> int:
    n = 0
    async with session.post(url, json=_DATA) as response:
        async for line in response.content:
            if line.startswith(b"data: "):
                payload = line[6:].rstrip()
                if payload == b"[DONE]":
                    break
                json.loads(payload)
                n += 1
    return n


async def helper_astream(cb: LLMCircuitBreaker, url: str) -> int:
    n = 0
    async for _ in cb.astream(url, data=_DATA):
        n += 1
    return n


def _cpu(run: Callable[[], int], events: int) -> float:
    started = time.thread_time()
    got = run()
    spent = time.thread_time() - started
    assert got == events, (got, events)
    return spent / events * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="500 events, best of 5")
    args = parser.parse_args()
    events, rounds = (500, 5) if args.quick else (args.events, args.rounds)
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-c", _SERVER, str(port), str(events)])
    try:
        _wait(port)
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        best: dict[str, float] = {}
        session = requests.Session()
        cb = LLMCircuitBreaker(retry={"max_retries": 0})

        async def run_async() -> None:
            async with aiohttp.ClientSession() as raw:
                runs: dict[str, Callable[[], Any]] = {
                    "aiohttp": lambda: raw_aiohttp(raw, url),
                    "astream": lambda: helper_astream(cb, url),
                }
                for _ in range(rounds + 1):  # the first round warms up
                    for name, make in runs.items():
                        started = time.thread_time()
                        got = await make()
                        spent = (time.thread_time() - started) / events * 1e6
                        assert got == events, (name, got)
                        best[name] = min(best.get(name, spent), spent)
            await cb.aclose()

        for round_ in range(rounds + 1):
            for name, run in (
                ("requests", lambda: raw_requests(session, url)),
                ("stream", lambda: helper_stream(cb, url)),
            ):
                spent = _cpu(run, events)
                if round_:
                    best[name] = min(best.get(name, spent), spent)
        asyncio.run(run_async())
        session.close()
        cb.close()
    finally:
        server.terminate()
        server.wait()
    print(f"CPU per event, {events} events, best of {rounds}:")
    print("| client | us / event | ratio |\n|---|---:|---:|")
    print(f"| raw requests (iter_lines) | {best['requests']:.2f} | 1.00x |")
    print(
        f"| LLMCircuitBreaker.stream | {best['stream']:.2f} | "
        f"{best['stream'] / best['requests']:.2f}x |"
    )
    print(f"| raw aiohttp (async for line) | {best['aiohttp']:.2f} | 1.00x |")
    print(
        f"| LLMCircuitBreaker.astream | {best['astream']:.2f} | "
        f"{best['astream'] / best['aiohttp']:.2f}x |"
    )


if __name__ == "__main__":
    main()
