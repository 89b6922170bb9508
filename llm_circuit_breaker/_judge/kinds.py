"""The provider-level meaning of an error: kinds, the providers' error codes, and the tables
that map statuses and codes to kinds (one table each, shared by every layer)."""

from __future__ import annotations

import dataclasses
import enum
import json
import re
from collections.abc import Mapping
from typing import Any

__all__ = [
    "NOT_PROVIDER_FAILURES",
    "STREAM_ERROR_STATUS",
    "TRANSPORT_KINDS",
    "Classification",
    "ErrorKind",
    "parse_json",
]


class ErrorKind(str, enum.Enum):
    """The provider-level meaning of an error."""

    TIMEOUT = "timeout"  # connect/read timeout, HTTP 408
    CONNECTION = "connection"  # refused, reset, DNS, TLS, truncated body
    POOL = "pool"  # the client's own connection pool is exhausted: local, not the provider
    RATE_LIMIT = "rate_limit"
    QUOTA = "quota"  # billing / quota / spend cap: retrying does not help
    OVERLOADED = "overloaded"  # 529, 503 "overloaded"
    SERVER = "server"  # other 5xx, stream server_error
    CONFLICT = "conflict"  # 409
    AUTH = "auth"  # 401, 403
    CONTEXT_LENGTH = "context_length"
    CONTENT_POLICY = "content_policy"
    CLIENT = "client"  # other 4xx: the caller's request is wrong
    LOCAL = "local"  # this process's own mistake around an HTTP call (closed loop, bad header)
    OTHER = "other"  # not an HTTP or transport error: the caller's own code


# Kinds that are the caller's business, not the provider's health: the breaker ignores them.
NOT_PROVIDER_FAILURES = frozenset(
    {
        ErrorKind.POOL,
        ErrorKind.CONFLICT,
        ErrorKind.AUTH,
        ErrorKind.CONTEXT_LENGTH,
        ErrorKind.CONTENT_POLICY,
        ErrorKind.CLIENT,
        ErrorKind.LOCAL,
    }
)
TRANSPORT_KINDS = frozenset({ErrorKind.TIMEOUT, ErrorKind.CONNECTION})


@dataclasses.dataclass(frozen=True, slots=True)
class Classification:
    """What :func:`classify` found out about an exception."""

    kind: ErrorKind
    status: int | None = None  # HTTP status, or the status an in-stream error stands for
    retry_after: float | None = None  # the server's wait hint in seconds
    should_retry: bool | None = None  # the x-should-retry header
    error_type: str | None = None  # the provider's machine-readable code, when found


QUOTA_CODES = frozenset(
    {
        "insufficient_quota",
        "credit_balance_exhausted",
        "organization_spend_limit_exceeded",
        "project_spend_limit_exceeded",
        "organization_usage_limit_exceeded",
        "enforced_spend_limit_reached",
        "billing_error",
        "billing_hard_limit_reached",
    }
)
OVERLOADED_CODES = frozenset({"overloaded_error", "server_is_overloaded", "unavailable"})
RATE_CODES = frozenset(
    {"rate_limit_exceeded", "rate_limit_error", "slow_down", "resource_exhausted", "tokens"}
)
SERVER_CODES = frozenset({"server_error", "api_error", "internal", "timeout_error"})
CONTEXT_CODES = frozenset({"context_length_exceeded", "string_above_max_length_context"})
POLICY_CODES = frozenset({"content_policy_violation", "content_filter"})
CONTEXT_TEXT = re.compile(
    r"maximum context length|context[_ ]length[_ ]exceeded|prompt is too long|"
    r"exceeds? (?:the )?(?:model's )?context|input tokens exceed|context window",
    re.IGNORECASE,
)
WAIT_TEXT = re.compile(
    r"(?:try again|retry) (?:in|after) ([0-9]{1,12}(?:\.[0-9]{1,9})?)\s*(ms|s|seconds?)\b", re.I
)
# The HTTP status an error event inside a stream (sent after a 200) stands for, by kind; an
# event of any other kind stands for a 500.
STREAM_ERROR_STATUS = {
    ErrorKind.OVERLOADED: 529,
    ErrorKind.RATE_LIMIT: 429,
    ErrorKind.QUOTA: 429,
    ErrorKind.SERVER: 500,
    ErrorKind.CONTEXT_LENGTH: 400,
    ErrorKind.CONTENT_POLICY: 400,
    ErrorKind.CLIENT: 400,
    ErrorKind.AUTH: 401,
}


_decode = json.JSONDecoder().decode  # json.loads(text) without its argument checks
_MAX_DEPTH = 64  # no provider's error nests deeper; far deeper breaks json, repr and str


def parse_json(raw: str | bytes) -> Any:
    """``raw`` parsed as JSON, else ``raw`` as text: when it is not JSON, and when it nests
    deeper than 64 (``[[[[...`` would raise ``RecursionError`` here or wherever it is shown)."""
    text = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw
    if text.count("[") + text.count("{") <= _MAX_DEPTH:  # cannot nest deeper: no walk
        try:
            return _decode(text)
        except Exception:
            return text
    if _too_deep(text):  # json.loads would recurse to the interpreter's limit first
        return text
    try:
        value = json.loads(text)
    except Exception:  # ValueError, and RecursionError on a body nested too deep
        return text
    stack = [(value, 0)]
    while stack:  # depth-first, without recursion
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth >= _MAX_DEPTH:
                return text
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return value


# A string, or an unclosed one to the end: matched in one pass whatever follows (with the
# closing quote required, an unclosed run of escaped quotes was rescanned from each of them).
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"?')
_BRACKETS = re.compile(r"[\[\]{}]")


def _too_deep(text: str) -> bool:
    """Whether ``text`` opens more than ``_MAX_DEPTH`` arrays or objects at once (outside its
    strings), read without recursion: what only a hostile or broken body does."""
    if text.count("[") + text.count("{") <= _MAX_DEPTH:
        return False
    depth = 0
    for bracket in _BRACKETS.finditer(_STRING.sub("", text)):
        depth += 1 if bracket.group() in "[{" else -1
        if depth > _MAX_DEPTH:
            return True
    return False


def error_object_of(body: Any) -> dict[str, Any]:
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict):
            return inner
        if isinstance(inner, str):  # vLLM and friends send {"error": "<text>"}
            return {"message": inner}
    if isinstance(body, str):
        return {"message": body}
    return {}


def listed(value: Any) -> list[Any]:
    """``value`` when it is a JSON list (``details`` may be anything in a hostile body)."""
    return list(value[:64]) if isinstance(value, (list, tuple)) else []


def per_day_quota(err: Mapping[str, Any]) -> bool:
    """Gemini's daily quotas are named in ``details[].violations[].quotaId``."""
    for detail in listed(err.get("details")):
        if isinstance(detail, Mapping):
            for violation in listed(detail.get("violations")):
                if isinstance(violation, Mapping) and "PerDay" in str(violation.get("quotaId")):
                    return True
    return False


def message_of(err: Mapping[str, Any]) -> str:
    message = err.get("message")
    return message[:2000] if isinstance(message, str) else ""


def kind_from_status(status: int, hinted: ErrorKind | None) -> ErrorKind:
    if hinted is ErrorKind.QUOTA and status in (400, 402, 403, 429):
        return ErrorKind.QUOTA
    if status == 402:
        return ErrorKind.QUOTA
    if status == 408:
        return ErrorKind.TIMEOUT
    if status == 409:
        return ErrorKind.CONFLICT
    if status == 429:
        return ErrorKind.RATE_LIMIT
    if status in (401, 403):
        return ErrorKind.AUTH
    if status < 500:
        if hinted in (ErrorKind.CONTEXT_LENGTH, ErrorKind.CONTENT_POLICY):
            return hinted
        return ErrorKind.CLIENT
    if status == 529 or hinted is ErrorKind.OVERLOADED:
        return ErrorKind.OVERLOADED
    if hinted is ErrorKind.RATE_LIMIT:  # a gateway's 5xx wrapping a 429
        return ErrorKind.RATE_LIMIT
    return ErrorKind.SERVER
