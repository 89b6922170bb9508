"""Per-call overhead of llm-circuit-breaker next to its peers, measured in one run.

    pip install -e ".[bench]" && python benchmarks/overhead.py           # full run (~1 min)
    python benchmarks/overhead.py --quick                                 # smoke run (CI)

Every figure is the time a guarded call takes minus the time of the same bare call, the best
of several repeats, so the numbers are the wrappers' own cost. Ratios compare peers measured
in this same process on this same machine; absolute numbers vary between machines.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import statistics
import threading
import time
import timeit
from collections.abc import Awaitable, Callable
from typing import Any

import aiobreaker
import backoff
import circuitbreaker
import purgatory
import pybreaker
import stamina
import tenacity
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from prometheus_client import CollectorRegistry

from llm_circuit_breaker import BreakerRegistry, circuit_breaker, with_retry
from llm_circuit_breaker.observability.otel import OpenTelemetryInstrumentation
from llm_circuit_breaker.observability.prometheus import PrometheusCollector

Fn = Callable[[], Any]
AFn = Callable[[], Awaitable[Any]]


def ns_per_call(fn: Fn, number: int, repeat: int) -> float:
    return min(timeit.repeat(fn, number=number, repeat=repeat)) / number * 1e9


def ns_per_acall(fn: AFn, number: int, repeat: int) -> float:
    async def run() -> float:
        best = float("inf")
        for _ in range(repeat):
            start = time.perf_counter()
            for _ in range(number):
                await fn()
            best = min(best, time.perf_counter() - start)
        return best / number * 1e9

    return asyncio.run(run())


def failing_fast(fn: Fn) -> Fn:
    def call() -> None:
        try:
            fn()
        except Exception:
            pass

    return call


def afailing_fast(fn: AFn) -> AFn:
    async def call() -> None:
        try:
            await fn()
        except Exception:
            pass

    return call


def work() -> int:
    return 1


async def awork() -> int:
    return 1


def broken() -> None:
    raise ConnectionError("down")


def floor() -> None:
    """The floor of failing fast: raise a new exception (caught by ``failing_fast``)."""
    raise ValueError("refused")


async def items() -> Any:
    for i in range(ITEMS):
        yield i


ITEMS = 10  # items per async generator call

# A chat completion as an SDK returns it (``model_dump()``), for ``with_retry`` to judge.
COMPLETION = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "model": "gpt-4o-mini",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello there!"},
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12},
}


def completion() -> dict[str, Any]:
    return COMPLETION


async def acompletion() -> dict[str, Any]:
    return COMPLETION


async def abroken() -> None:
    raise ConnectionError("down")


def trip(fn: Fn, times: int = 10) -> None:
    for _ in range(times):
        try:
            fn()
        except Exception:
            pass


async def atrip(fn: AFn, times: int = 10) -> None:
    for _ in range(times):
        try:
            await fn()
        except Exception:
            pass


def sync_breakers() -> dict[str, tuple[Fn, Fn]]:
    """name -> (closed-path call, call that fails fast)."""
    registry = BreakerRegistry()
    ours_ok = circuit_breaker("ok", registry=registry)(work)
    ours_open = circuit_breaker("open", registry=registry, failure_threshold=5)(broken)
    trip(ours_open)
    pb_ok = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=60)
    pb_open = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=60)
    pb_broken = pb_open(broken)
    trip(pb_broken)
    cb_ok = circuitbreaker.CircuitBreaker(failure_threshold=5, recovery_timeout=60)
    cb_broken = circuitbreaker.CircuitBreaker(failure_threshold=5, recovery_timeout=60)(broken)
    trip(cb_broken)
    factory = purgatory.SyncCircuitBreakerFactory(default_threshold=5, default_ttl=60)
    pg_ok = factory("ok")(work)
    pg_broken = factory("open")(broken)
    trip(pg_broken)
    return {
        "llm-circuit-breaker": (ours_ok, failing_fast(ours_open)),
        "pybreaker": (pb_ok(work), failing_fast(pb_broken)),
        "circuitbreaker": (cb_ok(work), failing_fast(cb_broken)),
        "purgatory": (pg_ok, failing_fast(pg_broken)),
        "floor: raise and catch a new exception": (work, failing_fast(floor)),
    }


def drained(gen: Callable[[], Any]) -> AFn:
    async def call() -> None:
        async for _ in gen():
            pass

    return call


def async_generators() -> dict[str, tuple[AFn, AFn]]:
    """name -> (a 10-item async generator read to its end, the same with ``break`` after the
    first item), guarded."""
    registry = BreakerRegistry()
    ours = circuit_breaker("agen", registry=registry)(items)
    cb = circuitbreaker.CircuitBreaker(failure_threshold=5, recovery_timeout=60)(items)

    def first_only(gen: Callable[[], Any]) -> AFn:
        async def call() -> None:
            stream = gen()
            async for _ in stream:
                break
            await stream.aclose()

        return call

    return {
        "llm-circuit-breaker": (drained(ours), first_only(ours)),
        "circuitbreaker": (drained(cb), first_only(cb)),
    }


def async_breakers() -> dict[str, tuple[AFn, AFn]]:
    registry = BreakerRegistry()
    ours_ok = circuit_breaker("aok", registry=registry)(awork)
    ours_open = circuit_breaker("aopen", registry=registry, failure_threshold=5)(abroken)
    ab_ok = aiobreaker.CircuitBreaker(fail_max=5, timeout_duration=datetime.timedelta(seconds=60))
    ab_open = aiobreaker.CircuitBreaker(fail_max=5, timeout_duration=datetime.timedelta(seconds=60))
    ab_broken = ab_open(abroken)
    factory = purgatory.AsyncCircuitBreakerFactory(default_threshold=5, default_ttl=60)
    pg_ok = factory("aok")(awork)
    pg_broken = factory("aopen")(abroken)

    async def prepare() -> None:
        for fn in (ours_open, ab_broken, pg_broken):
            await atrip(fn)

    asyncio.run(prepare())
    return {
        "llm-circuit-breaker": (ours_ok, afailing_fast(ours_open)),
        "aiobreaker": (ab_ok(awork), afailing_fast(ab_broken)),
        "purgatory": (pg_ok, afailing_fast(pg_broken)),
    }


def retries() -> dict[str, tuple[Fn, AFn]]:
    """name -> (sync call that succeeds first time, async one)."""
    pb = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=60)
    registry = BreakerRegistry()
    tenacity_retry = tenacity.retry(
        stop=tenacity.stop_after_attempt(4),
        wait=tenacity.wait_random_exponential(1, 30),
        reraise=True,
    )
    return {
        "llm-circuit-breaker with_retry": (with_retry()(work), with_retry()(awork)),
        "tenacity": (tenacity_retry(work), tenacity_retry(awork)),
        "stamina": (
            stamina.retry(on=ConnectionError, attempts=4)(work),
            stamina.retry(on=ConnectionError, attempts=4)(awork),
        ),
        "backoff": (
            backoff.on_exception(backoff.expo, ConnectionError, max_tries=4)(work),
            backoff.on_exception(backoff.expo, ConnectionError, max_tries=4)(awork),
        ),
        "llm-circuit-breaker with_retry + circuit_breaker": (
            with_retry()(circuit_breaker("s", registry=registry)(work)),
            with_retry()(circuit_breaker("a", registry=registry)(awork)),
        ),
        "tenacity + pybreaker": (tenacity_retry(pb(work)), tenacity_retry(pb(awork))),
        "llm-circuit-breaker with_retry, a completion dict": (
            with_retry()(completion),
            with_retry()(acompletion),
        ),
        "tenacity, a completion dict": (tenacity_retry(completion), tenacity_retry(acompletion)),
    }


def threaded_calls_per_second(fn: Fn, threads: int, calls: int) -> float:
    barrier = threading.Barrier(threads + 1)

    def worker() -> None:
        barrier.wait()
        for _ in range(calls):
            fn()

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for thread in pool:
        thread.start()
    barrier.wait()
    start = time.perf_counter()
    for thread in pool:
        thread.join()
    return threads * calls / (time.perf_counter() - start)


def sleeping_wall_time(fn: Fn, threads: int = 4, calls: int = 10) -> float:
    def worker() -> None:
        for _ in range(calls):
            fn()

    start = time.perf_counter()
    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    return time.perf_counter() - start


def nap() -> None:
    time.sleep(0.002)


def print_instrumentation_costs(
    number: int, repeat: int, base: float, abase: float, plain: dict[str, float]
) -> None:
    """What OpenTelemetry instrumentation costs per call: the exporters (read at collection),
    the span each guarded call then gets (a CLIENT span per logical call, its attempts as
    child spans) and the span events of refusals, with the spans recorded (an SDK tracer that
    samples everything) and not (one that samples nothing). Without instrumentation a call
    pays one read of the tracing hook slot (the first rows)."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

    rows: list[tuple[str, float]] = [
        (f"{label}, no instrumentation", value) for label, value in plain.items()
    ]
    for label, sampler in (("no recording span", ALWAYS_OFF), ("recording span", None)):
        tracer_provider = TracerProvider() if sampler is None else TracerProvider(sampler=sampler)
        registry = BreakerRegistry()
        otel = OpenTelemetryInstrumentation(
            registry,
            meter_provider=MeterProvider(metric_readers=[InMemoryMetricReader()]),
            tracer_provider=tracer_provider,
        ).instrument()
        closed = circuit_breaker("closed", registry=registry)(work)
        aclosed = circuit_breaker("aclosed", registry=registry)(awork)
        retried = with_retry()(work)
        stacked = with_retry()(circuit_breaker("stacked", registry=registry)(work))
        broken_one = circuit_breaker("open", registry=registry)(broken)
        trip(broken_one)
        calls = max(number // 20, 100)  # a recorded span costs microseconds: fewer calls
        rows.append(
            (
                f"sync closed, with instrumentation, {label}",
                ns_per_call(closed, calls, repeat) - base,
            )
        )
        rows.append(
            (
                f"async closed, with instrumentation, {label}",
                ns_per_acall(aclosed, calls, repeat) - abase,
            )
        )
        rows.append(
            (
                f"with_retry, with instrumentation, {label}",
                ns_per_call(retried, calls, repeat) - base,
            )
        )
        rows.append(
            (
                f"with_retry + circuit_breaker, with instrumentation, {label} (two spans)",
                ns_per_call(stacked, calls, repeat) - base,
            )
        )
        fast = ns_per_call(failing_fast(broken_one), calls, repeat) - base
        rows.append((f"sync fast-fail, with instrumentation, {label} (an event each)", fast))
        otel.uninstrument()
    print("\n| OpenTelemetry instrumentation, per call | ns |")
    print("|---|---:|")
    for label, value in rows:
        print(f"| {label} | {value:.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few iterations: a smoke run")
    args = parser.parse_args()
    number, repeat = (2_000, 2) if args.quick else (200_000, 7)

    rounds = 1 if args.quick else 2
    base = min(ns_per_call(work, number, repeat) for _ in range(rounds))
    abase = min(ns_per_acall(awork, number, repeat) for _ in range(rounds))
    print(f"bare sync call {base:.0f} ns, bare async call {abase:.0f} ns (subtracted below)\n")

    def best_of_rounds(
        peers: dict[str, tuple[Any, Any]],
        measures: tuple[Callable[..., float], Callable[..., float]],
    ) -> dict[str, tuple[float, float]]:
        """Each peer measured once per round, rounds interleaved; the best of each kept."""
        best: dict[str, list[float]] = {name: [float("inf")] * 2 for name in peers}
        for _ in range(rounds):
            for name, fns in peers.items():
                # purgatory retains ~1.6 KB per call: a tenth of the calls keeps memory sane.
                calls = number // 10 if name == "purgatory" else number
                for i in range(2):
                    best[name][i] = min(best[name][i], measures[i](fns[i], calls, repeat))
        offsets = [base if measure is ns_per_call else abase for measure in measures]
        return {
            name: (values[0] - offsets[0], values[1] - offsets[1]) for name, values in best.items()
        }

    print("| sync breaker | closed (ns) | fast-fail (ns) |")
    print("|---|---:|---:|")
    sync_rows = best_of_rounds(sync_breakers(), (ns_per_call, ns_per_call))
    for name, (closed, fast) in sync_rows.items():
        print(f"| {name} | {closed:.0f} | {fast:.0f} |")

    print("\n| async breaker | closed (ns) | fast-fail (ns) |")
    print("|---|---:|---:|")
    async_rows = best_of_rounds(async_breakers(), (ns_per_acall, ns_per_acall))
    for name, (closed, fast) in async_rows.items():
        print(f"| {name} | {closed:.0f} | {fast:.0f} |")

    print("\n| async generator, 10 items | read to the end (ns) | first item, closed (ns) |")
    print("|---|---:|---:|")

    async def bare_items() -> None:
        async for _ in items():
            pass

    async def bare_first() -> None:
        stream = items()
        async for _ in stream:
            break
        await stream.aclose()

    agen_base = (
        min(ns_per_acall(bare_items, number // 4, repeat) for _ in range(rounds)),
        min(ns_per_acall(bare_first, number // 4, repeat) for _ in range(rounds)),
    )
    agen_best: dict[str, list[float]] = {}
    for _ in range(rounds):
        for name, fns in async_generators().items():
            row = agen_best.setdefault(name, [float("inf")] * 2)
            for i in range(2):
                row[i] = min(row[i], ns_per_acall(fns[i], number // 4, repeat) - agen_base[i])
    for name, (whole, first) in agen_best.items():
        print(f"| {name} | {whole:.0f} | {first:.0f} |")

    print("\n| retry, first attempt succeeds | sync (ns) | async (ns) |")
    print("|---|---:|---:|")
    retry_rows = best_of_rounds(retries(), (ns_per_call, ns_per_acall))
    for name, (sync, asynchronous) in retry_rows.items():
        print(f"| {name} | {sync:.0f} | {asynchronous:.0f} |")

    exported = BreakerRegistry()
    PrometheusCollector(exported).register(CollectorRegistry())
    exporters = OpenTelemetryInstrumentation(
        exported,
        meter_provider=MeterProvider(metric_readers=[InMemoryMetricReader()]),
        trace_calls=False,  # the metrics read at collection alone: a span per call is below
    ).instrument()
    with_exporters = (
        ns_per_call(circuit_breaker("exported", registry=exported)(work), number, repeat) - base
    )
    exporters.uninstrument()
    print(f"\n| closed path with Prometheus + OpenTelemetry exporters | {with_exporters:.0f} ns |")
    print_instrumentation_costs(
        number,
        repeat,
        base,
        abase,
        {
            "sync closed": sync_rows["llm-circuit-breaker"][0],
            "async closed": async_rows["llm-circuit-breaker"][0],
            "with_retry": retry_rows["llm-circuit-breaker with_retry"][0],
            "sync fast-fail": sync_rows["llm-circuit-breaker"][1],
        },
    )

    registry = BreakerRegistry()
    ours = circuit_breaker("threads", registry=registry)(work)
    pb = pybreaker.CircuitBreaker()(work)
    calls = 2_000 if args.quick else 200_000
    tput = {
        name: statistics.median(threaded_calls_per_second(fn, 4, calls) for _ in range(3))
        for name, fn in (("llm-circuit-breaker", ours), ("pybreaker", pb), ("unguarded", work))
    }
    print("\n| 4 threads, one breaker | calls/s |")
    print("|---|---:|")
    for name, value in tput.items():
        print(f"| {name} | {value:,.0f} |")

    naps = {
        "unguarded": nap,
        "llm-circuit-breaker": circuit_breaker("naps", registry=registry)(nap),
        "pybreaker": pybreaker.CircuitBreaker()(nap),
    }
    walls = {name: min(sleeping_wall_time(fn) for _ in range(3)) for name, fn in naps.items()}
    print("\n| 4 threads x 10 calls of a 2 ms sleep | wall (ms) | vs unguarded |")
    print("|---|---:|---:|")
    for name, wall in walls.items():
        print(f"| {name} | {wall * 1e3:.1f} | {wall / walls['unguarded']:.2f}x |")

    ours_sync, pb_sync = sync_rows["llm-circuit-breaker"], sync_rows["pybreaker"]
    ours_async, ab_async = async_rows["llm-circuit-breaker"], async_rows["aiobreaker"]
    ours_retry, ten = retry_rows["llm-circuit-breaker with_retry"], retry_rows["tenacity"]
    ours_dict = retry_rows["llm-circuit-breaker with_retry, a completion dict"]
    ten_dict = retry_rows["tenacity, a completion dict"]
    cb_sync, floor_sync = (
        sync_rows["circuitbreaker"],
        sync_rows["floor: raise and catch a new exception"],
    )
    ours_agen, cb_agen = agen_best["llm-circuit-breaker"], agen_best["circuitbreaker"]
    stacked, ten_pb = (
        retry_rows["llm-circuit-breaker with_retry + circuit_breaker"],
        retry_rows["tenacity + pybreaker"],
    )
    print("\n| ratio | measured | target |")
    print("|---|---:|---:|")
    for label, value, target in (
        ("sync closed vs pybreaker", ours_sync[0] / pb_sync[0], "<= 0.25"),
        ("closed with exporters vs without", with_exporters / ours_sync[0], "<= 2.0"),
        ("sync fast-fail vs pybreaker", ours_sync[1] / pb_sync[1], "<= 0.30"),
        ("sync fast-fail vs circuitbreaker", ours_sync[1] / cb_sync[1], "<= 0.50"),
        ("sync fast-fail vs raise-and-catch floor", ours_sync[1] / floor_sync[1], "<= 1.8"),
        ("async generator read to its end vs circuitbreaker", ours_agen[0] / cb_agen[0], "<= 0.6"),
        ("async generator closed early vs circuitbreaker", ours_agen[1] / cb_agen[1], "<= 0.6"),
        ("async closed vs aiobreaker", ours_async[0] / ab_async[0], "<= 0.35"),
        ("async fast-fail vs aiobreaker", ours_async[1] / ab_async[1], "<= 0.35"),
        (
            "4-thread throughput vs pybreaker",
            tput["llm-circuit-breaker"] / tput["pybreaker"],
            ">= 2.5",
        ),
        (
            "sleeping calls vs unguarded",
            walls["llm-circuit-breaker"] / walls["unguarded"],
            "<= 1.10",
        ),
        ("with_retry sync vs tenacity", ours_retry[0] / ten[0], "<= 0.05"),
        ("with_retry async vs tenacity", ours_retry[1] / ten[1], "<= 0.05"),
        ("with_retry sync, completion dict vs tenacity", ours_dict[0] / ten_dict[0], "<= 0.01"),
        ("with_retry async, completion dict vs tenacity", ours_dict[1] / ten_dict[1], "<= 0.01"),
        ("stacked sync vs tenacity+pybreaker", stacked[0] / ten_pb[0], "<= 0.06"),
        ("stacked async vs tenacity+pybreaker", stacked[1] / ten_pb[1], "<= 0.06"),
    ):
        print(f"| {label} | {value:.3f} | {target} |")


if __name__ == "__main__":
    main()
