"""Whether an SDK stream a function returned came to its provider's end, item by item.

The openai and anthropic SDKs parse server-sent events into objects and hide the end marker
(``data: [DONE]``) from the caller, so a stream cut short simply stops. What marks a whole answer
is read from the items themselves, by attribute: a chat chunk with a ``finish_reason``, an
Anthropic ``message_stop``, a Responses ``response.completed`` (or ``response.incomplete`` /
``response.failed``: the answer ended). A Responses stream's ``response.failed`` or ``error``
event, which the SDK hands over as an item, is the provider's failure, as the transport judges
it. Items of any other shape (a plain generator's strings or dicts) are not followed.
"""

from __future__ import annotations

from typing import Any

from llm_circuit_breaker.errors import IncompleteStreamError, http_status_error

__all__ = ["ItemWatch"]

_STARTS = frozenset({"message_start", "response.created"})
_ENDS = frozenset({"message_stop", "response.completed", "response.incomplete", "response.failed"})
_FAILED = frozenset({"response.failed", "error"})


class ItemWatch:
    """Follows the items of one returned stream; ``see`` each item, then ask ``problem``."""

    __slots__ = ("_chat", "_done", "failure", "incomplete")

    def __init__(self) -> None:
        self._chat = False
        self._done = False  # the final item (or a finish reason) has come
        self.incomplete = False  # an SDK stream has begun and its final item has not come
        self.failure: dict[str, Any] | None = None  # the error body of a failed-response item

    def see(self, item: Any) -> ItemWatch | None:
        """Take ``item`` into account; None when the stream is not one to follow (decided at its
        first item), so the caller stops asking."""
        if not self._chat:
            kind = _field(item, "type")
            if isinstance(kind, str):
                if kind in _FAILED and (self.incomplete or self._done) and self.failure is None:
                    self.failure = _error_body(item)
                if kind in _ENDS:
                    self._done, self.incomplete = True, False
                elif kind in _STARTS:
                    self.incomplete = not self._done
                elif not (self.incomplete or self._done):
                    return None  # a first item that opens no stream of a known shape
                return self
            if _field(item, "object") != "chat.completion.chunk":
                return None if not (self.incomplete or self._done) else self
            self._chat = True
        if not self._done:
            choices = _field(item, "choices")
            if isinstance(choices, list) and any(_field(c, "finish_reason") for c in choices):
                self._done = True
            self.incomplete = not self._done
        return self

    def problem(self, url: str | None) -> BaseException | None:
        """At the stream's end: the provider's failure it carried, or that it was cut short."""
        if self.failure is not None:
            from llm_circuit_breaker._judge.classify import classify_response  # failures only

            found = classify_response(200, None, self.failure)
            return http_status_error(
                found.status or 500, None, self.failure, url, error_type=found.error_type
            )
        if self.incomplete:
            return IncompleteStreamError(
                "stream ended before its final event: the answer is cut short", url=url
            )
        return None


def _error_body(item: Any) -> dict[str, Any]:
    """``{"error": {...}}`` from a ``response.failed`` event (its response's error) or a
    Responses ``error`` event (the event itself)."""
    source = _field(_field(item, "response"), "error") if _field(item, "response") else item
    error: dict[str, Any] = {}
    for key in ("type", "code", "message"):
        value = _field(source, key)
        if isinstance(value, str) and (key != "type" or value != "error"):
            error[key] = value[:2000]
    return {"error": error}


def _field(item: Any, name: str) -> Any:
    if isinstance(item, (str, bytes, dict, int, float)):
        return None  # a plain generator's values, not an SDK's parsed event
    try:
        return getattr(item, name, None)
    except Exception:  # a hostile property
        return None
