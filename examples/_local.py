"""Shared by the examples: the real endpoint when a key is set, else a local fake server."""

from __future__ import annotations

import os

from llm_circuit_breaker.testing import FakeLLMServer, Reply


def endpoint(
    key_variable: str, real_base: str, *replies: Reply
) -> tuple[str, str, FakeLLMServer | None]:
    """(base URL, API key, server to stop or None). Without the key, serve ``replies`` locally."""
    key = os.environ.get(key_variable)
    if key:
        return real_base, key, None
    server = FakeLLMServer().start()
    server.script(*replies)
    print(f"{key_variable} is not set: using a local fake server at {server.url}")
    return server.url, "sk-local-fake", server
