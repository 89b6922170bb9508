"""Type-checked by mypy in CI, never run: the decorators keep the wrapped signatures."""

from __future__ import annotations

from collections.abc import AsyncIterator

from typing_extensions import assert_type

from llm_circuit_breaker import CircuitBreaker, circuit_breaker, with_retry


@with_retry(max_retries=2)
@circuit_breaker("openai", failure_threshold=5)
def complete(prompt: str, *, temperature: float = 0.0) -> str:
    return prompt


@circuit_breaker("anthropic")
async def acomplete(prompt: str) -> str:
    return prompt


@circuit_breaker("stream", first_token_timeout=10.0)
async def astream(prompt: str) -> AsyncIterator[str]:
    yield prompt


@circuit_breaker
def bare(n: int) -> int:
    return n


class Client:
    @circuit_breaker("method")
    def call(self, prompt: str) -> str:
        return prompt


async def check() -> None:
    assert_type(complete("hi", temperature=0.5), str)
    assert_type(await acomplete("hi"), str)
    assert_type(acomplete.breaker, CircuitBreaker)
    assert_type(bare(1), int)
    assert_type(astream("hi"), AsyncIterator[str])
    assert_type(Client().call("x"), str)
    assert_type(Client.call.breaker, CircuitBreaker)
    complete(1)  # type: ignore[arg-type]
    await acomplete(prompt=3)  # type: ignore[arg-type]
