"""A guarded call scripted outcome by outcome, shared by the throttle and exporter tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from llm_circuit_breaker import circuit_breaker


def scripted_call(outcomes: list[BaseException | None], **decoration: Any) -> Callable[[], str]:
    """``@circuit_breaker(**decoration)`` around a call that raises each error of ``outcomes``
    in turn (``None``: it answers ``"ok"``)."""

    @circuit_breaker(**decoration)
    def call() -> str:
        error = outcomes.pop(0)
        if error is not None:
            raise error
        return "ok"

    return call
