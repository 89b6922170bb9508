"""Redis round trips, Redis CPU and time per guarded call: llm-circuit-breaker (with and
without its near-cache, CLOSED and under a throttle) vs pybreaker's storage vs a bare PING, in
one process and in four, and how long a trip in one process takes to be seen by another.

    pip install -e ".[bench,redis]" && python benchmarks/redis_roundtrips.py [--quick]

Starts its own redis-server on a free loopback port (needs the binary on the PATH). Counts
the commands each library sends per successful call, reads redis-server's own CPU per call
(INFO commandstats, usec), and times the calls. "Under a throttle": the breaker has a rate
(``requests_per_minute``) so every admission takes a slot of the shared bucket (one so large
here that nobody waits); with ``near_cache`` the slots are leased in batches.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from typing import Any

import pybreaker
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from llm_circuit_breaker import (
    CircuitBreaker,
    CircuitBreakerConfig,
    Outcome,
    circuit_breaker,
)
from llm_circuit_breaker.storage import RedisStateStore


class CountingConnection(redis.Connection):
    sent = 0

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        CountingConnection.sent += 1
        super().send_packed_command(command, check_health)


def start_redis() -> tuple[subprocess.Popen[bytes], int]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not on the PATH")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            tempfile.mkdtemp(),
        ],
        stdout=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port)
    for _ in range(200):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.02)
    return process, port


def _server_usec(client: redis.Redis) -> float:
    """redis-server's CPU spent in commands so far (INFO commandstats), microseconds."""
    stats = client.info("commandstats")
    return float(sum(v["usec"] for v in stats.values() if isinstance(v, dict)))


def measure(call: Callable[[], Any], calls: int, client: redis.Redis) -> tuple[float, float, float]:
    """(round trips per call, Redis CPU us per call, microseconds per call)."""
    call()  # warm up: connections, script loading
    CountingConnection.sent = 0
    before = _server_usec(client)
    sent_before = CountingConnection.sent
    started = time.perf_counter()
    for _ in range(calls):
        call()
    elapsed = time.perf_counter() - started
    sent = CountingConnection.sent - sent_before
    cpu = _server_usec(client) - before
    return sent / calls, cpu / calls, elapsed / calls * 1e6


def trip_seen(port: int, rounds: int) -> tuple[float, float]:
    """(p50, p99) milliseconds from a trip by one breaker to the first refusal by another (its
    own client, both with near_cache=0.05), the second admitting in a tight loop: the worst
    case for the notice, whose listener thread waits for the loop to let go of the GIL (every
    5 ms, ``sys.getswitchinterval()``)."""
    config = CircuitBreakerConfig(failure_threshold=1)
    seen = []
    for index in range(rounds):
        name = f"trip-{index}"
        url = f"redis://127.0.0.1:{port}/0"
        stores = [RedisStateStore.from_url(url, timeout=1.0, near_cache=0.05) for _ in range(2)]
        a = CircuitBreaker(name, config, store=stores[0])
        b = CircuitBreaker(name, config, store=stores[1])
        b.record_success(b.admit())
        a.record(a.admit(), Outcome.FAILURE)
        tripped = time.perf_counter()
        while b.try_admit() >= 0:
            pass
        seen.append((time.perf_counter() - tripped) * 1000)
        for store in stores:
            store.close()
            store.client.close()
    seen.sort()
    return seen[len(seen) // 2], seen[min(len(seen) - 1, int(len(seen) * 0.99))]


THROTTLED = CircuitBreakerConfig(requests_per_minute=100_000_000)  # paced; nobody waits
KINDS = {
    "llm-circuit-breaker, near_cache=0.05": ("cached", CircuitBreakerConfig()),
    "llm-circuit-breaker, default (near_cache=0)": ("every", CircuitBreakerConfig()),
    "llm-circuit-breaker under a throttle, near_cache=0.05 (leases)": ("cached", THROTTLED),
    "llm-circuit-breaker under a throttle, near_cache=0": ("every", THROTTLED),
    "pybreaker + CircuitRedisStorage": ("pybreaker", None),
    "llm-circuit-breaker in memory": ("memory", CircuitBreakerConfig()),
    "a bare PING": ("ping", None),
}


def _call(kind: str, config: CircuitBreakerConfig | None, client: redis.Redis) -> Callable[[], Any]:
    """One guarded call of ``kind`` through ``client``."""

    def work() -> str:
        return "ok"

    if kind == "ping":
        return client.ping
    if kind == "pybreaker":
        storage = pybreaker.CircuitRedisStorage(pybreaker.STATE_CLOSED, client, namespace="bench")
        return pybreaker.CircuitBreaker(state_storage=storage)(work)  # type: ignore[no-any-return]
    store = None
    if kind != "memory":
        store = RedisStateStore(client, near_cache=0.05 if kind == "cached" else 0.0)
    breaker = CircuitBreaker(f"bench-{kind}-{config is THROTTLED}", config, store=store)
    return circuit_breaker(breaker=breaker)(work)


def _client(port: int) -> redis.Redis:
    pool = redis.ConnectionPool(
        port=port, connection_class=CountingConnection, retry=Retry(NoBackoff(), 0)
    )
    return redis.Redis(connection_pool=pool)


def _worker(port: int, label: str, calls: int, barrier: Any, out: Any) -> None:
    """One of the four processes: its own client and breaker, the same calls at once."""
    client = _client(port)
    call = _call(*KINDS[label], client)
    call()
    barrier.wait()
    sent = CountingConnection.sent
    started = time.perf_counter()
    for _ in range(calls):
        call()
    out.put((CountingConnection.sent - sent, time.perf_counter() - started))


def measure_fleet(
    port: int, label: str, calls: int, processes: int = 4
) -> tuple[float, float, float]:
    """(round trips per call, Redis CPU us per call, us per call) over ``processes`` at once."""
    context = multiprocessing.get_context("fork")
    barrier, out = context.Barrier(processes + 1), context.Queue()
    workers = [
        context.Process(target=_worker, args=(port, label, calls, barrier, out))
        for _ in range(processes)
    ]
    for worker in workers:
        worker.start()
    client = _client(port)
    barrier.wait()
    before = _server_usec(client)
    results = [out.get() for _ in workers]
    cpu = _server_usec(client) - before
    for worker in workers:
        worker.join()
    total = calls * processes
    sent = sum(r[0] for r in results)
    micros = sum(r[1] for r in results) / total * 1e6
    return sent / total, cpu / total, micros


def main() -> None:
    logging.getLogger("llm_circuit_breaker").setLevel(logging.ERROR)  # the trips are on purpose
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    calls = 2000 if args.quick else 20_000
    process, port = start_redis()
    try:
        client = _client(port)
        one = {label: measure(_call(*kind, client), calls, client) for label, kind in KINDS.items()}
        four = {label: measure_fleet(port, label, calls // 4) for label in KINDS}
        print("| successful call | processes | Redis round trips | Redis CPU (us) | us per call |")
        print("|---|---:|---:|---:|---:|")
        for count, rows in ((1, one), (4, four)):
            for name, (trips, cpu, micros) in rows.items():
                print(f"| {name} | {count} | {trips:.3f} | {cpu:.2f} | {micros:.2f} |")
        memory = one["llm-circuit-breaker in memory"][2]
        for label in list(KINDS)[:4]:
            print(f"{label}: {one[label][2] / memory:.2f}x the in-memory breaker (1 process)")
        rounds = 20 if args.quick else 100
        p50, p99 = trip_seen(port, rounds)
        print(f"trip in one process seen by another: p50 {p50:.1f} ms, p99 {p99:.1f} ms")
    finally:
        process.terminate()
        process.wait()


if __name__ == "__main__":
    main()
