"""Budgets: how many retries a breaker may add, and how many tokens it may spend (pure, no I/O,
no lock, ``now`` passed in).

:class:`RetryBudget` is Finagle's ``RetryBudget``: every first attempt deposits ``ratio`` of a
retry into a window of the last ``WINDOW`` seconds, every retry withdraws one, and a reserve of
``floor`` retries per second over the window is always there, so a quiet breaker can retry at
once while a busy one adds at most ``ratio`` of its traffic (plus the floor) in retries.

:class:`SpendCap` counts the tokens spent in a fixed window that starts with the first spend;
once ``limit`` is reached calls are refused until the window ends.

Shared through a store (:class:`SharedBudgets`), each process keeps its own budgets and sends
what changed since its last call (deposits, withdrawals, tokens spent) with the next call the
store makes for the circuit anyway; the store answers the fleet's totals, which the budgets
then decide by (plus what this process did since). While nothing is known of the fleet (no
store, or one that cannot be reached), the budgets decide by this process alone.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

__all__ = [
    "SYNC",
    "WINDOW",
    "BudgetDelta",
    "RetryBudget",
    "SharedBudgets",
    "SpendCap",
    "StreamUsage",
    "usage_tokens",
]

WINDOW = 10.0  # seconds over which first attempts pay for retries
_SLOTS = 10  # the window kept as this many slots (one second each)
SYNC = 1.0  # seconds between two syncs of a budget with nothing urgent to send (deposits)


class RetryBudget:
    """Retries as a share of first attempts over the last :data:`WINDOW` seconds.

    First attempts may be counted without the caller's lock (a counter the breaker bumps on
    its hot path) and folded in with :meth:`settle`; the first attempts that piled up since the
    last settle count in proportion to the part of that time still inside the window.
    """

    __slots__ = (
        "_at",
        "_deposits",
        "_fleet",
        "_fly",
        "_out",
        "_out_since",
        "_owed",
        "_seen",
        "_seen_at",
        "_withdrawals",
        "floor",
        "ratio",
    )

    def __init__(self, ratio: float, floor: float) -> None:
        self.ratio = float(ratio)
        self.floor = float(floor)
        self._deposits = [0.0] * _SLOTS
        self._withdrawals = [0.0] * _SLOTS
        self._at = [-1] * _SLOTS  # the whole second each slot holds (-1: never used)
        self._seen = 0  # the first-attempt counter as of the last settle
        self._seen_at: float | None = None
        self._owed = 0  # retries paid for whose own attempts the counter has not seen yet
        # Shared: the fleet's deposits and withdrawals in the window as the store last said
        # (None: unknown, decide by this process's slots), what is being sent, what is not yet.
        self._fleet: tuple[float, float] | None = None
        self._fly = [0.0, 0.0]
        self._out = [0.0, 0.0]
        self._out_since: float | None = None  # when the oldest unsent deposit was made

    def restart(self) -> None:
        """Forget this process's counts (its statistics start again from zero); what the
        fleet spent stays the fleet's."""
        self._deposits = [0.0] * _SLOTS
        self._withdrawals = [0.0] * _SLOTS
        self._at = [-1] * _SLOTS
        self._seen, self._seen_at, self._owed = 0, None, 0

    @property
    def reserve(self) -> float:
        """Retries the floor always allows over the window."""
        return self.floor * WINDOW

    def _slot(self, now: float) -> int:
        second = math.floor(now / (WINDOW / _SLOTS))
        index = second % _SLOTS
        if self._at[index] != second:  # a slot from a window that has passed: start afresh
            self._at[index] = second
            self._deposits[index] = 0.0
            self._withdrawals[index] = 0.0
        return index

    def _live(self, now: float) -> list[int]:
        first = math.floor(now / (WINDOW / _SLOTS)) - _SLOTS + 1
        return [i for i in range(_SLOTS) if self._at[i] >= first]

    def deposit(self, now: float, attempts: float = 1.0) -> None:
        """Count ``attempts`` first attempts made at ``now``."""
        if attempts > 0:
            self._deposits[self._slot(now)] += attempts
            self._out[0] += attempts
            if self._out_since is None:
                self._out_since = now

    def settle(self, now: float, counted: int) -> None:
        """Fold in the first attempts a lock-free counter saw since the last settle (``counted``
        is its total). Those older than the window no longer pay: they count in proportion."""
        new = counted - self._seen
        if new < 0:  # a count read before the last one: nothing new (counters only grow)
            return
        last = self._seen_at
        self._seen, self._seen_at = counted, now
        paid = min(new, self._owed)  # attempts that were retries, not first attempts
        self._owed -= paid
        new -= paid
        if new == 0:
            return
        if last is None:  # nothing is known of when these were made: as now
            self.deposit(now, new)
            return
        elapsed = now - last
        share = 1.0 if elapsed <= WINDOW else WINDOW / elapsed
        self.deposit(now, new * share)

    def skip(self) -> None:
        """One attempt the counter will see is a retry this budget paid for, no first attempt."""
        self._owed += 1

    def balance(self, now: float) -> float:
        """Retries that may be made now (the fleet's, once a store told them)."""
        fleet = self._fleet
        if fleet is not None:
            deposits = fleet[0] + self._fly[0] + self._out[0]
            withdrawals = fleet[1] + self._fly[1] + self._out[1]
            return self.reserve + self.ratio * deposits - withdrawals
        live = self._live(now)
        deposits = sum(self._deposits[i] for i in live)
        withdrawals = sum(self._withdrawals[i] for i in live)
        return self.reserve + self.ratio * deposits - withdrawals

    def try_withdraw(self, now: float) -> bool:
        """Pay for one retry at ``now``; False (nothing paid) when the budget cannot."""
        if self.balance(now) < 1.0:
            return False
        self._withdrawals[self._slot(now)] += 1.0
        self._out[1] += 1.0
        return True

    # -- shared through a store (SharedBudgets) --

    def take(self, now: float) -> tuple[float, float, float]:
        """What to send: (deposits, seconds since the oldest of them, withdrawals)."""
        deposits, withdrawals = self._out
        age = 0.0 if self._out_since is None else max(0.0, now - self._out_since)
        self._fly[0] += deposits
        self._fly[1] += withdrawals
        self._out, self._out_since = [0.0, 0.0], None
        return deposits, age, withdrawals

    def landed(
        self, sent: tuple[float, float, float], fleet: tuple[float, float] | None, now: float
    ) -> None:
        """A sync's answer: the fleet's (deposits, withdrawals), None when it failed (what
        was sent goes out again with the next)."""
        deposits, age, withdrawals = sent
        self._fly[0] -= deposits
        self._fly[1] -= withdrawals
        if fleet is not None:
            self._fleet = fleet
            return
        self._out[0] += deposits
        self._out[1] += withdrawals
        if deposits:
            since = now - age
            self._out_since = since if self._out_since is None else min(since, self._out_since)

    def unshare(self) -> None:
        """Decide by this process alone (the store cannot be reached)."""
        self._fleet = None

    def refill_in(self, now: float) -> float:
        """Seconds until the oldest slot leaves the window (when a denied retry may be paid)."""
        step = WINDOW / _SLOTS
        return step - (now % step) if step > 0 else 0.0


class SpendCap:
    """At most ``limit`` tokens per ``window`` seconds, the window starting with a spend."""

    __slots__ = ("_fly", "_out", "limit", "spent", "started", "window")

    def __init__(self, limit: float, window: float) -> None:
        self.limit = float(limit)
        self.window = float(window)
        self.spent = 0.0
        self.started: float | None = None
        self._out = 0.0  # tokens not yet sent to a store
        self._fly = 0.0  # tokens being sent

    def _roll(self, now: float) -> None:
        if self.started is not None and now >= self.started + self.window:
            self.started, self.spent = None, 0.0

    def spend(self, now: float, tokens: float) -> None:
        """Count ``tokens`` spent at ``now``."""
        if not (tokens > 0 and math.isfinite(tokens)):
            return
        self._roll(now)
        if self.started is None:
            self.started = now
        self.spent += tokens
        self._out += tokens

    @property
    def unsent(self) -> bool:
        """Whether tokens spent here have not reached the store yet (or are on their way)."""
        return bool(self._out or self._fly)

    def take(self) -> float:
        """The tokens to send to the store (spent since the last sync)."""
        tokens, self._out = self._out, 0.0
        self._fly += tokens
        return tokens

    def landed(self, sent: float, fleet: tuple[float, float | None] | None, now: float) -> None:
        """A sync's answer: the fleet's (spent, seconds until its window ends: None before
        any spend), None when it failed (the tokens go out again with the next)."""
        self._fly -= sent
        if fleet is None:
            self._out += sent
            return
        spent, resets_in = fleet
        self.spent = spent + self._fly + self._out
        if resets_in is not None:
            self.started = now + resets_in - self.window
        elif not self.spent:
            self.started = None

    def refusal(self, now: float) -> float | None:
        """Seconds until calls are allowed again, or None while the budget has tokens left."""
        self._roll(now)
        if self.started is None:  # nothing spent this window: only a cap of nothing refuses
            return self.window if self.limit <= 0 else None
        if self.spent < self.limit:
            return None
        return self.started + self.window - now

    def view(self, now: float) -> dict[str, float]:
        """``{spent, limit, resets_in}`` (``resets_in``: the whole window before a spend)."""
        self._roll(now)
        resets_in = self.window if self.started is None else self.started + self.window - now
        return {"spent": self.spent, "limit": self.limit, "resets_in": resets_in}

    def forget(self) -> None:
        """Start afresh: nothing spent."""
        self.started, self.spent, self._out = None, 0.0, 0.0


@dataclasses.dataclass(slots=True)
class BudgetDelta:
    """What one store call carries of a breaker's budgets, and what the store answers.

    ``retry``: (deposits, their age in seconds, withdrawals) or None without a retry budget;
    ``tokens`` spent, with the cap's ``window`` (None without a cap) and its ``limit`` (None:
    the store never refuses an admission for it, as for a metrics-only breaker; else an
    admission riding on the sync is refused once the fleet's total reaches it). The store sets
    ``fleet_retry`` (the fleet's deposits and withdrawals in the window) and ``fleet_spend``
    (spent, seconds until the window ends) when it ran the call."""

    retry: tuple[float, float, float] | None
    tokens: float
    window: float | None
    limit: float | None = None
    fleet_retry: tuple[float, float] | None = None
    fleet_spend: tuple[float, float | None] | None = None


class SharedBudgets:
    """A breaker's budgets as a store shares them: what the next store call carries, and what
    its answer teaches. Withdrawals and spends go with the very next call; deposits alone at
    most every :data:`SYNC` seconds (they only make the budget larger, so late is safe).
    ``refuses``: whether the store refuses admissions once the fleet spent the cap (False for
    a metrics-only breaker, which lets such calls through)."""

    __slots__ = ("_next", "refuses", "retry", "spend")

    def __init__(
        self, retry: RetryBudget | None, spend: SpendCap | None, *, refuses: bool = True
    ) -> None:
        self.retry = retry
        self.spend = spend
        self.refuses = refuses
        self._next = float("-inf")

    def due(self, now: float) -> bool:
        """Whether the next store call should carry a sync: always with a spend cap (its
        answer says what the fleet spent), else once withdrawals wait or :data:`SYNC` passed."""
        retry = self.retry
        return (
            self.spend is not None
            or now >= self._next
            or (retry is not None and retry._out[1] > 0.0)
        )

    def deposits_due(self, now: float) -> bool:
        """Whether this sync also settles and sends deposits (every :data:`SYNC` seconds; the
        retry budget rides only then, or with withdrawals)."""
        return self.retry is not None and now >= self._next

    @property
    def unsent(self) -> bool:
        """Whether withdrawals or tokens wait to be sent."""
        retry, spend = self.retry, self.spend
        return (retry is not None and retry._out[1] > 0.0) or (
            spend is not None and spend._out > 0.0
        )

    def take(self, now: float, counted: int | None) -> BudgetDelta:
        """The sync to send (``counted``: the breaker's first-attempt counter, settled first;
        None: deposits wait for a later sync)."""
        retry, spend = self.retry, self.spend
        sent = None
        if retry is not None and (counted is not None or retry._out[1] > 0.0):
            if counted is not None:
                self._next = now + SYNC
                retry.settle(now, counted)
            sent = retry.take(now)
        if spend is None:
            return BudgetDelta(sent, 0.0, None)
        limit = spend.limit if self.refuses else None
        return BudgetDelta(sent, spend.take(), spend.window, limit)

    def landed(
        self, delta: BudgetDelta, now: float, *, ok: bool
    ) -> tuple[float, float, float] | None:
        """Learn what the store answered (``ok`` False: the call failed). When the answer
        says the cap is spent and this process did not know: (spent, limit, seconds until
        the window ends), for the ``BUDGET_EXCEEDED`` event; else None."""
        if self.retry is not None and delta.retry is not None:
            self.retry.landed(delta.retry, delta.fleet_retry if ok else None, now)
        if not ok:
            self._next = float("-inf")
        spend = self.spend
        if spend is None or delta.window is None:
            return None
        before = spend.refusal(now)
        spend.landed(delta.tokens, delta.fleet_spend if ok else None, now)
        if before is not None or not ok:
            return None
        after = spend.refusal(now)
        return None if after is None else (spend.spent, spend.limit, after)

    def unshare(self) -> None:
        """The store cannot be reached: decide by this process alone."""
        if self.retry is not None:
            self.retry.unshare()


def _number(value: object) -> float | None:
    """A token count as a float: None for what is not one (a bool, negative, infinite, or an
    int too big for a float)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) and number >= 0 else None


def _field(obj: object, name: str) -> object:
    if isinstance(obj, Mapping):
        return obj.get(name)
    try:
        return getattr(obj, name, None)
    except Exception:  # a hostile attribute: no usage here
        return None


# Anthropic's prompt-cache tokens, counted apart from its input_tokens (openai's cached tokens
# are inside prompt_tokens / input_tokens already, as details).
_CACHE = ("cache_creation_input_tokens", "cache_read_input_tokens")


def usage_tokens(response: object) -> float | None:
    """The tokens a response says it used (its ``usage``: ``total_tokens``, or input plus
    output as openai's ``prompt_tokens`` / ``completion_tokens`` and anthropic's
    ``input_tokens`` / ``output_tokens`` name them, plus anthropic's prompt-cache writes and
    reads, which it reports apart from ``input_tokens``), or None when it says nothing."""
    usage = _field(response, "usage")
    if usage is None:
        usage = _field(response, "usage_metadata")  # gemini
        if usage is not None:
            return _number(_field(usage, "total_token_count"))
        return None
    total = _number(_field(usage, "total_tokens"))
    if total is not None:
        return total
    parts = [
        _number(_field(usage, name))
        for name in ("prompt_tokens", "completion_tokens", "input_tokens", "output_tokens", *_CACHE)
    ]
    known = [p for p in parts if p is not None]
    return sum(known) if known else None


class StreamUsage:
    """The usage a stream's items report, item by item: a total (openai's last chunk, a
    Responses ``response.completed``), or input, output and prompt-cache tokens apart
    (anthropic's ``message_start`` and the cumulative counts of its ``message_delta``).
    Items are SDK objects or events whose ``data`` is the parsed JSON."""

    __slots__ = ("parts",)

    _SLOTS = (
        ("total_tokens", 0),
        ("input_tokens", 1),
        ("prompt_tokens", 1),
        ("output_tokens", 2),
        ("completion_tokens", 2),
        ("cache_creation_input_tokens", 3),
        ("cache_read_input_tokens", 4),
    )

    def __init__(self) -> None:
        # total, input, output, cache writes, cache reads
        self.parts: list[float | None] = [None, None, None, None, None]

    def see(self, item: object) -> None:
        """Read what ``item`` says it used, if anything."""
        data = _field(item, "data")
        if data is None or isinstance(data, str | bytes):
            data = item
        for holder in (data, _field(data, "message"), _field(data, "response")):
            usage = _field(holder, "usage") if holder is not None else None
            if usage is not None:
                break
        else:
            return
        for key, slot in self._SLOTS:
            value = _number(_field(usage, key))
            if value is not None:
                self.parts[slot] = value

    @property
    def total(self) -> float | None:
        """The tokens the items said were used, or None when none said."""
        total, *apart = self.parts
        if total is not None:
            return total
        known = [part for part in apart if part is not None]
        return sum(known) if known else None
