"""Generate the sync twins of the modules written once as async code, or check them.

    python tools/unasync.py            # rewrite every sync twin from its async source
    python tools/unasync.py --check    # fail (exit 1) if a sync twin differs from what it would be

Each async module is under an ``_async/`` folder; its twin, under the sibling ``_sync/`` folder,
is made by ``unasync`` (the tool httpcore uses): ``async def`` -> ``def``, ``await x`` -> ``x``,
``async for`` / ``async with`` -> ``for`` / ``with``, and the names in ``RENAMES``. A generated file
starts with a header saying so; edit the async source, never the twin.
"""

from __future__ import annotations

import difflib
import pathlib
import subprocess
import sys

import tokenize_rt

# Run as a script, this file's folder is first on sys.path and ``import unasync`` would import
# this file (same name) instead of the unasync package.
_HERE = pathlib.Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if pathlib.Path(p or ".").resolve() != _HERE]
import unasync  # noqa: E402 - only once this folder is off the path

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "llm_circuit_breaker"

# Names of the async side and their sync twins (whole tokens only).
RENAMES = {
    "_async": "_sync",
    "AsyncIterator": "Iterator",
    "AsyncIterable": "Iterable",
    "AsyncGenerator": "Generator",
    "AsyncStateStore": "StateStore",
    "AsyncStoreLink": "StoreLink",
    "AsyncStoreCall": "StoreCall",
    "AsyncCircuitBreakerTransport": "CircuitBreakerTransport",
    "AsyncBaseTransport": "BaseTransport",
    "AsyncByteStream": "SyncByteStream",
    "AsyncHTTPTransport": "HTTPTransport",
    "_AsyncBody": "_SyncBody",
    "aread_capped": "read_capped",
    "achunks": "chunks",
    "abreaker_and_body": "breaker_and_body",
    "handle_async_request": "handle_request",
    "__aenter__": "__enter__",
    "__aexit__": "__exit__",
    "__aiter__": "__iter__",
    "__anext__": "__next__",
    "StopAsyncIteration": "StopIteration",
    "aclose": "close",
    "aread": "read",
    "aiter_bytes": "iter_bytes",
    "aiter_raw": "iter_raw",
    # a store link's coroutines and the asyncio store's
    "aenter": "enter",
    "awaited": "waited",
    "aobserve": "observe",
    "arecord_success": "record_success",
    "arecord": "record",
    "arequest": "request",
    "aview": "view",
    "acontrol": "control",
    "aflush": "flush",
    "aadmit": "admit",
    "await_slot": "wait",
    "arelease": "release",
    "asnapshot": "snapshot",
}

HEADER = "# Generated from the _async twin by tools/unasync.py: edit that file, not this one.\n"


def _rules() -> list[unasync.Rule]:
    return [
        unasync.Rule(
            str(path) + "/", str(path.parent / "_sync") + "/", additional_replacements=RENAMES
        )
        for path in sorted(PACKAGE.rglob("_async"))
        if path.is_dir()
    ]


def _generated(source: pathlib.Path, rule: unasync.Rule) -> tuple[pathlib.Path, str]:
    rel = source.relative_to(rule.fromdir)
    target = pathlib.Path(rule.todir) / rel
    tokens = tokenize_rt.src_to_tokens(source.read_text(encoding="utf-8"))
    text = tokenize_rt.tokens_to_src(rule._unasync_tokens(tokens))
    # ruff sorts the twin's imports (renamed names move) and formats it as it formats
    # everything else (lines that lost an ``await`` rejoin).
    text = HEADER + text
    for command in (["check", "--select", "I", "--fix", "--quiet"], ["format"]):
        text = subprocess.run(
            [sys.executable, "-m", "ruff", *command, "--stdin-filename", str(target), "-"],
            input=text,
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
        ).stdout
    return target, text


def main(argv: list[str]) -> int:
    check = "--check" in argv
    stale: list[str] = []
    for rule in _rules():
        for source in sorted(pathlib.Path(rule.fromdir).rglob("*.py")):
            target, text = _generated(source, rule)
            current = target.read_text(encoding="utf-8") if target.exists() else ""
            if current == text:
                continue
            if check:
                diff = difflib.unified_diff(
                    current.splitlines(keepends=True),
                    text.splitlines(keepends=True),
                    str(target),
                    f"{target} (generated)",
                )
                sys.stdout.writelines(diff)
                stale.append(str(target.relative_to(ROOT)))
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(text, encoding="utf-8")
                print(f"wrote {target.relative_to(ROOT)}")
    if stale:
        print(f"sync twins out of date (run python tools/unasync.py): {', '.join(stale)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
