"""A span per guarded logical call: the hook :mod:`llm_circuit_breaker.strategies.tracing`
calls while an OpenTelemetry instrumentation is on.

The outermost guarded entry point of a call (a decorator's shell, an httpx transport, an
``LLMCircuitBreaker`` helper through its own shells) opens a CLIENT span following the GenAI
conventions; inside it, each shell with a breaker (``circuit_breaker``, the transport) is an
attempt: an INTERNAL child span carrying the breaker's filled name. The shells that hold
several (``with_retry``, ``with_fallbacks``, ``with_pool``, ``with_hedging``) open no span
when a call is already traced. Returned streams keep their span open until they end.
"""

from __future__ import annotations

import functools
import json
import re
import string
import threading
import time
from collections.abc import AsyncIterator, Callable, Generator, Iterator, Mapping
from contextvars import ContextVar
from typing import Any, Protocol
from urllib.parse import urlsplit

from llm_circuit_breaker._core.headers import sdk_retry_count
from llm_circuit_breaker.breaker.telemetry import error_type, split_name
from llm_circuit_breaker.errors import CircuitOpenError, ThrottledError
from llm_circuit_breaker.observability import require, safe
from llm_circuit_breaker.strategies import tracing
from llm_circuit_breaker.strategies.gate import PLAIN


class Owner(Protocol):
    """What a traced call needs of its instrumentation (an ``OpenTelemetryInstrumentation``)."""

    registry: Any
    attributes: dict[str, dict[str, str]]
    _tracer: Any
    _instruments: Any
    _models: Any


_trace = require("opentelemetry.trace", "otel")
_context = require("opentelemetry.context", "otel")

__all__ = ["HOOK", "Call", "Hook", "provider_of"]

_REFUSALS = (CircuitOpenError, ThrottledError)  # refused without running (budgets included)

# The traced call this code runs in (a logical call, or an attempt of one).
CURRENT: ContextVar[Call | None] = ContextVar("llm_circuit_breaker_call", default=None)

# The logical call of the last SDK request through a transport in this context (set, never
# reset, so that the SDK's own retries of it, sent from the same thread or task, find it).
_SDK_CALL: ContextVar[Call | None] = ContextVar("llm_circuit_breaker_sdk_call", default=None)
_RETRY_HEADER = "x-stainless-retry-count"  # the openai and anthropic SDKs' retries

_MAX_BODY = 256 * 1024  # request bodies larger than this are not parsed for their model

# Words in a host or breaker name -> gen_ai.provider.name (the GenAI conventions' values).
_PROVIDERS = (
    ("azure", "azure.ai.openai"),
    ("openai", "openai"),
    ("anthropic", "anthropic"),
    ("claude", "anthropic"),
    ("bedrock", "aws.bedrock"),
    ("vertex", "gcp.vertex_ai"),
    ("gemini", "gcp.gemini"),
    ("generativelanguage", "gcp.gemini"),
    ("mistral", "mistral_ai"),
    ("cohere", "cohere"),
    ("groq", "groq"),
    ("deepseek", "deepseek"),
    ("perplexity", "perplexity"),
    ("x.ai", "x_ai"),
    ("xai", "x_ai"),
    ("grok", "x_ai"),
    ("watsonx", "ibm.watsonx.ai"),
)


@functools.lru_cache(maxsize=1024)
def provider_of(text: str) -> str | None:
    """The GenAI provider a host or breaker name names, or None."""
    lowered = text.lower()
    for word, provider in _PROVIDERS:
        if word in lowered:
            return provider
    return None


def _operation_of(path: str) -> str:
    """``gen_ai.operation.name`` of a request path."""
    if path.endswith("/embeddings"):
        return "embeddings"
    if path.endswith("/completions") and not path.endswith("/chat/completions"):
        return "text_completion"
    if "generateContent" in path:  # gemini's :generateContent / :streamGenerateContent
        return "generate_content"
    return "chat"


@functools.lru_cache(maxsize=256)
def _template_pattern(template: str) -> tuple[re.Pattern[str], tuple[str, ...]] | None:
    """A pattern matching the names ``template`` makes, and its fields' roots in order."""
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError:
        return None
    pattern, fields = "", []
    for literal, field, _spec, _conversion in parts:
        pattern += re.escape(literal)
        if field is not None:
            root = re.split(r"[.\[]", field, maxsplit=1)[0]
            pattern += "(.*?)"
            fields.append(root)
    return re.compile(pattern + r"\Z", re.DOTALL), tuple(fields)


def scope_fields(name: str, template: str | None) -> dict[str, str]:
    """The fields of a scoped breaker's name (``{"model": "gpt-4o"}`` for ``openai:gpt-4o``
    made from ``openai:{model}``); empty for a breaker named outright."""
    if not template:
        return {}
    found = _template_pattern(template)
    if found is None:
        return {}
    pattern, fields = found
    match = pattern.match(name)
    if match is None:
        return {}
    return dict(zip(fields, match.groups(), strict=True))


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _refusal(error: BaseException) -> BaseException | None:
    """Our refusal behind ``error``: itself, or the one the transport left on the response of
    an SDK's error (its status stands for the refusal)."""
    if isinstance(error, _REFUSALS):
        return error
    from llm_circuit_breaker._judge.refusal import REFUSAL

    try:
        extensions = getattr(getattr(error, "response", None), "extensions", None)
        found = extensions.get(REFUSAL) if isinstance(extensions, Mapping) else None
    except Exception:  # a hostile attribute: no refusal here
        return None
    return found if isinstance(found, _REFUSALS) else None


def _body_json(body: bytes | None) -> Any:
    if not body or len(body) > _MAX_BODY:
        return None
    try:
        return json.loads(body)
    except Exception:  # not JSON (or nested too deep): nothing to learn from it
        return None


class Call:
    """One traced call in flight: a logical call (a CLIENT span, timed in the duration
    histogram) or one attempt of it (an INTERNAL child span)."""

    __slots__ = (
        "attempts",
        "attributes",
        "ended",
        "first",
        "logical",
        "owner",
        "parent",
        "recording",
        "span",
        "started",
    )

    def __init__(
        self,
        owner: Owner,
        span: Any,
        attributes: dict[str, Any],
        logical: bool,
        parent: Call | None = None,
    ) -> None:
        self.owner, self.span, self.attributes, self.logical = owner, span, attributes, logical
        self.parent = parent  # an attempt's logical call
        self.ended = False
        # A span nobody records (a no-op tracer, sampled out) is not made current: the events
        # of the call stay on the caller's span.
        self.recording = span.is_recording()
        self.started = time.perf_counter()
        self.first = True
        self.attempts = 0

    # -- the span as the current one ------------------------------------------------------

    def enter(self) -> tuple[Any, Any]:
        """Make this call current (its span, and the call for the shells inside)."""
        attached = (
            _context.attach(_trace.set_span_in_context(self.span)) if self.recording else None
        )
        return CURRENT.set(self), attached

    def exit(self, tokens: tuple[Any, Any]) -> None:
        """Undo :meth:`enter`."""
        current, attached = tokens
        if attached is not None:
            _context.detach(attached)
        CURRENT.reset(current)

    # -- what attempts tell the logical call ----------------------------------------------

    def learn(self, attributes: Mapping[str, Any]) -> None:
        """Take the attributes an attempt found that this logical call does not have yet (the
        breaker's name, the scope's model, the provider); the span is named again."""
        added = False
        for key, value in attributes.items():
            if key not in self.attributes:
                self.attributes[key] = value
                self.span.set_attribute(key, value)
                added = added or key == "gen_ai.request.model"
        if added:
            self.span.update_name(_span_name(self.attributes))

    # -- the end -------------------------------------------------------------------------

    def _metric_attributes(self) -> dict[str, Any]:
        attributes = {
            key: value
            for key, value in self.attributes.items()
            if key.startswith("gen_ai.") or key in ("server.address", "error.type")
        }
        operation = str(attributes.get("gen_ai.operation.name", ""))
        for key in ("gen_ai.request.model", "gen_ai.response.model"):
            model = attributes.get(key)
            if model is not None:  # a client may choose it: bounded like the scopes
                attributes[key] = self.owner._models.label(operation, str(model))
        return attributes

    def _record(self, histogram: Any, seconds: float) -> None:
        """Record ``seconds`` with this call's span current (an exemplar carries its trace
        id; a span nobody records has none to give)."""
        if not self.recording:
            histogram.record(seconds, self._metric_attributes())
            return
        token = _context.attach(_trace.set_span_in_context(self.span))
        try:
            histogram.record(seconds, self._metric_attributes())
        finally:
            _context.detach(token)

    def chunk(self) -> None:
        """A streamed item arrived: the first one is timed."""
        if self.first:
            self.first = False
            instruments = self.owner._instruments
            if self.logical and instruments is not None:
                self._record(instruments.first_chunk, time.perf_counter() - self.started)

    def served(self, attempt: Call) -> None:
        """A later attempt than the first answered: the logical call says which breaker (and
        which model) served it, its requested model left as it was."""
        name = attempt.attributes.get("llm_circuit_breaker.name")
        if name is None or name == self.attributes.get("llm_circuit_breaker.name"):
            return
        found = {"llm_circuit_breaker.served_by": name}
        model = attempt.attributes.get("gen_ai.request.model")
        if model is not None and model != self.attributes.get("gen_ai.request.model"):
            found["gen_ai.response.model"] = model
        self.attributes.update(found)
        if self.recording:
            self.span.set_attributes(found)

    def dropped(self) -> None:
        """Its stream was collected without being closed: the span ends (neither a success
        nor an error), ``llm_circuit_breaker.dropped`` saying so."""
        if self.recording:
            self.span.set_attribute("llm_circuit_breaker.dropped", True)
        self.end()

    def end(self, error: BaseException | None = None, *, kind: str | None = None) -> None:
        """Record the duration and end the span; ``error`` (or an error ``kind``, such as an
        HTTP status) sets ``error.type`` and the error status. A refusal of ours is named by
        its class (not by the status of the failure it carries)."""
        if self.ended:
            return
        self.ended = True
        if error is not None:
            refusal = _refusal(error)
            if refusal is not None:  # told by its event already: no exception event
                kind = _qualified(type(refusal))
            else:
                kind = error_type(error)
                # The exception event (its formatted traceback costs far more than the call)
                # for the logical call's failures.
                if self.recording and self.logical:
                    self.span.record_exception(error)
        if kind is not None:
            self.attributes["error.type"] = kind
            if self.recording:
                self.span.set_attribute("error.type", kind)
                self.span.set_status(_trace.Status(_trace.StatusCode.ERROR, kind))
        elif not self.logical:
            parent = self.parent
            if parent is not None and not parent.ended:
                parent.served(self)
        instruments = self.owner._instruments
        if self.logical and instruments is not None:
            self._record(instruments.duration, time.perf_counter() - self.started)
        self.span.end()

    def returned(self, result: Any) -> Any:
        """End with ``result``, or hand back a stream that ends the span when it ends."""
        cls = result.__class__
        if cls not in PLAIN:
            if hasattr(cls, "__anext__"):
                return AsyncTracedStream(result, self)
            if hasattr(cls, "__next__"):
                return TracedStream(result, self)
        self.end()
        return result


def _span_name(attributes: Mapping[str, Any]) -> str:
    operation = attributes.get("gen_ai.operation.name", "chat")
    model = attributes.get("gen_ai.request.model")
    return f"{operation} {model}" if model else str(operation)


def _drop(call: Call) -> None:
    """End a dropped stream's call from a finaliser (which must not raise)."""
    try:
        call.dropped()
    except Exception:  # pragma: no cover - the interpreter is shutting down
        pass


class TracedStream:
    """A returned stream whose items are read inside its call's span, ended with it."""

    __slots__ = ("_call", "_inner")

    def __init__(self, inner: Any, call: Call) -> None:
        self._inner = inner
        self._call: Call | None = call

    def __iter__(self) -> TracedStream:
        return self

    def __next__(self) -> Any:
        call = self._call
        if call is None:
            return next(self._inner)
        tokens = call.enter()
        try:
            item = next(self._inner)
        except StopIteration:
            self._call = None
            call.end()
            raise
        except BaseException as exc:
            self._call = None
            call.end(exc)
            raise
        finally:
            call.exit(tokens)
        call.chunk()
        return item

    def __del__(self) -> None:
        # Collected without close(): the call ends as dropped (neither outcome).
        call = self._call
        if call is not None:
            self._call = None
            _drop(call)

    def close(self) -> None:
        """Close the stream (and end the span)."""
        call, self._call = self._call, None
        try:
            close = getattr(self._inner, "close", None)
            if close is not None:
                close()
        finally:
            if call is not None:
                call.end()

    def __enter__(self) -> TracedStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def __repr__(self) -> str:
        return repr(self._inner)


class AsyncTracedStream:
    """:class:`TracedStream` for an async stream."""

    __slots__ = ("_call", "_inner")

    def __init__(self, inner: Any, call: Call) -> None:
        self._inner = inner
        self._call: Call | None = call

    def __aiter__(self) -> AsyncTracedStream:
        return self

    async def __anext__(self) -> Any:
        call = self._call
        if call is None:
            return await self._inner.__anext__()
        tokens = call.enter()
        try:
            item = await self._inner.__anext__()
        except StopAsyncIteration:
            self._call = None
            call.end()
            raise
        except BaseException as exc:
            self._call = None
            call.end(exc)
            raise
        finally:
            call.exit(tokens)
        call.chunk()
        return item

    def __del__(self) -> None:
        # Collected without aclose(): the call ends as dropped (neither outcome).
        call = self._call
        if call is not None:
            self._call = None
            _drop(call)

    async def aclose(self) -> None:
        """Close the stream (and end the span)."""
        from llm_circuit_breaker.strategies.gate import aclose_inner

        call, self._call = self._call, None
        try:
            await aclose_inner(self._inner)
        finally:
            if call is not None:
                call.end()

    async def __aenter__(self) -> AsyncTracedStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def __repr__(self) -> str:
        return repr(self._inner)


# -- the hook ----------------------------------------------------------------------------------


def _covers(owner: Owner, breaker: Any) -> bool:
    registry = owner.registry
    if registry is None or breaker is None:
        return True
    return registry._breakers.get(breaker.name) is breaker


def _request_of(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """What a call's arguments say of its request: the ``model`` argument, or an HTTP
    helper's prepared request (its URL and JSON body)."""
    found: dict[str, Any] = {}
    model = kwargs.get("model")
    if isinstance(model, str) and model:
        found["gen_ai.request.model"] = safe(model)
    elif args and type(args[0]).__name__ == "PreparedRequest":
        prepared = args[0]  # an LLMCircuitBreaker helper's request, handed to its driver
        url = getattr(prepared, "url", None)
        body = getattr(prepared, "body", None)
        if isinstance(url, str) and (body is None or isinstance(body, bytes)):
            found.update(_http_request(url, _body_json(body)))
    return found


def _http_request(url: str, body: Any) -> dict[str, Any]:
    """The GenAI attributes of an HTTP request to ``url`` with the JSON ``body``."""
    parts = urlsplit(url)
    found: dict[str, Any] = {"gen_ai.operation.name": _operation_of(parts.path)}
    host = parts.hostname or ""
    if host:
        found["server.address"] = host
        provider = provider_of(host)
        if provider is not None:
            found["gen_ai.provider.name"] = provider
    if isinstance(body, Mapping):
        model = body.get("model")
        if isinstance(model, str) and model:
            found["gen_ai.request.model"] = safe(model)
    return found


class Hook:
    """What :data:`llm_circuit_breaker.strategies.tracing.hook` holds while instrumentations
    are on: each call is traced by the newest one that covers its breaker."""

    def __init__(self) -> None:
        self.owners: list[Owner] = []
        self._lock = threading.Lock()

    def add(self, owner: Owner) -> None:
        """Trace calls for ``owner`` (the slot is filled)."""
        with self._lock:
            if owner not in self.owners:
                self.owners.append(owner)
            tracing.hook = self

    def remove(self, owner: Owner) -> None:
        """Stop tracing for ``owner`` (the slot is emptied with the last one)."""
        with self._lock:
            if owner in self.owners:
                self.owners.remove(owner)
            if not self.owners:
                tracing.hook = None

    def _owner_for(self, breaker: Any) -> Owner | None:
        for owner in reversed(self.owners):
            if _covers(owner, breaker):
                return owner
        return None

    # -- opening a span ------------------------------------------------------------------

    def begin(self, breaker: Any, request: dict[str, Any]) -> Call | None:
        """The call to trace for a shell with ``breaker`` (None: a shell holding several),
        or None when it opens no span."""
        parent = CURRENT.get()
        if parent is not None and not parent.ended:  # (a task can outlive the call it began in)
            if breaker is None:  # with_retry and the like inside a traced call: no span
                return None
            return self._attempt(parent, breaker, request)
        owner = self._owner_for(breaker)
        if owner is None:
            return None
        attributes: dict[str, Any] = {"gen_ai.operation.name": "chat"}
        attributes.update(request)
        if breaker is not None:
            attributes.update(_breaker_attributes(owner, breaker))
        span = owner._tracer.start_span(
            _span_name(attributes), kind=_trace.SpanKind.CLIENT, attributes=attributes
        )
        return Call(owner, span, attributes, logical=True)

    def _attempt(self, parent: Call, breaker: Any, request: dict[str, Any]) -> Call:
        owner = parent.owner
        found = {**request, **_breaker_attributes(owner, breaker)}
        found.pop("gen_ai.operation.name", None)
        parent.learn(found)
        parent.attempts += 1
        attributes = {
            "llm_circuit_breaker.name": safe(breaker.name),
            "llm_circuit_breaker.attempt": parent.attempts,
        }
        model = found.get("gen_ai.request.model")
        if model is not None:
            attributes["gen_ai.request.model"] = model
        span = owner._tracer.start_span(
            "llm_circuit_breaker.attempt",
            context=_trace.set_span_in_context(parent.span),
            kind=_trace.SpanKind.INTERNAL,
            attributes=attributes,
        )
        return Call(owner, span, attributes, logical=False, parent=parent)

    def _sdk_retry(self, breaker: Any, request: dict[str, Any], retry: int) -> Call | None:
        """An SDK's own retry of a request (``x-stainless-retry-count`` > 0) made outside any
        traced call: an attempt of the logical call its first request made (a child of that
        span), not timed as a call of its own."""
        parent = _SDK_CALL.get()
        if (
            parent is not None
            and parent.owner in self.owners
            and parent.attributes.get("llm_circuit_breaker.name") == safe(breaker.name)
        ):
            owner: Owner | None = parent.owner
            context = _trace.set_span_in_context(parent.span)
        else:  # its first request was not seen here: an attempt on its own
            parent, owner, context = None, self._owner_for(breaker), None
        if owner is None:
            return None
        attributes: dict[str, Any] = {
            "llm_circuit_breaker.name": safe(breaker.name),
            "llm_circuit_breaker.attempt": retry + 1,
        }
        found = {**request, **_breaker_attributes(owner, breaker)}
        model = found.get("gen_ai.request.model")
        if model is not None:
            attributes["gen_ai.request.model"] = model
        span = owner._tracer.start_span(
            "llm_circuit_breaker.attempt",
            context=context,
            kind=_trace.SpanKind.INTERNAL,
            attributes=attributes,
        )
        return Call(owner, span, attributes, logical=False, parent=parent)

    # -- the four kinds of callables -------------------------------------------------------

    def call(
        self, wrapper: Callable[..., Any], breaker: Any, args: tuple[Any, ...], kwargs: Any
    ) -> Any:
        """Run a function's shell inside its span."""
        call = self.begin(breaker, _request_of(args, kwargs))
        passing = tracing.PASSING.set(wrapper)
        tokens = call.enter() if call is not None else None
        try:
            result = wrapper(*args, **kwargs)
        except BaseException as exc:
            if call is not None:
                call.end(exc)
            raise
        finally:
            if tokens is not None and call is not None:
                call.exit(tokens)
            tracing.PASSING.reset(passing)
        return result if call is None else call.returned(result)

    async def acall(
        self, wrapper: Callable[..., Any], breaker: Any, args: tuple[Any, ...], kwargs: Any
    ) -> Any:
        """Run a coroutine function's shell inside its span."""
        call = self.begin(breaker, _request_of(args, kwargs))
        passing = tracing.PASSING.set(wrapper)
        tokens = call.enter() if call is not None else None
        try:
            result = await wrapper(*args, **kwargs)
        except BaseException as exc:
            if call is not None:
                call.end(exc)
            raise
        finally:
            if tokens is not None and call is not None:
                call.exit(tokens)
            tracing.PASSING.reset(passing)
        return result if call is None else call.returned(result)

    def gen(
        self, wrapper: Callable[..., Any], breaker: Any, args: tuple[Any, ...], kwargs: Any
    ) -> Generator[Any, Any, Any]:
        """Iterate a generator's shell, each step inside its span."""
        call = self.begin(breaker, _request_of(args, kwargs))
        stream = wrapper(*args, **kwargs)
        started = False
        try:
            while True:
                passing = None if started else tracing.PASSING.set(wrapper)
                tokens = call.enter() if call is not None else None
                try:
                    item = next(stream)
                except StopIteration as stop:
                    result = stop.value
                    break
                finally:
                    if tokens is not None and call is not None:
                        call.exit(tokens)
                    if passing is not None:
                        tracing.PASSING.reset(passing)
                started = True
                if call is not None:
                    call.chunk()
                yield item
        except BaseException as exc:
            stream.close()
            if call is not None:
                call.end(None if isinstance(exc, GeneratorExit) else exc)
            raise
        if call is not None:
            call.end()
        return result

    async def agen(
        self, wrapper: Callable[..., Any], breaker: Any, args: tuple[Any, ...], kwargs: Any
    ) -> AsyncIterator[Any]:
        """Iterate an async generator's shell, each step inside its span."""
        call = self.begin(breaker, _request_of(args, kwargs))
        stream = wrapper(*args, **kwargs)
        started = False
        try:
            while True:
                passing = None if started else tracing.PASSING.set(wrapper)
                tokens = call.enter() if call is not None else None
                try:
                    item = await stream.__anext__()
                except StopAsyncIteration:
                    break
                finally:
                    if tokens is not None and call is not None:
                        call.exit(tokens)
                    if passing is not None:
                        tracing.PASSING.reset(passing)
                started = True
                if call is not None:
                    call.chunk()
                yield item
        except BaseException as exc:
            await stream.aclose()
            if call is not None:
                call.end(None if isinstance(exc, GeneratorExit) else exc)
            raise
        if call is not None:
            call.end()

    # -- the httpx transports --------------------------------------------------------------

    def _begin_request(self, transport: Any, request: Any) -> Call | None:
        core = transport._core
        try:
            body = core.body_of(request)
            breaker = core.breaker_for(request, body)
        except Exception:  # the transport itself will say what is wrong
            return None
        found = _http_request(str(request.url), body)
        retry = request.headers.get(_RETRY_HEADER)
        if retry is None:  # not an SDK that retries
            return self.begin(breaker, found)
        outer = CURRENT.get()
        if outer is not None and not outer.ended:  # an attempt of the traced call
            return self.begin(breaker, found)
        count = sdk_retry_count(retry) if retry != "0" else 0
        if count:
            return self._sdk_retry(breaker, found, count)
        call = self.begin(breaker, found)
        _SDK_CALL.set(call)  # its retries, if the SDK makes any, are its attempts
        return call

    def request(self, transport: Any, request: Any) -> Any:
        """Run ``transport.handle_request`` inside its span (ended with the response body)."""
        call = self._begin_request(transport, request)
        passing = tracing.PASSING.set(transport)
        tokens = call.enter() if call is not None else None
        try:
            response = transport.handle_request(request)
        except BaseException as exc:
            if call is not None:
                call.end(exc)
            raise
        finally:
            if tokens is not None and call is not None:
                call.exit(tokens)
            tracing.PASSING.reset(passing)
        return response if call is None else _answered(call, response, asynchronous=False)

    async def arequest(self, transport: Any, request: Any) -> Any:
        """Run ``transport.handle_async_request`` inside its span."""
        call = self._begin_request(transport, request)
        passing = tracing.PASSING.set(transport)
        tokens = call.enter() if call is not None else None
        try:
            response = await transport.handle_async_request(request)
        except BaseException as exc:
            if call is not None:
                call.end(exc)
            raise
        finally:
            if tokens is not None and call is not None:
                call.exit(tokens)
            tracing.PASSING.reset(passing)
        return response if call is None else _answered(call, response, asynchronous=True)


def _breaker_attributes(owner: Owner, breaker: Any) -> dict[str, Any]:
    """The attributes a breaker gives a call: its filled name, the scope's model, the provider
    its name says, and those the instrumentation was given for its name or template."""
    name = breaker.name
    template = getattr(breaker, "template", None)
    found = dict(_named(name, template))
    if owner.attributes:
        base, _scope = split_name(name, template)
        found.update(owner.attributes.get(base, {}))
        found.update(owner.attributes.get(name, {}))
    return found


@functools.lru_cache(maxsize=4096)
def _named(name: str, template: str | None) -> tuple[tuple[str, Any], ...]:
    """What a breaker's name says: itself, the scope's model, the provider."""
    found: dict[str, Any] = {"llm_circuit_breaker.name": safe(name)}
    fields = scope_fields(name, template)
    model = fields.get("model")
    if model is None and len(fields) == 1:
        model = next(iter(fields.values()))
    if model:
        found["gen_ai.request.model"] = safe(str(model))
    provider = provider_of(name)
    if provider is not None:
        found["gen_ai.provider.name"] = provider
    return tuple(found.items())


def _answered(call: Call, response: Any, *, asynchronous: bool) -> Any:
    """End the span of a refused or failed answer; a good one's body ends it when it ends."""
    from llm_circuit_breaker._judge.refusal import REFUSAL

    refusal = response.extensions.get(REFUSAL)
    if refusal is not None:  # nothing was sent: the refusal, not the status standing for it
        call.end(kind=_qualified(type(refusal)))
        return response
    if response.status_code >= 400:
        call.end(kind=str(response.status_code))
        return response
    from llm_circuit_breaker.httpx._core import library

    if "text/event-stream" not in response.headers.get("content-type", ""):
        call.first = False  # not a stream: no time to a first chunk
    lib = library(response)
    body = _async_body(lib) if asynchronous else _sync_body(lib)
    response.stream = body(response.stream, call)
    return response


class _Body:
    """A response body that ends its call's span when it ends (the first chunk timed)."""

    def __init__(self, inner: Any, call: Call) -> None:
        self._inner = inner
        self._call: Call | None = call

    def _end(self, error: BaseException | None) -> None:
        call, self._call = self._call, None
        if call is not None:
            call.end(error)

    def __del__(self) -> None:
        # Collected unread and unclosed: the call ends as dropped (neither outcome).
        call = getattr(self, "_call", None)
        if call is not None:
            self._call = None
            _drop(call)


class _SyncBody(_Body):
    """:class:`_Body` for a sync response body."""

    def __iter__(self) -> Iterator[bytes]:
        call = self._call
        try:
            for chunk in self._inner:
                if call is not None:
                    call.chunk()
                yield chunk
        except GeneratorExit:
            raise
        except BaseException as exc:
            self._end(exc)
            raise
        self._end(None)

    def close(self) -> None:
        try:
            self._inner.close()
        finally:
            self._end(None)


class _AsyncBody(_Body):
    """:class:`_Body` for an async response body."""

    async def __aiter__(self) -> AsyncIterator[bytes]:
        call = self._call
        try:
            async for chunk in self._inner:
                if call is not None:
                    call.chunk()
                yield chunk
        except GeneratorExit:
            raise
        except BaseException as exc:
            self._end(exc)
            raise
        self._end(None)

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        finally:
            self._end(None)


@functools.cache
def _sync_body(lib: Any) -> type[_SyncBody]:
    return type("TracedBody", (_SyncBody, lib.SyncByteStream), {})


@functools.cache
def _async_body(lib: Any) -> type[_AsyncBody]:
    return type("TracedBody", (_AsyncBody, lib.AsyncByteStream), {})


HOOK = Hook()
