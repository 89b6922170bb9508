"""``BreakerRegistry``: one ``CircuitBreaker`` per name, shared by everything that names it."""

from __future__ import annotations

import collections
import contextlib
import functools
import itertools
import os
import threading
import weakref
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from llm_circuit_breaker._redact import shown
from llm_circuit_breaker.breaker.breaker import (
    ONE_HOLDER,
    CircuitBreaker,
    Clock,
    Observer,
    config_of,
    new_breaker,
    refcount,
)
from llm_circuit_breaker.config import DEFAULT_CONFIG, CircuitBreakerConfig

if TYPE_CHECKING:
    from typing import TypeAlias

    from llm_circuit_breaker.storage.base import AsyncStateStore, StateStore

    _Held: TypeAlias = weakref.KeyedRef[str, CircuitBreaker]  # a dropped breaker, weakly

__all__ = ["BreakerRegistry", "ScopeCache", "breaker_registry", "registries"]

_LISTED = 20  # names listed in a KeyError
_EVICTION_SCAN = 64  # scoped breakers looked at per eviction: the oldest, for an idle one


class BreakerRegistry:
    """Breakers by name. ``breaker_registry`` is the process-wide default; make more for
    isolation (tests, tenants). ``clock`` and ``store`` (say a ``RedisStateStore``, to share
    the circuits across processes) are handed to every breaker the registry creates.

    Scoped breakers (one per model, made from a name template such as ``"openai:{model}"``)
    are bounded: beyond ``max_breakers`` of them, the least recently used that are CLOSED and
    clean (nothing counted, nothing paced, nothing waiting) are dropped; a later call makes a
    fresh one. Breakers named outright are never dropped.
    """

    def __init__(
        self,
        *,
        clock: Clock | None = None,
        store: StateStore | AsyncStateStore | None = None,
        max_breakers: int = 10_000,
    ) -> None:
        if isinstance(max_breakers, bool) or not isinstance(max_breakers, int) or max_breakers < 1:
            raise ValueError(f"max_breakers must be an int >= 1, got {max_breakers!r}")
        self._clock = clock
        self._store = store
        self.max_breakers = max_breakers
        self._observers: list[Observer] = []
        self._breakers: dict[str, CircuitBreaker] = {}
        # Names of the scoped breakers, least recently used first, each with the key of the
        # decoration's cache that holds it (see ``Scopes``), None until it says.
        self._scoped: collections.OrderedDict[str, Any] = collections.OrderedDict()
        # Breakers forgotten by clear() that something still holds (a decoration, a facade, a
        # transport): naming one again gives that very breaker back, so both agree on it.
        self._retired: weakref.WeakValueDictionary[str, CircuitBreaker] = (
            weakref.WeakValueDictionary()
        )
        self._cleared = False  # whether clear() ever retired a breaker
        # Scoped breakers dropped past ``max_breakers`` while something still held them (a
        # call in flight, another decoration's cache): naming one again gives it back, so
        # whatever holds it and the registry agree on one breaker of the name (weakly held).
        self._dropped: dict[str, _Held] = {}
        self._gone = _forgetter(self._dropped)
        # No store, no observer and nothing cleared yet: a new breaker is made and
        # registered inline (False for good once one of them is not so).
        self._simple = store is None
        self._lock = threading.Lock()
        _REGISTRIES.add(self)
        for observer in _EVERYWHERE.copy():  # another thread may add one
            self.add_observer(observer)

    @property
    def store(self) -> StateStore | AsyncStateStore | None:
        """The store handed to every breaker made from now on (None: each keeps its own)."""
        return self._store

    @store.setter
    def store(self, store: StateStore | AsyncStateStore | None) -> None:
        self._store = store
        if store is not None:
            self._simple = False

    @staticmethod
    def observe_all(observer: Observer) -> None:
        """Attach ``observer`` to every registry in the process, now and made later."""
        _EVERYWHERE.append(observer)
        for registry in registries():
            registry.add_observer(observer)

    @staticmethod
    def unobserve_all(observer: Observer) -> None:
        """Stop attaching ``observer`` to registries made from now on (the observer itself
        goes quiet: breakers cannot forget an observer)."""
        if observer in _EVERYWHERE:
            _EVERYWHERE.remove(observer)

    def get(self, name: str) -> CircuitBreaker:
        """The breaker called ``name``; ``KeyError`` listing the known names if there is none."""
        try:
            return self._breakers[name]
        except KeyError:
            raise KeyError(f"no circuit breaker named {shown(name)!r}; {self._known()}") from None

    def _known(self) -> str:
        """The known names for an error message: a few, never the whole (tenant) list."""
        names = sorted(self._breakers)
        if not names:
            return "none is registered"
        listed = ", ".join(repr(shown(n)) for n in names[:_LISTED])
        more = f" and {len(names) - _LISTED} more" if len(names) > _LISTED else ""
        return f"known: {listed}{more}"

    def get_or_create(
        self, name: str, config: CircuitBreakerConfig | Mapping[str, Any] | None = None
    ) -> CircuitBreaker:
        """The breaker called ``name``, created with ``config`` if it does not exist yet.

        Naming an existing breaker with a different ``config`` raises ``ValueError`` saying
        which fields differ; ``config=None`` reuses it as it is. ``config`` may be a mapping
        of field names (an unknown one is a ``TypeError`` with a did-you-mean hint): only the
        fields it names must match an existing breaker's (an empty one reuses it as it is).
        """
        if config is not None and config.__class__ is not CircuitBreakerConfig:
            if isinstance(config, Mapping):
                named = dict(config)
                return self.get_or_create_with(name, named, config=config_of(named))
            config = config_of(config)
        if self._simple:  # the common case inline: creation is a hot path too
            lock = self._lock
            lock.acquire()
            try:
                if self._simple:
                    breakers = self._breakers
                    breaker = breakers.get(name)
                    if breaker is None:
                        breaker = breakers[name] = new_breaker(name, config, self._clock)
                        return breaker
                    if config is None:
                        return breaker
            finally:
                lock.release()
        fields = None if config is None else _as_fields(config)
        return self._get_or_create(name, fields, config)

    def get_or_create_with(
        self,
        name: str,
        fields: Mapping[str, Any],
        *,
        config: CircuitBreakerConfig | None = None,
        scoped: bool = False,
    ) -> CircuitBreaker:
        """Like :meth:`get_or_create`, from config field names; only the fields given must
        match an existing breaker's (the decorators name a breaker this way). ``config``, when
        given, is those fields already validated. ``scoped``: one of a template's breakers,
        counted against ``max_breakers`` and dropped when idle and least recently used."""
        CircuitBreakerConfig.check_names(fields)
        return self._get_or_create(name, dict(fields) or None, config, scoped=scoped)

    def touch(self, name: str) -> bool:
        """Mark the scoped breaker ``name`` as just used; False if it was dropped (or is not
        scoped). Lock-free: one ordered-dict operation."""
        try:
            self._scoped.move_to_end(name)
        except KeyError:
            return False
        return True

    @property
    def mark_used(self) -> Callable[[str], None]:
        """:meth:`touch` as the bare ordered-dict operation, for hot paths: it raises
        ``KeyError`` where :meth:`touch` returns False."""
        return self._scoped.move_to_end

    def scope(self, prefix: str) -> list[CircuitBreaker]:
        """The breakers named ``prefix`` or ``prefix:...`` (one per model ...), in name order."""
        start = prefix + ":"
        return [b for b in self.breakers() if b.name == prefix or b.name.startswith(start)]

    def configure(self, name: str, **fields: Any) -> CircuitBreaker:
        """Create the breaker ``name`` with these config fields before anything uses it.

        Decorations that name it without fields then reuse it as it is. ``ValueError`` if it
        already exists with other values.
        """
        return self.get_or_create_with(name, fields)

    def _get_or_create(
        self,
        name: str,
        fields: dict[str, Any] | None,
        config: CircuitBreakerConfig | None = None,
        *,
        scoped: bool = False,
    ) -> CircuitBreaker:
        with self._lock:
            breaker = self._breakers.get(name)
            if breaker is None:
                retired = self._retired if self._cleared else None  # none before a clear()
                breaker = retired.pop(name, None) if retired else None
                if breaker is None and self._dropped:
                    breaker = self._revived(name)
                if breaker is None or not _agrees(breaker, fields, self.store):
                    if config is None and fields:
                        config = CircuitBreakerConfig(**fields)
                    reused = None
                    if scoped and len(self._scoped) >= self.max_breakers:
                        reused = self._reused(name, config or DEFAULT_CONFIG)
                    breaker = reused or CircuitBreaker(
                        name, config, clock=self._clock, store=self.store
                    )
                if scoped or self._observers:
                    self._register(breaker, scoped)
                else:  # the common case inline: creating many breakers is a hot path too
                    self._breakers[breaker.name] = breaker
                return breaker
            if scoped:
                self.touch(name)
        if fields:
            differ = [
                f"{key}={value!r} (it has {getattr(breaker.config, key)!r})"
                for key, value in fields.items()
                if getattr(breaker.config, key) != value
            ]
            if differ:
                raise ValueError(
                    f"circuit breaker {name!r} already exists with another config: "
                    + ", ".join(differ)
                    + ". Give the config where the breaker is first named (or call "
                    f"breaker_registry.configure({name!r}, ...) before any use) and name it "
                    "without config fields everywhere else"
                )
        return breaker

    def _register(self, breaker: CircuitBreaker, scoped: bool) -> None:
        """Make ``breaker`` the one of its name (lock held)."""
        name = breaker.name
        self._breakers[name] = breaker
        for observer in self._observers:
            breaker.add_observer(observer)
        if scoped:
            self._scoped[name] = None
            if len(self._scoped) > self.max_breakers:
                self._evict()

    def _reused(self, name: str, config: CircuitBreakerConfig) -> CircuitBreaker | None:
        """The least recently used scoped breaker, dropped and renamed ``name`` when it would
        be dropped for this new one anyway and nothing else holds it (see
        ``CircuitBreaker._renamed``): cycling scopes past ``max_breakers`` then makes no
        breaker, nor garbage for the collector (lock held)."""
        if self._observers or self._cleared or self.store is not None:
            return None
        try:
            oldest = next(iter(self._scoped))
        except (StopIteration, RuntimeError):  # touched meanwhile by a lock-free caller
            return None
        breaker = self._breakers.get(oldest)
        # held by the registry and here alone
        if (
            breaker is None
            or refcount(breaker) != ONE_HOLDER + 1
            or not breaker._renamed(name, config)
        ):
            return None
        self._scoped.pop(oldest, None)
        del self._breakers[oldest]
        return breaker

    def _revived(self, name: str) -> CircuitBreaker | None:
        """The scoped breaker ``name`` dropped while something held it, if it lives (lock
        held)."""
        ref = self._dropped.pop(name, None)
        return None if ref is None else ref()

    def _drop(self, name: str) -> None:
        """Drop the scoped breaker ``name``; kept weakly when something else holds it
        (lock held)."""
        self._scoped.pop(name, None)
        breaker = self._breakers.pop(name, None)
        # held here alone: freed now, nothing to keep (without reference counts: kept)
        if breaker is None or (ONE_HOLDER > 0 and refcount(breaker) == ONE_HOLDER):
            return
        self._dropped[name] = weakref.KeyedRef(breaker, self._gone, name)
        if breaker._followed is breaker._local:  # a store keeps a circuit by name anyway
            # a failure reported on it (a call in flight) puts it back, as its next call does
            breaker._detach(functools.partial(self._rejoin, weakref.ref(breaker), True))

    def _rejoin(self, forgotten: weakref.ref[CircuitBreaker], scoped: bool) -> None:
        """A breaker forgotten by :meth:`clear` is used again: it is the one of its name once
        more, unless the name went to another breaker meanwhile."""
        breaker = forgotten()
        if breaker is None:  # pragma: no cover - the caller holds it
            return
        with self._lock:
            if breaker.name in self._breakers:
                return
            if self._retired.get(breaker.name) is breaker:
                del self._retired[breaker.name]
            held = self._dropped.get(breaker.name)
            if held is not None and held() is breaker:
                del self._dropped[breaker.name]
            self._register(breaker, scoped)

    def _evict(self) -> None:
        """Drop idle scoped breakers, oldest first, down to ``max_breakers`` (lock held)."""
        excess = len(self._scoped) - self.max_breakers
        if excess <= 0:
            return
        try:
            if excess == 1:  # the common case: one in, the least recently used one out
                name = next(iter(self._scoped))
                breaker = self._breakers.get(name)
                if breaker is None or breaker.idle:
                    breaker = None
                    self._drop(name)
                    return
            oldest = list(itertools.islice(self._scoped, _EVICTION_SCAN))
        except RuntimeError:  # touched meanwhile by a lock-free caller: evict on the next one
            return
        for name in oldest:
            breaker = self._breakers.get(name)
            if breaker is None or breaker.idle:
                breaker = None
                self._drop(name)
                excess -= 1
                if excess <= 0:
                    return
            else:  # not droppable now (open, failures pending): the next scan looks past it
                with contextlib.suppress(KeyError):  # discarded meanwhile by a finaliser
                    self._scoped.move_to_end(name)

    def add(self, breaker: CircuitBreaker) -> CircuitBreaker:
        """Register an existing breaker under its name (``ValueError`` if the name is taken)."""
        with self._lock:
            existing = self._breakers.setdefault(breaker.name, breaker)
        if existing is not breaker:
            raise ValueError(f"another circuit breaker is already named {breaker.name!r}")
        for observer in self._observers:
            breaker.add_observer(observer)
        return breaker

    def add_observer(self, observer: Observer) -> None:
        """Attach ``observer`` to every breaker here, now and created later (exporters)."""
        with self._lock:
            self._simple = False  # before the listing: a breaker made inline meanwhile is in it
            self._observers.append(observer)
            breakers = list(self._breakers.values())
        for breaker in breakers:
            breaker.add_observer(observer)

    def breakers(self) -> list[CircuitBreaker]:
        """The breakers, in name order."""
        with self._lock:  # eviction drops breakers under it
            named = list(self._breakers.items())
        named.sort(key=_first)
        return [breaker for _, breaker in named]

    def remove(self, name: str) -> None:
        """Forget the breaker called ``name`` (``KeyError`` if there is none)."""
        with self._lock:
            self.get(name)
            del self._breakers[name]
            self._scoped.pop(name, None)

    def discard(self, breaker: CircuitBreaker) -> None:
        """Forget ``breaker`` if it is still the one registered under its name.

        Takes no lock: a garbage-collection finalizer calls it, possibly in a thread that holds
        the registry's lock at that moment (single dict operations are atomic).
        """
        if self._breakers.get(breaker.name) is breaker:
            self._breakers.pop(breaker.name, None)
            self._scoped.pop(breaker.name, None)

    def clear(self) -> None:
        """Forget every breaker, each reset in place as by :meth:`reset_all`.

        Whatever still holds one (a decoration, a facade, a transport) keeps it: its next call
        puts it back here, and naming it again (a new decoration with the same config ...)
        gives that very breaker, so they and :meth:`get` agree on one breaker."""
        with self._lock:
            scoped = set(self._scoped)
            forgotten = list(self._breakers.values())
            earlier = list(self._retired.values())  # forgotten before, their return pending
            # dropped past the bound but held: reset too, given back when named again
            dropped = [b for b in (ref() for ref in self._dropped.values()) if b is not None]
            self._dropped.clear()
            self._retired.update({b.name: b for b in dropped})
            earlier += dropped
            self._retired.update(self._breakers)
            self._cleared = True
            self._simple = False
            self._breakers.clear()
            self._scoped.clear()
        for breaker in earlier:
            breaker._restart()
        for breaker in forgotten:
            breaker._restart()
            rejoin = functools.partial(self._rejoin, weakref.ref(breaker), breaker.name in scoped)
            breaker._detach(rejoin)

    def reset_all(self) -> None:
        """Reset every breaker here in place: circuit CLOSED with clean counts, throttle
        unpaused with its learned limits forgotten (configured rates kept), statistics
        zeroed. The objects stay, so everything that holds one sees the fresh state at once
        (scoped breakers dropped past the bound but still held too)."""
        with self._lock:
            dropped = [b for b in (ref() for ref in list(self._dropped.values())) if b]
        for breaker in [*self.breakers(), *dropped]:
            breaker._restart()

    def __contains__(self, name: object) -> bool:
        return name in self._breakers

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._breakers))

    def __len__(self) -> int:
        return len(self._breakers)

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """name -> {state, failure_count, success_count, opened_at, retry_after, throttle,
        stats}, in name order: the breakers of a scope (``openai:gpt-4o``, ``openai:o3`` ...)
        side by side, as :meth:`scope` lists them."""
        return {breaker.name: breaker.snapshot() for breaker in self.breakers()}

    def __repr__(self) -> str:
        return f"BreakerRegistry({sorted(self._breakers)!r})"


# Call keys whose formatting in a name is ``str()`` and cannot fail.
_PLAIN_KEYS = frozenset({str, int})


class ScopeCache(dict[Any, CircuitBreaker]):
    """The breakers of one scoped decoration of ``registry`` (a template such as
    ``"tenant:{tenant}"``) by call key: a plain dict, so that a hit is one lookup, and a miss
    goes to :meth:`__missing__` (called by ``cache[key]`` itself, or by the shells after
    their ``get``: nothing raised), which gives the scope's breaker in one function: the
    name formatted once (``parts``, the text around a template's one plain field, else
    ``name_of``), one lock, and the breaker made or, past
    ``max_breakers``, the least recently used scoped breaker renamed when it drops for this
    one anyway and nothing else holds it once this cache forgets it
    (``CircuitBreaker._renamed``): cycling scopes then makes no breaker, nor garbage for the
    collector. The registry's LRU entry of a scope keeps its key here, so that the entry is
    found in one step when the scope is the next to drop. ``made`` sees every breaker a
    miss gives (a decoration's checks and listener); with ``stored_only``, those on a store
    alone. Pruned in batches to ``max_breakers`` (``bound``)."""

    __slots__ = (
        "_held",
        "_reuse_config",
        "bound",
        "config",
        "fields",
        "made",
        "name_of",
        "parts",
        "registry",
        "stored_only",
        "template",
    )

    def __init__(
        self,
        registry: BreakerRegistry,
        template: str,
        name_of: Callable[[Any], str],
        parts: tuple[str, str] | None = None,
        fields: Mapping[str, Any] | None = None,
        config: CircuitBreakerConfig | None = None,
        made: Callable[[CircuitBreaker], None] | None = None,
        *,
        stored_only: bool = False,
    ) -> None:
        super().__init__()
        if fields:
            CircuitBreakerConfig.check_names(fields)
        self.registry, self.template, self.name_of, self.parts = registry, template, name_of, parts
        self.fields = dict(fields) if fields else None
        self.config = config
        self.made, self.stored_only = made, stored_only
        # the registry and its own structures (never replaced: clear() empties them)
        self._held = (
            registry,
            registry._breakers,
            registry._scoped,
            registry._lock,
            registry._dropped,
        )
        self._reuse_config = config or DEFAULT_CONFIG  # what a reused breaker must have
        self.bound = registry.max_breakers + max(8, registry.max_breakers // 8)

    def __missing__(self, key: Any) -> CircuitBreaker:
        """The breaker of a call key this cache does not hold (made, or another scope's
        renamed): cached under ``key`` and returned."""
        parts = self.parts
        if parts is not None and key.__class__ in _PLAIN_KEYS:  # formatting cannot fail
            name = f"{parts[0]}{key}{parts[1]}"
        else:
            name = self.name_of(key)
        if len(self) >= self.bound:
            self._prune()
        registry, breakers, lru, lock, dropped = self._held
        breaker = None
        lock.acquire()
        try:
            # nothing observed, nothing cleared, no store: the whole miss here
            if registry._simple and name not in breakers:
                bound = registry.max_breakers
                if dropped:  # dropped while held: the same breaker again
                    breaker = registry._revived(name)
                    if breaker is not None and not _agrees(breaker, self.fields, None):
                        breaker = None
                full = breaker is None and len(lru) >= bound
                if full:  # the least recently used scope drops
                    oldest, oldest_key = lru.popitem(False)
                    breaker = breakers.pop(oldest, None)
                    if breaker is not None:
                        if oldest_key is not None:  # forgotten here when it is this cache's
                            try:
                                cached = self.pop(oldest_key, None)
                                if cached is not breaker and cached is not None:
                                    self[oldest_key] = cached  # another scope's: kept
                                cached = None
                            except TypeError:  # pragma: no cover - keys here are hashable
                                pass
                        # renamed when held here alone; else kept, first in line again
                        # (for _evict)
                        if refcount(breaker) != ONE_HOLDER or not breaker._renamed(
                            name, self._reuse_config, self.template
                        ):
                            breakers[oldest] = breaker
                            lru[oldest] = oldest_key
                            lru.move_to_end(oldest, False)
                            breaker = None
                if breaker is None:
                    breaker = new_breaker(name, self.config, registry._clock)
                    breaker._local.template = self.template
                breakers[name] = breaker
                lru[name] = key
                if len(lru) > bound:  # one was kept (busy), or one came back: drop another
                    registry._evict()
        finally:
            lock.release()
        made = self.made
        if breaker is None:  # observed, cleared, on a store, or named already
            breaker = self._named(name, key)
            if made is not None and (not self.stored_only or breaker.store is not None):
                made(breaker)  # may refuse it: then it is not cached
        elif made is not None and not self.stored_only:  # made here: on no store
            made(breaker)
        self[key] = breaker
        return breaker

    def _named(self, name: str, key: Any) -> CircuitBreaker:
        """The scoped breaker ``name`` through the registry's general path."""
        breaker = self.registry._get_or_create(name, self.fields, self.config, scoped=True)
        lru = self.registry._scoped
        if name in lru:  # the scope's key beside its name, as in __missing__
            lru[name] = key
        breaker.template = self.template
        return breaker

    def _prune(self) -> None:
        """Forget the oldest scopes down to ``max_breakers``, those whose breakers the registry
        dropped first (freed by reference counts then): one pass over twice as many entries
        per ``bound - max_breakers`` misses."""
        registered = self.registry._breakers
        excess = len(self) - self.registry.max_breakers
        # another thread may change the cache meanwhile: a copy of the oldest entries
        oldest = list(itertools.islice(self.items(), 2 * excess))
        for key, breaker in oldest:
            dropped = registered.get(breaker.name) is not breaker
            if excess > 0 and dropped and self.pop(key, None) is not None:
                excess -= 1
        for key, _ in oldest:
            if excess <= 0:
                return
            if self.pop(key, None) is not None:
                excess -= 1


def _forgetter(dropped: dict[str, _Held]) -> Callable[[_Held], None]:
    """The callback that forgets a dropped breaker's entry once the breaker is freed (no
    lock: a finaliser may run in a thread that holds the registry's)."""

    def gone(ref: _Held) -> None:
        if dropped.get(ref.key) is ref:
            dropped.pop(ref.key, None)

    return gone


def _first(pair: tuple[str, CircuitBreaker]) -> str:
    return pair[0]


def _agrees(breaker: CircuitBreaker, fields: dict[str, Any] | None, store: object | None) -> bool:
    """Whether a forgotten breaker can be named again with these config fields."""
    if breaker.store is not store:
        return False
    return not fields or all(getattr(breaker.config, k) == v for k, v in fields.items())


def _as_fields(config: CircuitBreakerConfig) -> dict[str, Any]:
    return config_of(config).as_fields()


_REGISTRIES: weakref.WeakSet[BreakerRegistry] = weakref.WeakSet()
_EVERYWHERE: list[Observer] = []  # observers of every registry (exporters' instrument())


def registries() -> list[BreakerRegistry]:
    """Every registry alive in the process (the exporters' default: all of them)."""
    return list(_REGISTRIES)


def _after_fork_in_child() -> None:
    """Free, in a forked child, the locks every breaker shares (the counting lock, the
    striped circuit locks, the budgets') and the registries' own: the thread that held one
    at the fork does not exist in the child. Reset in place: caches and hot paths hold them."""
    from llm_circuit_breaker.breaker import breaker, circuit, telemetry

    locks = [telemetry._counting, telemetry._latencies_lock, breaker._MAKING, *circuit._STRIPES]
    locks += [registry._lock for registry in list(_REGISTRIES)]
    for lock in locks:
        reinit = getattr(lock, "_at_fork_reinit", None)  # CPython's and PyPy's locks
        if reinit is not None:
            reinit()


if hasattr(os, "register_at_fork"):  # not on Windows, which does not fork
    os.register_at_fork(after_in_child=_after_fork_in_child)

breaker_registry = BreakerRegistry()
"""The process-wide default registry that the decorators and helpers use."""
