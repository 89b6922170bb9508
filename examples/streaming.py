"""Streaming: an error before the first event is retried; after it, it is raised.

python examples/streaming.py            # OPENAI_API_KEY set: the real API
"""

from __future__ import annotations

from _local import endpoint

from llm_circuit_breaker import LLMCircuitBreaker
from llm_circuit_breaker.testing import Reply

base, key, server = endpoint(
    "OPENAI_API_KEY",
    "https://api.openai.com",
    Reply.openai_stream([], error="server_error"),  # fails before any content: retried
    Reply.openai_stream(["Once ", "upon ", "a ", "time."]),
)
cb = LLMCircuitBreaker(name="openai-stream", retry={"max_retries": 2, "initial_delay": 0.2},
                       headers={"Authorization": f"Bearer {key}"})  # fmt: skip
try:
    for event in cb.stream(
        url=f"{base}/v1/chat/completions",
        data={
            "model": "gpt-4o-mini",
            "stream": True,
            "messages": [{"role": "user", "content": "A story in 4 words"}],
        },
    ):
        delta = event.data["choices"][0]["delta"].get("content") or ""
        print(delta, end="", flush=True)
    print()
    print("breaker:", cb.get_state()["stats"])
finally:
    cb.close()
    if server is not None:
        server.stop()
