"""Callers against a real quota, side by side in one run: who gets the allowance, who draws 429s.

    pip install -e ".[bench,redis]" && python benchmarks/ratelimit.py     # 30 s, ratelimit.png
    python benchmarks/ratelimit.py --duration 8 --no-plot                 # quick

Every mode gets its own fake provider enforcing the same quota: ``--per-minute`` requests per
minute (default 60), a continuously refilling bucket of that capacity, OpenAI-format
``x-ratelimit-*-requests`` headers on every answer and a 429 whose ``retry-after-ms`` /
``retry-after`` is the real wait (``testing.Quota``). 32 async callers per mode, each calling
back to back (0.05 s apart), for ``--duration`` seconds:

* unprotected: ``AsyncOpenAI(max_retries=0)``;
* openai SDK retries: ``AsyncOpenAI()`` (2 retries, ``retry-after`` honoured);
* tenacity alone: ``AsyncOpenAI(max_retries=0)`` in ``tenacity.AsyncRetrying`` (4 attempts,
  random exponential backoff);
* decorators: ``@with_retry @circuit_breaker`` around ``AsyncOpenAI(max_retries=0)``: the
  library sees the 429s (and their ``retry-after``) but not the successes' headers;
* LLMCircuitBreaker: ``acall`` through the library's HTTP helper: every response's headers
  pace the throttle;
* httpx transport: ``AsyncOpenAI(max_retries=0, http_client=...)`` over
  ``AsyncCircuitBreakerTransport``: every response's headers, with the SDK unchanged;
* redis x4: 4 processes x 8 callers through ``LLMCircuitBreaker`` sharing one breaker and one
  throttle in Redis (needs ``redis-server`` on the PATH); ``--near-cache 0.05`` makes them
  lease throttle slots in batches.

The allowance of a run is the bucket's capacity plus what it refills in the run:
``per_minute + per_minute / 60 * duration``. Reported per mode: calls answered / allowance,
429s drawn / requests sent, and the errors the callers saw, by type.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import multiprocessing
import shutil
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from llm_circuit_breaker import (
    BreakerRegistry,
    LLMCircuitBreaker,
    circuit_breaker,
    with_retry,
)
from llm_circuit_breaker.httpx import refusal
from llm_circuit_breaker.testing import FakeLLMServer, Quota, Reply

CALLERS = 32
BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
Call = Callable[[], Awaitable[Any]]


class Provider:
    """A fake provider with its own quota, recording when it answered what."""

    def __init__(self, per_minute: int) -> None:
        self.quota = Quota(per_minute, 60.0)
        self.answers: list[tuple[float, int]] = []  # (monotonic time, status)
        self.server = FakeLLMServer(responder=self._reply)

    def _reply(self, _number: int) -> Reply:
        reply = self.quota.reply()
        self.answers.append((time.monotonic(), reply.status))
        return reply


async def _callers(call: Call, count: int, until: float) -> collections.Counter[str]:
    seen: collections.Counter[str] = collections.Counter()

    async def caller() -> None:
        while time.monotonic() < until:
            try:
                await call()
            except Exception as exc:  # every error a caller sees is counted by type
                refused = refusal(exc)  # the transport's refusal inside the SDK's error
                name = type(exc).__name__
                if refused is not None and refused is not exc:
                    name = f"{type(refused).__name__} in {name}"
                seen[name] += 1
            else:
                seen["answered"] += 1
            await asyncio.sleep(0.05)

    await asyncio.gather(*(caller() for _ in range(count)))
    return seen


def _sdk(url: str, **kwargs: Any) -> Any:
    import openai

    return openai.AsyncOpenAI(api_key="sk-bench", base_url=url + "/v1", **kwargs)


async def _mode(name: str, url: str, until: float) -> collections.Counter[str]:
    """Run one mode's callers against ``url`` until ``until``; what they saw."""
    import tenacity

    helper: LLMCircuitBreaker | None = None
    registry = BreakerRegistry()
    if name == "unprotected":
        client = _sdk(url, max_retries=0)
        call: Call = lambda: client.chat.completions.create(**BODY)  # noqa: E731
    elif name == "openai SDK retries":
        client = _sdk(url)
        call = lambda: client.chat.completions.create(**BODY)  # noqa: E731
    elif name == "tenacity alone":
        client = _sdk(url, max_retries=0)
        retrying = tenacity.AsyncRetrying(
            stop=tenacity.stop_after_attempt(4),
            wait=tenacity.wait_random_exponential(multiplier=0.5, max=20.0),
            reraise=True,
        )

        async def attempt() -> Any:
            return await client.chat.completions.create(**BODY)

        call = lambda: retrying(attempt)  # noqa: E731
    elif name == "decorators":
        client = _sdk(url, max_retries=0)

        @with_retry(max_retries=3)
        @circuit_breaker("bench-decorators", registry=registry)
        async def decorated() -> Any:
            return await client.chat.completions.create(**BODY)

        call = decorated
    elif name == "LLMCircuitBreaker":
        helper = LLMCircuitBreaker(name="bench-helper", registry=registry)
        call = lambda: helper.acall(url + "/v1/chat/completions", data=BODY)  # noqa: E731
    elif name == "httpx transport":
        import httpx

        from llm_circuit_breaker.httpx import AsyncCircuitBreakerTransport

        breaker = registry.get_or_create("bench-transport")
        transport = AsyncCircuitBreakerTransport(breaker)
        client = _sdk(url, max_retries=0, http_client=httpx.AsyncClient(transport=transport))

        @with_retry(max_retries=3)
        async def through_transport() -> Any:
            return await client.chat.completions.create(**BODY)

        call = through_transport
    else:  # pragma: no cover - the modes are listed below
        raise ValueError(name)
    try:
        return await _callers(call, CALLERS, until)
    finally:
        if helper is not None:
            await helper.aclose()


def _redis_worker(
    url: str, redis_url: str, until_wall: float, callers: int, near_cache: float
) -> dict[str, int]:
    """One of the Redis mode's processes (spawned): ``callers`` callers sharing the breaker."""
    from llm_circuit_breaker.storage import RedisStateStore

    async def run() -> collections.Counter[str]:
        store = RedisStateStore.from_url(
            redis_url, prefix="bench", asyncio=True, near_cache=near_cache
        )
        helper = LLMCircuitBreaker(name="bench-redis", registry=BreakerRegistry(store=store))
        until = time.monotonic() + (until_wall - time.time())
        seen = await _callers(
            lambda: helper.acall(url + "/v1/chat/completions", data=BODY), callers, until
        )
        await helper.aclose()
        return seen

    return dict(asyncio.run(run()))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def main_async(
    duration: float, per_minute: int, modes: list[str], redis_url: str | None, near_cache: float
) -> dict[str, Any]:
    providers = {name: Provider(per_minute) for name in modes}
    for provider in providers.values():
        await provider.server.astart()
    started = time.monotonic()
    until = started + duration
    seen: dict[str, collections.Counter[str]] = {}
    tasks = {
        name: asyncio.create_task(_mode(name, providers[name].server.url, until))
        for name in modes
        if name != "redis x4"
    }
    if "redis x4" in modes and redis_url is not None:
        url = providers["redis x4"].server.url
        until_wall = time.time() + duration
        with multiprocessing.get_context("spawn").Pool(4) as pool:
            pending = pool.starmap_async(
                _redis_worker, [(url, redis_url, until_wall, CALLERS // 4, near_cache)] * 4
            )
            total: collections.Counter[str] = collections.Counter()
            for each in await asyncio.to_thread(pending.get):
                total.update(each)
        seen["redis x4"] = total
    for name, task in tasks.items():
        seen[name] = await task
    for provider in providers.values():
        await provider.server.astop()
    elapsed = max(duration, time.monotonic() - started)
    allowance = per_minute + per_minute / 60.0 * duration
    results: dict[str, Any] = {"allowance": allowance, "seconds": round(elapsed, 1)}
    for name in modes:
        answers = providers[name].answers
        ok = sum(1 for at, status in answers if status == 200 and at <= until)
        limited = sum(1 for _, status in answers if status == 429)
        errors = {k: v for k, v in seen[name].items() if k != "answered"}
        results[name] = {
            "answered / allowance": round(ok / allowance, 3),
            "requests sent": len(answers),
            "429s": limited,
            "429 share": round(limited / max(1, len(answers)), 3),
            "errors seen by callers": dict(sorted(errors.items(), key=lambda kv: -kv[1])),
        }
    results["timeline"] = {
        name: [(round(at - started, 2), status) for at, status in providers[name].answers]
        for name in modes
    }
    return results


def _plot(path: Path, results: dict[str, Any], duration: float, per_minute: int) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)")
        return
    timeline = results["timeline"]
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(11, 7), sharex=True)
    bins = int(duration)
    for name, answers in timeline.items():
        ok, limited = [0] * bins, [0] * bins
        for at, status in answers:
            if 0 <= at < bins:
                (ok if status == 200 else limited)[int(at)] += 1
        top.plot(range(bins), ok, label=name, linewidth=1.2)
        bottom.plot(range(bins), limited, label=name, linewidth=1.2)
    top.axhline(per_minute / 60.0, color="black", linestyle="--", label="refill rate")
    top.set_ylabel("answered calls / s")
    top.set_title(
        f"{CALLERS} callers per mode, quota {per_minute}/min (bucket of {per_minute}); "
        "answered after the first burst"
    )
    top.set_ylim(0, max(4.0, per_minute / 60.0 * 3))
    top.legend(loc="upper right", fontsize=8)
    bottom.set_ylabel("429s / s")
    bottom.set_yscale("symlog", linthresh=1.0)
    bottom.set_ylim(bottom=0)
    bottom.set_xlabel("seconds")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    print(f"plot written to {path}")


MODES = [
    "unprotected",
    "openai SDK retries",
    "tenacity alone",
    "decorators",
    "LLMCircuitBreaker",
    "httpx transport",
    "redis x4",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--per-minute", type=int, default=60)
    parser.add_argument("--modes", nargs="*", default=MODES, choices=MODES)
    parser.add_argument("--plot", type=Path, default=Path(__file__).with_name("ratelimit.png"))
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument(
        "--near-cache", type=float, default=0.0, help="the Redis mode's near_cache (leases)"
    )
    args = parser.parse_args()
    modes = [m for m in args.modes if m != "redis x4" or shutil.which("redis-server")]
    redis_process, redis_url = None, None
    if "redis x4" in modes:
        port = _free_port()
        redis_process = subprocess.Popen(
            ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
        )
        time.sleep(0.3)
        redis_url = f"redis://127.0.0.1:{port}/0"
    try:
        results = asyncio.run(
            main_async(args.duration, args.per_minute, modes, redis_url, args.near_cache)
        )
    finally:
        if redis_process is not None:
            redis_process.terminate()
    if not args.no_plot:
        _plot(args.plot, results, args.duration, args.per_minute)
    timeline = results.pop("timeline")
    del timeline
    print(json.dumps(results, indent=2))
    print(f"\nallowance {results['allowance']:.0f} calls in {args.duration:g} s")
    print("\n| mode | answered / allowance | requests sent | 429 share | errors seen by callers |")
    print("|---|---:|---:|---:|---|")
    for name in modes:
        row = results[name]
        errors = ", ".join(f"{k} {v}" for k, v in row["errors seen by callers"].items()) or "none"
        print(
            f"| {name} | {row['answered / allowance']:.2f} | {row['requests sent']} | "
            f"{row['429 share']:.1%} | {errors} |"
        )


if __name__ == "__main__":
    main()
