"""A process's lease of shared throttle slots (near-caching Redis stores).

An admission may lease the slots due within ``near_cache`` seconds beside its own, as many as
this process admitted over the last ``near_cache`` seconds (less what it still holds, and one
lease asked at a time). They are handed out in order without a round trip. Slots not handed
out (the lease ran out, or was dropped because the circuit or the throttle changed) are given
back with the next admission: the fleet's sends never exceed the bucket, and an allowance
leased but not used is not lost to it.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Sequence

__all__ = ["MAX_LEASE", "Lease", "LeaseTerms"]

MAX_LEASE = 64  # slots one admission may lease (the script's cap too)
LeaseTerms = tuple[()] | tuple[int, int, float]


class Lease:
    """The leased slots (their times on this process's clock) and what to ask for next."""

    def __init__(self, near_cache: float, now: Callable[[], float]) -> None:
        self.near_cache = near_cache
        self._now = now
        self._slots: collections.deque[float] = collections.deque()
        self._permit = -1
        self._until = 0.0
        self._tokens = 0.0  # the estimated tokens each leased slot was reserved with
        self._unused = 0  # slots to give back with the next admission
        self._asking = False
        self._demand = self._demand_was = 0
        self._demand_since = 0.0

    def __bool__(self) -> bool:
        return bool(self._slots)

    def terms(self) -> LeaseTerms:
        """What this admission asks of the store beside its own slot: ``(more, unused,
        unused_tokens)``, slots to lease and unused ones given back with their tokens; ``()``
        when nothing (always without a near-cache: a store of another make sees no extras)."""
        if not self.near_cache:
            return ()
        now = self._now()
        if now - self._demand_since >= self.near_cache:
            recent = now - self._demand_since < 2 * self.near_cache
            self._demand_was = self._demand if recent else 0
            self._demand, self._demand_since = 0, now
        self._demand += 1
        wanted = min(MAX_LEASE, max(self._demand_was, self._demand - 1)) - len(self._slots)
        more = 0 if self._asking else max(0, wanted)
        self._asking = self._asking or more > 0
        unused, self._unused = self._unused, 0
        return (more, unused, unused * self._tokens) if more or unused else ()

    def answered(self, terms: LeaseTerms) -> None:
        """The admission asked with ``terms`` was answered (or could not be)."""
        if terms and terms[0]:
            self._asking = False

    def fill(self, permit: int, waits: Sequence[float], tokens: float) -> None:
        """Slots leased now, ``waits`` seconds away, for calls admitted with ``permit``."""
        now = self._now()
        self._slots.extend(now + wait for wait in waits)
        self._permit, self._until, self._tokens = permit, now + self.near_cache, tokens

    def take(self) -> tuple[int, float] | None:
        """The next slot: (permit, seconds until it); None when none is left or it ran out."""
        now = self._now()
        try:
            at = self._slots.popleft()
        except IndexError:
            return None
        if now >= self._until:
            self._unused += 1
            self.drop()
            return None
        self._demand += 1
        return self._permit, at - now

    def drop(self) -> None:
        """Give up the slots left (they go back with the next admission). Each slot is popped
        once, here or by :meth:`take` in another thread: none is given back after use."""
        while True:
            try:
                self._slots.popleft()
            except IndexError:
                return
            self._unused += 1
