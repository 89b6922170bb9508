"""The coroutine face of :class:`~llm_circuit_breaker.CircuitBreaker`: ``aenter``,
``aadmit``, ``arecord`` ... awaited through a link to an asyncio store, or answered by the sync
methods when the circuit lives in this process (or in a sync store)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from llm_circuit_breaker._core.state import REJECTED, Outcome
from llm_circuit_breaker._core.throttle import Wait
from llm_circuit_breaker.breaker.circuit import Entry
from llm_circuit_breaker.errors import ThrottledError

if TYPE_CHECKING:
    from llm_circuit_breaker._core.permits import Control, View
    from llm_circuit_breaker.breaker.link import AsyncStoreLink

__all__ = ["AsyncMethods"]


class AsyncMethods:
    """The ``a``-methods :class:`CircuitBreaker` inherits; what they use of it is below."""

    _alink: AsyncStoreLink | None
    _async_sleep: Callable[[float], Awaitable[object]] | None
    enter: Callable[[], Entry]
    record_success: Callable[[int], None]

    if TYPE_CHECKING:

        def _settle(self, wait: Wait, *, gave_up: bool) -> Wait | ThrottledError | None: ...
        def observe(self, headers: object) -> None: ...
        def record(
            self,
            permit: int,
            outcome: Outcome,
            *,
            open_for: float | None = None,
            why: str = "",
            error: BaseException | None = None,
            hint: float | None = None,
        ) -> None: ...
        def _view(self) -> View: ...
        def _as_dict(self, view: View) -> dict[str, Any]: ...
        def _control(self, action: Control) -> None: ...

    async def _asettle(self, wait: Wait, *, gave_up: bool) -> Wait | ThrottledError | None:
        if self._alink is not None:
            await self._alink.awaited(wait, gave_up=gave_up)
            return None
        return self._settle(wait, gave_up=gave_up)

    async def await_slot(self, wait: Wait) -> int:
        """Sleep (``asyncio.sleep``) until a throttle slot; the permit it held. Cancelling
        frees the slot; a pause set meanwhile, past the slot, is waited out too."""
        import asyncio

        while True:
            try:
                await (self._async_sleep or asyncio.sleep)(wait.seconds)
            except BaseException:
                await self._asettle(wait, gave_up=True)
                raise
            again = await self._asettle(wait, gave_up=False)
            if again is None:
                return wait.permit
            if isinstance(again, ThrottledError):
                raise again
            wait = again

    async def aobserve(self, headers: object) -> None:
        """``observe()`` as a coroutine (what an asyncio store needs)."""
        if self._alink is not None:
            await self._alink.aobserve(headers)
        else:
            self.observe(headers)

    async def aenter(self) -> Entry:
        """``enter()`` as a coroutine (what an asyncio store needs)."""
        if self._alink is not None:
            return await self._alink.aenter()
        return self.enter()

    async def aadmit(self) -> int:
        """``admit()`` as a coroutine (the throttle's wait is an ``asyncio.sleep``)."""
        entry = await self.aenter()
        if isinstance(entry, Wait):
            return await self.await_slot(entry)
        if not isinstance(entry, int):
            try:
                raise entry
            finally:
                del entry
        return entry

    async def atry_admit(self) -> int:
        """``try_admit()`` as a coroutine."""
        entry = await self.aenter()
        if isinstance(entry, Wait):
            await self._asettle(entry, gave_up=True)
            return REJECTED
        return entry if isinstance(entry, int) else REJECTED

    async def arecord_success(self, permit: int) -> None:
        """``record_success()`` as a coroutine."""
        if self._alink is not None:
            await self._alink.arecord_success(permit)
        else:
            self.record_success(permit)

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
        """``record()`` as a coroutine."""
        if self._alink is not None:
            await self._alink.arecord(
                permit, outcome, open_for=open_for, why=why, error=error, hint=hint
            )
        else:
            self.record(permit, outcome, open_for=open_for, why=why, error=error, hint=hint)

    async def asnapshot(self) -> dict[str, Any]:
        """``snapshot()`` read now, also from an asyncio store."""
        view = await self._alink.aview() if self._alink is not None else self._view()
        return self._as_dict(view)

    async def _acontrol(self, action: Control) -> None:
        if self._alink is not None:
            await self._alink.acontrol(action)
        else:
            self._control(action)

    async def areset(self) -> None:
        """``reset()`` as a coroutine (what an asyncio store needs)."""
        await self._acontrol("reset")

    async def aforce_open(self) -> None:
        """``force_open()`` as a coroutine."""
        await self._acontrol("force_open")

    async def aforce_closed(self) -> None:
        """``force_closed()`` as a coroutine."""
        await self._acontrol("force_closed")
