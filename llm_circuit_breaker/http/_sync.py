"""The requests driver: a pooled ``requests.Session``."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import requests

from llm_circuit_breaker.http._common import (
    EventReader,
    PreparedRequest,
    SSEEvent,
    local_error,
    parse_response,
    transport_error,
)

# requests' errors that say the request itself is malformed: this process's mistake.
_LOCAL = (
    requests.exceptions.InvalidHeader,
    requests.exceptions.InvalidURL,
    requests.exceptions.InvalidSchema,
    requests.exceptions.MissingSchema,
    requests.exceptions.URLRequired,
    requests.exceptions.InvalidJSONError,
)

__all__ = ["SyncTransport"]


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


class SyncTransport:
    """Sends prepared requests through one pooled session (created on first use)."""

    def __init__(self, session: requests.Session | None = None) -> None:
        self._session = session
        self._owns_session = session is None

    @property
    def session(self) -> requests.Session:
        if self._session is None:
            self._session = requests.Session()
        return self._session

    def request(self, request: PreparedRequest) -> Any:
        """Send ``request``; the parsed JSON body, or our error."""
        with _translated(request):
            response = self.session.request(
                request.method,
                request.url,
                headers=dict(request.headers),
                data=request.body,
                timeout=request.timeout,
            )
            body = response.content
        return parse_response(response.status_code, response.headers, body, request.url)

    def stream(self, request: PreparedRequest) -> Iterator[SSEEvent]:
        """Send ``request`` and yield its server-sent events (the timeout is per read)."""
        with _translated(request):
            response = self.session.request(
                request.method,
                request.url,
                headers={**request.headers, "Accept": "text/event-stream"},
                data=request.body,
                timeout=request.timeout,
                stream=True,
            )
        with response:
            if not 200 <= response.status_code < 300:
                with _translated(request):
                    body = response.content
                parse_response(response.status_code, response.headers, body, request.url)
            reader = EventReader(request.url)
            with _translated(request):
                for raw in response.iter_lines():
                    event = reader.feed(raw)
                    if event is not None:
                        yield event
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
