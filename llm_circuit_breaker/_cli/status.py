"""``python -m llm_circuit_breaker status --redis URL``: the shared breakers' states.

It reads Redis, where every process using a ``RedisStateStore`` keeps its breakers; breakers in
a process's memory are seen from inside (``breaker_registry.snapshot()``) or through the
Prometheus / OpenTelemetry exporters. With ``--json``, ``opened_at_unix`` is when a circuit
opened in Unix time (the Redis server's clock): not the ``opened_at`` of an in-process
snapshot, which is on the breaker's own clock.
"""

from __future__ import annotations

import json
import re
import sys
from typing import Any, TextIO
from urllib.parse import unquote

from llm_circuit_breaker._redact import REDACTED, redact_text
from llm_circuit_breaker._redact import shown as _shown


def run_status(url: str, prefix: str, *, as_json: bool, out: TextIO | None = None) -> int:
    """Print the circuits kept in Redis; exit status 2 (one line, no traceback) on failure, 3
    when some primaries of a Redis Cluster did not answer (the others' circuits printed)."""
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
    except ImportError as exc:  # a valkey:// URL without the valkey package
        print(
            f"error: {_masked_url(url)} needs the {exc.name or 'valkey'} package", file=sys.stderr
        )
        return 2
    except _client_errors(redis) as exc:
        why = _masked(str(exc), url, pieces=isinstance(exc, ValueError))
        print(
            f"error: cannot read circuits from Redis at {_masked_url(url)}: "
            f"{type(exc).__name__}: {_printable(why)}",
            file=sys.stderr,
        )
        return 2
    shown = _shown_names(circuits)
    if as_json:
        print(json.dumps({name: _unix(view) for name, view in shown.items()}, indent=2), file=out)
    else:
        _table(shown, prefix, out)
    silent = getattr(circuits, "unreachable", ())
    if silent:  # what the others hold is listed; exit status 3: the listing is not whole
        nodes = ", ".join(_printable(redact_text(node)) for node in silent)
        print(
            f"warning: {len(silent)} Redis Cluster primaries did not answer ({nodes}): "
            "their circuits are missing from this listing",
            file=sys.stderr,
        )
        return 3
    return 0


def _userinfo(url: str) -> str:
    """The user part of ``url``: from ``://`` to its last ``@`` ("" for none), whatever it
    holds (an ``@`` or a ``/`` left unescaped in a password included)."""
    start = url.find("://")
    end = url.rfind("@")
    return url[start + 3 : end] if 0 <= start < end else ""


def _masked_url(url: str) -> str:
    """``url`` as printed: its whole user part masked (a user name alone may be a token),
    credential-like query values too."""
    info = _userinfo(url)
    if info:
        start = url.find("://") + 3
        url = f"{url[:start]}{REDACTED}{url[start + len(info) :]}"
    return _printable(redact_text(url))


def _masked(text: str, url: str, *, pieces: bool) -> str:
    """An error message about ``url`` with its credentials masked; ``pieces``: also every
    part of the URL's user part (a parser that split a malformed URL echoes its parts)."""
    info = _userinfo(url)
    if info:
        found = {info, unquote(info)}
        if pieces:
            for part in re.split(r"[:/@]", info):
                if len(part) >= 2:
                    found.update((part, unquote(part)))
        for secret in sorted(found, key=len, reverse=True):
            text = text.replace(secret, REDACTED)
    return redact_text(text)


def _printable(text: str) -> str:
    """``text`` with what a terminal would act on (control characters, escape sequences, bidi
    overrides) written as escapes (``\\x1b``, ``\\n``, ``\\u202e``): one line, shown as stored."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def _shown_names(circuits: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``circuits`` by name as shown: credentials masked (a breaker named after a keyed
    URL), control characters escaped; names that become alike are told apart (`` #2``)."""
    shown: dict[str, dict[str, Any]] = {}
    for name, view in circuits.items():
        label = _printable(_shown(name))
        if label in shown:
            count = 2
            while f"{label} #{count}" in shown:
                count += 1
            label = f"{label} #{count}"
        shown[label] = view
    return shown


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
