"""What the httpx transport's SSE watch costs per event, whatever the size of the reads.

    python benchmarks/sse_watch.py           # ~20 s
    python benchmarks/sse_watch.py --quick

An OpenAI chat stream (a role delta, content deltas, the finish chunk, ``[DONE]``) fed to the
watch as a connection would hand it over: one event per read, and 64 KiB reads that cut events
anywhere. Beside it, in the same run, the openai SDK's own SSE decoder over the same bytes
(the work the SDK does for each event anyway). Best of several repeats, microseconds per event.
"""

from __future__ import annotations

import argparse
import json
import time

from llm_circuit_breaker.httpx._watch import watch_for


def _events(count: int) -> list[bytes]:
    def chunk(delta: dict[str, object], finish: str | None = None) -> bytes:
        body = {
            "id": "chatcmpl-AbCdEf0123456789",
            "object": "chat.completion.chunk",
            "created": 1733400000,
            "model": "gpt-4o-mini-2024-07-18",
            "system_fingerprint": "fp_0123456789",
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        return f"data: {json.dumps(body, separators=(',', ':'))}\n\n".encode()

    words = [chunk({"content": f" word{i}"}) for i in range(count - 3)]
    return [
        chunk({"role": "assistant", "content": ""}),
        *words,
        chunk({}, "stop"),
        b"data: [DONE]\n\n",
    ]


def _reads(events: list[bytes], size: int | None) -> list[bytes]:
    if size is None:
        return events
    whole = b"".join(events)
    return [whole[i : i + size] for i in range(0, len(whole), size)]


def _watch_cost(reads: list[bytes], events: int, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        watch = watch_for("https://api.openai.com/v1/chat/completions", "")
        assert watch is not None
        started = time.process_time()
        for read in reads:
            watch.feed(read)
        assert not watch.truncated()
        assert watch.complete
        best = min(best, time.process_time() - started)
    return best / events * 1e6


def _sdk_cost(reads: list[bytes], events: int, repeat: int) -> float:
    from openai._streaming import SSEDecoder

    best = float("inf")
    for _ in range(repeat):
        started = time.process_time()
        seen = sum(1 for _ in SSEDecoder().iter_bytes(iter(reads)))
        best = min(best, time.process_time() - started)
        assert seen == events
    return best / events * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    count, repeat = (2_000, 3) if args.quick else (20_000, 7)
    events = _events(count)
    print("| reads | watch (us per event) | openai SDK's decoder (us per event) | ratio |")
    print("|---|---:|---:|---:|")
    for label, size in (("one event per read", None), ("64 KiB reads", 65536)):
        reads = _reads(events, size)
        watch = min(_watch_cost(reads, count, repeat) for _ in range(2))
        sdk = min(_sdk_cost(reads, count, repeat) for _ in range(2))
        print(f"| {label} | {watch:.2f} | {sdk:.2f} | {watch / sdk:.2f} |")


if __name__ == "__main__":
    main()
