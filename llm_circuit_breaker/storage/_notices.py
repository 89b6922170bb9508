"""Notices of circuit changes through Redis pub/sub, for processes that near-cache.

The script publishes on the channel named like a circuit's key whenever the circuit changes
state or its throttle pauses. A store with a ``near_cache`` and a sync client listens on one
pattern subscription in a daemon thread and tells the links following that circuit to forget
what they cached (the admission after that asks Redis), so a trip elsewhere is seen in about
a round trip instead of up to ``near_cache`` later. A notice that is lost (Redis restarted, the
listener's connection dropped) costs nothing but that speed: the cache still ends after
``near_cache`` seconds. When Redis cannot be asked as a link starts following (down, or left
alone after a failure), the thread subscribes itself, again every half second until Redis
answers: no caller waits for it. The thread stops when no link follows the store any more. A forked
child (gunicorn ``--preload``) has no listener thread: it starts its own after the fork.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, Protocol

__all__ = ["Follower", "Notices", "circuit_keys", "key_part", "name_of_key"]

logger = logging.getLogger("llm_circuit_breaker")

_LISTEN = 1.0  # seconds one read of the subscription waits for a notice
_BROKEN_PAUSE = 0.5  # seconds between attempts to listen again while Redis is unreachable


_ESCAPES = {"%": "%25", "{": "%7B", "}": "%7D"}
_UNESCAPES = {code[1:]: char for char, code in _ESCAPES.items()}


def key_part(text: str) -> str:
    """``text`` as written in a key: ``%``, ``{`` and ``}`` escaped, so that the name's braces
    always hold a circuit's hash tag (a prefix's braces would pin every circuit to one
    cluster slot; a name starting with ``}`` would give an empty tag)."""
    if "%" not in text and "{" not in text and "}" not in text:
        return text
    return "".join(_ESCAPES.get(c, c) for c in text)


def name_of_key(key: str, prefix: str) -> str:
    """The circuit name a state key ``<prefix>:{<name>}`` (as :func:`key_part` wrote them)
    holds."""
    part = key[len(key_part(prefix)) + 2 : -1]
    if "%" not in part:
        return part
    return re.sub("%(25|7B|7D)", lambda m: _UNESCAPES[m.group(1)], part)


def circuit_keys(prefix: str) -> str:
    """The glob (for SCAN and PSUBSCRIBE) of every circuit key under ``prefix``, which is
    matched literally: its ``*``, ``?``, ``[``, ``]`` and ``\\`` are escaped."""
    literal = "".join("\\" + c if c in "*?[]\\" else c for c in key_part(prefix))
    return f"{literal}:{{*}}"


class Follower(Protocol):
    def forget(self) -> None:
        """Drop what was cached of the shared circuit."""


class Notices:
    """One pattern subscription for every circuit under ``prefix``, started on first use."""

    def __init__(self, client: Any, prefix: str, ready: Callable[[], bool] = bool) -> None:
        self._client = client
        self._ready = ready  # False while the store leaves Redis alone: subscribe in the thread
        self._pattern = circuit_keys(prefix)
        self._prefix = prefix
        self._followers: dict[str, weakref.WeakSet[Follower]] = {}
        self._lock = threading.Lock()
        self._worker: threading.Thread | None = None
        self._closed = False
        _EVERY.add(self)

    def follow(self, name: str, follower: Follower) -> None:
        """Tell ``follower`` of every change to circuit ``name`` (held weakly)."""
        with self._lock:
            if self._closed:
                return
            self._followers.setdefault(name, weakref.WeakSet()).add(follower)
            if self._worker is None:
                self._start()

    def _start(self) -> None:
        """Subscribe, then listen in a daemon thread (lock held). While Redis is known to be
        unreachable, or when this first attempt fails, the thread subscribes itself (again
        and again): a breaker made meanwhile never waits for a Redis timeout here."""
        pubsub = self._subscribed() if self._ready() else None
        if pubsub is not None:
            worker = threading.Thread(
                target=self._listen, args=(pubsub,), name="llm-circuit-breaker-notices", daemon=True
            )
        else:
            worker = threading.Thread(
                target=self._subscribe_and_listen, name="llm-circuit-breaker-notices", daemon=True
            )
        self._worker = worker
        worker.start()

    def _subscribed(self) -> Any:
        """A pub/sub connection subscribed to the pattern; None while Redis is unreachable."""
        try:
            pubsub = self._client.pubsub(ignore_subscribe_messages=True)
        except Exception as exc:  # a cluster client not made yet (the cluster is down)
            logger.debug("no change notices for %r: %s", self._pattern, exc)
            return None
        try:
            pubsub.psubscribe(self._pattern)
        except Exception as exc:  # Redis unreachable now: the near-cache's bound serves
            logger.debug("no change notices for %r: %s", self._pattern, exc)
            pubsub.close()
            return None
        return pubsub

    def _forked(self) -> None:
        """In a forked child: the parent's listener thread is not here (and a thread that is
        not here either may have held the lock). Listen anew, subscribing from the new thread:
        no I/O in the fork hook. The parent's pub/sub connection is left alone."""
        self._lock = threading.Lock()
        self._worker = None
        if self._closed or not self._followers:
            return
        self._worker = threading.Thread(
            target=self._subscribe_and_listen, name="llm-circuit-breaker-notices", daemon=True
        )
        self._worker.start()

    def _subscribe_and_listen(self) -> None:
        """Subscribe from this thread (every ``_BROKEN_PAUSE`` until Redis answers, while a
        link follows), then listen."""
        me = threading.current_thread()
        while self._still_listening(me):
            pubsub = self._subscribed()
            if pubsub is not None:
                self._listen(pubsub)
                return
            time.sleep(_BROKEN_PAUSE)

    def _listen(self, pubsub: Any) -> None:
        """Read notices until no link follows any circuit of this store (or ``close``)."""
        me = threading.current_thread()
        while self._still_listening(me):
            try:
                message = pubsub.get_message(ignore_subscribe_messages=True, timeout=_LISTEN)
            except Exception:  # the connection failed: notices sent meanwhile are lost
                time.sleep(_BROKEN_PAUSE)  # redis-py subscribes anew when it reconnects
                continue
            if message is not None:
                self._heard(message)
        try:
            pubsub.close()
        except Exception:  # pragma: no cover - closing a broken connection
            pass

    def _still_listening(self, me: threading.Thread) -> bool:
        with self._lock:
            if self._worker is not me:
                return False
            for name in [n for n, followers in self._followers.items() if not followers]:
                del self._followers[name]
            if not self._followers:
                self._worker = None
                return False
            return True

    def _heard(self, message: Any) -> None:
        try:
            channel = message["channel"]
            key = channel.decode() if isinstance(channel, bytes) else str(channel)
            followers = self._followers.get(name_of_key(key, self._prefix))
            for follower in list(followers or ()):
                follower.forget()
        except Exception:  # a foreign message on our pattern: nothing to forget
            return

    def close(self) -> None:
        """Stop listening (within a second), for good."""
        with self._lock:
            self._closed = True
            self._worker = None
            self._followers.clear()


_EVERY: weakref.WeakSet[Notices] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for notices in list(_EVERY):
        notices._forked()


if hasattr(os, "register_at_fork"):  # not on Windows, which does not fork
    os.register_at_fork(after_in_child=_after_fork_in_child)
