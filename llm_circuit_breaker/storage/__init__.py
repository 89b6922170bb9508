"""Where circuit state lives: in this process (the default) or shared through Redis."""

from llm_circuit_breaker.storage.base import StateStore, StoreUnavailableError
from llm_circuit_breaker.storage.memory import MemoryStateStore

__all__ = ["MemoryStateStore", "RedisStateStore", "StateStore", "StoreUnavailableError"]


def __getattr__(name: str) -> object:
    # Lazy: the redis extra is optional and importing this package must not need it.
    if name == "RedisStateStore":
        from llm_circuit_breaker.storage.redis import RedisStateStore

        return RedisStateStore
    raise AttributeError(name)
