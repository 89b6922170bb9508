"""Whether an SDK stream a function returned came to its provider's end, item by item.

The openai and anthropic SDKs parse server-sent events into objects and hide the end marker
(``data: [DONE]``) from the caller, so a stream cut short simply stops. What marks a whole answer
is read from the items themselves, by attribute: a chat chunk with a ``finish_reason``, an
Anthropic ``message_stop``, a Responses ``response.completed`` (or ``response.incomplete`` /
``response.failed``: the answer ended, whatever it says). Items of any other shape (a plain
generator's strings or dicts) are not followed.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ItemWatch"]

_STARTS = frozenset({"message_start", "response.created"})
_ENDS = frozenset({"message_stop", "response.completed", "response.incomplete", "response.failed"})


class ItemWatch:
    """Follows the items of one returned stream; ``see`` each item, then ask ``incomplete``."""

    __slots__ = ("_chat", "_done", "incomplete")

    def __init__(self) -> None:
        self._chat = False
        self._done = False  # the final item (or a finish reason) has come
        self.incomplete = False  # an SDK stream has begun and its final item has not come

    def see(self, item: Any) -> ItemWatch | None:
        """Take ``item`` into account; None when the stream is not one to follow (decided at its
        first item), so the caller stops asking."""
        if not self._chat:
            kind = _field(item, "type")
            if isinstance(kind, str):
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


def _field(item: Any, name: str) -> Any:
    if isinstance(item, (str, bytes, dict, int, float)):
        return None  # a plain generator's values, not an SDK's parsed event
    try:
        return getattr(item, name, None)
    except Exception:  # a hostile property
        return None
