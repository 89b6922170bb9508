"""A small application that answers questions with the OpenAI SDK, guarded by a breaker.

What a team would write: one client, one decorated function, and a plain answer for the user
when the provider is down ("busy") instead of an exception or a long hang.
"""

from __future__ import annotations

import openai

from llm_circuit_breaker import CircuitOpenError, circuit_breaker, with_retry

BUSY = "The assistant is busy, please try again in a minute."


def make_client(base_url: str | None = None) -> openai.OpenAI:
    """The SDK's client, with its own retries off: ``with_retry`` below does them."""
    return openai.OpenAI(base_url=base_url, max_retries=0)


@with_retry(max_retries=2)
@circuit_breaker("openai:{model}", failure_threshold=3, reset_timeout=30.0)
def complete(client: openai.OpenAI, question: str, model: str = "gpt-4o-mini") -> str:
    reply = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": question}]
    )
    return reply.choices[0].message.content or ""


def answer(client: openai.OpenAI, question: str) -> str:
    """The answer to show the user."""
    try:
        return complete(client, question)
    except CircuitOpenError:
        return BUSY
    except openai.APIError:
        return BUSY
