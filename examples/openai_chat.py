"""Chat Completions through LLMCircuitBreaker, surviving a 503 and a 429 on the way.

python examples/openai_chat.py          # OPENAI_API_KEY set: the real API
"""

from __future__ import annotations

from _local import endpoint

from llm_circuit_breaker import CircuitOpenError, LLMCircuitBreaker
from llm_circuit_breaker.testing import Reply

base, key, server = endpoint(
    "OPENAI_API_KEY",
    "https://api.openai.com",
    Reply.error(503, "server_error"),
    Reply.error(429, "rate_limit_exceeded", headers={"retry-after-ms": "200"}),
    Reply.ok("Paris."),
)
cb = LLMCircuitBreaker(
    name="openai",
    circuit_breaker={"failure_threshold": 5, "reset_timeout": 30.0, "timeout": 60.0},
    retry={"max_retries": 3, "initial_delay": 0.5},
    headers={"Authorization": f"Bearer {key}"},
)
try:
    reply = cb.call(
        url=f"{base}/v1/chat/completions",
        data={
            "model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": "Capital of France?"}],
        },
    )
    print("answer:", reply["choices"][0]["message"]["content"])
except CircuitOpenError as refused:
    print(f"provider is down; try again in {refused.retry_after:.0f}s")
finally:
    print("breaker:", cb.get_state())
    cb.close()
    if server is not None:
        server.stop()
