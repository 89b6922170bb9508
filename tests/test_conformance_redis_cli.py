"""Sections 6, 7, 8 and 14 of the SPEC read as an independent user would, against real
redis-server processes: clients as users build them, a burst of calls failing at once, names
and URLs that carry credentials or terminal codes, and what the command line prints."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import pathlib
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import valkey
import valkey.asyncio
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from llm_circuit_breaker import CircuitBreaker, CircuitBreakerConfig, CircuitOpenError, Outcome
from llm_circuit_breaker._cli import main
from llm_circuit_breaker._cli.status import run_status
from llm_circuit_breaker.storage import RedisStateStore
from llm_circuit_breaker.storage.base import StoreUnavailableError
from tests.polling import auntil, until
from tests.redis_cluster import RedisCluster
from tests.redis_server import RedisServer
from tests.test_redis_fleet import _sentinel

pytestmark = pytest.mark.redis

TRIP = CircuitBreakerConfig(failure_threshold=1, reset_timeout=60)
SECRET = "s3cret-Pa55word"


def _trip(store: RedisStateStore, name: str) -> None:
    breaker = CircuitBreaker(name, TRIP, store=store)
    breaker.record(breaker.admit(), Outcome.FAILURE)


# -- section 14: a plain client pointed at a cluster node ----------------------------------


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda port: redis.Redis(host="127.0.0.1", port=port), id="redis-defaults"),
        pytest.param(
            lambda port: redis.Redis(
                host="127.0.0.1", port=port, retry=Retry(ExponentialBackoff(), 3)
            ),
            id="redis-retrying",
        ),
        pytest.param(lambda port: valkey.Valkey(host="127.0.0.1", port=port), id="valkey"),
    ],
)
def test_a_plain_client_built_as_users_build_it_is_refused_on_a_cluster_node(
    cluster: RedisCluster, make: Any
) -> None:
    """``redis.Redis(host, port)`` with redis-py's default retries (or any retry policy)
    pointed at a cluster node is refused at construction with an error naming
    ``cluster=True``, as a client without retries is."""
    client = make(cluster.servers[0].port)
    try:
        with pytest.raises(ValueError, match="cluster=True"):
            RedisStateStore(client)
    finally:
        client.close()


def test_a_retrying_client_of_a_down_server_is_accepted_at_once(closed_port: int) -> None:
    """Asking whether a retrying client's server is a cluster node costs one refused
    connection, not the client's retries: a store is made while Redis is down."""
    client = redis.Redis(port=closed_port, retry=Retry(ExponentialBackoff(cap=5, base=2), 5))
    store = RedisStateStore(client, prefix="down")  # would sleep ~30 s through the retries
    assert store.client is client
    client.close()


# -- section 7 / 14: leaving Redis alone after a failure -----------------------------------


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A loopback port that accepts connections (the kernel's backlog) and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield int(sock.getsockname()[1])


def test_calls_failing_together_count_as_one_failure(silent_port: int) -> None:
    """Eight calls in flight when Redis stops answering all fail with the same timeout: the
    store leaves Redis alone for 0.5 s (the first failure's pause), not 0.5 s doubled for each
    of them (which would be the 5 s cap after a blip)."""
    store = RedisStateStore.from_url(f"redis://127.0.0.1:{silent_port}", "burst", timeout=3.0)
    callers = 8
    start = threading.Barrier(callers)
    failed: list[BaseException] = []

    def call() -> None:
        start.wait()
        try:
            store.admit("burst", TRIP)
        except StoreUnavailableError as exc:
            failed.append(exc)

    threads = [threading.Thread(target=call) for _ in range(callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(failed) == callers
    assert not store.available
    assert store._pause == 0.5  # one failure of Redis, however many calls saw it
    store.client.close()


def test_a_failure_after_the_pause_still_doubles_it(closed_port: int) -> None:
    """A call made after the pause ended that fails again doubles the pause (0.5 s, 1 s)."""
    store = RedisStateStore.from_url(f"redis://127.0.0.1:{closed_port}", "again")
    with pytest.raises(StoreUnavailableError):
        store.admit("again", TRIP)
    assert store._pause == 0.5
    store._down_until -= 1.0  # the pause is over: the next call asks Redis again
    with pytest.raises(StoreUnavailableError):
        store.admit("again", TRIP)
    assert store._pause == 1.0
    store.client.close()


# -- section 6: the store's log lines mask credentials in names ----------------------------


def test_the_store_s_warnings_mask_credentials_in_a_circuit_s_name(
    redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """A breaker named after a keyed URL: the warning that its stored data was foreign shows
    the name as every other log line does, credentials masked."""
    store = RedisStateStore(redis_client, prefix="masked")
    name = f"https://user:{SECRET}@api.example.com/v1"
    redis_client.set(store.keys(name)[0], "foreign")
    with caplog.at_level(logging.WARNING, logger="llm_circuit_breaker"):
        breaker = CircuitBreaker(name, TRIP, store=store)
        breaker.record(breaker.admit(), Outcome.SUCCESS)
    text = "\n".join(record.getMessage() for record in caplog.records)
    assert "foreign data" in text
    assert SECRET not in text


# -- section 8: status with hostile breaker names -------------------------------------------

HOSTILE = {
    "escape": "evil\x1b[2J\x1b]0;owned\x07",
    "newline": "one\ntwo  OPEN  1",
    "carriage": "ok\rOPEN",
    "bidi": "\u202eevil",
}


@pytest.fixture
def hostile_store(redis_client: redis.Redis) -> RedisStateStore:
    store = RedisStateStore(redis_client, prefix="hostile")
    for name in (*HOSTILE.values(), f"https://user:{SECRET}@api.example.com/v1", "plain"):
        _trip(store, name)
    return store


def test_status_prints_no_terminal_codes_from_names(
    redis_server: RedisServer, hostile_store: RedisStateStore
) -> None:
    """Control characters in a breaker's name (escape sequences, newlines, carriage returns,
    bidi overrides) are printed escaped: one line per circuit, nothing the terminal acts on."""
    out = io.StringIO()
    assert run_status(redis_server.url, "hostile", as_json=False, out=out) == 0
    text = out.getvalue()
    assert "\x1b" not in text and "\x07" not in text and "\r" not in text
    assert "\u202e" not in text
    rows = [line for line in text.splitlines()[1:] if line.strip()]
    assert len(rows) == 6
    assert all(" OPEN " in row for row in rows)
    assert any(row.startswith("evil\\x1b[2J") for row in rows)
    assert any(row.startswith("one\\ntwo") for row in rows)


@pytest.mark.parametrize("as_json", [False, True])
def test_status_never_prints_credentials_in_names(
    redis_server: RedisServer, hostile_store: RedisStateStore, as_json: bool
) -> None:
    """A breaker named after a keyed URL is listed with its credentials masked, in the table
    and in JSON (as logs, metrics and reprs show it)."""
    out = io.StringIO()
    assert run_status(redis_server.url, "hostile", as_json=as_json, out=out) == 0
    text = out.getvalue()
    assert SECRET not in text
    assert "api.example.com" in text and "[REDACTED]" in text
    if as_json:
        listed = json.loads(text)
        assert len(listed) == 6 and listed["plain"]["state"] == "OPEN"


def test_status_json_keeps_circuits_whose_shown_names_collide(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    """Two circuits whose names differ only in their credentials are both listed in JSON."""
    store = RedisStateStore(redis_client, prefix="twins")
    _trip(store, "https://u:first-secret-1@host/v1")
    _trip(store, "https://u:other-secret-2@host/v1")
    out = io.StringIO()
    assert run_status(redis_server.url, "twins", as_json=True, out=out) == 0
    listed = json.loads(out.getvalue())
    assert len(listed) == 2
    assert "secret" not in out.getvalue()


# -- section 8: status never prints the URL's credentials ----------------------------------


@pytest.mark.parametrize(
    "userinfo",
    [
        f"user:{SECRET}",
        f":{SECRET}",
        f"{SECRET}",  # a password written where the user name goes
        f"user:p@{SECRET}",  # an '@' left unescaped in the password
        f"user:pw/{SECRET}",  # a '/' left unescaped in the password
    ],
)
def test_status_never_prints_the_url_s_userinfo(
    closed_port: int, capsys: pytest.CaptureFixture[str], userinfo: str
) -> None:
    """Whatever the URL's user part holds, none of it is printed: the error line masks it."""
    assert main(["status", "--redis", f"redis://{userinfo}@127.0.0.1:{closed_port}/0"]) == 2
    captured = capsys.readouterr()
    printed = captured.out + captured.err
    assert SECRET not in printed
    assert "[REDACTED]" in printed
    assert len(captured.err.strip().splitlines()) == 1


def test_status_with_the_wrong_password_exits_2_without_printing_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A server that requires a password, given a wrong one: one error line, exit status 2,
    the password nowhere."""
    server = RedisServer()
    server.start()
    try:
        redis.Redis(port=server.port).config_set("requirepass", "the-right-one")
        url = f"redis://default:{SECRET}@127.0.0.1:{server.port}/0"
        assert main(["status", "--redis", url]) == 2
        captured = capsys.readouterr()
        assert SECRET not in captured.out + captured.err
        assert captured.err.startswith("error: cannot read circuits")
    finally:
        server.stop()


def test_status_piped_into_a_reader_that_stops_early_prints_no_traceback(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    """``status --json | head -1``: the reader goes away after a line, the command ends
    quietly (no BrokenPipeError traceback on stderr)."""
    pipe = redis_client.pipeline(transaction=False)
    for index in range(3000):  # far more than a pipe's buffer holds
        pipe.hset(f"piped:{{circuit-{index}}}", mapping={"state": "CLOSED", "fc": "0", "sc": "0"})
    pipe.execute()
    for extra in ([], ["--json"]):
        command = [sys.executable, "-m", "llm_circuit_breaker", "status", "--redis"]
        with subprocess.Popen(
            [*command, redis_server.url, "--prefix", "piped", *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        ) as process:
            assert process.stdout is not None and process.stderr is not None
            assert process.stdout.readline()
            process.stdout.close()  # as `head -1` does
            err = process.stderr.read().decode()
            process.wait(60)
        assert "Traceback" not in err and "BrokenPipeError" not in err, err
        assert process.returncode == 1


# -- section 14: a Sentinel-managed asyncio store on more than one event loop ----------------


@pytest.fixture
def sentinel_port(redis_server: RedisServer, tmp_path: pathlib.Path) -> Iterator[int]:
    """A Sentinel (redis-server --sentinel) watching the session's server as service "svc"."""
    if redis_server.process is None:
        redis_server.start()
    process, port = _sentinel(redis_server, tmp_path)
    probe = redis.Redis(port=port, socket_timeout=1)
    try:
        until(lambda: _answers(probe))
        yield port
    finally:
        probe.close()
        process.terminate()
        process.wait(10)


def _answers(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


@pytest.mark.parametrize("family", ["redis", "valkey"])
def test_an_asyncio_sentinel_store_serves_one_event_loop_after_another(
    redis_server: RedisServer, sentinel_port: int, family: str
) -> None:
    """An asyncio store on a Sentinel service, used by one ``asyncio.run()`` then another
    (and listed from sync code): every loop shares the circuit through Redis, none decides
    alone because the Sentinel's connections belong to the first loop."""
    store = RedisStateStore.from_sentinel(
        [("127.0.0.1", sentinel_port)],
        "svc",
        prefix=f"sentinel-loops-{family}",
        asyncio=True,
        valkey=family == "valkey",
        timeout=2.0,
    )
    seen = RedisStateStore(redis_server.client(), prefix=store.prefix)

    async def trip(name: str) -> None:
        breaker = CircuitBreaker(name, TRIP, store=store)
        await breaker.arecord(await breaker.aadmit(), Outcome.FAILURE)
        if name == "first-loop":  # the given client serves the first loop; closed by its owner
            await store.client.aclose()
            for sentinel in store.client.connection_pool.sentinel_manager.sentinels:
                await sentinel.aclose()

    for name in ("first-loop", "second-loop", "third-loop"):
        asyncio.run(trip(name))
        assert store.available
        assert seen.circuits()[name]["state"] == "OPEN"  # shared, not decided locally
    listed = store.circuits()  # through a loop of its own
    assert {name: view["state"] for name, view in listed.items()} == {
        "first-loop": "OPEN",
        "second-loop": "OPEN",
        "third-loop": "OPEN",
    }


@pytest.mark.parametrize("scheme", ["redis", "valkey"])
def test_an_asyncio_cluster_store_serves_one_event_loop_after_another(
    flushed: RedisCluster, scheme: str
) -> None:
    """An asyncio cluster store used by one ``asyncio.run()`` then others: each loop's calls
    reach the cluster (a cluster client's node connections belong to the first loop, which is
    closed: later loops get a client of their own), none decides alone."""
    url = flushed.url.replace("redis://", f"{scheme}://", 1)
    store = RedisStateStore.from_url(
        url, f"cluster-loops-{scheme}", cluster=True, asyncio=True, timeout=2.0
    )
    seen = RedisStateStore.from_url(flushed.url, store.prefix, cluster=True, timeout=2.0)

    async def trip(name: str) -> None:
        breaker = CircuitBreaker(name, TRIP, store=store)
        await breaker.arecord(await breaker.aadmit(), Outcome.FAILURE)
        if name == "loop-0":  # the given client serves the first loop; closed by its owner
            await store.client.aclose()

    names = [f"loop-{index}" for index in range(4)]
    for name in names:
        asyncio.run(trip(name))
        assert store.available
        assert seen.circuits()[name]["state"] == "OPEN"  # shared, not decided locally
    assert sorted(store.circuits()) == names  # listed through a loop of its own


# -- section 7: while Redis is left alone, nothing waits for it ------------------------------


def test_breakers_made_while_redis_is_left_alone_wait_for_no_timeout(silent_port: int) -> None:
    """A near-caching store on a Redis that stopped answering: once a call found it down,
    breakers made meanwhile (a scope's new tenant, say) and their calls wait for no Redis
    timeout: the change notices subscribe from their own thread."""
    store = RedisStateStore.from_url(
        f"redis://127.0.0.1:{silent_port}", "silent", near_cache=0.05, timeout=1.0
    )
    first = CircuitBreaker("first", TRIP, store=store)
    first.record_success(first.admit())  # the calls that find Redis silent
    assert not store.available
    started = time.monotonic()
    for index in range(5):
        breaker = CircuitBreaker(f"tenant-{index}", TRIP, store=store)
        breaker.record_success(breaker.admit())
    assert time.monotonic() - started < 1.0  # one timeout each before: 5 s at least
    assert not store.available
    store.close()
    store.client.close()


def test_notices_subscribe_once_redis_answers_again() -> None:
    """A near-caching store whose first subscription failed (Redis down when its first
    breaker was made) subscribes from its thread once Redis is back: a trip elsewhere then
    reaches it at once, not after its near-cache ran out."""
    server = RedisServer()
    url = f"redis://127.0.0.1:{server.port}"
    store = RedisStateStore.from_url(url, "later", near_cache=60.0, timeout=2.0)
    watcher = CircuitBreaker("later", TRIP, store=store)  # Redis down: subscribing fails
    server.start()
    other = RedisStateStore.from_url(url, "later", timeout=2.0)
    try:
        until(lambda: _subscribed(server.port))  # by the notices' own thread
        watcher.record_success(watcher.admit())  # CLOSED and clean: cached for 60 s
        _trip(other, "later")
        until(lambda: watcher.try_admit() < 0)  # told at once
    finally:
        store.close()
        store.client.close()
        other.client.close()
        server.stop()


def _subscribed(port: int) -> bool:
    client = redis.Redis(port=port, socket_timeout=1)
    try:
        return int(client.execute_command("PUBSUB", "NUMPAT")) > 0
    finally:
        client.close()


# -- section 14: a reset elsewhere ends an asyncio store's cached refusal at once ----------


@pytest.mark.parametrize("scheme", ["redis", "valkey"])
async def test_a_reset_elsewhere_ends_an_asyncio_store_s_cached_refusal_at_once(
    redis_server: RedisServer, scheme: str
) -> None:
    """An asyncio store made by ``from_url`` with a near-cache refuses an OPEN circuit without
    asking Redis, and a reset through another process's store is published and ends that at
    once (not after the near-cache's 30 s)."""
    url = redis_server.url.replace("redis://", f"{scheme}://", 1)
    store = RedisStateStore.from_url(
        url, f"aio-notices-{scheme}", asyncio=True, near_cache=30.0, timeout=2.0
    )
    assert store.notifies
    breaker = CircuitBreaker("shared", TRIP, store=store)
    other = RedisStateStore.from_url(redis_server.url, store.prefix, timeout=2.0)
    _trip(other, "shared")
    with pytest.raises(CircuitOpenError):
        await breaker.aadmit()  # seen OPEN until its retry time: held here
    asked = _script_calls(redis_server)
    for _ in range(50):
        with pytest.raises(CircuitOpenError):
            await breaker.aadmit()
    assert _script_calls(redis_server) == asked  # refusals cost no round trip
    await auntil(lambda: _listened(redis_server, store.keys("shared")[0]))
    CircuitBreaker("shared", TRIP, store=other).reset()

    async def admitted() -> bool:
        try:
            await breaker.arecord_success(await breaker.aadmit())
        except CircuitOpenError:
            return False
        return True

    deadline = time.monotonic() + 10
    while not await admitted():
        assert time.monotonic() < deadline, "the reset never reached the asyncio store"
        await asyncio.sleep(0.01)
    store.close()
    await store.client.aclose()
    other.client.close()


def _listened(server: RedisServer, channel: str) -> bool:
    """Whether a subscriber hears ``channel`` (a notice there only makes it ask Redis)."""
    client = redis.Redis(port=server.port, socket_timeout=1)
    try:
        return int(client.publish(channel, "CLOSED")) > 0
    finally:
        client.close()


def _script_calls(server: RedisServer) -> int:
    client = redis.Redis(port=server.port, socket_timeout=1)
    try:
        stats = client.info("commandstats")
        return sum(int(v["calls"]) for k, v in stats.items() if k.startswith("cmdstat_eval"))
    finally:
        client.close()


def test_status_of_a_valkey_url_without_the_valkey_package(
    closed_port: int, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ``valkey://`` URL where the optional valkey package is missing: one line saying so,
    exit status 2, no traceback, no password."""
    for module in [m for m in sys.modules if m == "valkey" or m.startswith("valkey.")]:
        monkeypatch.setitem(sys.modules, module, None)  # `import valkey` raises ImportError
    url = f"valkey://user:{SECRET}@127.0.0.1:{closed_port}/0"
    assert main(["status", "--redis", url]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("error:") and "valkey" in captured.err
    assert len(captured.err.strip().splitlines()) == 1
    assert SECRET not in captured.out + captured.err
