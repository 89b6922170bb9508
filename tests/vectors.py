"""Transition vectors: scripted outcomes and the state each must leave behind.

A step is ``(op, state, failure_count, success_count)``. ``op`` is ``"S"`` (a call that
succeeds), ``"F"`` (fails), ``"I"`` (ends with an ignored error), ``"R"`` (a call that must be
refused), or ``"+N"`` (the clock moves N seconds). Shared by every store's tests so that all of
them provably take the same transitions.
"""

from __future__ import annotations

from typing import Any

from llm_circuit_breaker import CircuitBreaker, CircuitOpenError, Outcome
from llm_circuit_breaker.testing import FakeClock

Step = tuple[str, str, int, int]

VECTORS: dict[str, tuple[dict[str, Any], list[Step]]] = {
    "consecutive failures open the circuit": (
        {"failure_threshold": 3},
        [("F", "CLOSED", 1, 0), ("F", "CLOSED", 2, 0), ("F", "OPEN", 3, 0), ("R", "OPEN", 3, 0)],
    ),
    "a success in CLOSED resets the failure count": (
        {"failure_threshold": 3},
        [
            ("F", "CLOSED", 1, 0),
            ("F", "CLOSED", 2, 0),
            ("S", "CLOSED", 0, 0),
            ("F", "CLOSED", 1, 0),
        ],
    ),
    "ignored errors neither count nor reset": (
        {"failure_threshold": 2},
        [("F", "CLOSED", 1, 0), ("I", "CLOSED", 1, 0), ("I", "CLOSED", 1, 0), ("F", "OPEN", 2, 0)],
    ),
    "OPEN becomes HALF_OPEN once reset_timeout has passed": (
        {"failure_threshold": 1, "reset_timeout": 10.0},
        [
            ("F", "OPEN", 1, 0),
            ("+9.999", "OPEN", 1, 0),
            ("R", "OPEN", 1, 0),
            ("+0.001", "HALF_OPEN", 0, 0),
        ],
    ),
    "success_threshold probe successes close the circuit": (
        {"failure_threshold": 1, "reset_timeout": 5.0, "success_threshold": 3},
        [
            ("F", "OPEN", 1, 0),
            ("+5", "HALF_OPEN", 0, 0),
            ("S", "HALF_OPEN", 0, 1),
            ("S", "HALF_OPEN", 0, 2),
            ("S", "CLOSED", 0, 0),
            ("F", "OPEN", 1, 0),
        ],
    ),
    "a probe failure reopens and restarts the timer": (
        {"failure_threshold": 1, "reset_timeout": 5.0, "success_threshold": 2},
        [
            ("F", "OPEN", 1, 0),
            ("+5", "HALF_OPEN", 0, 0),
            ("S", "HALF_OPEN", 0, 1),
            ("F", "OPEN", 0, 0),
            ("+4", "OPEN", 0, 0),
            ("R", "OPEN", 0, 0),
            ("+1", "HALF_OPEN", 0, 0),
        ],
    ),
    "an ignored probe frees its slot and changes nothing": (
        {"failure_threshold": 1, "reset_timeout": 1.0, "success_threshold": 1},
        [
            ("F", "OPEN", 1, 0),
            ("+1", "HALF_OPEN", 0, 0),
            ("I", "HALF_OPEN", 0, 0),
            ("S", "CLOSED", 0, 0),
        ],
    ),
}


def run_vector(breaker: CircuitBreaker, clock: FakeClock, steps: list[Step]) -> None:
    """Drive ``breaker`` through ``steps``, asserting the state after each one."""
    for number, (op, state, failures, successes) in enumerate(steps, 1):
        if op.startswith("+"):
            clock.advance(float(op[1:]))
        elif op == "R":
            try:
                breaker.admit()
            except CircuitOpenError:
                pass
            else:
                raise AssertionError(f"step {number}: a call was admitted, expected a refusal")
        else:
            outcome = {"S": Outcome.SUCCESS, "F": Outcome.FAILURE, "I": Outcome.IGNORED}[op]
            permit = breaker.admit()
            if outcome is Outcome.SUCCESS:
                breaker.record_success(permit)
            else:
                breaker.record(permit, outcome)
        seen = (breaker.state.value, breaker.failure_count, breaker.success_count)
        assert seen == (state, failures, successes), f"step {number} ({op}): {seen}"
