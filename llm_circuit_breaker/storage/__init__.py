"""Where circuit state lives: in this process (the default) or shared through Redis."""

from typing import TYPE_CHECKING

from llm_circuit_breaker.storage.base import StateStore, StoreUnavailableError

if TYPE_CHECKING:
    from llm_circuit_breaker.storage.memory import MemoryStateStore
    from llm_circuit_breaker.storage.redis import RedisStateStore

__all__ = ["MemoryStateStore", "RedisStateStore", "StateStore", "StoreUnavailableError"]


def __getattr__(name: str) -> object:
    # Lazy: the redis extra is optional, and a breaker without a store needs neither.
    if name == "RedisStateStore":
        from llm_circuit_breaker.storage.redis import RedisStateStore

        return RedisStateStore
    if name == "MemoryStateStore":
        from llm_circuit_breaker.storage.memory import MemoryStateStore

        return MemoryStateStore
    raise AttributeError(name)
