"""The demo in a terminal: every line fits, the live line leaves nothing behind, the story is
told phase by phase and ends in plain words; ``--help`` lists the commands."""

from __future__ import annotations

import asyncio
import io
import os
import re
import subprocess
import sys

import pytest

from llm_circuit_breaker._cli import build_parser
from llm_circuit_breaker._cli.demo import Demo, takeaway, times
from llm_circuit_breaker._cli.scenario import PHASES

pyte = pytest.importorskip("pyte")
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
LIVE = re.compile(r"calls \d+ sent \d+ ok \d+")


class Terminal(io.StringIO):
    """What the demo writes to, taken for a terminal."""

    def isatty(self) -> bool:
        return True


@pytest.fixture(scope="module")
def screen() -> tuple[str, list[str]]:
    """A 3 s demo in an 80-column terminal: the raw output, and the screen it leaves."""
    out = Terminal()
    assert asyncio.run(Demo(3.0, 4, seed=1, out=out, width=80).run()) == 0
    raw = out.getvalue()
    terminal = pyte.Screen(80, 400)  # tall enough that nothing scrolls away
    pyte.Stream(terminal).feed(raw.replace("\n", "\r\n"))
    rows = [row.rstrip() for row in terminal.display]
    return raw, rows[: max(i for i, row in enumerate(rows) if row) + 1]


def test_no_line_is_wider_than_the_terminal(screen: tuple[str, list[str]]) -> None:
    """Every line written, the live line's redraws included, fits in 80 columns."""
    raw, _ = screen
    for line in raw.split("\n"):
        for drawn in line.split("\r"):
            assert len(ANSI.sub("", drawn)) <= 80, drawn


def test_the_live_line_leaves_no_stale_rows(screen: tuple[str, list[str]]) -> None:
    """After the run exactly one live line remains on the screen (its last state), and no
    row is a fragment of an earlier one."""
    _, rows = screen
    assert sum(1 for row in rows if LIVE.search(row)) == 1
    assert not any(row.startswith(("calls", "ok ", "refused", "waiting")) for row in rows)


def test_each_phase_is_announced_with_what_happens(screen: tuple[str, list[str]]) -> None:
    """The four phases are announced in order, each with its one-line description, and the
    circuit opens only once the outage has begun."""
    _, rows = screen
    text = "\n".join(rows)
    starts = [text.index(f"-- {name}: ") for name, _, _ in PHASES]
    assert starts == sorted(starts)
    opened = text.index("CLOSED -> OPEN")
    assert opened > starts[2]


def test_the_summary_ends_in_plain_words(screen: tuple[str, list[str]]) -> None:
    """The takeaway names requests spared, 429s, what callers got and the fallback's answers."""
    _, rows = screen
    text = " ".join(row.strip() for row in rows)
    words = text[text.index("In plain words:") :]
    assert re.search(r"sent \d+ requests to the failing provider", words)
    assert re.search(r"\d+ spared", words)
    assert re.search(r"drew \d+ 429s", words)
    assert re.search(r"\d+ CircuitOpenError refusals", words)
    assert re.search(r"still answered", words)
    assert re.search(r"answered \d+ calls(:|, \d+ fewer than)", words)
    assert "times" not in re.sub(r"\d+ times|count against", "", words)
    assert words.endswith("calls in all.")  # the takeaway is the last word


@pytest.mark.parametrize("width", [60, 80, 132])
def test_the_table_fits_any_width(width: int) -> None:
    """The summary table keeps within the terminal: one line per row where it fits, else the
    label above its figures."""
    demo = Demo(3.0, 2, seed=0, out=io.StringIO(), width=width)
    row = _results(ours=1000, bare=900, tenacity=950)["unprotected"]
    row = {
        **row,
        "errors seen by callers": 700,
        "seconds callers spent on failed calls": 12.5,
        "answered in the rate-limited phase": 60,
    }
    demo.out = out = io.StringIO()
    demo._table(
        dict.fromkeys(
            ("unprotected", "tenacity alone", "llm-circuit-breaker", "with fallbacks"), row
        )
    )
    lines = out.getvalue().splitlines()
    assert all(len(line) <= width for line in lines), lines
    labelled = [line for line in lines if "calls answered" in line]
    assert bool(re.search(r"\d", labelled[0])) == (width >= 120)


def test_times_reads_as_english() -> None:
    """1 -> once, 2 -> twice, else N times ("opened 1 times" never again)."""
    assert [times(n) for n in (0, 1, 2, 3)] == ["0 times", "once", "twice", "3 times"]


def _results(ours: int, bare: int, tenacity: int) -> dict[str, dict[str, object]]:
    row = {
        "requests during the outage": 10,
        "429s drawn": 0,
        "errors by type": {"CircuitOpenError": 5},
        "median refusal (us)": 30.0,
        "success rate in the outage": 1.0,
    }
    return {
        "unprotected": {**row, "calls answered": bare, "requests during the outage": 200},
        "tenacity alone": {**row, "calls answered": tenacity},
        "llm-circuit-breaker": {**row, "calls answered": ours},
        "with fallbacks": {**row, "calls answered": ours + 50},
    }


def test_the_takeaway_says_why_when_fewer_calls_were_answered() -> None:
    """When a client answered more calls than this library, one sentence says why."""
    ahead = takeaway(_results(ours=100, bare=90, tenacity=95))
    assert "10 more than the unprotected client, 5 more than tenacity" in " ".join(ahead)
    behind = " ".join(takeaway(_results(ours=100, bare=90, tenacity=120)))
    assert "20 fewer than tenacity alone: its circuit waits for probes" in behind


def test_help_lists_each_command_in_one_line() -> None:
    """python -m llm_circuit_breaker --help: one line per command, within 80 columns."""
    done = subprocess.run(
        [sys.executable, "-m", "llm_circuit_breaker", "--help"],
        capture_output=True, text=True, timeout=30, check=False, env={**os.environ, "COLUMNS": "80"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    commands = {
        name: [line for line in lines if line.strip().startswith(name + " ")]
        for name in ("demo", "status")
    }
    for name, found in commands.items():
        assert len(found) == 1, (name, done.stdout)
        index = lines.index(found[0])
        assert not lines[index + 1].startswith(" " * 10), done.stdout  # no continuation line
    assert all(len(line) <= 80 for line in lines)
    assert build_parser().prog == "python -m llm_circuit_breaker"
