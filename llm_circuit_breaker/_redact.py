"""One redaction policy for every surface: messages, reprs, logs, snapshots, metrics, the CLI.

* Header values are masked when the header's name looks like a credential (``Authorization``,
  ``x-api-key``, ``api-key``, ``x-goog-api-key``, cookies, tokens, secrets, signatures ...),
  whatever the value looks like.
* In URLs, the ``user:password@`` part and the values of credential-like query parameters
  (``key``, ``api_key``, ``token``, ``password``, ``client_secret``, ``sig`` ...) are masked.
* In free text, bearer tokens, provider key shapes (``sk-...``, ``sk-ant-...``, ``AIza...``),
  ``name: value`` / ``name=value`` pairs with a credential-like name, and URL credentials are
  masked.
"""

from __future__ import annotations

import functools
import re
import sys
from collections import deque
from collections.abc import Iterator, Mapping
from typing import Any

__all__ = [
    "REDACTED",
    "Headers",
    "hide_context",
    "MAX_REDACTED_TEXT",
    "is_secret_name",
    "redact_headers",
    "redact_text",
    "redact_url",
    "remember_secrets",
]

REDACTED = "[REDACTED]"
_SECRET_WORDS = (
    r"key|token|secret|auth|authorization|password|passwd|pwd|cookie|signature|credential|"
    r"session|sig"
)
_SECRET_NAME = re.compile(_SECRET_WORDS, re.IGNORECASE)
# The patterns are linear in their input: no part backtracks over a run it has already scanned
# (a pair's name is a whole run of [\w.-], looked at once from where it starts; each run is
# followed by a character its class excludes, so giving part of it back never matches, and no
# possessive quantifier is needed: Python 3.10 has none), so "key.key.key..." or "key=" and
# blanks cost one pass. They apply in turn: URL credentials, then pairs (a pair's match never
# ends inside a run, so the next name is seen from its start), then the shapes, anywhere, names
# of pairs included.
_URL_CREDENTIALS = re.compile(r"://[^/\s:@]*:[^/\s@]+@")  # user:password@ in a URL
# name=value / name: value where the name looks like a credential (query strings, headers echoed
# in messages, form bodies): the name is a run of [\w.-] holding one of the words between
# separators; the value runs to the next separator
_SECRET_PAIR = re.compile(
    rf"(?i)((?<![\w.-])(?=[\w.-]*?(?<![^\W_])(?:{_SECRET_WORDS})(?![^\W_]))[\w.-]+"
    r"(?:\s*=\s*|:\s*|\"\s*:\s*\"|'\s*:\s*'|\s+provided:\s*))"
    r"(?!\[REDACTED\])(?:(?:bearer|basic)\s+)?[^\s&#,;\"'}]+"
)
_SECRET_SHAPE = re.compile(
    r"(?i)(bearer\s+|basic\s+)[^\s,;\"']+"  # Authorization: Bearer <token>
    r"|\b(sk-[\w-]{6,}|sk-ant-[\w-]{6,}|AIza[\w-]{20,}|gsk_[\w-]{10,}|xai-[\w-]{10,})"
)


# The credential values this process has sent (the HTTP client's credential headers): masked
# wherever they are echoed, whatever their shape (an Azure hex key in an error body ...).
# Calls on many threads remember and read it at once, and judging takes no lock: a bounded
# deque appends (dropping the oldest) and copies in one step each.
_MAX_KNOWN = 256
_KNOWN: deque[str] = deque(maxlen=_MAX_KNOWN)
_MIN_SECRET = 8  # shorter values would mask ordinary words
MAX_REDACTED_TEXT = 16 * 1024  # longer text (a hostile header value, a message) is cut first


def remember_secrets(headers: Mapping[str, str]) -> None:
    """Remember the values of the credential headers in ``headers`` (bounded: the oldest go)."""
    for name, value in headers.items():
        if not is_secret_name(name):
            continue
        for part in (value, *str(value).split()[1:]):  # "Bearer <token>": the token too
            part = str(part).strip()
            if len(part) >= _MIN_SECRET and part not in _KNOWN:
                _KNOWN.append(part)


def is_secret_name(name: object) -> bool:
    """Whether a header or parameter called ``name`` carries a credential."""
    return bool(_SECRET_NAME.search(str(name)))


def redact_text(text: str, *, limit: int = MAX_REDACTED_TEXT) -> str:
    """Mask credentials in free text (see the module docs); text past ``limit`` characters is
    cut before it is read, up to its last blank (a secret cut in two would not be recognised),
    and ends with ``...``."""

    def mask(match: re.Match[str]) -> str:
        return (match.group(1) or "") + REDACTED

    try:
        text = _cut(str(text), limit)
        for secret in _KNOWN.copy():
            if secret in text:
                text = text.replace(secret, REDACTED)
        text = _URL_CREDENTIALS.sub(f"://{REDACTED}@", text)
        return _SECRET_SHAPE.sub(mask, _SECRET_PAIR.sub(mask, text))
    except Exception:  # a str subclass with a hostile __str__: show nothing rather than fail
        return REDACTED


def _cut(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    head = text[:limit]
    blank = max(head.rfind(c) for c in " \t\r\n\f\v")
    return head[: blank + 1] + "..."


def redact_url(url: str) -> str:
    """Mask the userinfo and credential query values of ``url``."""
    return redact_text(url)


class Headers(Mapping[str, str]):
    """A read-only, case-insensitive header mapping (names kept as given, matched lowered)."""

    __slots__ = ("_items",)

    def __init__(self, items: Mapping[str, str] | None = None) -> None:
        self._items: dict[str, tuple[str, str]] = {}
        for name, value in _items_of(items):
            name, value = _text(name), _text(value)
            self._items[name.lower()] = (name, value)

    def __getitem__(self, name: str) -> str:
        return self._items[str(name).lower()][1]

    def __iter__(self) -> Iterator[str]:
        return (original for original, _ in self._items.values())

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, name: object) -> bool:
        return str(name).lower() in self._items

    def __repr__(self) -> str:
        return f"Headers({dict(self)!r})"


def _items_of(headers: Any) -> list[tuple[Any, Any]]:
    """The (name, value) pairs of any header container (a mapping, or a list or tuple of
    pairs as HTTP libraries accept); nothing for a hostile one."""
    if headers is None:
        return []
    try:
        if isinstance(headers, (list, tuple)):
            return [(pair[0], pair[1]) for pair in headers if len(pair) == 2]
        return list(headers.items())
    except Exception:
        return []


def _text(value: Any) -> str:
    """A header name or value as text: raw ``bytes`` decoded as HTTP does (latin-1)."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("latin-1")
    return str(value)


def redact_headers(headers: Mapping[str, str] | None) -> Headers:
    """A case-insensitive copy of ``headers`` with credential values replaced."""
    return Headers(
        {
            _text(name): REDACTED if is_secret_name(_text(name)) else redact_text(_text(value))
            for name, value in _items_of(headers)
        }
    )


@functools.lru_cache(maxsize=4096)
def shown(name: str) -> str:
    """A name (a breaker's, a scope's) as messages, reprs, logs, metric labels and spans show
    it: credentials masked (a breaker named after a keyed URL, a scope filled with a key ...).
    Cached: the same few names are shown again and again."""
    return redact_text(name)


def hide_context() -> None:
    """Before logging the exception being handled (a listener's or callback's own error):
    leave the exception it was raised during out of the record's traceback. That is the
    guarded call's error, whose message may hold a credential no redaction of ours has seen."""
    current = sys.exc_info()[1]
    if current is not None:
        current.__suppress_context__ = True
