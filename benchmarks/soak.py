"""A mixed soak: everything at once for N minutes, and whether anything grows.

    python benchmarks/soak.py                # 10 minutes (figures in benchmarks/README.md)
    python benchmarks/soak.py --minutes 1    # a smoke run

One fake provider (a real aiohttp server on 127.0.0.1) cycles through healthy, rate limited
(a real quota with ``x-ratelimit-*`` headers and 429 + ``retry-after``), an outage (503s) and
truncated streams, 30 s each. Against it, at the same time:

* threads calling ``LLMCircuitBreaker.call`` / ``.stream`` through ``with_retry`` and a scoped
  breaker per model, shared through Redis with a near-cache;
* asyncio tasks calling the real ``AsyncOpenAI`` SDK through ``AsyncCircuitBreakerTransport``,
  each under an ``asyncio.timeout`` short enough to cancel some calls mid-stream;
* ``with_fallbacks`` from a scoped primary to a second deployment;
* streams dropped without ``close()``.

Every 10 s it samples the process's resident memory, threads, open file descriptors, the
Redis in-flight sets' total size and the p99 latency of the calls of that interval. It prints
the first and last minute side by side: flat means no leak of memory, threads, descriptors or
Redis probes, and no latency creeping up.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import random
import statistics
import threading
import time
from typing import Any

import httpx
import openai
import redis

from llm_circuit_breaker import (
    BreakerRegistry,
    LLMCircuitBreaker,
    LLMCircuitBreakerError,
    circuit_breaker,
    with_fallbacks,
    with_retry,
)
from llm_circuit_breaker.httpx import AsyncCircuitBreakerTransport
from llm_circuit_breaker.storage import RedisStateStore
from llm_circuit_breaker.testing import FakeLLMServer

PHASES = ("healthy", "rate_limit", "outage", "truncate")
MODELS = [f"model-{i}" for i in range(8)]
MESSAGES = [{"role": "user", "content": "Hi"}]


def _rss_kib() -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class Soak:
    def __init__(self, server: FakeLLMServer, backup: FakeLLMServer, redis_url: str) -> None:
        self.server, self.backup = server, backup
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.latencies: list[float] = []
        self.calls = 0
        self.errors = 0
        self.redis = redis.Redis.from_url(redis_url)
        self.redis.flushall()
        self.store = RedisStateStore.from_url(redis_url, prefix="soak", near_cache=0.05)
        self.registry = BreakerRegistry(store=self.store)

    def done(self, started: float, ok: bool) -> None:
        with self.lock:
            self.latencies.append(time.monotonic() - started)
            self.calls += 1
            self.errors += not ok

    def cycle_phases(self, phase_seconds: float) -> None:
        for index in range(10**9):
            phase = PHASES[index % len(PHASES)]
            if phase == "healthy":
                self.server.healthy()
            elif phase == "rate_limit":
                self.server.rate_limit(requests_per_minute=600)
            elif phase == "outage":
                self.server.outage(status=503)
            else:
                self.server.truncate_streams()
            if self.stop.wait(phase_seconds):
                return

    def threads_worker(self, seed: int) -> None:
        rng = random.Random(seed)
        facade = LLMCircuitBreaker("soak-helper:{model}", registry=self.registry)
        url = self.server.openai_base_url + "/chat/completions"
        ask = with_retry(max_retries=1, initial_delay=0.05, max_delay=0.2)(facade.call)
        while not self.stop.is_set():
            model = rng.choice(MODELS)
            started = time.monotonic()
            try:
                if rng.random() < 0.3:
                    events = facade.stream(url, data={"model": model, "messages": MESSAGES})
                    for _ in events:
                        if rng.random() < 0.2:
                            break  # dropped without close(): the collector must report it
                    del events
                else:
                    ask(url, data={"model": model, "messages": MESSAGES})
                self.done(started, True)
            except LLMCircuitBreakerError:
                self.done(started, False)
                self.stop.wait(0.01)
        facade.close()

    def fallbacks_worker(self, seed: int) -> None:
        rng = random.Random(seed)
        primary_client = httpx.Client(base_url=self.server.openai_base_url, timeout=5.0)
        backup_client = httpx.Client(base_url=self.backup.openai_base_url, timeout=5.0)

        @circuit_breaker("soak-primary:{model}", registry=self.registry)
        def primary(model: str) -> Any:
            response = primary_client.post(
                "/chat/completions", json={"model": model, "messages": MESSAGES}
            )
            response.raise_for_status()
            return response.json()

        @circuit_breaker("soak-backup", registry=self.registry)
        def backup(model: str) -> Any:
            response = backup_client.post(
                "/chat/completions", json={"model": "backup", "messages": MESSAGES}
            )
            response.raise_for_status()
            return response.json()

        ask = with_fallbacks(primary, backup)
        while not self.stop.is_set():
            started = time.monotonic()
            try:
                ask(rng.choice(MODELS))
                self.done(started, True)
            except Exception:
                self.done(started, False)
                self.stop.wait(0.01)
        primary_client.close()
        backup_client.close()

    async def tasks(self, count: int) -> None:
        transport = AsyncCircuitBreakerTransport("soak-sdk:{model}", registry=BreakerRegistry())
        http_client = httpx.AsyncClient(transport=transport)
        client = openai.AsyncOpenAI(
            api_key="sk-soak",
            base_url=self.server.openai_base_url,
            http_client=http_client,
            max_retries=0,
        )

        async def one(rng: random.Random) -> None:
            while not self.stop.is_set():
                started = time.monotonic()
                try:
                    async with asyncio.timeout(rng.choice([0.05, 0.5, 5.0])):
                        stream = await client.chat.completions.create(
                            model=rng.choice(MODELS), messages=MESSAGES, stream=True
                        )
                        async for _ in stream:
                            pass
                    self.done(started, True)
                except (TimeoutError, openai.OpenAIError):
                    self.done(started, False)
                    await asyncio.sleep(0.01)

        await asyncio.gather(*(one(random.Random(i)) for i in range(count)))
        await client.close()

    def sample(self) -> dict[str, float]:
        # What the fake providers record is theirs, not the client's: dropped each interval.
        for server in (self.server, self.backup):
            del server.requests[:]
        with self.lock:
            latencies, self.latencies = self.latencies, []
            calls, errors, self.calls, self.errors = self.calls, self.errors, 0, 0
        inflight = sum(
            self.redis.zcard(key) for key in self.redis.scan_iter(match="soak:*:inflight")
        )
        p99 = statistics.quantiles(latencies, n=100)[98] if len(latencies) >= 100 else 0.0
        return {
            "rss_mib": _rss_kib() / 1024,
            "threads": threading.active_count(),
            "fds": len(os.listdir("/proc/self/fd")),
            "redis_inflight": inflight,
            "calls": calls,
            "errors": errors,
            "p99_ms": p99 * 1000,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--redis", default=None, help="a Redis URL (default: start one)")
    parser.add_argument("--threads", type=int, default=6)
    parser.add_argument("--tasks", type=int, default=16)
    args = parser.parse_args()

    redis_process = None
    url = args.redis
    if url is None:
        import shutil
        import socket
        import subprocess

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        binary = shutil.which("redis-server") or "redis-server"
        redis_process = subprocess.Popen(
            [binary, "--port", str(port), "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
        )
        url = f"redis://127.0.0.1:{port}/0"
        time.sleep(0.5)

    with FakeLLMServer() as server, FakeLLMServer() as backup:
        soak = Soak(server, backup, url)
        workers = [threading.Thread(target=soak.cycle_phases, args=(30.0,), daemon=True)]
        workers += [
            threading.Thread(target=soak.threads_worker, args=(i,), daemon=True)
            for i in range(args.threads)
        ]
        workers += [threading.Thread(target=soak.fallbacks_worker, args=(99,), daemon=True)]
        workers += [
            threading.Thread(target=lambda: asyncio.run(soak.tasks(args.tasks)), daemon=True)
        ]
        for worker in workers:
            worker.start()
        samples: list[dict[str, float]] = []
        deadline = time.monotonic() + args.minutes * 60
        while time.monotonic() < deadline:
            time.sleep(10.0)
            gc.collect()
            samples.append(soak.sample())
            print(" ".join(f"{k}={v:.1f}" for k, v in samples[-1].items()), flush=True)
        soak.stop.set()
        for worker in workers:
            worker.join(30)
    if redis_process is not None:
        redis_process.terminate()

    per_minute = 6
    first, last = samples[:per_minute], samples[-per_minute:]
    print("\n| measure | first minute | last minute |")
    print("|---|---:|---:|")
    for key in ("rss_mib", "threads", "fds", "redis_inflight", "p99_ms"):
        a = statistics.mean(s[key] for s in first)
        b = statistics.mean(s[key] for s in last)
        print(f"| {key} | {a:.1f} | {b:.1f} |")
    print(
        f"| calls per 10 s | {statistics.mean(s['calls'] for s in first):.0f} | "
        f"{statistics.mean(s['calls'] for s in last):.0f} |"
    )


if __name__ == "__main__":
    main()
