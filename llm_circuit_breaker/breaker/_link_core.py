"""What both store links share (:class:`LinkCore`): following the store's views, the
near-cache (of a CLOSED circuit, and of a refusal: an OPEN circuit seen until *t* refuses
until *t* without asking), coalescing rate-limit headers, and falling back to the breaker's
:class:`LocalCircuit` while the store is unreachable. Permits carry where they came from in
their two low bits: 0 local, 1 shared and clean, 2 shared (every outcome reported).

With a store that takes riders (``rides``), a response's headers that are news but not
urgent, and the breaker's budget syncs (:class:`SharedBudgets`), ride on the next call the
link makes to the store anyway: they cost no round trip of their own.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

from llm_circuit_breaker._core.budget import SharedBudgets
from llm_circuit_breaker._core.permits import (
    CLEAN,
    LOCAL,
    SHADOW,
    SHARED,
    SPENT,
    THROTTLED,
    tag_of,
    tagged,
    untagged,
)
from llm_circuit_breaker._core.state import CircuitState, Outcome, Transition
from llm_circuit_breaker._core.throttle import TOKEN_COST, Wait
from llm_circuit_breaker.breaker.circuit import Entry, LocalCircuit, check_report
from llm_circuit_breaker.breaker.telemetry import StateChange, Telemetry, refused
from llm_circuit_breaker.config import CircuitBreakerConfig
from llm_circuit_breaker.errors import BudgetExceededError, ThrottledError
from llm_circuit_breaker.storage._lease import Lease, LeaseTerms
from llm_circuit_breaker.storage.base import (
    Admission,
    AsyncStateStore,
    Ride,
    StateStore,
    View,
)

if TYPE_CHECKING:
    from llm_circuit_breaker._core.budget import RetryBudget, SpendCap
    from llm_circuit_breaker._core.headers import Bucket, RateLimits

__all__ = ["LinkCore"]

_HALF_OPEN_NOW = View(CircuitState.HALF_OPEN, 0, 0, None, 0.0)
_SLACK = 0.02  # of a limit: headers saying this much fewer remaining than the shared model
_RESET_MOVED = 1.0  # seconds (or a tenth of it) a bucket's reset must move to be news
_UNNOTIFIED_HOLD = 1.0  # seconds a refusal holds at most where no notice would end it


def _refusal(state: CircuitState) -> str:
    """Why a shared circuit that gave no reason refused a call, as the local one says it."""
    if state is CircuitState.HALF_OPEN:
        return "half-open: probe slots taken"
    return "open (shared)"


def _used_up(limits: RateLimits) -> bool:
    """Whether headers say a bucket has nothing left (news the fleet needs at once)."""
    return any(
        bucket is not None and bucket.remaining is not None and bucket.remaining < 1
        for bucket in (limits.requests, limits.tokens)
    )


class LinkCore:
    """What both links share: following the store's views, and falling back to local."""

    def __init__(
        self,
        store: StateStore | AsyncStateStore,
        name: str,
        config: CircuitBreakerConfig,
        local: LocalCircuit,
        telemetry: Telemetry,
    ) -> None:
        self.store = store
        self.name = name
        self.config = config
        self.local = local
        self.telemetry = telemetry
        self.cause: BaseException | None = None  # the error that last opened the circuit
        self._deciding_locally = False
        self._known = View(CircuitState.CLOSED, 0, 0, None, 0.0)
        self._known_at = local.now()
        self.waiting = 0  # callers of this process asleep until their shared throttle slot
        # seconds a CLOSED, clean view admits calls without asking the store
        self.near_cache: float = getattr(store, "near_cache", 0.0)
        self._cached_permit = -1
        self._cached_until = 0.0
        self._refused_until = 0.0  # a refusal seen in the store holds until then
        # headers are sent to the store only when they are news (stores that say so)
        self._coalesce: bool = getattr(store, "coalesces_headers", False)
        self._sent: dict[str, tuple[int | None, float | None]] = {}  # bucket -> limit, reset at
        self._observed_at = float("-inf")
        # headers and budget syncs ride on the next store call (stores that take them)
        self._rides: bool = getattr(store, "rides", False)
        self._pending: RateLimits | None = None  # headers that are news, for the next call
        self._budgets: SharedBudgets | None = None
        self._budget_lock: threading.Lock | None = None
        self.lease = Lease(self.near_cache, local.now)
        self._now = local.now
        self.count_success = telemetry.count_success
        follow = getattr(store, "follow", None)
        if self.near_cache and follow is not None:
            follow(name, self)
        # whether a change elsewhere reaches this link at once (sync Redis clients listen)
        self._notified: bool = bool(self.near_cache and getattr(store, "notifies", False))

    def share_budgets(
        self, lock: threading.Lock, retry: RetryBudget | None, spend: SpendCap | None
    ) -> None:
        """Share the breaker's budgets through the store (``lock`` guards them), when it
        takes riders: each store call carries what changed since the last one."""
        if self._rides and (retry is not None or spend is not None):
            self._budgets = SharedBudgets(retry, spend, refuses=self.config.enabled)
            self._budget_lock = lock

    def ride(self) -> Ride | None:
        """What the next store call carries besides its own operation (None: nothing)."""
        limits, budgets = self._pending, self._budgets
        delta = None
        if budgets is not None:
            now = self._now()
            if budgets.due(now):
                # the first-attempt count (for deposits) is read at most every SYNC seconds
                counted = self.telemetry.stats().calls if budgets.deposits_due(now) else None
                with self._budget_lock:  # type: ignore[union-attr]
                    delta = budgets.take(now, counted)
        if limits is None and delta is None:
            return None
        self._pending = None
        return Ride(limits, delta, self.landed)

    def landed(self, ride: Ride, *, ok: bool) -> None:
        """A store call that carried ``ride`` answered (``ok``) or failed. An answer that
        says the fleet spent the cap, news to this process, is announced here
        (``BUDGET_EXCEEDED``): every process hears it once per window, not only the one whose
        own spend crossed it."""
        delta, budgets = ride.budget, self._budgets
        if delta is not None and budgets is not None:
            now = self._now()
            with self._budget_lock:  # type: ignore[union-attr]
                crossed = budgets.landed(delta, now, ok=ok)
            if crossed is not None:
                self.telemetry.budget_spent(*crossed, at=now)

    def budget_spent(self) -> BudgetExceededError:
        """The refusal of a store that found the fleet's cap spent (counted): what the fleet
        spent as its answer said, and when the window ends."""
        budgets = self._budgets
        spend = None if budgets is None else budgets.spend
        if spend is None:  # a store that refuses only a cap it was sent: never here
            raise AssertionError("a budget refusal without a budget")
        with self._budget_lock:  # type: ignore[union-attr]
            wait = spend.refusal(self._now())
            spent, limit = spend.spent, spend.limit
        self.telemetry.count_throttle_refusal("token_budget")
        return BudgetExceededError(self.name, 0.0 if wait is None else wait, spent, limit)

    @property
    def unsent(self) -> bool:
        """Whether budget changes of this process wait to reach the store."""
        return self._budgets is not None and self._budgets.unsent

    def forget(self) -> None:
        """Drop the near-cache and the lease: the circuit changed elsewhere."""
        self._cached_permit = -1
        self._refused_until = 0.0
        self.lease.drop()

    def cached_refusal(self) -> Entry | None:
        """The refusal the store last gave, while it holds (None: ask the store). With a
        near-cache, an OPEN circuit seen until *t* is refused here until *t*, HALF_OPEN
        without a probe slot (or a forced-open circuit) for ``near_cache``: a trip does not
        become a round trip per refused call. A change elsewhere is published and ends it;
        where no notice would (asyncio clients), a refusal holds for a second at most."""
        if not self._refused_until:
            return None
        left = self._refused_until - self._now()
        if left <= 0.0:
            self._refused_until = 0.0
            return None
        known = self._known
        held = known.state is CircuitState.OPEN and known.retry_after is None
        retry_after = None if held else left
        if known.state is not CircuitState.OPEN:
            retry_after = known.retry_after
        error = refused(self.name, retry_after, known.reason or _refusal(known.state))
        error.__cause__ = self.cause
        self.telemetry.count_rejection()
        return self.telemetry.observed(error, self.local.refusal)

    def _cache_refusal(self, view: View) -> None:
        if not self.near_cache:
            return
        if view.state is CircuitState.OPEN and view.retry_after is not None:
            span = view.retry_after
        else:  # HALF_OPEN with its probe slots taken, or held open
            span = self.near_cache
        if not self._notified:
            span = min(span, max(self.near_cache, _UNNOTIFIED_HOLD))
        self._refused_until = self._now() + span if span > 0.0 else 0.0

    def _cache(self, permit: int, view: View, wait: float) -> None:
        quiet = view.throttle is None or (
            not view.throttle["paused_for"]
            and view.throttle["reset_in"] is None
            and view.throttle["tokens_remaining"] is None
        )
        if self.near_cache and view.clean and not wait and quiet and permit >= 0:
            self._cached_permit = tagged(permit, CLEAN)
            self._cached_until = self._now() + self.near_cache
        else:
            self._cached_permit = -1

    def prepare_admission(self) -> tuple[Entry | None, float, LeaseTerms]:
        """Past the near-cache: the entry this process's lease gives (None: the store must be
        asked), the call's estimated tokens, and the lease's terms for the store."""
        if self.local.rejoin is not None:  # forgotten by the registry: back in it first
            self.local.return_to_registry()
        tokens = TOKEN_COST.get()
        entry = self.leased(tokens) if self.lease else None
        return entry, tokens, (() if entry is not None else self.lease.terms())

    def leased(self, tokens: float) -> Entry | None:
        """The next slot of this process's lease; None when none is left or it ran out."""
        slot = self.lease.take()
        return None if slot is None else self._paced(slot[0], slot[1], tokens)

    def _paced(self, tagged: int, wait: float, tokens: float) -> Entry:
        """A shared permit with its throttle wait (counted), or the ``Wait`` for its slot."""
        wait = max(0.0, wait)  # a leased slot whose time has come
        self.telemetry.waits.add(wait)
        if not self.telemetry.plain_refusals:
            self.telemetry.tell_waited(wait)
        if wait > 0.0:
            self.waiting += 1
            return Wait(tagged, wait, tokens)
        return tagged

    def adopt(self, view: View, error: BaseException | None = None) -> None:
        """Follow ``view``, announcing its transitions (and a return from local mode)."""
        if self._deciding_locally:
            self._deciding_locally = False
            self._event(
                self.local.state_now, view.state, "shared store reachable again: following it"
            )
        self._known, self._known_at = view, self._now()
        if view.state is CircuitState.CLOSED:
            self._refused_until = 0.0
        if not view.clean:  # something changed: the next admission asks the store
            self._cached_permit = -1
            self.lease.drop()
        if view.transitions and view.transitions[-1].new is CircuitState.OPEN:
            self.cause = error
        if view.transitions:
            at = self.local.now()
            self.telemetry.publish(
                [Transition(t.old, t.new, t.reason, at) for t in view.transitions]
            )
        news = view.news
        if news is not None:
            self.telemetry.throttle_event(news.paused, news.reason, news.pause, at=self.local.now())

    def go_local(self) -> None:
        """Decide locally from now on, until the store answers again."""
        self._cached_permit = -1
        self._refused_until = 0.0
        self.lease.drop()
        self._pending = None
        if self._budgets is not None:
            with self._budget_lock:  # type: ignore[union-attr]
                self._budgets.unshare()
        if not self._deciding_locally:
            self._deciding_locally = True
            self._event(
                self._known.state,
                self.local.state_now,
                "shared store unavailable: deciding locally",
            )

    def _event(self, old: CircuitState, new: CircuitState, reason: str) -> None:
        self.telemetry.notify(StateChange(self.name, old, new, self.local.now(), reason))

    def apply_admission(self, admission: Admission, tokens: float) -> Entry:
        """The permit (tagged shared), the refusal, or the throttle slot to wait for, from a
        store's admission."""
        permit, view, wait = admission.permit, admission.view, admission.wait
        self.adopt(view)
        self._cache(permit, view, wait)
        if permit == THROTTLED:
            self.telemetry.count_throttle_refusal()
            return ThrottledError(self.name, wait)
        if permit == SPENT:
            return self.budget_spent()
        if permit < 0:
            self._cache_refusal(view)
            error = refused(self.name, view.retry_after, view.reason or _refusal(view.state))
            error.__cause__ = self.cause
            self.telemetry.count_rejection()
            return self.telemetry.observed(error, self.local.refusal)
        ours = tagged(permit, CLEAN if view.clean else SHARED)
        if admission.lease and view.clean:
            self.lease.fill(ours, admission.lease, tokens)
        if view.throttle is not None and (wait > 0.0 or view.throttle["reset_in"] is not None):
            return self._paced(ours, wait, tokens)
        return ours

    def enter_locally(self) -> Entry:
        """Admit with the local circuit (the store is unreachable)."""
        self.go_local()
        entry = self.local.enter()
        if isinstance(entry, int):
            return tagged(entry, LOCAL)
        if isinstance(entry, Wait):
            return Wait(tagged(entry.permit, LOCAL), entry.seconds, entry.tokens)
        return entry

    def gave_up_locally(self, wait: Wait, *, gave_up: bool) -> bool:
        """Settle a slot the local circuit gave (True); False for a shared one."""
        if tag_of(wait.permit) == LOCAL:
            self.local.waited(
                Wait(untagged(wait.permit), wait.seconds, wait.tokens), gave_up=gave_up
            )
            return True
        self.waiting -= 1
        return not gave_up

    def recorded_locally(
        self,
        permit: int,
        outcome: Outcome,
        open_for: float | None,
        why: str,
        error: BaseException | None,
        hint: float | None,
    ) -> tuple[bool, float | None]:
        """Check a report; a locally admitted call goes to the local circuit (True). For a
        shared permit, False and ``open_for`` capped as the core caps it (a store keeps a
        hint as given)."""
        check_report(permit, outcome, open_for)
        if permit == SHADOW:  # metrics-only pass-through: counted once, as its rejection
            return True, open_for
        if tag_of(permit) == LOCAL:
            self.local.record(
                untagged(permit), outcome, open_for=open_for, why=why, error=error, hint=hint
            )
            return True, open_for
        if open_for is not None:
            open_for = min(open_for, self.config.effective_max_open_for)
        return False, open_for

    def apply_entry(
        self, admission: Admission | None, tokens: float, terms: LeaseTerms = ()
    ) -> Entry:
        """The outcome of an admission: the store's (None when it could not be asked), asked
        with the lease's ``terms``."""
        self.lease.answered(terms)
        if admission is None:
            return self.enter_locally()
        return self.apply_admission(admission, tokens)

    def limits(self, headers: object) -> RateLimits | None:
        """A response's rate-limit headers, for the store now (None: none, deciding locally,
        in which case the local throttle has them, or riding on the next store call: headers
        that are news are sent at once only when a bucket is used up)."""
        if not self.config.throttle:
            return None
        if self._deciding_locally:
            self.local.observe(headers)
            return None
        from llm_circuit_breaker._core.headers import parse_rate_limits

        limits = parse_rate_limits(headers, time.time())
        if limits is None or not self._coalesce:
            return limits
        used_up = _used_up(limits)
        if self._pending is not None and not used_up:  # newer headers replace those waiting
            self._pending = limits
            return None
        if not self._news(limits):
            return None
        if not self._rides or used_up:
            self._pending = None  # these are newer
            return limits
        self._pending = limits
        return None

    def _news(self, limits: RateLimits) -> bool:
        """Whether headers would change the shared pacing: a new limit, fewer remaining than
        the shared model holds (beyond a slack), or a reset that moved; with a near-cache,
        at most once per ``near_cache``. What is news is remembered as sent."""
        now = self._now()
        if self.near_cache and now - self._observed_at < self.near_cache:
            return False
        known = self._known.throttle or {}
        buckets = (
            ("requests", limits.requests, known.get("requests_remaining")),
            ("tokens", limits.tokens, known.get("tokens_remaining")),
        )
        news = any(self._bucket_news(*bucket, now) for bucket in buckets)
        if news:
            self._observed_at = now
            for which, bucket, _ in buckets:
                if bucket is not None:
                    reset_at = None if bucket.reset is None else now + bucket.reset
                    self._sent[which] = (bucket.limit, reset_at)
        return news

    def _bucket_news(
        self, which: str, bucket: Bucket | None, modelled: float | int | None, now: float
    ) -> bool:
        if bucket is None:
            return False
        sent = self._sent.get(which)
        if sent is None or bucket.limit != sent[0]:
            return True
        if bucket.remaining is not None:
            slack = max(1.0, _SLACK * (bucket.limit or 0))
            if modelled is None or bucket.remaining < modelled - slack:
                return True
        if bucket.reset is not None:
            if sent[1] is None:
                return True
            moved = abs(now + bucket.reset - sent[1])
            return moved > max(_RESET_MOVED, bucket.reset / 10)
        return False

    @property
    def idle(self) -> bool:
        """Nothing here that the store does not keep: no caller waiting, not deciding locally
        (then the local circuit must be idle too), and CLOSED as last seen."""
        if self._deciding_locally:
            return self.local.idle
        return not self.waiting and self._known.state is CircuitState.CLOSED

    def throttle_view(self) -> dict[str, float | int | None]:
        """The shared throttle as of the last store call, and this process's waiting callers."""
        if self._deciding_locally or self._known.throttle is None:
            return self.local.throttle_view()
        return {**self._known.throttle, "waiting": self.waiting}

    def apply_report(
        self, outcome: Outcome, reply: tuple[Outcome, View] | None, error: BaseException | None
    ) -> None:
        """Count a report the store answered (None: it could not be asked)."""
        counted = outcome
        if reply is None:
            self.go_local()
        else:
            counted, view = reply
            self.adopt(view, error)
        self.telemetry.tally(counted)

    def apply_view(self, view: View | None) -> View:
        """The store's view, or the local one when the store could not be asked."""
        if view is None:
            self.go_local()
            return self.local.view()
        self.adopt(view)
        return view

    def follow_view(self, view: View | None) -> None:
        """Adopt a view the store answered (None: it could not be asked: decide locally)."""
        if view is not None:
            self.adopt(view)
        else:
            self.go_local()

    def known_view(self) -> View:
        """The last view the store gave, with the lazy OPEN -> HALF_OPEN applied since."""
        if self._deciding_locally:
            return self.local.view()
        known = self._known
        if known.state is CircuitState.OPEN and known.retry_after is not None:
            left = known.retry_after - (self._now() - self._known_at)
            if left <= 0:
                return _HALF_OPEN_NOW
            return View(
                known.state, known.failure_count, 0, known.opened_at, left, reason=known.reason
            )
        return known
