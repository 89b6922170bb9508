"""Signature help lists every option: the decorators' typed overloads name each config field
with its default, and stay in step with the config dataclasses."""

from __future__ import annotations

import ast
import dataclasses
import inspect
from typing import Any

import pytest

from llm_circuit_breaker import CircuitBreakerConfig, RetryConfig
from llm_circuit_breaker.strategies import circuit, retry


def _overload_keywords(module: Any, name: str) -> dict[str, str]:
    """The keyword-only parameters (and their default's source) of ``name``'s overload that
    takes the most of them."""
    tree = ast.parse(inspect.getsource(module))
    best: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name == name:
            if not any(ast.unparse(d) == "overload" for d in node.decorator_list):
                continue
            found = {
                arg.arg: ast.unparse(default)
                for arg, default in zip(node.args.kwonlyargs, node.args.kw_defaults, strict=True)
                if default is not None
            }
            if len(found) > len(best):
                best = found
    return best


@pytest.mark.parametrize(
    ("module", "name", "config", "skip"),
    [
        (circuit, "circuit_breaker", CircuitBreakerConfig, {"timeout"}),
        (retry, "with_retry", RetryConfig, set()),
    ],
)
def test_every_config_field_is_listed_with_its_default(
    module: Any, name: str, config: Any, skip: set[str]
) -> None:
    listed = _overload_keywords(module, name)
    for field in dataclasses.fields(config):
        if field.name in skip:  # circuit_breaker(timeout=) is refused: it is the helpers' option
            continue
        assert field.name in listed, f"{name}'s overload does not list {field.name}"
        assert ast.literal_eval(listed[field.name]) == field.default, field.name
