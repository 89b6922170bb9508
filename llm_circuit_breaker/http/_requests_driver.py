"""The requests driver: a pooled ``requests.Session``."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import requests

from llm_circuit_breaker.http._common import (
    BodyLimit,
    PreparedRequest,
    local_error,
    parse_response,
    redirect,
    transport_error,
)
from llm_circuit_breaker.http._sse import EventReader, SSEEvent

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
    except (ValueError, TypeError, OverflowError, RuntimeError) as exc:
        raise local_error(exc)


def _read(response: requests.Response, request: PreparedRequest) -> bytes:
    limit = BodyLimit(request)
    for chunk in response.iter_content(chunk_size=65536):
        limit.add(chunk)
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

    def _open(self, request: PreparedRequest, accept: str | None = None) -> requests.Response:
        """Send ``request``, following same-origin redirects only (inside ``_translated``)."""
        for hops in range(1_000):
            headers = dict(request.headers)
            if accept is not None:
                headers["Accept"] = accept
            response = self.session.request(
                request.method,
                request.url,
                headers=headers,
                data=request.body,
                timeout=request.timeout,
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
        """Send ``request``; the parsed JSON body, or our error."""
        with _translated(request):
            response = self._open(request)
            with response:
                body = _read(response, request)
        return parse_response(response.status_code, response.headers, body, request.url)

    def stream(self, request: PreparedRequest) -> Iterator[SSEEvent]:
        """Send ``request`` and yield its server-sent events (the timeout is per read)."""
        with _translated(request):
            response = self._open(request, accept="text/event-stream")
        with response:
            if not 200 <= response.status_code < 300:
                with _translated(request):
                    body = _read(response, request)
                parse_response(response.status_code, response.headers, body, request.url)
            reader = EventReader(request)
            with _translated(request):
                for chunk in response.iter_content(chunk_size=None):
                    yield from reader.feed(chunk)
                    if reader.done:
                        return
                event = reader.flush()
                if event is not None:
                    yield event
            reader.finish()

    def close(self) -> None:
        """Close the session if this transport made it."""
        if self._session is not None and self._owns_session:
            self._session.close()
            self._session = None
