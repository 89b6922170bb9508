"""Type-checked by mypy in CI, never run: a hedged callable keeps the primary's type."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

from typing_extensions import assert_type

from llm_circuit_breaker import HedgeStats, circuit_breaker, with_hedging


@circuit_breaker("openai")
async def ask(prompt: str) -> str:
    return prompt


async def stream(prompt: str) -> AsyncIterator[str]:
    yield prompt


def plain(prompt: str) -> str:
    return prompt


hedged_plain = with_hedging(plain, plain, delay="p90", max_attempts=3, delay_default=0.5)
assert_type(hedged_plain("hi"), str)
hedged_stream: Callable[[str], AsyncIterator[str]] = with_hedging(stream, delay=0.25)
answer: Coroutine[Any, Any, str] = with_hedging(ask)("hi")
stats: HedgeStats = HedgeStats(wins={"openai": 0})
