"""The documentation site: its Python blocks run, against the fake provider, and its reference
covers every public name.

A ```python block runs unless the line before it is an HTML comment ``<!-- no-run: reason -->``
(a block that needs a Redis server, a web framework or a worker, or shows a fragment). The
blocks of one page run in order in one namespace, as a reader would run them.
"""

from __future__ import annotations

import gc
import importlib
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
BLOCK = re.compile(r"^```python[^\n]*\n(.*?)^```", re.DOTALL | re.MULTILINE)
NO_RUN = re.compile(r"<!-- (no-run|pytest): [^>]+ -->\s*$")
AS_PYTEST = re.compile(r"<!-- pytest: [^>]+ -->\s*$")
REAL_HOSTS = ("api.openai.com", "api.anthropic.com", "generativelanguage.googleapis.com")
PAGES = sorted(DOCS.rglob("*.md"))
# What a page says its code prints, checked on the output (lines in this order).
PRINTS = {
    "tutorial/index.md": [
        "Hello!",
        "CLOSED",
        "failed with 503",
        "OPEN",
        "refused: 3 consecutive failures",
        "HALF_OPEN",
        "(backup) Hello!",
    ],
    "how-to/sdks.md": ["Hello!", "the provider answered 503", "not sent: circuit"],
    "how-to/fallbacks-pools-hedging.md": [
        "anthropic/claude-haiku-4-5: Capital of France?",
        "Hello!\nNone\n1",
        "Hello! 2",
        "fast: Capital of France?\n1",
        "20 {'limit': 8, 'in_flight': 0, 'waiting': 0, 'mode': 'fixed'}",
    ],
    "how-to/rate-limits.md": ["499", "rate limited, try again in 60s"],
    "how-to/web-and-workers.md": ["300 300"],
    "how-to/testing.md": ["OPEN", "HALF_OPEN"],
}


def blocks(page: Path, marker: re.Pattern[str] = NO_RUN) -> list[tuple[int, str, bool]]:
    """(line, code, runnable) for each ```python block of ``page``: runnable unless the line
    before it matches ``marker`` (with AS_PYTEST: the blocks that are test modules)."""
    text = page.read_text(encoding="utf-8")
    found = []
    for match in BLOCK.finditer(text):
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        line = text.count("\n", 0, match.start()) + 2
        matched = bool(marker.search(before))
        found.append((line, match.group(1), matched if marker is AS_PYTEST else not matched))
    return found


TEST_MODULES = [
    (page, line, code) for page in PAGES for line, code, run in blocks(page, AS_PYTEST) if run
]


RUNNABLE = [page for page in PAGES if any(run for _, _, run in blocks(page))]


def test_the_site_has_its_sections() -> None:
    """A tutorial, how-to guides, a reference and explanations, and runnable examples."""
    for section in ("tutorial", "how-to", "reference", "explanation"):
        assert (DOCS / section / "index.md").exists(), section
    assert len(RUNNABLE) >= 5


@pytest.mark.parametrize("page", RUNNABLE, ids=[str(p.relative_to(DOCS)) for p in RUNNABLE])
def test_page_runs(page: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The page's runnable blocks execute in order, as written, against the fake provider."""
    for module in ("openai", "anthropic", "httpx"):
        text = page.read_text(encoding="utf-8")
        if re.search(rf"^(import|from) {module}\b", text, re.MULTILINE):
            pytest.importorskip(module)
    namespace: dict[str, object] = {"__name__": "docs"}
    try:
        for line, code, runnable in blocks(page):
            if runnable:
                exec(compile(code, f"{page.relative_to(ROOT)}:{line}", "exec"), namespace)
    finally:
        # An SDK client a page leaves open is the reader's to close; collect it here, quietly,
        # rather than let its socket warning land in whichever test runs next.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            namespace.clear()
            gc.collect()
    printed = capsys.readouterr().out
    at = 0
    for expected in PRINTS.get(str(page.relative_to(DOCS)), []):
        found = printed.find(expected, at)
        assert found >= 0, f"{expected!r} not printed (in order) by {page.name}:\n{printed}"
        at = found + len(expected)


@pytest.mark.parametrize(
    ("page", "line", "code"),
    TEST_MODULES,
    ids=[f"{page.relative_to(DOCS)}:{line}" for page, line, _ in TEST_MODULES],
)
def test_test_module_passes(page: Path, line: int, code: str, tmp_path: Path) -> None:
    """A block that is a test module passes under pytest, with the package's plugin."""
    ini = "[pytest]\nasyncio_default_fixture_loop_scope = function\nfilterwarnings = error\n"
    (tmp_path / "pytest.ini").write_text(ini, encoding="utf-8")
    (tmp_path / "test_from_docs.py").write_text(code, encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "."],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, f"{page.name}:{line}\n{done.stdout}\n{done.stderr}"
    assert " passed" in done.stdout


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(DOCS)) for p in PAGES])
def test_runnable_blocks_call_no_real_provider(page: Path) -> None:
    """Runnable examples talk to the fake provider, never to a real host."""
    for line, code, runnable in blocks(page):
        if runnable:
            assert not any(host in code for host in REAL_HOSTS), (page, line)


@pytest.mark.parametrize(
    "module",
    [
        "llm_circuit_breaker",
        "llm_circuit_breaker.httpx",
        "llm_circuit_breaker.storage",
        "llm_circuit_breaker.testing",
        "llm_circuit_breaker.results",
    ],
)
def test_the_reference_covers_every_public_name(module: str) -> None:
    """Every name in a public module's __all__ has a mkdocstrings entry in the reference."""
    reference = "\n".join(p.read_text(encoding="utf-8") for p in (DOCS / "reference").glob("*.md"))
    documented = set(re.findall(r"^::: ([\w.]+)", reference, re.MULTILINE))
    if module in documented:  # the whole module, every member
        return
    short = {entry.rsplit(".", 1)[-1] for entry in documented}
    missing = [name for name in importlib.import_module(module).__all__ if name not in short]
    assert not missing, f"{module}: {missing}"


def test_every_page_is_in_the_navigation() -> None:
    """mkdocs.yml lists every page (the strict build would warn about an orphan)."""
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    for page in PAGES:
        assert str(page.relative_to(DOCS)) in nav, page
