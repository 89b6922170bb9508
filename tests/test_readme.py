"""Every Python snippet of the README runs, against the fake provider instead of the real one."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from llm_circuit_breaker.testing import FakeLLMServer, Reply

README = Path(__file__).resolve().parent.parent / "README.md"
SNIPPETS = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.DOTALL)


def _first_line(code: str) -> str:
    return next(line for line in code.splitlines() if line.strip())[:60]


@pytest.fixture
def provider(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeLLMServer]:
    """The fake provider, where the SDKs and the snippets' URLs point."""
    with FakeLLMServer() as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.url + "/v1")
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
        monkeypatch.setenv("ANTHROPIC_BASE_URL", server.url)
        monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")
        yield server


def test_there_are_snippets() -> None:
    """The README shows code; this suite runs all of it."""
    assert len(SNIPPETS) >= 4


@pytest.mark.parametrize("code", SNIPPETS, ids=[_first_line(c) for c in SNIPPETS])
def test_snippet_runs(
    code: str, provider: FakeLLMServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """The snippet executes as written (hosts swapped for the fake provider's)."""
    if "PrometheusCollector" in code:
        pytest.importorskip("prometheus_client")
        pytest.importorskip("opentelemetry.sdk")
        code = code.replace("PrometheusCollector().register()", "PrometheusCollector()")
    if "cb.stream" in code:
        provider.script(Reply.ok(), Reply.openai_stream(["Hel", "lo"]), Reply.ok())
    code = code.replace("https://api.openai.com", provider.url)
    from llm_circuit_breaker.breaker import registry as registries

    everywhere = list(registries._EVERYWHERE)  # a snippet may instrument every registry
    try:
        exec(compile(code, f"README:{_first_line(code)}", "exec"), {"__name__": "readme"})
    finally:
        registries._EVERYWHERE[:] = everywhere
    if "cb.stream" in code:
        assert "Hello" in capsys.readouterr().out
    if "print(answer(" in code:
        assert capsys.readouterr().out.strip() == "Hello!"
