"""Redis round trips and time per guarded call: llm-circuit-breaker vs pybreaker's storage.

    pip install -e ".[bench,redis]" && python benchmarks/redis_roundtrips.py [--quick]

Starts its own redis-server on a free loopback port (needs the binary on the PATH). Counts
the commands each library sends per successful call in CLOSED, and times the calls.
"""

from __future__ import annotations

import argparse
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

from llm_circuit_breaker import BreakerRegistry, circuit_breaker
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


def measure(call: Callable[[], Any], calls: int) -> tuple[float, float]:
    """(round trips per call, microseconds per call)."""
    call()  # warm up: connections, script loading
    CountingConnection.sent = 0
    started = time.perf_counter()
    for _ in range(calls):
        call()
    elapsed = time.perf_counter() - started
    return CountingConnection.sent / calls, elapsed / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    calls = 200 if args.quick else 5000
    process, port = start_redis()
    try:
        pool = redis.ConnectionPool(
            port=port, connection_class=CountingConnection, retry=Retry(NoBackoff(), 0)
        )
        client = redis.Redis(connection_pool=pool)

        def work() -> str:
            return "ok"

        ours = circuit_breaker("bench", registry=BreakerRegistry(store=RedisStateStore(client)))(
            work
        )
        theirs = pybreaker.CircuitBreaker(
            state_storage=pybreaker.CircuitRedisStorage(
                pybreaker.STATE_CLOSED, client, namespace="bench"
            )
        )(work)
        local = circuit_breaker("bench-local", registry=BreakerRegistry())(work)
        rows = {
            "llm-circuit-breaker + RedisStateStore": measure(ours, calls),
            "pybreaker + CircuitRedisStorage": measure(theirs, calls),
            "llm-circuit-breaker in memory": measure(local, calls),
        }
        print("| successful call in CLOSED | Redis round trips | us per call |")
        print("|---|---:|---:|")
        for name, (trips, micros) in rows.items():
            print(f"| {name} | {trips:.2f} | {micros:.1f} |")
        ratio = (
            rows["llm-circuit-breaker + RedisStateStore"][1]
            / rows["pybreaker + CircuitRedisStorage"][1]
        )
        print(f"\ntime per call vs pybreaker's Redis storage: {ratio:.2f}x")
    finally:
        process.terminate()
        process.wait()


if __name__ == "__main__":
    main()
