"""The pure core: the circuit state machine, the throttle, permits and the provider's headers.

No locks, no I/O, no asyncio: every decision takes ``now`` and returns what changed.
"""
