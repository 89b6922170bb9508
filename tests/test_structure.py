"""The package's shape: every module imports alone, and the decorators load no HTTP stack."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import pytest

import llm_circuit_breaker

MODULES = sorted(
    info.name
    for info in pkgutil.walk_packages(llm_circuit_breaker.__path__, "llm_circuit_breaker.")
    if not info.name.endswith("__main__")
)


def _run(code: str) -> str:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout


def test_every_module_imports_alone_in_a_fresh_interpreter() -> None:
    """No import cycle: each module can be the first one imported."""
    code = "\n".join(
        [
            "import importlib, subprocess, sys",
            f"for name in {MODULES!r}:",
            "    subprocess.run([sys.executable, '-c', f'import {name}'], check=True)",
            "print('ok')",
        ]
    )
    assert _run(code).strip() == "ok"


def test_importing_the_package_loads_no_http_stack_and_no_tenacity() -> None:
    """A program that only decorates SDK calls pays for neither requests, aiohttp nor tenacity
    until it needs them."""
    loaded = _run(
        "import sys, llm_circuit_breaker\n"
        "from llm_circuit_breaker import circuit_breaker, with_retry\n"
        "print(sorted(m for m in ('requests', 'aiohttp', 'tenacity') if m in sys.modules))"
    )
    assert loaded.strip() == "[]"


def test_the_http_client_loads_its_driver_on_first_use() -> None:
    """Naming LLMCircuitBreaker loads the client; requests arrives only with the first call."""
    loaded = _run(
        "import sys\n"
        "from llm_circuit_breaker import LLMCircuitBreaker\n"
        "cb = LLMCircuitBreaker()\n"
        "print('requests' in sys.modules, 'aiohttp' in sys.modules)"
    )
    assert loaded.split() == ["False", "False"]


@pytest.mark.parametrize("name", MODULES)
def test_modules_stay_short(name: str) -> None:
    """One concept per module, about 300 lines at most."""
    module = sys.modules.get(name) or __import__(name, fromlist=["_"])
    path = module.__file__
    assert path is not None
    with open(path, encoding="utf-8") as source:
        assert sum(1 for _ in source) <= 320, name
