"""The requests driver: a pooled ``requests.Session``."""

from __future__ import annotations

import contextlib
import time
import zlib
from collections.abc import Iterator
from typing import Any

import requests
import urllib3

from llm_circuit_breaker.errors import RequestTimeoutError
from llm_circuit_breaker.http._common import (
    BodyLimit,
    FirstContent,
    Inflate,
    PreparedRequest,
    first_content,
    is_sse,
    local_error,
    parse_response,
    redirect,
    transport_error,
)
from llm_circuit_breaker.http._sse import (
    EventReader,
    SSEEvent,
    is_json,
    judge_whole,
    parse_answer,
    whole_answer,
)

__all__ = ["SyncTransport"]

# requests' errors that say the request itself is malformed: this process's mistake.
_LOCAL = (
    requests.exceptions.InvalidHeader,
    requests.exceptions.InvalidURL,
    requests.exceptions.InvalidSchema,
    requests.exceptions.MissingSchema,
    requests.exceptions.URLRequired,
    requests.exceptions.InvalidJSONError,
)


@contextlib.contextmanager
def _translated(request: PreparedRequest) -> Iterator[None]:
    """requests' timeouts and connection errors as ours, the original kept as __cause__."""
    try:
        yield
    except _LOCAL as exc:
        raise local_error(exc)
    except requests.Timeout as exc:
        raise transport_error(request, exc, timed_out=True) from exc
    except requests.RequestException as exc:
        raise transport_error(request, exc, timed_out=False) from exc
    except urllib3.exceptions.ReadTimeoutError as exc:  # the body, read from urllib3 directly
        raise transport_error(request, exc, timed_out=True) from exc
    except (urllib3.exceptions.HTTPError, zlib.error) as exc:
        raise transport_error(request, exc, timed_out=False) from exc
    except (ValueError, TypeError, OverflowError, RuntimeError) as exc:
        raise local_error(exc)


_CHUNK = 64 * 1024


def _chunks(
    response: requests.Response,
    request: PreparedRequest,
    deadline: float | None = None,
    first: FirstContent | None = None,
) -> Iterator[bytes]:
    """The body's chunks as they come, decoded (gzip and deflate here, in bounded pieces: a
    Content-Length body is never inflated in one piece); past ``deadline`` (monotonic), a
    ``RequestTimeoutError``: the attempt's timeout is a total, not a wait per read."""
    raw = response.raw
    encoding = response.headers.get("content-encoding", "").strip().lower()
    inflate = Inflate(encoding) if encoding in ("gzip", "x-gzip", "deflate") else None
    if inflate is None and encoding not in ("", "identity"):  # br, zstd: urllib3 decodes them
        pieces: Iterator[bytes] = response.iter_content(chunk_size=_CHUNK)
    elif callable(getattr(raw, "read1", None)):  # urllib3 2: what has come, without waiting
        pieces = iter(lambda: raw.read1(_CHUNK, decode_content=False), b"")
    else:
        pieces = raw.stream(_CHUNK, decode_content=False)
    while True:
        if deadline is not None:
            left = deadline - time.monotonic()
            if first is not None and not first.seen:  # until the first content: its deadline
                left = min(left, first.left())
            if left <= 0:
                raise transport_error(request, TimeoutError(), timed_out=True)
            _read_timeout(response, min(left, request.timeout))
        piece = next(pieces, None)
        if piece is None:
            break
        if inflate is None:
            yield piece
        else:
            yield from inflate.feed(piece)


def _read_timeout(response: requests.Response, seconds: float) -> None:
    """Bound the next read of the body to ``seconds`` (what is left of the attempt's time)."""
    connection = getattr(response.raw, "connection", None)
    sock = getattr(connection, "sock", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.settimeout(seconds)


def _read(
    response: requests.Response,
    request: PreparedRequest,
    deadline: float | None = None,
    first: FirstContent | None = None,
) -> bytes:
    limit = BodyLimit(request)
    for chunk in _chunks(response, request, deadline, first):
        limit.add(chunk)
        if first is not None:
            first.feed(chunk)
    return limit.body()


class SyncTransport:
    """Sends prepared requests through one pooled session (created on first use)."""

    def __init__(
        self,
        session: requests.Session | None = None,
    ) -> None:
        self._session = session
        self._owns_session = session is None

    @property
    def session(self) -> requests.Session:
        if self._session is None:
            self._session = requests.Session()
        return self._session

    def _open(
        self, request: PreparedRequest, accept: str | None = None, deadline: float | None = None
    ) -> requests.Response:
        """Send ``request``, following same-origin redirects only (inside ``_translated``)."""
        for hops in range(1_000):
            timeout = request.timeout
            if deadline is not None:
                timeout = deadline - time.monotonic()
                if timeout <= 0:
                    raise transport_error(request, TimeoutError(), timed_out=True)
            headers = dict(request.headers)
            if accept is not None:
                headers["Accept"] = accept
            response = self.session.request(
                request.method,
                request.url,
                headers=headers,
                data=request.body,
                timeout=timeout,
                stream=True,
                allow_redirects=False,
            )
            following = redirect(request, response.status_code, response.headers, hops)
            if following is None:
                if request.observe is not None:  # the breaker's throttle hears every answer
                    request.observe(response.headers)
                return response
            response.close()
            request = following
        raise AssertionError("unreachable: redirect() stops at MAX_REDIRECTS")  # pragma: no cover

    def request(self, request: PreparedRequest) -> Any:
        """Send ``request``; the parsed JSON body, or our error (within ``timeout`` in all)."""
        deadline = time.monotonic() + request.timeout
        first = first_content(request)
        try:
            with _translated(request):
                response = self._open(
                    request, deadline=deadline if first is None else min(deadline, first.at)
                )
                with response:
                    if first is not None and not is_sse(response.headers):
                        first = None  # not a stream: read as any body
                    body = _read(response, request, deadline, first)
        except RequestTimeoutError as exc:
            late = first.late(exc, request) if first is not None else None
            if late is None:
                raise
            raise late from exc
        return parse_answer(request, response.status_code, response.headers, body)

    def stream(self, request: PreparedRequest) -> Iterator[SSEEvent]:
        """Send ``request`` and yield its server-sent events (``timeout`` bounds each wait for
        the next event, keep-alives aside)."""
        with _translated(request):
            response = self._open(request, accept="text/event-stream")
        with response:
            if not 200 <= response.status_code < 300:
                with _translated(request):
                    body = _read(response, request)
                parse_response(response.status_code, response.headers, body, request.url)
            if is_json(response.headers):  # a server that answered whole, not as a stream
                with _translated(request):
                    body = _read(response, request)
                whole = whole_answer(request, body)
                yield from whole
                judge_whole(whole)  # a non-answer: the breaker ignores it
                return
            reader = EventReader(request)
            with _translated(request):
                for chunk in _chunks(response, request):
                    yield from reader.feed(chunk)
                    if reader.done:
                        break
                else:
                    event = reader.flush()
                    if event is not None:
                        yield event
            reader.finish()
            reader.judge()  # a non-answer: the breaker ignores it

    def close(self) -> None:
        """Close the session if this transport made it."""
        if self._session is not None and self._owns_session:
            self._session.close()
            self._session = None
