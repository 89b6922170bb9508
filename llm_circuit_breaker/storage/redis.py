"""``RedisStateStore``: one circuit per name for every process and host, kept in Redis.

Each admit, record, snapshot and control is one call of a Lua script (``breaker.lua``, loaded
once and run with EVALSHA; redis-py reloads it after a ``NOSCRIPT``), so every transition is
atomic and takes one round trip. Time is the Redis server's ``TIME``: hosts with skewed clocks
agree. Half-open probes are leases in a sorted set, so exactly ``half_open_max_calls`` callers
probe across the fleet and a crashed probe's lease runs out. Keys are
``<prefix>:{<name>}`` (plus ``:inflight`` and ``:window``; ``%``, ``{`` and ``}`` in the
prefix and the name written ``%25``, ``%7B``, ``%7D``), so a circuit's keys share one cluster
slot and circuits spread over the slots whatever their names; they expire after ``ttl``
seconds unused (admissions refresh that at most every ``ttl / 2``; a forced-open circuit
never expires while forced).

Clients: redis-py's or valkey's, sync or asyncio, one server (Sentinel-managed included) or
a cluster. When a command fails (Redis down, a timeout), the store is marked unavailable for
0.5 s, doubling up to ``retry_interval`` seconds while it stays down, and says so in one
WARNING; breakers decide locally meanwhile, so a call never fails because Redis did, and
never waits on a dead Redis twice in a row. Not outages: an error of the script on one
circuit's keys, or a ``MOVED`` / ``ASK`` reply, decides that call locally and leaves the store
up; a full connection pool makes the call wait for a connection. A ``READONLY`` reply (a
demoted primary) also drops the client's connections, so a Sentinel client finds the new
primary. An asyncio store keeps one client per running event loop (``LoopClients``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import threading
import time
import weakref
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import TYPE_CHECKING, Any

from llm_circuit_breaker._core.state import Outcome
from llm_circuit_breaker._redact import redact_text, shown
from llm_circuit_breaker.config import CircuitBreakerConfig
from llm_circuit_breaker.storage._client import (
    LoopClients,
    client_for_sentinel,
    client_for_url,
    client_kind,
    close_copy,
    copy_for_loop,
    refuse_cluster_node,
    warn_if_retrying,
)
from llm_circuit_breaker.storage._notices import (
    Follower,
    Notices,
    circuit_keys,
    key_part,
    name_of_key,
)
from llm_circuit_breaker.storage._script import (
    LISTED_FIELDS,
    OUTCOMES,
    admission,
    circuit_fields,
    landed,
    observe_args,
    plain,
    record_args,
    ride_args,
    script_args,
    text,
    view,
)
from llm_circuit_breaker.storage.base import Admission, Control, Ride, StoreUnavailableError, View

if TYPE_CHECKING:
    from collections.abc import Generator, Iterator, Sequence

    from llm_circuit_breaker._core.headers import RateLimits

__all__ = ["RedisStateStore"]

logger = logging.getLogger("llm_circuit_breaker")

_SCRIPT = resources.files("llm_circuit_breaker.storage").joinpath("breaker.lua").read_text()
_MAX_BROKEN = 1000  # circuits named in a script failure's warning (each once)
_FIRST_RETRY = 0.5  # seconds before Redis is tried again after a failure (then doubling)
_CONTENTION_WAIT = 5.0  # seconds a call waits at most for a connection of a full pool
_PAGE = 5000  # keys per SCAN page when listing
# Reads a page of circuits in one call, each as its LISTED_FIELDS joined by NUL (false: "").
# The keys are arguments, not KEYS: a page of one cluster node spans many slots, which a
# script may read on the node that holds them.
_LIST_SCRIPT = """
local out = {}
for i, key in ipairs(ARGV) do
  local v = redis.pcall('HMGET', key, 'state', 'fc', 'sc', 'opened_at', 'open_until', 'held',
                        'pu', 'ri', 'rc', 'rt')
  if v['err'] then
    if string.find(v['err'], 'cluster is down', 1, true) then return redis.error_reply(v['err']) end
    out[i] = ''
  else
    for j = 1, 10 do v[j] = v[j] or '' end
    out[i] = table.concat(v, '\\0')
  end
end
return out
"""
# One SCAN page read where it is (cursor, pattern, count): {next cursor, the page as one
# string}: per circuit "<key length>:<key><fields length>:<LISTED_FIELDS joined by NUL>", so
# a page is one reply to parse, not a reply per key.
_SCAN_SCRIPT = """
local got = redis.call('SCAN', ARGV[1], 'MATCH', ARGV[2], 'COUNT', ARGV[3])
local out = {}
for _, key in ipairs(got[2]) do
  local v = redis.pcall('HMGET', key, 'state', 'fc', 'sc', 'opened_at', 'open_until', 'held',
                        'pu', 'ri', 'rc', 'rt')
  if v['err'] then  -- a key of another shape is skipped; a cluster that is down is said
    if string.find(v['err'], 'cluster is down', 1, true) then return redis.error_reply(v['err']) end
  else
    for j = 1, 10 do v[j] = v[j] or '' end
    local fields = table.concat(v, '\\0')
    out[#out + 1] = #key .. ':' .. key .. #fields .. ':' .. fields
  end
end
return {got[1], table.concat(out)}
"""


def _raise_if_down(exc: BaseException) -> None:
    """Raise ``exc`` when it says a Redis Cluster is down (``CLUSTERDOWN``, or a script's
    "... while the cluster is down", as the listing scripts pass it on): not a server that
    refuses the listing's scripts."""
    message = str(exc)
    if message.startswith("CLUSTERDOWN") or "cluster is down" in message:
        raise exc


def _concerns_one_circuit(exc: BaseException, exceptions: Any) -> bool:
    """Whether a failed command is an error of the script on one circuit's keys (a plain
    reply error, such as data it could not repair), not of Redis (down, full, read-only,
    busy, misconfigured: those are subclasses or carry their own upper-case code)."""
    if type(exc) is not exceptions.ResponseError:
        return False
    message = str(exc)
    code = message.split(" ", 1)[0]
    return "script" in message and (code == "WRONGTYPE" or not code.isupper())


def _contended(exc: BaseException, exceptions: Any) -> bool:
    """Whether a command failed only because the client's own pool had no free connection
    (``MaxConnectionsError``; valkey's pools raise a plain ``ConnectionError`` saying "Too
    many connections"; or a blocking pool's wait that ran out): the store is fine."""
    if isinstance(exc, getattr(exceptions, "MaxConnectionsError", ())):
        return True
    if not isinstance(exc, exceptions.ConnectionError):
        return False
    message = str(exc)
    return "No connection available" in message or "Too many connections" in message


def _redirected(exc: BaseException, exceptions: Any) -> bool:
    """A ``MOVED`` / ``ASK`` reply: a cluster's slot lives elsewhere, which says nothing of
    the store's health (a cluster client follows it; a plain client cannot)."""
    return isinstance(exc, (exceptions.MovedError, exceptions.AskError))


def _demoted(exc: BaseException, exceptions: Any) -> bool:
    """A ``READONLY`` reply, or redis-py's Sentinel connection saying its primary was
    demoted: the connections open to that server must go."""
    if isinstance(exc, exceptions.ReadOnlyError):
        return True
    return isinstance(exc, exceptions.ConnectionError) and "now a slave" in str(exc)


def _records(blob: bytes) -> Iterator[tuple[bytes, bytes]]:
    """The (key, fields) records of a page that ``_SCAN_SCRIPT`` read."""
    pos, end = 0, len(blob)
    while pos < end:
        colon = blob.index(b":", pos)
        start = colon + 1
        pos = start + int(blob[pos:colon])
        key = blob[start:pos]
        colon = blob.index(b":", pos)
        start = colon + 1
        pos = start + int(blob[pos:colon])
        yield key, blob[start:pos]


def _land_late(ride: Ride, task: asyncio.Future[Any]) -> None:
    """A budget sync whose caller was cancelled lands by the answer of the call that went
    on (a failed call's sync goes out again with the next)."""
    ok = not task.cancelled() and task.exception() is None
    if ok and ride.budget is not None:
        landed(task.result(), ride.budget)
    if ride.landing is not None:
        ride.landing(ride, ok=ok)


def _never() -> bool:
    return False


def _available(store: weakref.ref[RedisStateStore]) -> bool:
    """Whether the store (if still alive) asks Redis now."""
    alive = store()
    return alive is not None and alive.available


class _Listing(dict[str, dict[str, Any]]):
    """The circuits a store listed, by name: a dict that may also be awaited (an asyncio
    store's ``circuits()``), and that names the cluster primaries that did not answer."""

    unreachable: tuple[str, ...] = ()  # ``host:port`` of each silent primary

    def __await__(self) -> Generator[Any, None, dict[str, dict[str, Any]]]:
        return _ready(self).__await__()


class _Silent:
    """The primaries a cluster listing could not read: the client's connection errors and
    timeouts are noted per primary (the others are still listed), raised when every primary
    failed (and at once for a single server)."""

    def __init__(self, cluster: bool, exceptions: Any) -> None:
        self.errors: tuple[type[BaseException], ...] = (
            (exceptions.ConnectionError, exceptions.TimeoutError) if cluster else ()
        )
        self.nodes: list[str] = []
        self.first: BaseException | None = None
        self.node = ""  # the primary being read

    def on(self, node: str) -> None:
        """Note that ``node`` is read next."""
        self.node = node

    def add(self, exc: BaseException) -> None:
        """The primary being read failed with ``exc``."""
        self.nodes.append(self.node)
        self.first = self.first or exc

    def listing(self, found: dict[str, dict[str, Any]], servers: int) -> _Listing:
        """The circuits found on ``servers`` servers, in name order; the first error when
        none of them answered."""
        if self.first is not None and len(self.nodes) >= servers:
            raise self.first
        listing = _Listing((name, found[name]) for name in sorted(found))
        listing.unreachable = tuple(self.nodes)
        return listing


async def _ready(listing: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return listing


class RedisStateStore:
    """Circuit state shared through Redis, for a ``redis.Redis``, ``redis.asyncio.Redis``,
    ``redis.cluster.RedisCluster``, ``redis.asyncio.cluster.RedisCluster``, a Sentinel
    ``master_for`` client, or their ``valkey`` equivalents.

    ``retry_interval``: seconds to leave Redis alone at most after failed commands (0.5 s
    after the first, doubling while Redis stays down). ``ttl``: seconds
    after which an unused circuit's keys expire. ``near_cache`` (off by default): seconds a
    process keeps admitting calls without asking Redis after it saw the circuit CLOSED and
    clean (and the throttle slots it leases are due within), say 0.05 for a large fleet; its
    failures are still reported at once, and a trip elsewhere reaches it by pub/sub in about
    a round trip (sync clients, and asyncio stores that ``from_url`` / ``from_sentinel`` made:
    they listen through a sync twin of their client), within ``near_cache`` at worst (a
    second at worst for a refusal). ``clock``: for tests only,
    replaces the server's ``TIME`` (so transition tests can move time). Give the client a short
    ``socket_timeout`` (say 0.1 s): it bounds what a call can lose when Redis hangs.
    A plain client (sync or asyncio) connected to a node of a Redis Cluster is refused
    (``ValueError``).
    """

    coalesces_headers = True  # breakers send a response's headers only when they are news
    rides = True  # headers and budget syncs ride on the next script call (``ride=``)

    def __init__(
        self,
        redis_client: Any,
        prefix: str = "llm-circuit-breaker",
        *,
        retry_interval: float = 5.0,
        ttl: float = 7 * 24 * 3600.0,
        clock: Callable[[], float] | None = None,
        near_cache: float = 0.0,
    ) -> None:
        kind = client_kind(redis_client)
        self.is_async = kind.is_async
        self.is_cluster = kind.is_cluster
        if not isinstance(prefix, str) or not prefix:
            raise ValueError(f"prefix must be a non-empty str, got {prefix!r}")
        if not 0.0 <= near_cache <= 60.0:
            raise ValueError(f"near_cache must be seconds in [0, 60], got {near_cache!r}")
        if not retry_interval > 0 or not ttl >= 1:
            raise ValueError(
                f"retry_interval must be > 0 and ttl >= 1, got {retry_interval!r}, {ttl!r}"
            )
        refuse_cluster_node(redis_client, kind)
        warn_if_retrying(redis_client, prefix)
        self.client = redis_client
        self.prefix = prefix
        self.near_cache = float(near_cache)
        self.retry_interval = float(retry_interval)
        self._ttl = str(int(ttl))
        self._clock = clock
        self._script = redis_client.register_script(_SCRIPT)
        self._exceptions = kind.exceptions
        self._errors = kind.errors
        self._down_until = 0.0
        self._pause = 0.0  # seconds Redis is left alone after the last failure
        self._failed_at = 0.0  # when that failure was seen (time.monotonic())
        self._key_prefix = key_part(prefix)
        self._told_moved = False
        # After a failure, admissions also write until one succeeds: a Redis that answers reads
        # but refuses writes (full, read-only replica) stays unavailable instead of flapping.
        self._confirm_writes = False
        self._lock = threading.Lock()
        self._broken: set[str] = set()  # circuits whose script failed (warned once each)
        self._notices: Notices | None = None
        self._twin: Any = None  # the sync client an asyncio store's notices use, if its own
        if not self.is_async and near_cache:
            self._listen_through(redis_client)
        self._loop_clients = LoopClients(redis_client) if self.is_async else None
        self._releases: set[asyncio.Future[None]] = set()  # give-backs of cancelled admissions

    def _listen_through(self, sync_client: Any) -> None:
        """Hear of changes elsewhere through ``sync_client`` (the store's own client, or, for
        an asyncio store that ``from_url`` / ``from_sentinel`` made, a sync twin of it)."""
        me = weakref.ref(self)
        # an asyncio store's callers are on an event loop: the thread subscribes, always
        ready = _never if self.is_async else lambda: _available(me)
        self._notices = Notices(sync_client, self.prefix, ready=ready)
        if sync_client is not self.client:
            self._twin = sync_client  # ours: closed by close()

    @property
    def notifies(self) -> bool:
        """Whether followers hear of changes elsewhere (a near-cache, and a sync client or an
        asyncio store made by ``from_url`` / ``from_sentinel``)."""
        return self._notices is not None

    def follow(self, name: str, follower: Follower) -> None:
        """Tell ``follower`` (a near-caching link) when circuit ``name`` changes elsewhere."""
        if self._notices is not None:
            self._notices.follow(name, follower)

    def close(self) -> None:
        """Stop listening for changes (the client stays open: it is the caller's; the sync
        twin an asyncio store made for its notices is closed)."""
        if self._notices is not None:
            self._notices.close()
        twin, self._twin = self._twin, None
        if twin is not None:
            try:
                twin.close()
            except Exception:  # pragma: no cover - closing broken sockets
                pass

    @classmethod
    def from_url(
        cls,
        url: str,
        prefix: str = "llm-circuit-breaker",
        *,
        cluster: bool = False,
        asyncio: bool = False,
        timeout: float = 0.1,
        max_connections: int = 50,
        retry_interval: float = 5.0,
        ttl: float = 7 * 24 * 3600.0,
        near_cache: float = 0.0,
        clock: Callable[[], float] | None = None,
    ) -> RedisStateStore:
        """A store with its own client for ``url`` (``redis://``, ``rediss://``,
        ``unix://``; ``valkey://`` / ``valkeys://`` use the valkey package): ``timeout``-second
        socket timeouts and no client-side retries, so a Redis outage costs a call at most
        ``timeout`` seconds; a blocking pool of ``max_connections``, so callers beyond it
        wait for a connection. ``cluster=True`` for a Redis Cluster (any node's URL)."""
        client = client_for_url(
            url, asyncio=asyncio, timeout=timeout, cluster=cluster, max_connections=max_connections
        )
        store = cls(
            client,
            prefix,
            retry_interval=retry_interval,
            ttl=ttl,
            near_cache=near_cache,
            clock=clock,
        )
        if asyncio and near_cache:  # change notices through a sync twin, in their thread
            store._listen_through(
                client_for_url(url, asyncio=False, timeout=timeout, cluster=cluster)
            )
        return store

    @classmethod
    def from_sentinel(
        cls,
        sentinels: Sequence[tuple[str, int]],
        service_name: str,
        prefix: str = "llm-circuit-breaker",
        *,
        asyncio: bool = False,
        timeout: float = 0.1,
        password: str | None = None,
        db: int = 0,
        valkey: bool = False,
        retry_interval: float = 5.0,
        ttl: float = 7 * 24 * 3600.0,
        near_cache: float = 0.0,
    ) -> RedisStateStore:
        """A store on the primary of Sentinel service ``service_name``, asking
        ``sentinels`` (``[(host, port), ...]``) where it is: ``timeout``-second socket
        timeouts and no client-side retries. After a failover the client finds the new
        primary on its next connection (a ``READONLY`` reply drops the old ones at once).
        ``valkey=True``: through the valkey package."""

        def made(asyncio: bool) -> Any:
            return client_for_sentinel(
                sentinels,
                service_name,
                asyncio=asyncio,
                timeout=timeout,
                family="valkey" if valkey else "redis",
                password=password,
                db=db,
            )

        store = cls(
            made(asyncio), prefix, retry_interval=retry_interval, ttl=ttl, near_cache=near_cache
        )
        if asyncio and near_cache:  # change notices through a sync twin, in their thread
            store._listen_through(made(False))
        return store

    # -- health ----------------------------------------------------------------------------

    @property
    def available(self) -> bool:
        """False for a while after a failed command: 0.5 s, doubling up to
        ``retry_interval`` while Redis stays down."""
        return time.monotonic() >= self._down_until

    def _failed(self, exc: BaseException, name: str, started: float) -> StoreUnavailableError:
        """The error a call sees for ``exc`` (its command sent at ``started``), the store
        marked unavailable when ``exc`` says Redis failed."""
        exceptions = self._exceptions
        if _contended(exc, exceptions):  # our own pool is full: Redis is fine
            return StoreUnavailableError(f"no free Redis connection: {exc}")
        if _redirected(exc, exceptions):
            if not self.is_cluster and not self._told_moved:
                self._told_moved = True
                logger.error(
                    "Redis state store %r got %s from a Redis Cluster through a plain client: "
                    "its calls are decided locally; pass a cluster client "
                    "(RedisStateStore.from_url(url, cluster=True))",
                    self.prefix,
                    redact_text(str(exc)),
                )
            return StoreUnavailableError(redact_text(str(exc)))
        if _concerns_one_circuit(exc, exceptions):  # the store serves every other circuit
            if name not in self._broken and len(self._broken) < _MAX_BROKEN:
                self._broken.add(name)
                logger.warning(
                    "Redis state store %r could not run circuit %r (%s); that call is decided "
                    "locally",
                    self.prefix,
                    shown(name),
                    redact_text(str(exc)),
                )
            return StoreUnavailableError(redact_text(str(exc)))
        with self._lock:
            was_up = self._down_until == 0.0
            if not was_up and started < self._failed_at:
                # sent before the failure that set the pause (calls in flight together all
                # fail): one failure of Redis, whatever the number of calls that saw it
                return StoreUnavailableError(redact_text(str(exc)))
            first = min(_FIRST_RETRY, self.retry_interval)
            self._pause = first if was_up else min(self.retry_interval, self._pause * 2 or first)
            self._failed_at = time.monotonic()
            self._down_until = self._failed_at + self._pause
            self._confirm_writes = True
        if was_up:
            logger.warning(
                "Redis state store %r unavailable (%s: %s); breakers decide locally and retry "
                "Redis after %gs, then less often (every %gs at most)",
                self.prefix,
                type(exc).__name__,
                redact_text(str(exc)),
                self._pause,
                self.retry_interval,
            )
        return StoreUnavailableError(redact_text(str(exc)))

    def _waits_for_connection(self, exc: BaseException, give_up: float) -> bool:
        """Whether a call whose command found the pool full waits for a connection: until
        ``give_up``, and while no other caller found Redis down meanwhile."""
        return _contended(exc, self._exceptions) and time.monotonic() < give_up and self.available

    def _outage(self, exc: BaseException) -> bool | None:
        """Which connections a failed command condemns: all (True) after a ``READONLY`` (a
        demoted primary), the idle ones (False) after any other failure of the server (a
        Sentinel client then asks for the primary again on its next connection: one that
        refuses writes, say for ``min-replicas-to-write``, may have been replaced), none
        (None) when the failure says nothing of the server."""
        exceptions = self._exceptions
        if _demoted(exc, exceptions):
            return True
        if (
            _contended(exc, exceptions)
            or _redirected(exc, exceptions)
            or _concerns_one_circuit(exc, exceptions)
        ):
            return None
        return False

    def _drop_connections(self, exc: BaseException) -> None:
        """Close the connections a failure condemns (a cluster client's are its own)."""
        if self.is_cluster:
            return
        which = self._outage(exc)
        pool = getattr(self.client, "connection_pool", None)
        if which is not None and pool is not None:
            try:
                pool.disconnect(inuse_connections=which)
            except Exception:  # pragma: no cover - closing broken sockets
                pass

    async def _adrop_connections(self, client: Any, exc: BaseException) -> None:
        if self.is_cluster:
            return
        which = self._outage(exc)
        pool = getattr(client, "connection_pool", None)
        if which is not None and pool is not None:
            try:
                await pool.disconnect(inuse_connections=which)
            except Exception:  # pragma: no cover - closing broken sockets
                pass

    def _succeeded(self, op: str) -> None:
        if self._down_until and op != "snapshot":  # a read proves nothing about writes
            with self._lock:
                self._down_until = 0.0
                self._pause = 0.0
                self._confirm_writes = False
            logger.warning("Redis state store %r is reachable again", self.prefix)

    def _admit_op(self) -> str:
        return "admit+write" if self._confirm_writes else "admit"

    def _lease(self, more: int, unused: int, unused_tokens: float) -> tuple[object, ...]:
        """An admission's lease arguments: up to ``more`` slots within ``near_cache``, and the
        ``unused`` ones of an earlier lease given back."""
        if not self.near_cache or not (more or unused):
            return ()
        return (more, repr(self.near_cache), unused, repr(float(unused_tokens)))

    # -- script arguments and replies (shared by the sync and async paths) -----------------

    def keys(self, name: str) -> list[str]:
        """The Redis keys of circuit ``name`` (one hash tag: the name, braces escaped)."""
        base = f"{self._key_prefix}:{{{key_part(name)}}}"
        return [base, f"{base}:inflight", f"{base}:window"]

    # -- sync ------------------------------------------------------------------------------

    def _run(
        self,
        name: str,
        op: str,
        config: CircuitBreakerConfig,
        *extra: object,
        tokens: float = 0.0,
        ride: Ride | None = None,
    ) -> list[Any]:
        args = ride_args(
            script_args(self._clock, self._ttl, op, config, *extra, tokens=tokens), ride
        )
        keys = self.keys(name)
        started = time.monotonic()
        give_up = started + _CONTENTION_WAIT
        pause = 0.001
        while True:
            try:
                reply = self._script(keys=keys, args=args)
                break
            except self._errors as exc:
                if self._waits_for_connection(exc, give_up):
                    time.sleep(pause)  # a connection frees up as another caller's reply lands
                    pause = min(0.02, pause * 2)
                    continue
                self._drop_connections(exc)
                raise self._failed(exc, name, started) from exc
        self._succeeded(op)
        if ride is not None and ride.budget is not None:
            landed(reply, ride.budget)
        return list(reply)

    def admit(
        self,
        name: str,
        config: CircuitBreakerConfig,
        tokens: float = 0.0,
        lease: int = 0,
        unused: int = 0,
        unused_tokens: float = 0.0,
        ride: Ride | None = None,
    ) -> Admission:
        extra = self._lease(lease, unused, unused_tokens)
        reply = self._run(name, self._admit_op(), config, *extra, tokens=tokens, ride=ride)
        return admission(reply, config, self.keys(name)[0])

    def record(
        self,
        name: str,
        config: CircuitBreakerConfig,
        permit: int,
        outcome: Outcome,
        open_for: float | None,
        why: str,
        pause: float | None = None,
        ride: Ride | None = None,
    ) -> tuple[Outcome, View]:
        extra = record_args(permit, outcome, open_for, why, pause)
        reply = self._run(name, "record", config, *extra, ride=ride)
        return OUTCOMES[text(reply[0])], view(reply, config, self.keys(name)[0])

    def release(
        self,
        name: str,
        config: CircuitBreakerConfig,
        permit: int,
        tokens: float,
        ride: Ride | None = None,
    ) -> View:
        reply = self._run(name, "release", config, permit, tokens=tokens, ride=ride)
        return view(reply, config, self.keys(name)[0])

    def observe(
        self, name: str, config: CircuitBreakerConfig, limits: RateLimits, ride: Ride | None = None
    ) -> View:
        reply = self._run(name, "observe", config, *observe_args(limits), ride=ride)
        return view(reply, config, self.keys(name)[0])

    def snapshot(self, name: str, config: CircuitBreakerConfig, ride: Ride | None = None) -> View:
        return view(self._run(name, "snapshot", config, ride=ride), config, self.keys(name)[0])

    def control(self, name: str, config: CircuitBreakerConfig, action: Control) -> View:
        return view(self._run(name, "control", config, action), config, self.keys(name)[0])

    # -- asyncio ---------------------------------------------------------------------------

    async def _arun(
        self,
        name: str,
        op: str,
        config: CircuitBreakerConfig,
        *extra: object,
        tokens: float = 0.0,
        ride: Ride | None = None,
    ) -> list[Any]:
        args = ride_args(
            script_args(self._clock, self._ttl, op, config, *extra, tokens=tokens), ride
        )
        keys = self.keys(name)
        started = time.monotonic()
        give_up = started + _CONTENTION_WAIT
        pause = 0.001
        client = None
        try:
            client = await self._loop_clients.current()  # type: ignore[union-attr]
            while True:
                try:
                    call = self._script(keys=keys, args=args, client=client)
                    if op.startswith("admit") or (ride is not None and ride.budget is not None):
                        reply = await self._shielded(call, name, config, op, tokens, ride)
                    else:
                        reply = await call
                    break
                except self._errors as exc:
                    if not self._waits_for_connection(exc, give_up):
                        raise
                    await asyncio.sleep(pause)  # a connection frees up as a reply lands
                    pause = min(0.02, pause * 2)
        except self._errors as exc:
            if client is not None:
                await self._adrop_connections(client, exc)
            raise self._failed(exc, name, started) from exc
        except RuntimeError as exc:  # a client of another loop (its pool could not be copied)
            if "loop" not in str(exc):
                raise
            raise StoreUnavailableError(redact_text(str(exc))) from exc
        self._succeeded(op)
        if ride is not None and ride.budget is not None:
            landed(reply, ride.budget)
        return list(reply)

    async def _shielded(
        self,
        call: Awaitable[Any],
        name: str,
        config: CircuitBreakerConfig,
        op: str,
        tokens: float,
        ride: Ride | None,
    ) -> Any:
        """Await an admission's script call, or one carrying a budget sync. A caller
        cancelled meanwhile does not cancel the call (Redis may have run it already): once it
        completes, what an admission admitted (a probe's lease, a throttle slot) is given
        back, so no probe is held until its lease runs out, and the sync lands by the call's
        answer (``ride.late``): what it carried is counted once, never sent again."""
        task = asyncio.ensure_future(call)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if op.startswith("admit"):
                task.add_done_callback(functools.partial(self._give_back, name, config, tokens))
            if ride is not None and ride.budget is not None and ride.landing is not None:
                ride.late = True
                task.add_done_callback(functools.partial(_land_late, ride))
            raise

    def _give_back(
        self, name: str, config: CircuitBreakerConfig, tokens: float, task: asyncio.Future[Any]
    ) -> None:
        if task.cancelled() or task.exception() is not None:
            return  # nothing was admitted, or nobody can tell: a lease runs out on its own
        permit = int(task.result()[0])
        if permit >= 0:
            release = asyncio.ensure_future(self._release_quietly(name, config, permit, tokens))
            self._releases.add(release)  # held until done: the loop keeps weak references
            release.add_done_callback(self._releases.discard)

    async def _release_quietly(
        self, name: str, config: CircuitBreakerConfig, permit: int, tokens: float
    ) -> None:
        try:
            await self._arun(name, "release", config, permit, tokens=tokens)
        except StoreUnavailableError:  # the lease runs out after half_open_probe_timeout
            pass

    async def aadmit(
        self,
        name: str,
        config: CircuitBreakerConfig,
        tokens: float = 0.0,
        lease: int = 0,
        unused: int = 0,
        unused_tokens: float = 0.0,
        ride: Ride | None = None,
    ) -> Admission:
        extra = self._lease(lease, unused, unused_tokens)
        reply = await self._arun(name, self._admit_op(), config, *extra, tokens=tokens, ride=ride)
        return admission(reply, config, self.keys(name)[0])

    async def arecord(
        self,
        name: str,
        config: CircuitBreakerConfig,
        permit: int,
        outcome: Outcome,
        open_for: float | None,
        why: str,
        pause: float | None = None,
        ride: Ride | None = None,
    ) -> tuple[Outcome, View]:
        extra = record_args(permit, outcome, open_for, why, pause)
        reply = await self._arun(name, "record", config, *extra, ride=ride)
        return OUTCOMES[text(reply[0])], view(reply, config, self.keys(name)[0])

    async def arelease(
        self,
        name: str,
        config: CircuitBreakerConfig,
        permit: int,
        tokens: float,
        ride: Ride | None = None,
    ) -> View:
        reply = await self._arun(name, "release", config, permit, tokens=tokens, ride=ride)
        return view(reply, config, self.keys(name)[0])

    async def aobserve(
        self, name: str, config: CircuitBreakerConfig, limits: RateLimits, ride: Ride | None = None
    ) -> View:
        reply = await self._arun(name, "observe", config, *observe_args(limits), ride=ride)
        return view(reply, config, self.keys(name)[0])

    async def asnapshot(
        self, name: str, config: CircuitBreakerConfig, ride: Ride | None = None
    ) -> View:
        reply = await self._arun(name, "snapshot", config, ride=ride)
        return view(reply, config, self.keys(name)[0])

    async def acontrol(self, name: str, config: CircuitBreakerConfig, action: Control) -> View:
        reply = await self._arun(name, "control", config, action)
        return view(reply, config, self.keys(name)[0])

    # -- listing (read-only, for the status command) ---------------------------------------

    def _primaries(self) -> list[tuple[str, Any]]:
        """A client for each server holding circuits, by its ``host:port``: every primary of
        a cluster."""
        if not self.is_cluster:
            return [("", self.client)]
        client = self.client
        connection = getattr(client, "get_redis_connection", None) or client.get_valkey_connection
        return [(node.name, connection(node)) for node in client.get_primaries()]

    def circuits(self) -> dict[str, dict[str, Any]]:
        """Every circuit under this prefix: name -> {state, failure_count, success_count,
        opened_at, retry_after, throttle: {paused_for, requests_remaining}}, as of the server's
        clock (raises redis errors as they are). Pages with SCAN on every primary, each page
        scanned and read by one script call (one reply to parse); a server refusing such
        scripts is read a pipelined round trip per page. An asyncio store lists through a copy
        of its client on an event loop of its own (the listing may also be awaited; see
        :meth:`acircuits`).

        A cluster primary that does not answer leaves its circuits out: the listing holds the
        others', and its ``unreachable`` attribute names the silent primaries (``host:port``;
        empty when every one answered). The error is raised when none answers."""
        if self.is_async:
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                return pool.submit(asyncio.run, self._alist_apart()).result()
        found: dict[str, dict[str, Any]] = {}
        pattern = circuit_keys(self.prefix)
        # identical fields give identical views at one `now`: most circuits are quiet CLOSED
        seen: dict[bytes, dict[str, Any] | None] = {}
        now: float | None = None
        silent = _Silent(self.is_cluster, self._exceptions)
        servers = self._primaries()
        for node, server in servers:
            silent.on(node)
            try:
                if now is None:  # one clock for the whole listing: the first that answers
                    seconds, micros = server.time()
                    now = seconds + micros / 1_000_000
                if not self._scan_in_scripts(server, pattern, now, found, seen):
                    self._scan_pages(server, pattern, now, found)
            except silent.errors as exc:
                silent.add(exc)
        return silent.listing(found, len(servers))

    async def acircuits(self) -> dict[str, dict[str, Any]]:
        """:meth:`circuits` of an asyncio store, through the running loop's client."""
        if not self.is_async:
            return self.circuits()
        return await self._alist(await self._loop_clients.current())  # type: ignore[union-attr]

    async def _alist_apart(self) -> dict[str, dict[str, Any]]:
        client = copy_for_loop(self.client)
        listed: list[Any] = []  # the cluster nodes read, closed with the copy
        try:
            return await self._alist(client, listed)
        finally:
            if listed:  # a node that failed is replaced in the client's map, the old one open
                manager = getattr(client, "nodes_manager", None)
                startup = getattr(manager, "startup_nodes", None) or {}
                listed += [*client.get_nodes(), *startup.values()]
            for node in listed:
                with contextlib.suppress(Exception):
                    await node.disconnect()
            if client is not self.client:
                await close_copy(client)
            elif self.is_cluster:  # its connections belong to this loop: reopened on next use
                await client.aclose()

    async def _alist(self, client: Any, listed: list[Any] | None = None) -> _Listing:
        if self.is_cluster:
            nodes: list[Any] = list(client.get_primaries()) or [None]
            if nodes == [None]:  # not initialised yet: the first command finds the nodes
                await client.ping()
                nodes = list(client.get_primaries())
            if listed is not None:
                listed.extend(nodes)
        else:
            nodes = [None]

        async def run(node: Any, *args: Any) -> Any:
            if node is None:
                return await client.execute_command(*args)
            return await client.execute_command(*args, target_nodes=node)

        found: dict[str, dict[str, Any]] = {}
        pattern = circuit_keys(self.prefix)
        seen: dict[bytes, dict[str, Any] | None] = {}
        now: float | None = None
        silent = _Silent(self.is_cluster, self._exceptions)
        for node in nodes:
            silent.on("" if node is None else node.name)
            try:
                if now is None:  # one clock for the whole listing: the first that answers
                    seconds, micros = (float(x) for x in await run(node, "TIME"))
                    now = seconds + micros / 1_000_000
                await self._alist_node(run, node, pattern, now, found, seen)
            except silent.errors as exc:
                silent.add(exc)
        return silent.listing(found, len(nodes))

    async def _alist_node(
        self,
        run: Callable[..., Awaitable[Any]],
        node: Any,
        pattern: str,
        now: float,
        found: dict[str, dict[str, Any]],
        seen: dict[bytes, dict[str, Any] | None],
    ) -> None:
        """List one server's circuits into ``found`` (see :meth:`circuits`)."""
        cursor: Any = 0
        while True:
            try:
                cursor, blob = await run(node, "EVAL", _SCAN_SCRIPT, 0, cursor, pattern, _PAGE)
            except self._exceptions.ResponseError as exc:  # no scripts: a HMGET per key
                _raise_if_down(exc)
                cursor, page = await run(node, "SCAN", cursor, "MATCH", pattern, "COUNT", _PAGE)
                for key in page:
                    got = await run(node, "HMGET", key, *LISTED_FIELDS)
                    listed = circuit_fields([plain(f) for f in got], now)
                    if listed is not None:
                        found[name_of_key(text(key), self.prefix)] = listed
            else:
                self._take_page(blob, now, found, seen)
            if int(cursor) == 0:
                return

    def _take_page(
        self,
        blob: bytes | str,
        now: float,
        found: dict[str, dict[str, Any]],
        seen: dict[bytes, dict[str, Any] | None],
    ) -> None:
        """Add the circuits of a page that ``_SCAN_SCRIPT`` read to ``found``."""
        if isinstance(blob, str):  # a client that decodes replies
            blob = blob.encode()
        for key, fields in _records(blob):
            if fields in seen:
                listed = seen[fields]
            else:
                listed = seen[fields] = circuit_fields(fields.decode().split("\0"), now)
            if listed is not None:
                name = name_of_key(key.decode(errors="replace"), self.prefix)
                found[name] = {**listed, "throttle": {**listed["throttle"]}}

    def _scan_in_scripts(
        self,
        server: Any,
        pattern: str,
        now: float,
        found: dict[str, dict[str, Any]],
        seen: dict[bytes, dict[str, Any] | None],
    ) -> bool:
        """List one server's circuits a script call per page (False: it refuses the script
        before the first page)."""
        cursor: Any = 0
        try:
            cursor, blob = server.eval(_SCAN_SCRIPT, 0, cursor, pattern, _PAGE)
        except self._exceptions.ResponseError as exc:
            _raise_if_down(exc)
            return False
        while True:
            self._take_page(blob, now, found, seen)
            if int(cursor) == 0:
                return True
            cursor, blob = server.eval(_SCAN_SCRIPT, 0, cursor, pattern, _PAGE)

    def _scan_pages(
        self, server: Any, pattern: str, now: float, found: dict[str, dict[str, Any]]
    ) -> None:
        cursor = None
        while cursor != 0:
            cursor, page = server.scan(cursor or 0, match=pattern, count=_PAGE)
            if not page:
                continue
            for key, fields in zip(page, self._read_page(server, page), strict=True):
                listed = circuit_fields(fields, now)
                if listed is not None:
                    found[name_of_key(text(key), self.prefix)] = listed

    def _read_page(self, server: Any, page: Sequence[Any]) -> list[list[str]]:
        """Each key's :data:`LISTED_FIELDS`: one script call for the page, or (a server that
        refuses such scripts) one pipelined HMGET per key in one round trip."""
        try:
            rows = server.eval(_LIST_SCRIPT, 0, *page)
        except self._exceptions.ResponseError as exc:
            _raise_if_down(exc)
            pipe = server.pipeline(transaction=False)
            for key in page:
                pipe.hmget(key, *LISTED_FIELDS)
            return [[plain(f) for f in fields] for fields in pipe.execute()]
        width = len(LISTED_FIELDS)
        split = [(row.decode() if isinstance(row, bytes) else str(row)).split("\0") for row in rows]
        return [fields if len(fields) == width else [""] * width for fields in split]

    def __repr__(self) -> str:
        kind = "asyncio" if self.is_async else "sync"
        return f"RedisStateStore(prefix={self.prefix!r}, {kind})"
