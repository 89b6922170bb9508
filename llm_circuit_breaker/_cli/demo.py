"""``python -m llm_circuit_breaker demo``: watch a breaker protect an app through an outage.

The scripted provider goes healthy -> rate limited -> outage -> recovered. Four clients run
the same script at the same time against their own copy of the provider: unprotected,
tenacity alone, this library, and this library with a fallback to a second provider. Each
phase is announced with what happens in it; the live line follows this library's client and
fits the terminal's width; the summary sets the four side by side and ends with the takeaway
in plain words.
"""

from __future__ import annotations

import asyncio
import collections
import re
import shutil
import sys
import textwrap
import time
from typing import Any, TextIO

from llm_circuit_breaker._cli.compare import NAMES, REFUSALS, Contest
from llm_circuit_breaker._cli.scenario import PHASES
from llm_circuit_breaker.breaker.telemetry import StateChange, ThrottleEvent

_COLOURS = {"CLOSED": "\x1b[32m", "OPEN": "\x1b[31m", "HALF_OPEN": "\x1b[33m"}
_RESET = "\x1b[0m"
_CLEAR = "\r\x1b[K"
_WHAT = {name: what for name, _, what in PHASES}
_SHORT = ("unprotected", "tenacity", "this lib", "fallbacks")
_CLIENTS = (
    ("unprotected", "one plain HTTP request per call"),
    ("tenacity alone", "up to 4 attempts, exponential backoff with jitter"),
    ("llm-circuit-breaker", "LLMCircuitBreaker: circuit, throttle and retries"),
    ("with fallbacks", "the same, then a second provider that stays up"),
)


def times(count: int) -> str:
    """``once``, ``twice``, ``3 times``."""
    return {1: "once", 2: "twice"}.get(count, f"{count} times")


class Demo:
    """Runs the contest and reports this library's client as it goes."""

    def __init__(
        self, duration: float, concurrency: int, seed: int, out: TextIO, width: int | None = None
    ) -> None:
        self.contest = Contest(duration, concurrency, seed)
        self.scenario = self.contest.scenario
        self.breaker = self.contest.ours.breaker
        self.out = out
        self.live = out.isatty()
        if width is None:
            width = shutil.get_terminal_size((80, 24)).columns if self.live else 80
        self.width = max(40, width)
        self.changes: list[tuple[float, StateChange]] = []
        self.throttle_events: list[tuple[float, ThrottleEvent]] = []
        self.phase = ""
        self.shown: set[tuple[str, str]] = set()  # events shown in this phase
        self.repeats: collections.Counter[str] = collections.Counter()  # and not shown again
        self.breaker.add_listener(self._changed)

    # -- output ----------------------------------------------------------------------------

    def _say(self, text: str, indent: str = "") -> None:
        """Print ``text`` wrapped to the width, above the live line in a terminal."""
        lines = textwrap.wrap(text, self.width - 1, subsequent_indent=indent) or [""]
        for number, line in enumerate(lines):
            # In a terminal the live line is cleared first; it is drawn again next tick.
            prefix = _CLEAR if self.live and number == 0 else ""
            print(prefix + line, file=self.out, flush=True)

    def _changed(self, change: StateChange | ThrottleEvent) -> None:
        elapsed = self.scenario.elapsed()
        if isinstance(change, ThrottleEvent):
            self.throttle_events.append((elapsed, change))
            what = f"throttle {change.new.value}"
        else:
            self.changes.append((elapsed, change))
            what = f"{change.old.value} -> {change.new.value}"
        self._announce(elapsed)
        # Within a phase an event is shown once; its repeats (a probe failing every reset
        # timeout, a throttle pausing again) are counted and summed up at the phase's end.
        kind = (what, re.sub(r"[0-9.]+", "#", change.reason))
        if kind in self.shown:
            self.repeats[what] += 1
            return
        self.shown.add(kind)
        self._say(f"[{elapsed:5.1f}s] {what}: {change.reason}", indent=" " * 9)

    def _announce(self, elapsed: float) -> None:
        """Say what the new phase brings, once, when the script enters it."""
        phase = self.scenario.phase_at(elapsed)
        if phase != self.phase:
            self._flush_repeats()
            self.phase = phase
            self._say(f"[{elapsed:5.1f}s] -- {phase}: {_WHAT[phase]}", indent=" " * 9)

    def _flush_repeats(self) -> None:
        if self.repeats:
            counts = ", ".join(f"{what} {times(n)}" for what, n in self.repeats.items())
            self._say(f"{'':9}and again: {counts}", indent=" " * 9)
        self.repeats.clear()
        self.shown.clear()

    def _line(self) -> str:
        """The live line: at most ``width - 1`` columns (the last would wrap)."""
        elapsed = self.scenario.elapsed()
        state = self.breaker.state.value
        tally = self.contest.tallies["llm-circuit-breaker"]
        waiting = self.breaker.throttle["waiting"] or 0
        head = f"{elapsed:4.1f}s {self.scenario.phase_at(elapsed):<12} "
        tail = (
            f" calls {tally.calls} sent {len(self.scenario.arrivals)} "
            f"ok {tally.answered} refused {tally.errors['CircuitOpenError']} "
            f"waiting {waiting}"
        )
        room = self.width - 1
        text = head + f"{state:<9}" + tail
        bar = ""
        if len(text) > room:
            text = text[:room]
        elif room - len(text) >= 8:
            size = min(20, room - len(text) - 3)
            done = min(size, int(size * elapsed / self.scenario.duration))
            bar = f"[{'#' * done}{'.' * (size - done)}] "
        at = len(bar) + len(head)
        text = bar + text
        if self.live and at + len(state) <= len(text):
            text = text[:at] + _COLOURS[state] + state + _RESET + text[at + len(state) :]
        return text

    async def _report(self) -> None:
        last_plain = 0.0
        while True:
            self._announce(self.scenario.elapsed())
            if self.live:
                print(_CLEAR + self._line(), end="", file=self.out, flush=True)
            elif self.scenario.elapsed() - last_plain >= 2.0:
                last_plain = self.scenario.elapsed()
                print(self._line(), file=self.out)
            await asyncio.sleep(0.1)

    async def run(self) -> int:
        duration = f"{self.scenario.duration:g}"
        self._say(
            f"A fake LLM provider on 127.0.0.1 (no network, no key) plays a {duration} s "
            "script: healthy, rate limited, an outage, recovered. Four clients, each with "
            f"{self.contest.callers} concurrent callers, run it side by side:"
        )
        for name, what in _CLIENTS:
            self._say(f"  {name:<20} {what}", indent=" " * 23)
        self._say(
            "Below: what each phase brings, and the changes of this library's circuit and "
            "throttle; the last line follows its client: calls made, requests sent to the "
            "provider, calls answered (ok), refused at once, callers waiting for a throttle slot."
        )
        started = time.monotonic()
        reporter = asyncio.create_task(self._delayed_report())
        try:
            await self.contest.run()
        finally:
            reporter.cancel()
        self._flush_repeats()
        if self.live:
            print(_CLEAR + self._line(), file=self.out)
        self._summary(time.monotonic() - started)
        return 0

    async def _delayed_report(self) -> None:
        await self.contest.begun.wait()
        await self._report()

    def recovery_time(self) -> float | None:
        """Seconds from the provider's recovery until the circuit was CLOSED (None: never)."""
        recovery = self.scenario.phase_start("recovered")
        before = [change for at, change in self.changes if at < recovery]
        if not before or before[-1].new.value == "CLOSED":
            return 0.0  # it was already closed when the provider recovered
        closed = [
            at for at, change in self.changes if at >= recovery and change.new.value == "CLOSED"
        ]
        return closed[0] - recovery if closed else None

    # -- summary ---------------------------------------------------------------------------

    def _table(self, results: dict[str, dict[str, Any]]) -> None:
        rows = (
            ("requests that hit the failing provider", "requests during the outage"),
            ("429s drawn from the provider", "429s drawn"),
            ("errors callers saw (refusals included)", "errors seen by callers"),
            ("seconds callers spent on failed calls", "seconds callers spent on failed calls"),
            ("calls answered", "calls answered"),
            ("calls answered while rate limited", "answered in the rate-limited phase"),
            ("success rate of calls in the outage", "success rate in the outage"),
        )
        cells = [f"{name:>{len(name) + 2}}" for name in NAMES]
        if len("".join(cells)) >= self.width:  # a narrow terminal: short column names
            cells = [f"{name:>11}" for name in _SHORT]
        label_width = max(len(label) for label, _ in rows)
        wide = 2 + label_width + sum(len(cell) for cell in cells) < self.width
        indent = (
            " " * (2 + label_width) if wide else " " * max(0, self.width - 1 - len("".join(cells)))
        )
        print(indent + "".join(cells), file=self.out)
        for label, key in rows:
            values = "".join(
                _cell(results[name][key], key, len(cell))
                for name, cell in zip(NAMES, cells, strict=True)
            )
            if wide:
                print(f"  {label:<{label_width}}{values}", file=self.out)
            else:
                print(f"  {label}", file=self.out)
                print(indent + values, file=self.out)

    def _summary(self, took: float) -> None:
        results = self.contest.results()
        print(file=self.out)
        self._say(f"summary: the same script, four clients side by side ({took:.1f} s)")
        self._table(results)
        ours = results["llm-circuit-breaker"]
        errors = ours["errors by type"]
        opened = sum(1 for _, change in self.changes if change.new.value == "OPEN")
        paused = sum(1 for _, e in self.throttle_events if e.new.value == "THROTTLED")
        recovery = self.recovery_time()
        print(file=self.out)
        self._say("this library's callers:")

        def say(text: str) -> None:
            self._say("  " + text, indent="    ")

        say(
            f"refused while the circuit was open: {errors.get('CircuitOpenError', 0)} "
            "CircuitOpenError (at once, nothing sent)"
        )
        say(
            f"refused by the throttle: {errors.get('ThrottledError', 0)} ThrottledError "
            "(a slot further away than throttle_max_wait); the other calls of the rate-limited "
            "phase waited in line for the quota"
        )
        others = {k: v for k, v in errors.items() if k not in REFUSALS}
        say("other errors: " + (", ".join(f"{v} {k}" for k, v in others.items()) or "none"))
        say(f"retries: {self.breaker.stats.retries}")
        say(f"circuit opened {times(opened)}; throttle paused {times(paused)}")
        recovered = "not within the run" if recovery is None else f"{recovery:.2f}s"
        say(f"recovery to CLOSED: {recovered} after the provider recovered")
        served = self.contest.chain.fallback_stats  # type: ignore[attr-defined]
        say(
            f"with fallbacks: the primary answered {served['primary'].served}, the second "
            f"provider {served['secondary'].served} (the primary was skipped without a call "
            f"{served['primary'].refused} times while open)"
        )
        print(file=self.out)
        self._say("In plain words:")
        for sentence in takeaway(results):
            self._say("  " + sentence, indent="  ")


def takeaway(results: dict[str, dict[str, Any]]) -> list[str]:
    """The summary's conclusion, in plain words, from the figures of one run."""
    bare, tenacity, ours = (results[name] for name in NAMES[:3])
    fallback = results["with fallbacks"]
    errors = ours["errors by type"]
    refused = errors.get("CircuitOpenError", 0)
    sentences = [
        f"This library sent {ours['requests during the outage']} requests to the failing "
        f"provider, where the unprotected client sent {bare['requests during the outage']} "
        f"and tenacity {tenacity['requests during the outage']}: "
        f"{bare['requests during the outage'] - ours['requests during the outage']} spared.",
        f"It drew {ours['429s drawn']} 429s from the rate limit, against "
        f"{bare['429s drawn']} and {tenacity['429s drawn']}: it paced its calls to the "
        "provider's quota instead of hammering it (429s count against the quota).",
        f"Instead of waiting on a dead provider, its callers got {refused} CircuitOpenError "
        f"refusals, most at once (median {ours['median refusal (us)']:.0f} us, nothing sent; "
        "a call refused after failed attempts took those attempts' time).",
    ]
    answered = ours["calls answered"]
    behind = [
        (name, results[name]["calls answered"])
        for name in NAMES[:2]
        if results[name]["calls answered"] > answered
    ]
    if behind:
        name, count = max(behind, key=lambda item: item[1])
        sentences.append(
            f"It answered {answered} calls, {count - answered} fewer than {name}: its circuit "
            "waits for probes to succeed before it calls a recovered provider again."
        )
    else:
        sentences.append(
            f"It answered {answered} calls: {answered - bare['calls answered']} more than the "
            f"unprotected client, {answered - tenacity['calls answered']} more than tenacity."
        )
    sentences.append(
        f"With a fallback to a second provider, {fallback['success rate in the outage']:.0%} "
        f"of the calls made during the outage were still answered, "
        f"{fallback['calls answered']} calls in all."
    )
    return sentences


def _cell(value: object, key: str, width: int) -> str:
    if key.startswith("success rate") and isinstance(value, float):
        return f"{value:>{width}.1%}"
    return f"{value:>{width}}"


def run_demo(duration: float, concurrency: int, seed: int, out: TextIO = sys.stdout) -> int:
    """Run the demo; the exit status."""
    return asyncio.run(Demo(duration, concurrency, seed, out).run())
