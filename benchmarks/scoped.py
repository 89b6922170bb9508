"""The cost of a scoped breaker name (``"openai:{model}"``) per call, and the memory of many
scopes, same run.

    python benchmarks/scoped.py            # ~20 s
    python benchmarks/scoped.py --quick

Per call, best of rounds of N calls in CLOSED: a bare function, the same function under
``@circuit_breaker("openai")`` and under ``@circuit_breaker("openai:{model}")`` (the name is
filled from the call's arguments, its breaker looked up in a per-decoration cache). Goal: a
scoped call <= 2x an unscoped one. Then, per call: cycling through 10,000 live scopes (all
cached; goal <= 2x an unscoped call) and through 2x ``max_breakers`` distinct scopes (every
call misses: the least recently used breaker dropped, and reused for the new scope when
nothing else holds it; goal <= 5x), with the collector on. Last, the memory
of 100,000 distinct scopes under the default ``max_breakers`` (10,000): the registry's bound
holds, and what each live scoped breaker costs.
"""

from __future__ import annotations

import argparse
import gc
import time
import tracemalloc

from llm_circuit_breaker import BreakerRegistry, circuit_breaker


def _best(func: object, calls: int, rounds: int) -> float:
    call = func  # type: ignore[assignment]
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(calls):
            call("hi", model="gpt-4o")  # type: ignore[operator]
        best = min(best, (time.perf_counter() - started) / calls)
    return best


def _per_call(func: object, keys: range, rounds: int) -> float:
    call = func  # type: ignore[assignment]
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        for key in keys:
            call(key)  # type: ignore[operator]
        best = min(best, (time.perf_counter() - started) / len(keys))
    return best


def _cycling(bound: int, rounds: int) -> None:
    """Per call: one breaker, ``bound`` live scopes, 2 x ``bound`` scopes through a bound of
    ``bound`` (the collector on, as in production)."""
    registry = BreakerRegistry(max_breakers=bound)

    def bare(tenant: int) -> int:
        return tenant

    unscoped = circuit_breaker("tenants", registry=registry)(bare)
    scoped = circuit_breaker("tenant:{tenant}", registry=registry)(bare)
    live, churn = range(bound), range(2 * bound)
    for key in churn:  # warm: every breaker made once, then evicted
        scoped(key)
    times = {"unscoped": float("inf"), "live": float("inf"), "churn": float("inf")}
    for _ in range(2):  # interleaved
        times["unscoped"] = min(times["unscoped"], _per_call(unscoped, live, rounds))
        for key in live:  # the live set cached again after the churn
            scoped(key)
        times["live"] = min(times["live"], _per_call(scoped, live, rounds))
        for key in churn:  # the live set cycled out: every timed call below misses
            scoped(key)
        times["churn"] = min(times["churn"], _per_call(scoped, churn, rounds))
    base = times["unscoped"]
    print(
        f"\nper call, max_breakers {bound:,}: unscoped {base * 1e9:.0f} ns; {bound:,} live "
        f"scopes {times['live'] * 1e9:.0f} ns ({times['live'] / base:.2f}x, goal <= 2x); "
        f"{2 * bound:,} scopes cycling {times['churn'] * 1e6:.2f} us "
        f"({times['churn'] / base:.1f}x, goal <= 5x)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    calls, rounds, scopes = (20_000, 3, 20_000) if args.quick else (200_000, 7, 100_000)
    registry = BreakerRegistry()

    def bare(prompt: str, model: str = "gpt-4o-mini") -> str:
        return prompt

    unscoped = circuit_breaker("openai", registry=registry)(bare)
    scoped = circuit_breaker("openai:{model}", registry=registry)(bare)
    times = {"bare": 0.0, "unscoped": 0.0, "scoped": 0.0}
    for _ in range(2):  # interleaved rounds: a noisy moment cannot skew one row
        for name, func in (("bare", bare), ("unscoped", unscoped), ("scoped", scoped)):
            measured = _best(func, calls, rounds)
            times[name] = measured if not times[name] else min(times[name], measured)
    print("| call | ns per call | overhead (ns) |\n|---|---:|---:|")
    for name, seconds in times.items():
        print(f"| {name} | {seconds * 1e9:.0f} | {(seconds - times['bare']) * 1e9:.0f} |")
    print(
        f"\nscoped / unscoped, whole call: {times['scoped'] / times['unscoped']:.2f}x (goal <= 2x)"
    )

    _cycling(10_000, rounds)  # the default max_breakers

    many = BreakerRegistry()

    @circuit_breaker("tenant:{tenant}", registry=many)
    def per_tenant(tenant: int) -> int:
        return tenant

    per_tenant(-1)  # warm
    gc.collect()
    objects = len(gc.get_objects())
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    started = time.perf_counter()
    for tenant in range(scopes):
        per_tenant(tenant)
    elapsed = time.perf_counter() - started
    gc.collect()
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    objects = len(gc.get_objects()) - objects
    live = len(many)
    print(
        f"\n{scopes:,} distinct scopes: {live:,} live breakers (max_breakers "
        f"{many.max_breakers:,}), {used / 2**20:.1f} MiB in all, {used / live:,.0f} B and "
        f"{objects / live:.1f} GC-tracked objects per live breaker, "
        f"{elapsed / scopes * 1e6:.1f} us per first call of a scope"
    )


if __name__ == "__main__":
    main()
