"""What one breaker costs, beside its peers, in one run: memory per idle breaker, creation
time, GC-tracked objects, and the time of a full ``gc.collect()`` with many breakers alive.

    python benchmarks/per_breaker.py            # 10,000 breakers per row, best of 5 (~30 s)
    python benchmarks/per_breaker.py --quick    # 2,000 breakers, best of 2

Rows: this library's breakers made through a registry (``registry.get_or_create(name)``),
decorated functions (``@circuit_breaker(name)``), scopes of one scoped decoration
(``@circuit_breaker("tenant:{tenant}")``, each scope called once: its breaker, its entries in
the registry's LRU order and the decoration's cache, what its first call made), beside
``pybreaker``, ``aiobreaker`` and ``circuitbreaker`` where installed (a peer's breaker made
with its defaults; ``circuitbreaker`` decorates a function, like the decorated row).

- **bytes**: ``tracemalloc`` bytes still allocated after making N breakers and a
  ``gc.collect()``, divided by N (the breakers kept alive in a list).
- **us to make**: wall time per breaker to make N, best of the rounds.
- **GC objects**: ``len(gc.get_objects())`` after minus before, divided by N (what the
  cyclic collector must walk for each breaker).
- **gc.collect() ms**: a full collection with the N breakers alive (best of the rounds).

A scope is made by its first call, so its row's time to make includes that call's own cost;
what making a scope adds is printed apart: its first call less a later call of the same
scope (N scopes alive both times), beside pybreaker's time to make a breaker.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

from llm_circuit_breaker import BreakerRegistry, circuit_breaker

Maker = Callable[[int], Callable[[int], Any]]


def _ours_registry(n: int) -> Callable[[int], Any]:
    registry = BreakerRegistry(max_breakers=n + 1)
    make = registry.get_or_create
    keep: list[Any] = [registry]

    def one(i: int) -> Any:
        return make(f"svc-{i}")

    one.keep = keep  # type: ignore[attr-defined]
    return one


def _ours_decorated(n: int) -> Callable[[int], Any]:
    registry = BreakerRegistry(max_breakers=n + 1)

    def one(i: int) -> Any:
        def call(prompt: str) -> str:
            return prompt

        return circuit_breaker(f"svc-{i}", registry=registry)(call)

    return one


def _ours_scoped(n: int) -> Callable[[int], Any]:
    registry = BreakerRegistry(max_breakers=n + 1)

    @circuit_breaker("tenant:{tenant}", registry=registry)
    def per_tenant(tenant: int) -> int:
        return tenant

    def one(i: int) -> Any:
        per_tenant(i)  # the scope's breaker is made on its first call and kept by the registry

    one.keep = [registry, per_tenant]  # type: ignore[attr-defined]
    return one


def _peer(module: str) -> Callable[[int], Callable[[int], Any]] | None:
    try:
        lib = importlib.import_module(module)
    except ImportError:
        return None
    if module == "circuitbreaker":

        def factory(n: int) -> Callable[[int], Any]:
            # circuitbreaker's monitor keeps every breaker by name: cleared, so that a round's
            # new breakers do not free the last round's (a best of rounds would be too low)
            lib.CircuitBreakerMonitor.circuit_breakers.clear()

            def one(i: int) -> Any:
                def call(prompt: str) -> str:
                    return prompt

                return lib.circuit(name=f"svc-{i}")(call)

            return one

        return factory

    def factory(n: int) -> Callable[[int], Any]:
        breaker = lib.CircuitBreaker

        def one(i: int) -> Any:
            return breaker(name=f"svc-{i}")

        return one

    return factory


def measure(factory: Callable[[int], Callable[[int], Any]], n: int) -> dict[str, float]:
    """One round: memory, GC objects, creation time and a full collection, N breakers."""
    gc.collect()
    one = factory(n)
    one(-1)  # warm: first-use imports and caches are not a breaker's cost
    kept: list[Any] = [None] * n
    gc.collect()
    objects_before = len(gc.get_objects())
    tracemalloc.start()
    memory_before = tracemalloc.get_traced_memory()[0]
    for i in range(n):
        kept[i] = one(i)
    gc.collect()
    memory = tracemalloc.get_traced_memory()[0] - memory_before
    tracemalloc.stop()
    objects = len(gc.get_objects()) - objects_before
    started = time.perf_counter()
    gc.collect()
    collect = time.perf_counter() - started
    del kept, one
    gc.collect()
    # Creation time apart, without tracemalloc (which slows every allocation).
    one = factory(n)
    one(-1)
    kept = [None] * n
    started = time.perf_counter()
    for i in range(n):
        kept[i] = one(i)
    make = time.perf_counter() - started
    del kept, one
    gc.collect()
    return {
        "bytes": memory / n,
        "make_us": make / n * 1e6,
        "objects": objects / n,
        "collect_ms": collect * 1e3,
    }


def scope_making(n: int, rounds: int) -> tuple[float, float]:
    """Microseconds per scope of a scope's first call (which makes its breaker) and of a
    later call of the same scope (its breaker made, its counters too), ``n`` scopes alive, best
    of ``rounds``: what making a scope adds to the call that makes it is their difference."""
    first = later = float("inf")
    for _ in range(rounds):
        gc.collect()
        registry = BreakerRegistry(max_breakers=n + 1)

        @circuit_breaker("tenant:{tenant}", registry=registry)
        def per_tenant(tenant: int) -> int:
            return tenant

        per_tenant(-1)  # warm
        scopes = range(n)
        started = time.perf_counter()
        for i in scopes:
            per_tenant(i)
        first = min(first, (time.perf_counter() - started) / n)
        for i in scopes:  # the second clean success makes a scope's lock-free counter
            per_tenant(i)
        started = time.perf_counter()
        for i in scopes:
            per_tenant(i)
        later = min(later, (time.perf_counter() - started) / n)
        del per_tenant, registry
    return first * 1e6, later * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("-n", type=int, default=None, help="breakers per row")
    args = parser.parse_args()
    n = args.n or (2_000 if args.quick else 10_000)
    rounds = 2 if args.quick else 5
    rows: dict[str, Callable[[int], Callable[[int], Any]]] = {
        "llm-circuit-breaker (registry)": _ours_registry,
        "llm-circuit-breaker (decorated)": _ours_decorated,
        "llm-circuit-breaker (scoped)": _ours_scoped,
    }
    for peer in ("pybreaker", "aiobreaker", "circuitbreaker"):
        factory = _peer(peer)
        if factory is not None:
            rows[peer] = factory
    best: dict[str, dict[str, float]] = {}
    for _ in range(rounds):  # interleaved: a noisy moment cannot skew one row
        for label, factory in rows.items():
            figures = measure(factory, n)
            kept = best.setdefault(label, figures)
            for key, value in figures.items():
                kept[key] = min(kept[key], value)
    base = best.get("pybreaker")
    print(f"{n:,} breakers per row, best of {rounds} rounds\n")
    print("| breakers | bytes each | us to make | GC objects each | gc.collect() ms |")
    print("|---|---:|---:|---:|---:|")
    for label, figures in best.items():
        print(
            f"| {label} | {figures['bytes']:,.0f} | {figures['make_us']:.1f} | "
            f"{figures['objects']:.1f} | {figures['collect_ms']:.1f} |"
        )
    if base is not None:
        print("\nratios to pybreaker (bytes, time to make, GC objects, gc.collect()):")
        for label, figures in best.items():
            if label.startswith("llm"):
                print(
                    f"  {label}: {figures['bytes'] / base['bytes']:.2f}x, "
                    f"{figures['make_us'] / base['make_us']:.2f}x, "
                    f"{figures['objects'] / base['objects']:.2f}x, "
                    f"{figures['collect_ms'] / base['collect_ms']:.2f}x"
                )
        first, later = scope_making(n, rounds)
        making = first - later
        print(
            f"\na scope's first call {first:.2f} us, a later call of it {later:.2f} us: making "
            f"a scope adds {making:.2f} us to its first call, "
            f"{making / base['make_us']:.2f}x pybreaker's time to make a breaker"
        )
        print("\ngoals (registry and scoped): bytes <= pybreaker, no slower to make, <= 12 objects")
        for label in ("llm-circuit-breaker (registry)", "llm-circuit-breaker (scoped)"):
            figures = best[label]
            scope = label.endswith("(scoped)")  # its making, apart from its first call's own cost
            met = {
                "bytes": figures["bytes"] <= base["bytes"],
                "make": (making if scope else figures["make_us"]) <= base["make_us"],
                "objects": figures["objects"] <= 12,
            }
            print(
                f"  {label}: "
                + ", ".join(f"{k} {'met' if v else 'NOT met'}" for k, v in met.items())
            )


if __name__ == "__main__":
    main()
