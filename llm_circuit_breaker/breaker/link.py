"""How a breaker follows a circuit kept in a store: ``StoreLink`` (sync) and ``AsyncStoreLink``.

The link is written once, as coroutines, in :mod:`._async.link`; :mod:`._sync.link` is its
generated twin (``python tools/unasync.py``). What the twins share without I/O is
:class:`~llm_circuit_breaker.breaker._link_core.LinkCore`.
"""

from __future__ import annotations

from llm_circuit_breaker.breaker._async.link import AsyncStoreLink
from llm_circuit_breaker.breaker._sync.link import StoreLink

__all__ = ["AsyncStoreLink", "StoreLink"]
