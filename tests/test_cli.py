"""The command line: the demo end to end (shortened), and argparse errors."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import time
from typing import Any

import pytest

from llm_circuit_breaker import CircuitBreaker, CircuitBreakerConfig, Outcome
from llm_circuit_breaker._cli import main
from llm_circuit_breaker._cli.demo import run_demo
from llm_circuit_breaker.storage import RedisStateStore
from tests.redis_server import RedisServer


def test_demo_opens_and_recovers() -> None:
    """A 6 s demo: paced (CLOSED) while rate limited, opens in the outage, fails calls fast,
    closes again; the summary sets the clients side by side and names what was refused."""
    out = io.StringIO()
    assert run_demo(duration=6.0, concurrency=6, seed=1, out=out) == 0
    text = out.getvalue()
    assert "CLOSED -> OPEN" in text
    assert re.search(r"HALF_OPEN -> CLOSED", text)
    assert not re.search(r"rate limited\s+\S+ -> OPEN", text)  # a rate limit is not an outage
    header = re.search(r"\s+unprotected\s+tenacity alone\s+llm-circuit-breaker", text)
    assert header is not None

    def row(label: str) -> list[float]:
        found = re.search(re.escape(label) + r"\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)", text)
        assert found is not None, label
        return [float(x) for x in found.groups()]

    unprotected, tenacity_alone, ours = row("requests that hit the failing provider")
    assert ours < tenacity_alone and ours < unprotected
    assert row("429s drawn from the provider")[2] < row("429s drawn from the provider")[0]
    refused = re.search(r"(\d+) CircuitOpenError", text)
    assert refused is not None and int(refused.group(1)) > 0
    assert "ThrottledError" in text
    assert re.search(r"recovery to CLOSED: \d+\.\d+s", text)


def test_demo_as_a_module_with_plain_output() -> None:
    """python -m llm_circuit_breaker demo runs without a terminal and ends by itself."""
    done = subprocess.run(
        [sys.executable, "-m", "llm_circuit_breaker", "demo", "--duration", "3", "--concurrency", "4"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "summary" in done.stdout
    assert "\x1b[" not in done.stdout  # no terminal codes when not a terminal


@pytest.mark.parametrize(
    "argv", [["demo", "--bogus"], ["demo", "--duration", "-1"], ["nonsense"], []]
)
def test_bad_options_are_usage_errors(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """Unknown or bad options give argparse's usage error (exit status 2)."""
    with pytest.raises(SystemExit) as caught:
        main(argv)
    assert caught.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_status_lists_shared_circuits(
    redis_server: RedisServer, redis_client: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """status --redis prints the circuits kept in Redis, as a table or JSON."""
    store = RedisStateStore(redis_client)
    opened = CircuitBreaker("openai", CircuitBreakerConfig(failure_threshold=1), store=store)
    opened.record(opened.admit(), Outcome.FAILURE)
    fine = CircuitBreaker("anthropic", store=store)
    fine.record_success(fine.admit())
    assert main(["status", "--redis", redis_server.url]) == 0
    table = capsys.readouterr().out
    assert re.search(r"openai\s+OPEN\s+1\s+0\s+\d+\.\ds", table)
    assert re.search(r"anthropic\s+CLOSED", table)
    assert main(["status", "--redis", redis_server.url, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["openai"]["state"] == "OPEN"
    assert data["anthropic"]["failure_count"] == 0
    # Unix time by the Redis server's clock, named so: not a snapshot's opened_at
    assert "opened_at" not in data["openai"]
    assert abs(data["openai"]["opened_at_unix"] - time.time()) < 3600


def test_status_groups_scoped_breakers(
    redis_server: RedisServer, redis_client: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """Breakers of one scope are listed together, scopes apart."""
    store = RedisStateStore(redis_client)
    for name in ("openai:gpt-4o", "anthropic:haiku", "openai:o3", "anthropic:opus"):
        breaker = CircuitBreaker(name, store=store)
        breaker.record_success(breaker.admit())
    assert main(["status", "--redis", redis_server.url]) == 0
    lines = capsys.readouterr().out.splitlines()[1:]
    names = [line.split()[0] if line.strip() else "" for line in lines]
    assert names == ["anthropic:haiku", "anthropic:opus", "", "openai:gpt-4o", "openai:o3"]


def test_status_shows_the_shared_throttle(
    redis_server: RedisServer, redis_client: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """A rate-limited circuit shows its pause; a paced one the requests left."""
    store = RedisStateStore(redis_client)
    limited = CircuitBreaker("limited", store=store)
    limited.record(limited.admit(), Outcome.THROTTLED, hint=30.0)
    paced = CircuitBreaker("paced", CircuitBreakerConfig(requests_per_minute=10), store=store)
    paced.record_success(paced.admit())
    assert main(["status", "--redis", redis_server.url]) == 0
    table = capsys.readouterr().out
    paused = re.search(r"limited\s+CLOSED\s+0\s+0\s+now\s+paused (\d+\.\d)s", table)
    assert paused is not None
    assert 20.0 <= float(paused.group(1)) <= 31.0  # 30 s spread up to 1 s, less the time since
    assert re.search(r"paced\s+CLOSED.*\s9 requests left", table)
    assert main(["status", "--redis", redis_server.url, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["paced"]["throttle"] == {"paused_for": None, "requests_remaining": 9}


@pytest.mark.parametrize("scheme", ["redis", "valkey"])
def test_status_unreachable_redis(
    closed_port: int, capsys: pytest.CaptureFixture[str], scheme: str
) -> None:
    """An unreachable Redis (or Valkey, whose client's errors are its own): one line on
    stderr, exit status 2, no traceback."""
    assert main(["status", "--redis", f"{scheme}://127.0.0.1:{closed_port}/0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot read circuits")
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_status_never_prints_the_redis_password(
    closed_port: int, redis_server: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """A password in the Redis URL is masked in the error line, reachable or not."""
    assert main(["status", "--redis", f"redis://:hunter2-secret@127.0.0.1:{closed_port}/0"]) == 2
    err = capsys.readouterr().err
    assert "hunter2-secret" not in err and "[REDACTED]" in err
    main(["status", "--redis", f"redis://:hunter2-secret@127.0.0.1:{redis_server.port}/0"])
    captured = capsys.readouterr()
    assert "hunter2-secret" not in captured.out + captured.err


def test_status_help_points_in_process_views_to_prometheus(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """status --help says that a running app's in-process breakers are Prometheus's to show."""
    with pytest.raises(SystemExit):
        main(["status", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "in-process view" in text and "Prometheus" in text
