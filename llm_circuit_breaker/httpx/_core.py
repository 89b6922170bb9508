"""What both httpx transports share: naming the breaker, reading the request, answering a
refusal, judging a response, watching an SSE body and settling an attempt once. No I/O."""

from __future__ import annotations

import contextlib
import functools
import json
import math
import re
import sys
import threading
import time
import zlib
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import Any

from llm_circuit_breaker._core.headers import RATE_LIMIT_BYTES, RateLimitHeaders, sdk_retry_count
from llm_circuit_breaker._core.state import Outcome
from llm_circuit_breaker._core.throttle import output_cap
from llm_circuit_breaker._judge.kinds import parse_json
from llm_circuit_breaker._judge.refusal import REFUSAL
from llm_circuit_breaker._judge.verdict import judge
from llm_circuit_breaker.breaker.breaker import CircuitBreaker
from llm_circuit_breaker.breaker.registry import BreakerRegistry, breaker_registry
from llm_circuit_breaker.config import CircuitBreakerConfig
from llm_circuit_breaker.errors import (
    CircuitOpenError,
    IncompleteStreamError,
    RequestTimeoutError,
    ThrottledError,
    http_status_error,
)
from llm_circuit_breaker.http._common import Inflate
from llm_circuit_breaker.httpx._watch import Watch, watch_for

__all__ = [
    "MAX_JUDGED_BODY",
    "UNREAD",
    "Attempt",
    "Body",
    "BreakerSpec",
    "Core",
    "FirstToken",
    "SDKRetry",
    "Watch",
    "incomplete",
    "accept",
    "answer_headers",
    "aread_capped",
    "library",
    "read_capped",
    "retry_count",
    "unanswered",
]

# What to tell a breaker about an attempt: ``record(permit, outcome, **details)``.
Report = tuple[Outcome, dict[str, Any]]
BreakerSpec = str | CircuitBreaker | Callable[[Any], str]
_MAX_PARSED_BODY = 4 * 1024 * 1024  # request bodies parsed for the model and a token estimate
_MAX_ERROR_BODY = 256 * 1024  # of an error response, read to judge it
_MAX_HEADERS = 256  # headers looked at (a message with thousands is hostile, not informative)
# A request body nobody needed parsed: no name template, no "stream" key, no token estimate.
UNREAD: Any = type("Unread", (), {"__repr__": lambda self: "UNREAD"})()


class SDKRetry(Exception):
    """What a retry event names when the SDK itself retried (the transport sees no error)."""


class Core:
    """What both transports share: naming the breaker, reading the request, answering a
    refusal, judging a response and preparing its guarded body. No I/O."""

    def __init__(
        self,
        breaker: BreakerSpec,
        registry: BreakerRegistry | None,
        first_byte_timeout: float | None,
        idle_timeout: float | None,
        fields: dict[str, Any],
        *,
        first_token_timeout: float | None = None,
    ) -> None:
        from llm_circuit_breaker._validate import seconds

        if not (isinstance(breaker, str | CircuitBreaker) or callable(breaker)):
            raise TypeError(
                f"breaker must be a name, a CircuitBreaker or a callable request -> name, "
                f"got {type(breaker).__name__}"
            )
        self.spec = breaker
        self.registry = breaker_registry if registry is None else registry
        owner = "CircuitBreakerTransport"
        self.first_byte_timeout = (
            None
            if first_byte_timeout is None
            else seconds(owner, "first_byte_timeout", first_byte_timeout)
        )
        self.idle_timeout = (
            None if idle_timeout is None else seconds(owner, "idle_timeout", idle_timeout)
        )
        self.first_token_timeout = (
            None
            if first_token_timeout is None
            else seconds(owner, "first_token_timeout", first_token_timeout)
        )
        # whether a request's streaming matters (a timeout of its own for streams): else its
        # body is not read for a "stream" key, nor its Accept header looked up
        self.timed = not (
            self.first_byte_timeout is None
            and self.idle_timeout is None
            and self.first_token_timeout is None
        )
        CircuitBreakerConfig.check_names(fields)
        self.fields = fields
        self.config = CircuitBreakerConfig(**fields) if fields else None
        self.template = isinstance(breaker, str) and "{" in breaker
        # the one breaker of every request, once found (a name without a template, or a
        # breaker): no lookup per request
        self.fixed: CircuitBreaker | None = None
        # its admission (``enter`` / ``aenter``), bound once as the decorators bind it, and
        # whether admitting it always reads a request's token estimate (a token budget, a
        # store): else only while its local circuit is paced (``reads_token_cost``)
        self.enter: Any = None
        self.aenter: Any = None
        self.costly = False

    def tokens(self, request: Any, body: Any) -> float:
        """The request's estimated token cost: its output cap plus its size / 4 (an unread
        body's cap is found in its bytes: no parse of the whole conversation)."""
        if body is UNREAD:
            content = _content(request)
            cap = _cap_in(content) if content and len(content) <= _MAX_PARSED_BODY else None
            if cap is not None:
                return output_cap(cap) + len(content or b"") / 4.0
            body = self.body_of(request)
        if not isinstance(body, Mapping):
            return 0.0
        cap = next(
            (body[f] for f in ("max_tokens", "max_output_tokens", "max_completion_tokens")
             if isinstance(body.get(f), int | float)),
            0,
        )  # fmt: skip
        return output_cap(cap) + len(request.content) / 4.0

    # -- the request -------------------------------------------------------------------------

    def body_of(self, request: Any) -> Any:
        """The request's JSON body, when it has a small one (else None)."""
        content = _content(request)
        if not content or len(content) > _MAX_PARSED_BODY:
            return None
        try:
            return json.loads(content)
        except Exception:  # ValueError, RecursionError on a body nested too deep
            return None

    def needed_body(self, request: Any) -> Any:
        """The request's JSON body when something needs it now -- a name template, or a
        ``"stream"`` key to read for a stream's timeouts -- else ``UNREAD`` (a long
        conversation costs a parse of many microseconds; the token estimate parses it when a
        throttle or budget asks)."""
        if self.template:
            return self.body_of(request)
        if not self.timed:
            return UNREAD
        content = _content(request)
        if content and content.find(b'"stream"') >= 0:  # find: see answer_headers
            return self.body_of(request)
        return UNREAD

    def cost(self, request: Any, body: Any, breaker: CircuitBreaker) -> float | None:
        """The request's estimated tokens when admitting it reads them (a throttle that
        paces, a store, a token budget), else None."""
        return self.tokens(request, body) if breaker.reads_token_cost else None

    def breaker_for(self, request: Any, body: Any) -> CircuitBreaker:
        """The breaker that guards ``request``."""
        spec = self.spec
        if isinstance(spec, CircuitBreaker):
            return spec
        if isinstance(spec, str) and not self.template:  # one name: looked up once
            breaker = self.registry.get_or_create_with(spec, self.fields, config=self.config)
            self.spec = breaker
            return breaker
        if isinstance(spec, str):
            name = _fill(spec, request, body) if self.template else spec
        else:
            name = spec(request)
            if not isinstance(name, str) or not name:
                raise TypeError(f"breaker callable must return a non-empty str, got {name!r}")
        # one of many (a model, a host ...): bounded by the registry's max_breakers, the least
        # recently used idle ones dropped, as the decorators' scoped breakers are
        return self.registry.get_or_create_with(name, self.fields, config=self.config, scoped=True)

    def abreaker_and_body(self, request: Any) -> tuple[CircuitBreaker, Any]:
        """:meth:`breaker_and_body` for the asyncio transport (any store will do)."""
        return self.breaker_and_body(request, asynchronous=True)

    def breaker_and_body(
        self, request: Any, *, asynchronous: bool = False
    ) -> tuple[CircuitBreaker, Any]:
        """The request's JSON body and the breaker that guards it (a sync transport cannot
        use an asyncio store). Every request is an attempt, counted as a call; one the SDK
        retries (its ``x-stainless-retry-count`` header: openai, anthropic) is also counted as
        a retry (:meth:`unpaid_retry`), so logical calls are calls minus retries."""
        body = self.needed_body(request)
        breaker = self.breaker_for(request, body)
        if breaker.is_async and not asynchronous:
            raise TypeError(
                f"circuit {breaker.name!r} keeps its state in an asyncio store: "
                "use AsyncCircuitBreakerTransport"
            )
        if self.spec is breaker:
            self.enter, self.aenter = breaker.enter, breaker.aenter
            local = breaker._local
            self.costly = local.config.token_budget is not None or breaker._circuit is not local
            self.fixed = breaker  # last: a thread that sees it sees its admission
        return breaker, body

    def unpaid_retry(self, retry: str, breaker: CircuitBreaker) -> ThrottledError | None:
        """An SDK's own retry (``retry``: its ``x-stainless-retry-count`` header, > 0) is
        counted as a retry and paid from the breaker's retry budget; the refusal to answer with
        when the budget cannot pay (the SDK stops retrying, as it does for a throttled
        attempt)."""
        count = sdk_retry_count(retry)
        if not count:  # the first attempt ("00" too), or no SDK's count
            return None
        if not breaker.try_spend_retry():
            return ThrottledError(breaker.name, 1.0, reason="retry_budget")
        breaker.record_retry(count, SDKRetry(), 0.0)
        return None

    def bound_first_byte(self, request: Any, body: Any, accept: str) -> bool:
        """Shorten the read timeout of a streaming request to ``first_byte_timeout``; whether
        it streams (``accept``: its Accept header)."""
        streams = (
            body is not UNREAD and isinstance(body, Mapping) and body.get("stream") is True
        ) or ("text/event-stream" in accept)
        if streams and self.first_byte_timeout is not None:
            _set_read_timeout(request, self.first_byte_timeout)
        return streams

    def first_token(self, request: Any, streams: bool) -> FirstToken | None:
        """The deadline of a streaming request's first content, as it is sent (None without
        ``first_token_timeout``)."""
        if not streams or self.first_token_timeout is None:
            return None
        return FirstToken(request, self.first_token_timeout)

    # -- refusals ----------------------------------------------------------------------------

    def refused(self, request: Any, error: CircuitOpenError | ThrottledError) -> Any:
        """The answer to a refused attempt: nothing was sent, the SDK must not retry."""
        throttled = isinstance(error, ThrottledError)
        wait = error.retry_after
        if wait is not None and not math.isfinite(wait):  # never: no hint to give
            wait = None
        headers = {
            "content-type": "application/json",
            "x-should-retry": "false",
            "x-llm-circuit-breaker": "throttled" if throttled else "circuit-open",
        }
        if wait is not None:
            headers["retry-after"] = str(max(0, math.ceil(wait)))
            headers["retry-after-ms"] = str(max(0, math.ceil(wait * 1000)))
        kind = "throttled" if throttled else "circuit_open"
        body = {
            "error": {
                "message": f"{type(error).__name__}: {error}",
                "type": kind,
                "code": kind,
                "retry_after": wait,
            }
        }
        lib = library(request)
        return lib.Response(
            429 if throttled else 503,
            headers=headers,
            content=json.dumps(body).encode(),
            request=request,
            extensions={REFUSAL: error},
        )

    # -- responses ---------------------------------------------------------------------------

    def meter(
        self, attempt: Attempt, request: Any, cost: float | None, watch: Watch | None
    ) -> None:
        """Meter an answer when its breaker has a token budget (``cost``: the request's
        estimate, made at admission, since a budget reads it)."""
        if attempt.breaker.config.token_budget is not None:
            attempt.meter = Meter(cost or 0.0, watch)

    def after_headers(
        self, request: Any, response: Any, streams: bool, events: bool
    ) -> Watch | None:
        """Once the headers are in: the read timeout of a stream's silences, and the watch of
        an SSE body (``events``: its content type is ``text/event-stream``)."""
        if streams and self.idle_timeout is not None:
            _set_read_timeout(request, self.idle_timeout)
        if events:
            encoding = _joined(_lowered(response.headers), b"content-encoding") or ""
            return watch_for(str(request.url), encoding)
        return None


class FirstToken:
    """``first_token_timeout`` for one streaming attempt: the longest wait from sending the
    request to the body's first *content* event (comments, ``ping`` / keep-alive events,
    role-only or empty deltas do not count: they reset a read timeout, not this deadline).

    The headers must come within it (the read timeout is shortened until they do). Then the
    asyncio transport waits for each chunk at most until the deadline; the sync one checks
    the deadline at each chunk and, on an HTTP/1.1 connection, a timer shuts the socket down
    when it passes, so a blocked read ends on time."""

    __slots__ = ("_network", "_read", "deadline", "expired", "seconds")

    def __init__(self, request: Any, seconds: float) -> None:
        self.seconds = seconds
        self.deadline = time.monotonic() + seconds
        self.expired = False
        self._network: Any = None
        timeout = request.extensions.get("timeout")
        self._read = timeout.get("read") if isinstance(timeout, dict) else None
        _set_read_timeout(request, seconds)

    def headers_in(self, request: Any, response: Any) -> None:
        """The headers came: reads get back their own timeout (the deadline is kept by the
        body from now on)."""
        timeout = request.extensions.get("timeout")
        if isinstance(timeout, dict):
            timeout["read"] = self._read
        if response.extensions.get("http_version", b"HTTP/1.1") == b"HTTP/1.1":
            self._network = response.extensions.get("network_stream")

    def error(self, request: Any) -> RequestTimeoutError:
        """The error of a stream with no content by the deadline (also the library's
        ReadTimeout, which the SDKs handle as a timeout)."""
        from llm_circuit_breaker import _redact

        error = _timeout_type(library(request))(  # type: ignore[call-arg]
            f"no content within {self.seconds:g} s from {request.url.host} (first_token_timeout)",
            request=request,
        )
        error.url = _redact.redact_url(str(request.url))
        return error

    def late(self, exc: BaseException, request: Any) -> RequestTimeoutError | None:
        """The deadline's error when ``exc`` came once it had passed (a read timed out, a
        socket shut down by the timer), else None."""
        if isinstance(exc, Exception) and (self.expired or time.monotonic() >= self.deadline):
            return self.error(request)
        return None

    def chunks(self, inner: Any, watch: Watch | None, request: Any) -> Iterator[bytes]:
        """``inner``'s chunks, failing when no content has come by the deadline."""
        chunks = iter(inner)
        timer = threading.Timer(max(0.0, self.deadline - time.monotonic()), self._expire)
        timer.daemon = True
        timer.start()
        try:
            seen = False
            while not seen:
                if time.monotonic() >= self.deadline:
                    raise self.error(request)
                try:
                    chunk = next(chunks)
                except StopIteration:
                    return
                except Exception as exc:
                    late = self.late(exc, request)
                    if late is None:
                        raise
                    raise late from exc
                seen = watch.content if watch is not None else bool(chunk)
                yield chunk
        finally:
            timer.cancel()
        yield from chunks

    async def achunks(self, inner: Any, watch: Watch | None, request: Any) -> AsyncIterator[bytes]:
        """:meth:`chunks` for an async body: each wait bounded by the deadline."""
        import anyio  # httpx's own dependency: asyncio and trio alike

        chunks = inner.__aiter__()
        seen = False
        while not seen:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise self.error(request)
            try:
                with anyio.fail_after(left):
                    chunk = await chunks.__anext__()
            except StopAsyncIteration:
                return
            except Exception as exc:
                late = self.late(exc, request)
                if late is None:
                    raise
                raise late from exc
            seen = watch.content if watch is not None else bool(chunk)
            yield chunk
        async for chunk in chunks:
            yield chunk

    def _expire(self) -> None:
        """The timer: end a read blocked past the deadline by shutting the socket down."""
        self.expired = True
        try:
            sock = self._network.get_extra_info("socket") if self._network is not None else None
            if sock is not None:
                import socket

                sock.shutdown(socket.SHUT_RDWR)
        except Exception:  # closed already, or no socket: the next chunk tells
            pass


class Body:
    """What both guarded bodies hold: the library's stream, the attempt, the SSE watch and
    the first-token deadline. A body collected unread is released by its attempt's
    finaliser."""

    def __init__(
        self,
        inner: Any,
        attempt: Attempt,
        watch: Watch | None,
        request: Any,
        first: FirstToken | None = None,
    ):
        self._inner = inner
        self._attempt = attempt
        self._watch = watch
        self._request = request
        self._first = first
        self._failure: BaseException | None = None  # the provider's error frame, if one came
        self._headers: Any = None  # the response's, to judge a JSON body at its end


class Transport:
    """What both transports are made of: the core and the transport they wrap."""

    def __init__(
        self,
        breaker: BreakerSpec = "default",
        transport: Any = None,
        *,
        registry: BreakerRegistry | None = None,
        first_byte_timeout: float | None = None,
        idle_timeout: float | None = None,
        first_token_timeout: float | None = None,
        **fields: Any,
    ) -> None:
        self._core = Core(
            breaker,
            registry,
            first_byte_timeout,
            idle_timeout,
            fields,
            first_token_timeout=first_token_timeout,
        )
        self._inner = transport


class Meter:
    """What an answer cost a breaker with a token budget: the ``usage`` of its JSON body or of
    its SSE events (read by the watch), else the request's estimate."""

    __slots__ = ("chunks", "estimate", "size", "watch")

    def __init__(self, estimate: float, watch: Watch | None) -> None:
        self.estimate = estimate
        self.watch = watch
        self.chunks: list[bytes] = []
        self.size = 0
        if watch is not None:
            watch.metered = True

    def feed(self, chunk: bytes) -> None:
        """Keep a chunk of a JSON body (up to the size parsed for a request's body)."""
        self.size += len(chunk)
        if self.size <= _MAX_PARSED_BODY:
            self.chunks.append(chunk)

    def tokens(self) -> float:
        """The tokens to count."""
        from llm_circuit_breaker._core.budget import usage_tokens

        used = None
        if self.watch is not None:
            used = self.watch.usage
        elif self.size <= _MAX_PARSED_BODY and self.chunks:
            with contextlib.suppress(Exception):  # a usage no float holds: unknown
                used = usage_tokens(parse_json(b"".join(self.chunks)))
        return self.estimate if used is None else used


class Attempt:
    """One admitted attempt: reports its outcome exactly once. One collected unreported (its
    response dropped unread and unclosed, say) releases what it holds -- a probe slot, an
    in-flight entry -- reported as neither outcome."""

    __slots__ = ("breaker", "done", "loop", "meter", "permit")

    def __init__(self, breaker: CircuitBreaker, permit: int) -> None:
        self.breaker = breaker
        self.permit = permit
        self.done = False
        self.meter: Meter | None = None  # set for a breaker with a token budget
        # the loop to report a dropped attempt on: an asyncio store is reported to on the
        # loop that admitted it (None for any other breaker)
        self.loop = None if breaker._alink is None else sys.modules["asyncio"].get_running_loop()

    def __del__(self) -> None:
        if not self.done:
            self.done = True
            self.breaker.dropped(self.permit, self.loop)

    def settle(self) -> bool:
        """Mark reported; whether it still had to be."""
        first = not self.done
        self.done = True
        return first

    def charge(self) -> None:
        """Count what a whole answer cost against the breaker's token budget."""
        if self.meter is not None:
            self.breaker.spend(self.meter.tokens())

    def failed(self, exc: BaseException) -> Report | None:
        """The report of an attempt that raised ``exc`` (None once reported)."""
        if not self.settle():
            return None
        v = judge(exc, self.breaker.config, name=self.breaker.name)
        return v.outcome, {"open_for": v.open_for, "why": v.reason, "error": exc, "hint": v.hint}

    def answered(self, request: Any, response: Any, body: bytes) -> Report | None:
        """The report of an error status: judged as the error it stands for."""
        parsed = parse_json(body) if body else None
        if isinstance(parsed, str):
            parsed = parsed[:2000]
        error = http_status_error(
            response.status_code, _dict(response.headers), parsed, str(request.url)
        )
        return self.failed(error)

    def closed(self, watch: Watch | None) -> Report | None:
        """The report of a body closed by its reader: a success if its final event had come
        (and it answered), else neither (the caller stopped reading)."""
        if not self.settle():
            return None
        if watch is None or not watch.complete:
            return Outcome.IGNORED, {}
        self.charge()
        return (Outcome.IGNORED if watch.unanswered() else Outcome.SUCCESS), {}


_CAPS = tuple(
    f'"{f}"'.encode() for f in ("max_tokens", "max_output_tokens", "max_completion_tokens")
)
_NUMBER = re.compile(rb"\s*:\s*(-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)\s*[,}]")


def _cap_in(content: bytes) -> float | None:
    """The output cap of a JSON request body read from its bytes, 0.0 without one; None when
    the bytes do not tell (a cap's name seen twice, or followed by no number: a tool schema's
    field) and the body must be parsed. A name inside a JSON string has its quotes escaped, so
    a quoted name is a key; a numeric one met once is taken for the body's own (nested in an
    object of its own, it would count too: an estimate, reconciled by the headers)."""
    for name in _CAPS:
        at = content.find(name)
        if at < 0:
            continue
        if content.find(name, at + len(name)) >= 0:
            return None
        number = _NUMBER.match(content, at + len(name))
        if number is None:
            return None  # not a number (an object of a schema, null ...): parsed to be sure
        return float(number.group(1))
    return 0.0


MAX_JUDGED_BODY = 1024 * 1024  # a success body judged for a non-answer: larger ones are not
_JSON_STARTS = frozenset(b"{[ \t\r\n")
# A chat completion that answers, as most do: text at its content's start (pretty-printed or
# not), then a finish reason "stop" (``bytes.find``: faster than a pattern's scan).
_SPOKEN = re.compile(rb'"content"\s*:\s*"[^\s"\\]').search
# Text at a content block's or a Responses part's start; the finish reasons of a whole answer.
_WRITTEN = re.compile(rb'"text"\s*:\s*"[^\s"\\]').search
_FINISHED = tuple(
    f'{colon}"{reason}"'.encode()
    for reason in ("stop", "end_turn", "stop_sequence", "tool_calls", "tool_use", "pause_turn")
    for colon in (":", ": ")
)


def unanswered(chunks: list[bytes], headers: Any) -> bool:
    """Whether a 2xx body (``chunks``, at most 1 MiB) is a completion that answers nothing
    (``results.non_answer``: empty, spent on reasoning, filtered, broken tool arguments).

    Byte searches first: a chat completion with text at its start, the finish reason ``stop``
    and no tool-call arguments is an answer without a parse (the common case, three or four
    searches). Past that, a compressed body (gzip, deflate) is decoded (within the same 1 MiB);
    a completion with text, a finish reason of a whole answer (or none: a Responses answer),
    no tool-call arguments and no reasoning's text (a Responses reasoning item's summary) is an
    answer; a body with no completion's keys is none; the rest is parsed when it is JSON (its
    content type) and judged. Never raises."""
    body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    try:
        if (
            _SPOKEN(body) is not None
            and (body.find(b'_reason": "stop"') >= 0 or body.find(b'_reason":"stop"') >= 0)
            and body.find(b'"arguments"') < 0
        ):
            return False
        if not body:
            return False
        if body[0] not in _JSON_STARTS:  # not JSON as it came: compressed, or no JSON at all
            decoded = _decoded(body, headers)
            if not decoded:
                return False
            body = decoded
        find = body.find
        if _SPOKEN(body) is not None or _WRITTEN(body) is not None:
            reason = find(b'reason"')
            whole = reason < 0 or body.startswith(_FINISHED, reason + 7)
            if (
                whole
                and find(b'"arguments"') < 0
                and find(b'"summary_text"') < 0
                and find(b'"reasoning_text"') < 0
            ):
                return False  # text, a whole answer, no tool call to check, no reasoning
        elif find(b'"choices"') < 0 and find(b'"content"') < 0 and find(b'"output"') < 0:
            return False  # no completion: an embedding, a list of models ...
        return _judged(body, headers)
    except Exception:  # headers of a shape of their own ...: no verdict
        return False


def _judged(body: bytes, headers: Any) -> bool:
    """Whether ``body``, when it is JSON (its content type), is a completion that answers
    nothing."""
    kind = (_joined(_lowered(headers), b"content-type") or "").partition(";")[0].strip().lower()
    if kind != "application/json" and not kind.endswith("+json"):
        return False
    from llm_circuit_breaker._judge.results import non_answer

    parsed = parse_json(body)
    return parsed.__class__ is dict and non_answer(parsed) is not None


def _decoded(body: bytes, headers: Any) -> bytes | None:
    """``body`` decoded from its gzip or deflate content-encoding (None for another encoding,
    a broken one, or more than 1 MiB decoded)."""
    encoding = (_joined(_lowered(headers), b"content-encoding") or "").strip().lower()
    if encoding not in ("gzip", "x-gzip", "deflate"):
        return None
    pieces: list[bytes] = []
    size = 0
    try:
        inflate = Inflate(encoding)
        for piece in inflate.feed(body):
            size += len(piece)
            if size > MAX_JUDGED_BODY:
                return None
            pieces.append(piece)
    except zlib.error:
        return None
    return b"".join(pieces)


def _content(request: Any) -> bytes | None:
    """The request's body, or None for a streaming body not read (nothing to learn from it)."""
    try:
        return request.content  # type: ignore[no-any-return]
    except Exception:
        return None


def _lowered(headers: Any) -> list[tuple[Any, bytes, bytes]]:
    """``headers`` as (name, lower-case name, value) byte triples, the first 256: httpx keeps
    them so (its ``Headers._list``), else they are made here."""
    kept = getattr(headers, "_list", None)
    if kept.__class__ is list and (not kept or len(kept[0]) == 3):
        return kept if len(kept) <= _MAX_HEADERS else kept[:_MAX_HEADERS]
    raw = getattr(headers, "raw", None)
    pairs = raw if isinstance(raw, list) else list(headers.items())
    return [
        (
            None,
            (k if isinstance(k, bytes) else str(k).encode("latin-1", "replace")).lower(),
            v if isinstance(v, bytes) else str(v).encode("latin-1", "replace"),
        )
        for k, v in pairs[:_MAX_HEADERS]
    ]


def _text(value: bytes, headers: Any) -> str:
    """A request header's bytes as text, as httpx's own lookup decodes them: ASCII, else the
    encoding its headers settled on (UTF-8 when every header decodes so, else Latin-1)."""
    try:
        return value.decode("ascii")
    except UnicodeDecodeError:
        encoding = getattr(headers, "encoding", None)
        return value.decode(encoding if isinstance(encoding, str) else "latin-1", "replace")


def _dict(headers: Any) -> dict[str, str]:
    """``headers`` as a dict by lower-case name (several values joined by ``", "``, as a
    lookup joins them), from the first 256: ``dict(httpx.Headers)`` looks each name up again,
    seconds of work for a hostile answer with ten thousand headers."""
    found: dict[str, str] = {}
    for _, name, value in _lowered(headers):
        key, text = name.decode("latin-1"), _text(value, headers)
        found[key] = text if key not in found else f"{found[key]}, {text}"
    return found


# what answer_headers gives for a response without rate-limit headers (never changed)
_NO_RATE_LIMITS = RateLimitHeaders()


def _joined(headers: list[tuple[Any, bytes, bytes]], name: bytes) -> str | None:
    """The value of header ``name`` (lower case) in ``headers`` as a lookup by name gives it
    (several joined by ``", "``), None without one."""
    found = None
    for _, each, value in headers:
        if each == name:
            found = value if found is None else found + b", " + value
    return None if found is None else found.decode("latin-1")


def retry_count(request: Any) -> str:
    """The request's ``x-stainless-retry-count`` header, ``"0"`` without one (httpx's own
    list looked through in place: this runs for every request)."""
    headers = request.headers
    kept = getattr(headers, "_list", None)
    if kept.__class__ is not list or len(kept) > _MAX_HEADERS or (kept and len(kept[0]) != 3):
        kept = _lowered(headers)
    found = None
    for _, name, value in kept:
        if name == b"x-stainless-retry-count":  # several are joined, as a lookup joins them
            found = value if found is None else found + b", " + value
    return "0" if found is None else _text(found, headers)


def accept(request: Any) -> str:
    """The request's ``Accept`` header (``""`` without one)."""
    return _joined(_lowered(request.headers), b"accept") or ""


def answer_headers(response: Any) -> tuple[RateLimitHeaders, bool]:
    """What the transport reads of a response's headers, in one pass: its rate-limit headers
    (those a throttle's bucket is read from, by lower-case name, as text; the one shared empty
    dict without any, not to be changed) and whether its content type is
    ``text/event-stream`` (a lookup joins several content types with ", ", which cannot make
    or break that substring). A name is looked up in a set: no substring search per header
    (``bytes.find`` parses its arguments as a tuple, ~0.1 us a header)."""
    headers = response.headers
    kept = getattr(headers, "_list", None)
    if kept.__class__ is not list or len(kept) > _MAX_HEADERS or (kept and len(kept[0]) != 3):
        kept = _lowered(headers)
    found = _NO_RATE_LIMITS  # made only for a response that has some: most have none
    events = False
    for _, name, value in kept:
        if name in RATE_LIMIT_BYTES:
            if found is _NO_RATE_LIMITS:
                found = RateLimitHeaders()  # picked as the throttle would: not picked again
            found[name.decode("latin-1")] = value.decode("latin-1")[:1000]
        # find, not in: bytes.__contains__ first tries its argument as an integer and clears
        # the error, ~0.1 us a test
        elif name == b"content-type" and value.find(b"text/event-stream") >= 0:
            events = True
    return found, events


def _fill(template: str, request: Any, body: Any) -> str:
    values = dict(body) if isinstance(body, Mapping) else {}
    values.setdefault("host", request.url.host)
    try:
        return template.format_map(values)
    except KeyError as exc:
        raise TypeError(
            f"breaker name {template!r} needs {exc.args[0]!r}, which the request to "
            f"{request.url.host} does not carry (in its JSON body, or host)"
        ) from None


def _set_read_timeout(request: Any, seconds: float) -> None:
    timeout = request.extensions.get("timeout")
    if isinstance(timeout, dict):
        read = timeout.get("read")
        timeout["read"] = seconds if read is None else min(read, seconds)


def library(message: Any) -> Any:
    """The module (``httpx``, ``httpx2``) whose Request / Response ``message`` is, or whose
    class its class extends (a subclass made by a test or an SDK lives in a module of its
    own)."""
    kind = type(message)
    found = _LIBRARIES.get(kind)
    if found is None:
        found = _LIBRARIES[kind] = _library_of(kind)
    return found


_LIBRARIES: dict[type, Any] = {}
_NEEDED = ("Response", "SyncByteStream", "AsyncByteStream", "ReadTimeout", "RemoteProtocolError")


def _library_of(kind: type) -> Any:
    for each in kind.__mro__:
        module = sys.modules.get(each.__module__.partition(".")[0])
        if module is not None and all(hasattr(module, name) for name in _NEEDED):
            return module
    return sys.modules[kind.__module__.partition(".")[0]]


@functools.cache
def _incomplete_type(lib: Any) -> type[IncompleteStreamError]:
    """IncompleteStreamError that is also ``lib``'s RemoteProtocolError: the error the SDKs
    handle (and wrap, where they wrap transport errors) as a broken body."""
    return type("IncompleteStreamError", (lib.RemoteProtocolError, IncompleteStreamError), {})


@functools.cache
def _timeout_type(lib: Any) -> type[RequestTimeoutError]:
    """RequestTimeoutError that is also ``lib``'s ReadTimeout (see :func:`_incomplete_type`)."""
    return type("RequestTimeoutError", (lib.ReadTimeout, RequestTimeoutError), {})


def incomplete(request: Any, failure: BaseException | None = None) -> IncompleteStreamError:
    """The error of a stream that ended before its final event (after ``failure``, the
    provider's error frame, when one came: a Responses ``response.failed`` the SDK yields)."""
    lib = library(request)
    host = request.url.host
    why = "the answer is cut short" if failure is None else f"it failed: {failure}"
    return _incomplete_type(lib)(  # type: ignore[call-arg]
        f"stream from {host} ended before its final event: {why}", request=request
    )


class ErrorBody:
    """An error response's body, read only as far as judging needs (256 KiB, decoded in
    bounded pieces): an endless or bomb-sized error body is never read whole. The SDK then
    reads what was judged."""

    __slots__ = ("_decoded", "_inflate", "_known", "_raw", "_raw_size", "_size")

    def __init__(self, response: Any) -> None:
        encoding = response.headers.get("content-encoding", "").strip().lower()
        self._inflate = Inflate(encoding) if encoding in ("gzip", "x-gzip", "deflate") else None
        self._known = self._inflate is not None or encoding in ("", "identity")
        self._raw: list[bytes] = []
        self._raw_size = 0
        self._decoded: list[bytes] = []
        self._size = 0

    def add(self, chunk: bytes) -> bool:
        """Take the next raw chunk; whether judging needs more."""
        self._raw.append(chunk)
        self._raw_size += len(chunk)
        if self._known:
            try:
                pieces = self._inflate.feed(chunk) if self._inflate is not None else (chunk,)
                for piece in pieces:
                    self._decoded.append(piece)
                    self._size += len(piece)
                    if self._size >= _MAX_ERROR_BODY:
                        break
            except zlib.error:  # undecodable: judged by its status alone
                self._known = False
        return self._raw_size < _MAX_ERROR_BODY and self._size < _MAX_ERROR_BODY

    def finish(self, response: Any) -> bytes:
        """The body to judge; ``response`` now holds it for the SDK to read (decoded, or as it
        came when it could not be decoded)."""
        body = b"".join(self._decoded)[:_MAX_ERROR_BODY] if self._known else b""
        response.headers.pop("content-length", None)
        if self._known:
            response.headers.pop("content-encoding", None)
        content = body if self._known else b"".join(self._raw)
        response.stream = library(response).ByteStream(content)
        return body


def read_capped(response: Any) -> bytes:
    """An error response's body, read up to what judging needs (see :class:`ErrorBody`)."""
    body = ErrorBody(response)
    stream = response.stream
    try:
        for chunk in stream:
            if not body.add(chunk):
                break
    except Exception:  # a body that breaks: judged by what came
        pass
    finally:
        with contextlib.suppress(Exception):
            stream.close()
    return body.finish(response)


async def aread_capped(response: Any) -> bytes:
    body = ErrorBody(response)
    stream = response.stream
    try:
        async for chunk in stream:
            if not body.add(chunk):
                break
    except Exception:
        pass
    finally:
        with contextlib.suppress(Exception):
            await stream.aclose()
    return body.finish(response)
