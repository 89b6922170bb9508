"""Every Python snippet of the README runs, against the fake provider instead of the real one."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from llm_circuit_breaker.testing import FakeLLMServer

README = Path(__file__).resolve().parent.parent / "README.md"
REAL_HOSTS = ("api.openai.com", "api.anthropic.com", "generativelanguage.googleapis.com")
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
    """The README shows code for the three ways in; this suite runs all of it."""
    assert len(SNIPPETS) >= 3


@pytest.mark.parametrize("code", SNIPPETS, ids=[_first_line(c) for c in SNIPPETS])
def test_snippet_runs(
    code: str, provider: FakeLLMServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """The snippet executes as written, the SDKs and the URL pointed at the fake provider by
    the environment, and prints the provider's answer."""
    assert not any(host in code for host in REAL_HOSTS), "a snippet names a real provider"
    exec(compile(code, f"README:{_first_line(code)}", "exec"), {"__name__": "readme"})
    assert capsys.readouterr().out.splitlines()[0] == "Hello!"
