"""Anthropic Messages with the decorators around your own async client function.

python examples/anthropic_messages.py   # ANTHROPIC_API_KEY set: the real API
"""

from __future__ import annotations

import asyncio
from typing import Any

from _local import endpoint

from llm_circuit_breaker import LLMCircuitBreaker, circuit_breaker, with_retry
from llm_circuit_breaker.testing import Reply

base, key, server = endpoint(
    "ANTHROPIC_API_KEY",
    "https://api.anthropic.com",
    Reply.error(529, "overloaded_error", anthropic=True),
    Reply(json={"content": [{"type": "text", "text": "Bonjour !"}], "stop_reason": "end_turn"}),
)
# One facade for the transport; the breaker named "anthropic" is shared with anything else
# that names it. Retries are ours alone (no SDK underneath to multiply them).
client = LLMCircuitBreaker(
    name="anthropic",
    retry={"max_retries": 0},  # the decorator below does the retrying
    headers={"x-api-key": key, "anthropic-version": "2023-06-01"},
)


@with_retry(max_retries=3, initial_delay=0.5)
@circuit_breaker("anthropic")
async def ask(prompt: str) -> Any:
    return await client.acall(
        url=f"{base}/v1/messages",
        data={
            "model": "claude-3-5-haiku-latest",
            "max_tokens": 64,
            "messages": [{"role": "user", "content": prompt}],
        },
    )


async def main() -> None:
    try:
        reply = await ask("Say hello in French.")
        print("answer:", reply["content"][0]["text"])
        print("breaker:", ask.breaker.snapshot())
    finally:
        await client.aclose()
        if server is not None:
            server.stop()


asyncio.run(main())
