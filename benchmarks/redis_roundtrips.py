"""Redis round trips, Redis CPU and time per guarded call: llm-circuit-breaker (with and
without its near-cache) vs pybreaker's storage vs a bare PING, and how long a trip in one
process takes to be seen by another.

    pip install -e ".[bench,redis]" && python benchmarks/redis_roundtrips.py [--quick]

Starts its own redis-server on a free loopback port (needs the binary on the PATH). Counts
the commands each library sends per successful call in CLOSED, reads redis-server's own CPU
per call (INFO commandstats, usec), and times the calls.
"""

from __future__ import annotations

import argparse
import logging
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
    BreakerRegistry,
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


def trip_seen(port: int, rounds: int) -> float:
    """p99 milliseconds from a trip by one breaker to the first refusal by another (its own
    client, both with near_cache=0.05), the second admitting in a tight loop."""
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
    seen.sort()
    return seen[min(len(seen) - 1, int(len(seen) * 0.99))]


def main() -> None:
    logging.getLogger("llm_circuit_breaker").setLevel(logging.ERROR)  # the trips are on purpose
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    calls = 2000 if args.quick else 50_000
    process, port = start_redis()
    try:
        pool = redis.ConnectionPool(
            port=port, connection_class=CountingConnection, retry=Retry(NoBackoff(), 0)
        )
        client = redis.Redis(connection_pool=pool)

        def work() -> str:
            return "ok"

        ours = circuit_breaker(
            "bench", registry=BreakerRegistry(store=RedisStateStore(client, near_cache=0.05))
        )(work)
        every_call = circuit_breaker(
            "bench-every-call",
            registry=BreakerRegistry(store=RedisStateStore(client, near_cache=0.0)),
        )(work)
        theirs = pybreaker.CircuitBreaker(
            state_storage=pybreaker.CircuitRedisStorage(
                pybreaker.STATE_CLOSED, client, namespace="bench"
            )
        )(work)
        local = circuit_breaker("bench-local", registry=BreakerRegistry())(work)
        rows = {
            "llm-circuit-breaker + RedisStateStore (near_cache=0.05)": measure(ours, calls, client),
            "llm-circuit-breaker + RedisStateStore (default, near_cache=0)": measure(
                every_call, calls, client
            ),
            "pybreaker + CircuitRedisStorage": measure(theirs, calls, client),
            "llm-circuit-breaker in memory": measure(local, calls, client),
            "a bare PING": measure(client.ping, calls, client),
        }
        print("| successful call in CLOSED | Redis round trips | Redis CPU (us) | us per call |")
        print("|---|---:|---:|---:|")
        for name, (trips, cpu, micros) in rows.items():
            print(f"| {name} | {trips:.3f} | {cpu:.2f} | {micros:.2f} |")
        cached = rows["llm-circuit-breaker + RedisStateStore (near_cache=0.05)"][2]
        memory = rows["llm-circuit-breaker in memory"][2]
        print(f"\nnear-cached call vs in-memory breaker: {cached / memory:.2f}x")
        rounds = 20 if args.quick else 100
        print(f"trip in one process seen by another: p99 {trip_seen(port, rounds):.1f} ms")
    finally:
        process.terminate()
        process.wait()


if __name__ == "__main__":
    main()
