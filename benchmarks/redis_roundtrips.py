"""Redis round trips, Redis CPU and time per guarded call: llm-circuit-breaker (with and
without its near-cache, CLOSED and under a throttle) vs pybreaker's storage vs a bare PING, in
one process and in four, and how long a trip in one process takes to be seen by another.
Then a fleet: ``--processes`` processes each making ``--rate`` calls/s for ``--seconds``,
while healthy (also with a shared spend cap), during a provider outage (per refused call)
and through the HTTP helpers against a provider that sends rate-limit headers on every
response (per answered call), with near_cache 0 and 0.05; and how long listing
``--circuits`` circuits takes.

    pip install -e ".[bench,redis]" && python benchmarks/redis_roundtrips.py [--quick]
    python benchmarks/redis_roundtrips.py --fleet-only --processes 16 --rate 200

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
    BreakerRegistry,
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitOpenError,
    LLMCircuitBreaker,
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


# -- a fleet at a steady rate ----------------------------------------------------------------


def _fleet_store(port: int, near_cache: float) -> RedisStateStore:
    """A store as from_url builds it (blocking pool, 0.1 s timeouts, no retries), counting."""
    pool = redis.BlockingConnectionPool(
        port=port,
        connection_class=CountingConnection,
        timeout=0.1,
        socket_timeout=0.1,
        socket_connect_timeout=0.1,
        retry=Retry(NoBackoff(), 0),
    )
    return RedisStateStore(redis.Redis.from_pool(pool), near_cache=near_cache)


class _ProviderDown(ConnectionError):
    pass


def _scenario_call(scenario: str, store: RedisStateStore, llm_url: str) -> Callable[[], str]:
    """One call of ``scenario``: returns what happened ("ok", "refused", "failed")."""
    registry = BreakerRegistry(store=store)
    if scenario == "headers":
        helper = LLMCircuitBreaker(name="fleet-headers", registry=registry)
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}

        def through_http() -> str:
            helper.call(url=f"{llm_url}/v1/chat/completions", data=body)
            return "ok"

        return through_http
    outage, budget = scenario == "outage", scenario == "budgets"
    config = CircuitBreakerConfig(failure_threshold=5, reset_timeout=2.0)
    if budget:  # a fleet-wide spend cap (never reached) and the retry budget, both shared
        config = CircuitBreakerConfig(failure_threshold=5, reset_timeout=2.0, token_budget=1e15)
    breaker = registry.get_or_create(f"fleet-{scenario}", config)

    @circuit_breaker(breaker=breaker)
    def provider() -> str:
        if outage:
            raise _ProviderDown("provider down")
        if budget:
            breaker.spend(100)  # as a response's usage would
        return "ok"

    def call() -> str:
        try:
            return provider()
        except CircuitOpenError:
            return "refused"
        except _ProviderDown:
            return "failed"

    return call


class _OutageCount(logging.Handler):
    """Counts the store's "unavailable" warnings."""

    count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "unavailable" in record.getMessage():
            self.count += 1


def _fleet_worker(
    port: int,
    scenario: str,
    near_cache: float,
    rate: float,
    seconds: float,
    llm_url: str,
    barrier: Any,
    out: Any,
) -> None:
    """One process of the fleet: ``rate`` calls/s for ``seconds``, counting round trips."""
    outages = _OutageCount()  # times this process found Redis unavailable (a timeout, say)
    logging.getLogger("llm_circuit_breaker").addHandler(outages)
    logging.getLogger("llm_circuit_breaker").setLevel(logging.WARNING)
    logging.getLogger("llm_circuit_breaker").propagate = False
    store = _fleet_store(port, near_cache)
    observed = [0]  # script calls made for headers alone (an "observe" of their own)
    observe = store.observe

    def counted_observe(*args: Any, **kwargs: Any) -> Any:
        observed[0] += 1
        return observe(*args, **kwargs)

    store.observe = counted_observe  # type: ignore[method-assign]
    call = _scenario_call(scenario, store, llm_url)
    call()  # warm up: connections, script loading, the notice subscription
    barrier.wait()
    sent = CountingConnection.sent
    observed[0] = outages.count = 0
    outcomes: dict[str, int] = {}
    started = time.monotonic()
    due = started
    while due - started < seconds:
        pause = due - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        what = call()
        outcomes[what] = outcomes.get(what, 0) + 1
        due += 1.0 / rate
    out.put((CountingConnection.sent - sent, outcomes, observed[0], outages.count))
    store.close()


def fleet(
    port: int, scenario: str, near_cache: float, processes: int, rate: float, seconds: float,
    llm_url: str = "",
) -> tuple[float, float, float, dict[str, int]]:  # fmt: skip
    """(round trips per counted call, Redis CPU us per counted call, calls/s achieved, outcomes):
    "counted" is an answered call, or for the outage a refused one."""
    context = multiprocessing.get_context("fork")
    barrier, out = context.Barrier(processes + 1), context.Queue()
    args = (port, scenario, near_cache, rate, seconds, llm_url, barrier, out)
    workers = [context.Process(target=_fleet_worker, args=args) for _ in range(processes)]
    for worker in workers:
        worker.start()
    client = _client(port)
    barrier.wait()
    before, started = _server_usec(client), time.monotonic()
    results = [out.get() for _ in workers]
    elapsed = time.monotonic() - started
    cpu = _server_usec(client) - before
    for worker in workers:
        worker.join()
    outcomes: dict[str, int] = {}
    for _, seen, _, _ in results:
        for what, count in seen.items():
            outcomes[what] = outcomes.get(what, 0) + count
    counted = outcomes.get("refused" if scenario == "outage" else "ok", 0) or 1
    sent = sum(r[0] for r in results)
    achieved = sum(outcomes.values()) / elapsed
    outcomes["observe calls"] = sum(r[2] for r in results)  # headers sent on their own
    outcomes["Redis unavailable"] = sum(r[3] for r in results)  # then decided locally
    return sent / counted, cpu / counted, achieved, outcomes


def listing(port: int, circuits: int) -> tuple[float, float, float]:
    """Seconds ``store.circuits()`` takes over ``circuits`` circuits (written directly): wall
    clock, this process's CPU, redis-server's CPU (on a busy machine wall > the two CPUs)."""
    client = redis.Redis(port=port)
    store = RedisStateStore(client, prefix="listing")
    pipe = client.pipeline(transaction=False)
    for index in range(circuits):
        fields = {"state": "CLOSED", "gen": 0, "seq": 0, "fc": 0, "sc": 0, "held": "0"}
        pipe.hset(store.keys(f"circuit-{index}")[0], mapping=fields)
        if index % 5000 == 4999:
            pipe.execute()
    pipe.execute()
    server_before = _server_cpu(client)
    started, cpu = time.perf_counter(), time.process_time()
    found = store.circuits()
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    assert len(found) == circuits, len(found)
    return elapsed, cpu, _server_cpu(client) - server_before


def _server_cpu(client: redis.Redis) -> float:
    """redis-server's CPU seconds so far (user + system)."""
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def run_fleet(port: int, args: argparse.Namespace) -> None:
    from llm_circuit_breaker.testing import FakeLLMServer

    n, rate, seconds = args.processes, args.rate, args.seconds
    print(f"\nfleet: {n} processes x {rate:g} calls/s for {seconds:g} s each scenario")
    print("| scenario | near_cache | round trips per call | Redis CPU (us) | calls/s | outcomes |")
    print("|---|---:|---:|---:|---:|---|")
    with FakeLLMServer() as server:
        server.rate_limit(requests_per_minute=10_000_000)  # headers on every answer, no 429
        for scenario, per in (
            ("healthy", "answered call"),
            ("budgets", "answered call, spend cap shared"),
            ("outage", "refused call"),
            ("headers", "answered call (HTTP helper)"),
        ):
            if args.scenarios and scenario not in args.scenarios:
                continue
            for near_cache in (0.0, 0.05):
                trips, cpu, achieved, outcomes = fleet(
                    port, scenario, near_cache, n, rate, seconds, server.url
                )
                print(
                    f"| {scenario}, per {per} | {near_cache:g} | {trips:.3f} | {cpu:.2f} "
                    f"| {achieved:.0f} | {outcomes} |"
                )
    if args.circuits:
        elapsed, cpu, server = listing(port, args.circuits)
        print(
            f"listing {args.circuits} circuits (store.circuits()): {elapsed:.2f} s "
            f"(CPU: this process {cpu:.2f} s, redis-server {server:.2f} s)"
        )


def main() -> None:
    logging.getLogger("llm_circuit_breaker").setLevel(logging.ERROR)  # the trips are on purpose
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--fleet-only", action="store_true", help="skip the per-call tables")
    parser.add_argument("--processes", type=int, default=16, help="fleet processes")
    parser.add_argument("--rate", type=float, default=200.0, help="calls/s per process")
    parser.add_argument("--seconds", type=float, default=10.0, help="per fleet scenario")
    parser.add_argument("--circuits", type=int, default=100_000, help="listed (0: skip)")
    parser.add_argument(
        "--scenarios",
        nargs="*",
        default=[],
        help="fleet scenarios to run (healthy, budgets, outage, headers; default all)",
    )
    args = parser.parse_args()
    calls = 2000 if args.quick else 20_000
    process, port = start_redis()
    try:
        if args.fleet_only:
            run_fleet(port, args)
            return
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
        run_fleet(port, args)
    finally:
        process.terminate()
        process.wait()


if __name__ == "__main__":
    main()
