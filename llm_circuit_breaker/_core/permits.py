"""Permits: the ints a circuit hands out on admission, and the one place their encoding lives.

A permit names the admission a report belongs to, so a stale report (one from before the
circuit last changed) is ignored. Admitted permits are >= 0 and drawn from one increasing
sequence (see :mod:`.state`); the negative values and the high bit are refusals and shadows:

* :data:`REJECTED` -- the circuit refused the call (``try_admit`` returns it).
* :data:`THROTTLED` -- a store's circuit admitted the call but its throttle's slot was too far.
* :data:`SPENT` -- a store refused the call: the fleet's token budget is spent (the totals
  the same store call answered say so).
* :data:`SHADOW` -- a metrics-only core's refusal: the call it would have refused is let through
  and counted once, as a refusal not enforced; its report matches no permit of the state
  machine, so the circuit evolves as if it had not run. A store speaks only ``REJECTED`` (the
  Redis script knows nothing of metrics-only); the breaker's own core translates it.

:func:`is_refusal` says whether a core's permit is either refusal.

A breaker linked to a store tags each permit with where it was decided, in its two low bits
(:func:`tagged` / :func:`untagged` / :func:`tag_of`): :data:`LOCAL` (the in-process circuit
decided, the store being down), :data:`CLEAN` (the store admitted it while the circuit was
clean: a success needs no report) or :data:`SHARED`.
"""

from __future__ import annotations

__all__ = [
    "CLEAN",
    "LOCAL",
    "REJECTED",
    "SHADOW",
    "SHARED",
    "SPENT",
    "THROTTLED",
    "is_refusal",
    "tag_of",
    "tagged",
    "untagged",
]

REJECTED = -1
THROTTLED = -2
SPENT = -3
SHADOW = 1 << 62

LOCAL, CLEAN, SHARED = 0, 1, 2
_TAG_BITS = 2
_TAG_MASK = (1 << _TAG_BITS) - 1


def is_refusal(permit: int) -> bool:
    """Whether a core's :meth:`~.state.BreakerCore.admit` refused (enforced or not)."""
    return permit in (REJECTED, SHADOW)


def tagged(permit: int, tag: int) -> int:
    """``permit`` with ``tag`` (LOCAL, CLEAN or SHARED) in its low bits."""
    return (permit << _TAG_BITS) | tag


def untagged(permit: int) -> int:
    """The permit a store or the local circuit handed out, without its tag."""
    return permit >> _TAG_BITS


def tag_of(permit: int) -> int:
    """Where a tagged permit was decided: LOCAL, CLEAN or SHARED."""
    return permit & _TAG_MASK
