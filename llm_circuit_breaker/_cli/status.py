"""``python -m llm_circuit_breaker status --redis URL``: the shared breakers' states."""

from __future__ import annotations

import sys


def run_status(url: str, prefix: str, *, as_json: bool) -> int:
    """Print the states of the breakers kept in Redis; exit status 2 when Redis is unreachable."""
    print("status needs the Redis store, which this build does not include yet", file=sys.stderr)
    return 2
