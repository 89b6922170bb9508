"""How a breaker follows a circuit kept in an asyncio store: :class:`AsyncStoreLink` (its sync
twin, generated from this file by ``tools/unasync.py``, is ``StoreLink``).

Every admission, and every report that can change the circuit, is one store call; a success
in a clean CLOSED circuit is not reported, and for ``near_cache`` seconds after the store said
CLOSED and clean admissions need no call at all. While the store is unreachable the breaker's
own :class:`LocalCircuit` decides (one listener event each way); that part, shared by both
links, is :class:`~llm_circuit_breaker.breaker._link_core.LinkCore`.
"""

from __future__ import annotations

from typing import Any, TypeVar

from llm_circuit_breaker._core.permits import CLEAN, tag_of, untagged
from llm_circuit_breaker._core.state import Outcome
from llm_circuit_breaker._core.throttle import Wait, spread
from llm_circuit_breaker._core.views import Control, View
from llm_circuit_breaker.breaker._link_core import LinkCore
from llm_circuit_breaker.breaker.circuit import Entry
from llm_circuit_breaker.storage.base import AsyncStateStore, AsyncStoreCall, StoreUnavailableError

__all__ = ["AsyncStoreLink"]

T = TypeVar("T")


class AsyncStoreLink(LinkCore):
    """A breaker's link to its store: admissions, reports and controls go through it."""

    store: AsyncStateStore

    async def _ask(self, method: AsyncStoreCall[T], *args: Any, carry: bool = True) -> T | None:
        """The store's ``method(name, config, *args)``, with what rides on it (``carry``:
        the method takes riders); None when it cannot be asked."""
        if not self.store.available:
            return None
        ride = self.ride() if carry and self._rides else None
        if ride is None:
            try:
                return await method(self.name, self.config, *args)
            except StoreUnavailableError:
                return None
        try:
            answer = await method(self.name, self.config, *args, ride=ride)
        except StoreUnavailableError:
            self.landed(ride, ok=False)
            return None
        except BaseException:
            if not ride.late:  # else the store lands it once the call it went on with ends
                self.landed(ride, ok=False)
            raise
        self.landed(ride, ok=True)
        return answer

    async def aenter(self) -> Entry:
        """Admit one call through the store (locally while it is unreachable; from the
        near-cache while the shared circuit was just seen CLOSED and clean; from this
        process's lease of throttle slots while it lasts; refused without asking while a refusal
        the store gave holds)."""
        permit = self._cached_permit
        if permit >= 0 and self._now() < self._cached_until:
            return permit
        refusal = self.cached_refusal()
        if refusal is not None:
            return refusal
        entry, tokens, terms = self.prepare_admission()
        if entry is not None:
            return entry
        try:
            admission = await self._ask(self.store.aadmit, tokens, *terms)
        except BaseException:  # cancelled: the lease may be asked for again
            self.lease.answered(terms)
            raise
        return self.apply_entry(admission, tokens, terms)

    async def awaited(self, wait: Wait, *, gave_up: bool) -> None:
        """A caller woke up for its slot, or gave it up (the slot goes back to the store)."""
        if not self.gave_up_locally(wait, gave_up=gave_up):
            self.follow_view(
                await self._ask(self.store.arelease, untagged(wait.permit), wait.tokens)
            )

    async def aobserve(self, headers: object) -> None:
        """Feed a response's rate-limit headers to the shared throttle."""
        limits = self.limits(headers)
        if limits is not None:
            self.follow_view(await self._ask(self.store.aobserve, limits))

    async def arecord_success(self, permit: int) -> None:
        """Report a success (nothing is sent when it changes nothing: the hot path)."""
        if tag_of(permit) == CLEAN:
            self.count_success()
        else:
            await self.arecord(permit, Outcome.SUCCESS)

    async def arecord(
        self,
        permit: int,
        outcome: Outcome,
        *,
        open_for: float | None = None,
        why: str = "",
        error: BaseException | None = None,
        hint: float | None = None,
    ) -> None:
        """Report a finished call to wherever it was admitted."""
        done, open_for = self.recorded_locally(permit, outcome, open_for, why, error, hint)
        if not done:
            args = (untagged(permit), outcome, open_for, why, spread(hint))
            self.apply_report(outcome, await self._ask(self.store.arecord, *args), error)

    async def aview(self) -> View:
        """The store's view now (the local one while it is unreachable)."""
        return self.apply_view(await self._ask(self.store.asnapshot))

    async def aflush(self) -> None:
        """Send the budget changes waiting for a store call (a refused call makes none)."""
        if self.unsent:
            self.follow_view(await self._ask(self.store.asnapshot))

    async def acontrol(self, action: Control) -> None:
        """Reset, force open or force closed: locally and in the store."""
        self.local.control(action)
        self.follow_view(await self._ask(self.store.acontrol, action, carry=False))
