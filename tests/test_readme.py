"""Every Python snippet of the README runs, against the fake provider instead of the real one."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from llm_circuit_breaker.testing import FakeLLMServer

README = Path(__file__).resolve().parent.parent / "README.md"
REAL_HOSTS = ("api.openai.com", "api.anthropic.com", "generativelanguage.googleapis.com")
BLOCKS = [
    (
        block.group(1),
        block.string[: block.start()].rstrip().rsplit("\n", 1)[-1].startswith("<!-- pytest:"),
    )
    for block in re.finditer(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.DOTALL)
]
SNIPPETS = [code for code, test_module in BLOCKS if not test_module]
TEST_MODULES = [code for code, test_module in BLOCKS if test_module]


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


def test_the_readme_test_passes_under_pytest_with_the_plugin(tmp_path: Path) -> None:
    """The README's test of an application (at most 15 lines) passes as a user runs it: a
    test module under pytest, the fixtures from the installed plugin."""
    assert len(TEST_MODULES) == 1
    code = TEST_MODULES[0]
    assert len([line for line in code.splitlines() if line.strip()]) <= 15
    ini = "[pytest]\nasyncio_default_fixture_loop_scope = function\nfilterwarnings = error\n"
    (tmp_path / "pytest.ini").write_text(ini, encoding="utf-8")
    (tmp_path / "test_my_app.py").write_text(code, encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "."],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    assert "1 passed" in done.stdout
