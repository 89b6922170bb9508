"""Checks every entry point shares: seconds, counts, exception types and option names.

Each check names the option and the bad value in its message. A value of the wrong type raises
:class:`OptionTypeError`, which is both a ``TypeError`` and a ``ValueError``: it is the wrong
type, and it is a bad value for the option.
"""

from __future__ import annotations

import math
import re
import sys
import warnings
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = [
    "MAX_SECONDS",
    "OptionTypeError",
    "caller_stacklevel",
    "check_option_names",
    "count",
    "exception_types",
    "seconds",
    "warn_if_milliseconds",
]

# One year: longer than any real wait, short enough that every HTTP client and timer accepts it.
MAX_SECONDS = 366 * 24 * 3600.0
# A time option at least this large was probably meant in milliseconds (the original's unit).
_MILLISECOND_SUSPECT = 1000.0


class OptionTypeError(TypeError, ValueError):
    """An option of the wrong type (also a ``ValueError``: a bad value for that option)."""


OptionTypeError.__module__ = "llm_circuit_breaker"


def _label(owner: str, name: str) -> str:
    return f"{owner}.{name}" if owner else name


def seconds(owner: str, name: str, value: Any, *, allow_zero: bool = False) -> float:
    """``value`` as finite seconds, > 0 (or >= 0 with ``allow_zero``) and at most a year."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise OptionTypeError(f"{_label(owner, name)} must be a number of seconds, got {value!r}")
    low = ">= 0" if allow_zero else "> 0"
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{_label(owner, name)} must be finite seconds {low}, got {value!r}")
    if value > MAX_SECONDS:
        raise ValueError(
            f"{_label(owner, name)} must be at most {MAX_SECONDS:g} seconds (a year), got {value!r}"
        )
    return float(value)


def count(owner: str, name: str, value: Any, minimum: int) -> int:
    """``value`` as an int >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise OptionTypeError(f"{_label(owner, name)} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{_label(owner, name)} must be >= {minimum}, got {value!r}")
    return value


def exception_types(name: str, value: Any) -> tuple[type[BaseException], ...]:
    """An exception type or a tuple (list, set) of them, as a tuple."""
    types = tuple(value) if isinstance(value, (tuple, list, set, frozenset)) else (value,)
    for item in types:
        if not (isinstance(item, type) and issubclass(item, BaseException)):
            raise OptionTypeError(f"{name} takes exception types, got {item!r}")
    return types


def warn_if_milliseconds(owner: str, name: str, value: Any) -> None:
    """Warn when a time option looks like milliseconds (``reset_timeout=30000``), pointing at
    the caller's line."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if number and value >= _MILLISECOND_SUSPECT:
        warnings.warn(
            f"{_label(owner, name)}={value!r} is in seconds ({value / 3600:.1f} hours); "
            f"did you mean milliseconds? Use {name}={value / 1000:g} for {value:g} ms",
            UserWarning,
            stacklevel=caller_stacklevel(),
        )


def caller_stacklevel() -> int:
    """The ``stacklevel`` that makes a warning issued by the function calling this one point at
    the first frame outside the package (and the dataclass machinery): the caller's line."""
    frame = sys._getframe(1)
    level = 1
    while frame.f_back is not None:
        module = frame.f_globals.get("__name__", "")
        ours = module == "llm_circuit_breaker" or module.startswith("llm_circuit_breaker.")
        if not (ours or module == "dataclasses" or frame.f_code.co_filename.startswith("<")):
            break
        frame, level = frame.f_back, level + 1
    return level


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?<!_)([A-Z])", r"_\1", name).lower()


def check_option_names(given: Iterable[str], known: Iterable[str], what: str) -> None:
    """Raise ``TypeError`` for every name of ``given`` not in ``known``, with a did-you-mean
    suggestion for camelCase spellings and typos alike."""
    known = tuple(known)
    unknown = [name for name in given if name not in known]
    if not unknown:
        return
    parts = []
    for name in unknown:
        text = str(name)
        guess = _snake(text) if _snake(text) in known else None
        if guess is None:
            import difflib  # only a misspelt option needs it

            close = difflib.get_close_matches(_snake(text), known, n=1, cutoff=0.75)
            guess = close[0] if close else None
        parts.append(f"{text!r} (did you mean {guess!r}?)" if guess else repr(text))
    raise TypeError(
        f"unknown {what} option(s): {', '.join(parts)}; known options: {', '.join(known)}"
    )


def check_mapping(value: Any, what: str) -> Mapping[str, Any]:
    """``value`` as a mapping of options, or a ``TypeError`` saying what was given."""
    if not isinstance(value, Mapping):
        raise TypeError(f"{what} must be a dict of options, got {type(value).__name__}")
    return value
