"""The command line: ``python -m llm_circuit_breaker demo|status``."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence


def _positive(kind: type[float] | type[int]) -> Callable[[str], float]:
    def parse(text: str) -> float:
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m llm_circuit_breaker",
        description="Circuit breakers, rate-limit pacing and retries for LLM APIs.",
        epilog="Run a command with --help for its options.",
    )
    commands = parser.add_subparsers(
        dest="command", required=True, title="commands", metavar="COMMAND"
    )
    demo = commands.add_parser(
        "demo",
        help="watch four clients ride out a fake outage (no network, no key)",
        description="A fake provider goes healthy -> rate limited -> outage -> recovered; "
        "an unprotected client, tenacity alone, this library and this library with a "
        "fallback run the same script side by side, and the summary compares them.",
    )
    demo.add_argument(
        "--duration",
        type=_positive(float),
        default=20.0,
        help="seconds the scenario lasts (default 20)",
    )
    demo.add_argument(
        "--concurrency", type=_positive(int), default=8, help="concurrent callers (default 8)"
    )
    demo.add_argument("--seed", type=int, default=0, help="random seed of the scenario (default 0)")
    status = commands.add_parser(
        "status",
        help="print the states of the breakers shared through Redis",
        description=(
            "Print the states of the breakers that processes share through a RedisStateStore. "
            "Breakers kept in a running app's memory are not visible from outside: for an "
            "in-process view, export them with the Prometheus collector (or OpenTelemetry), "
            "or read breaker_registry.snapshot() inside the app."
        ),
    )
    status.add_argument(
        "--redis", required=True, help="Redis URL, such as redis://localhost:6379/0"
    )
    status.add_argument("--prefix", default="llm-circuit-breaker", help="key prefix of the store")
    status.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.ERROR)  # state changes are shown by the demo itself
    try:
        code = _run(args)
        sys.stdout.flush()  # here, not at exit: a reader that went away is seen below
    except BrokenPipeError:  # `status | head`: the reader has what it wanted
        # what is still buffered would fail again at exit: write it nowhere
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return code


def _run(args: argparse.Namespace) -> int:
    if args.command == "demo":
        from llm_circuit_breaker._cli.demo import run_demo

        return run_demo(args.duration, args.concurrency, args.seed)
    from llm_circuit_breaker._cli.status import run_status

    return run_status(args.redis, args.prefix, as_json=args.json)


if __name__ == "__main__":
    sys.exit(main())
