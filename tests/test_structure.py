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


def _cycles() -> list[list[str]]:
    """Strongly connected groups of the package's import graph (TYPE_CHECKING imports and
    imports inside functions included), by Tarjan's algorithm."""
    import grimp

    graph = grimp.build_graph("llm_circuit_breaker")
    edges = {m: sorted(graph.find_modules_directly_imported_by(m)) for m in sorted(graph.modules)}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for imported in edges[module]:
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == module:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for module in edges:
        if module not in index:
            visit(module)
    return groups


def test_no_import_cycle_even_for_type_checking() -> None:
    """Dependencies point one way: the layers in pyproject.toml (checked by ``lint-imports``)
    and no cycle inside a layer either."""
    assert _cycles() == []


@pytest.mark.parametrize("name", MODULES)
def test_every_module_says_what_it_holds(name: str) -> None:
    """One concept per module, named in its docstring's first line."""
    module = sys.modules.get(name) or __import__(name, fromlist=["_"])
    assert (module.__doc__ or "").strip(), f"{name} has no docstring"


def test_the_top_level_holds_the_public_modules_and_the_foundation_only() -> None:
    """Everything else lives in a folder named for its concept (_core, _judge, breaker, storage,
    strategies, http, httpx, observability, testing, _cli)."""
    top = sorted(name for name in MODULES if name.count(".") == 1 and not _is_package(name))
    assert top == [
        "llm_circuit_breaker._redact",
        "llm_circuit_breaker._validate",
        "llm_circuit_breaker.config",
        "llm_circuit_breaker.errors",
        "llm_circuit_breaker.results",
    ]


def _is_package(name: str) -> bool:
    module = sys.modules.get(name) or __import__(name, fromlist=["_"])
    return hasattr(module, "__path__")
