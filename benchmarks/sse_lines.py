"""Time to decode one long server-sent-event line through ``stream()`` and ``astream()``.

A provider that sends one 8 MiB ``data:`` line (a base64 image, a huge tool call) must cost
time linear in its size::

    python benchmarks/sse_lines.py              # 1, 2, 4 and 8 MiB
"""

from __future__ import annotations

import asyncio
import json
import time

from llm_circuit_breaker import LLMCircuitBreaker
from llm_circuit_breaker.testing import FakeLLMServer, Reply

MiB = 1024 * 1024


def _reply(size: int) -> Reply:
    line = "data: " + json.dumps({"text": "z" * size}) + "\n\n"
    chunks = [line[i : i + 16384].encode() for i in range(0, len(line), 16384)]
    return Reply(chunks=chunks, headers={"Content-Type": "text/event-stream"})


def main() -> None:
    print("| line | stream() s | astream() s |\n|---|---:|---:|")
    with FakeLLMServer() as server:
        cb = LLMCircuitBreaker(retry={"max_retries": 0}, max_event_bytes=16 * MiB)
        for size in (1, 2, 4, 8):
            server.script(_reply(size * MiB), _reply(size * MiB))
            started = time.perf_counter()
            assert len(list(cb.stream(server.url, data={}))) == 1
            sync = time.perf_counter() - started

            async def consume() -> int:
                try:
                    return len([e async for e in cb.astream(server.url, data={})])
                finally:
                    await cb.aclose()

            started = time.perf_counter()
            assert asyncio.run(consume()) == 1
            print(f"| {size} MiB | {sync:.3f} | {time.perf_counter() - started:.3f} |")
        cb.close()


if __name__ == "__main__":
    main()
