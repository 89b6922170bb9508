"""``python -m llm_circuit_breaker status --redis URL``: the shared breakers' states.

It reads Redis, where every process using a ``RedisStateStore`` keeps its breakers; breakers in
a process's memory are seen from inside (``breaker_registry.snapshot()``) or through the
Prometheus / OpenTelemetry exporters. With ``--json``, ``opened_at_unix`` is when a circuit
opened in Unix time (the Redis server's clock): not the ``opened_at`` of an in-process
snapshot, which is on the breaker's own clock.
"""

from __future__ import annotations

import json
import sys
from typing import Any, TextIO


def run_status(url: str, prefix: str, *, as_json: bool, out: TextIO | None = None) -> int:
    """Print the circuits kept in Redis; exit status 2 (one line, no traceback) on failure."""
    out = out or sys.stdout  # looked up now: the stream may have been replaced since import
    try:
        import redis

        from llm_circuit_breaker.storage.redis import RedisStateStore
    except ImportError:
        extra = "pip install 'llm-circuit-guard[redis]'"
        print(f"error: the status command needs the redis extra: {extra}", file=sys.stderr)
        return 2
    try:
        try:
            store = RedisStateStore.from_url(url, prefix, timeout=2.0)
        except ValueError as exc:  # a node of a Redis Cluster: list every primary
            if "cluster=True" not in str(exc):
                raise
            store = RedisStateStore.from_url(url, prefix, timeout=2.0, cluster=True)
        circuits = store.circuits()
    except _client_errors(redis) as exc:
        from llm_circuit_breaker._redact import redact_text

        where = redact_text(url)
        print(
            f"error: cannot read circuits from Redis at {where}: "
            f"{type(exc).__name__}: {redact_text(str(exc))}",
            file=sys.stderr,
        )
        return 2
    if as_json:
        print(
            json.dumps({name: _unix(view) for name, view in circuits.items()}, indent=2), file=out
        )
    else:
        _table(circuits, prefix, out)
    return 0


def _client_errors(redis: Any) -> tuple[type[BaseException], ...]:
    """What reading circuits may raise that is a failure to report: redis-py's errors,
    valkey's (a ``valkey://`` URL), a refused connection, a bad URL."""
    errors: list[type[BaseException]] = [redis.RedisError, OSError, ValueError]
    valkey = sys.modules.get("valkey")  # imported by from_url for a valkey:// URL
    if valkey is not None:
        errors.append(valkey.ValkeyError)
    return tuple(errors)


def _table(circuits: dict[str, dict[str, Any]], prefix: str, out: TextIO) -> None:
    if not circuits:
        print(f"no circuits under prefix {prefix!r}", file=out)
        return
    width = max(len("NAME"), *(len(name) for name in circuits))
    header = f"{'NAME':<{width}}  {'STATE':<9}  {'FAILURES':>8}  {'PROBE OK':>8}  "
    print(f"{header}{'RETRY AFTER':<11}  THROTTLE", file=out)
    scope = None
    for name, view in circuits.items():  # in name order: a scope's breakers together
        if scope is not None and name.partition(":")[0] != scope:
            print(file=out)  # a blank line between scopes (openai:..., anthropic:...)
        scope = name.partition(":")[0]
        wait = view["retry_after"]
        when = "held open" if wait is None else ("now" if wait == 0 else f"{wait:.1f}s")
        counts = f"{view['failure_count']:>8}  {view['success_count']:>8}"
        throttle = _throttle(view.get("throttle") or {})
        print(f"{name:<{width}}  {view['state']:<9}  {counts}  {when:<11}  {throttle}", file=out)


def _throttle(view: dict[str, Any]) -> str:
    """``paused 2.0s`` / ``12 requests left`` / ``-``."""
    paused, left = view.get("paused_for"), view.get("requests_remaining")
    if paused:
        return f"paused {paused:.1f}s"
    return "-" if left is None else f"{left} requests left"


def _unix(view: dict[str, Any]) -> dict[str, Any]:
    """``view`` with its ``opened_at`` (Unix time, from Redis) named for what it is."""
    return {("opened_at_unix" if key == "opened_at" else key): value for key, value in view.items()}
