"""mkdocs hook: the docstrings use Sphinx roles (``:class:`~pkg.Name```), which Markdown
renders as the role's name followed by code; show the code alone, shortened as Sphinx would."""

from __future__ import annotations

import re
from typing import Any

_ROLE = re.compile(
    r":(?:py:)?(?:class|func|meth|attr|mod|exc|data|obj|const):<code>(~?)([^<]*)</code>"
)


def _code(match: re.Match[str]) -> str:
    target = match.group(2)
    if match.group(1):  # "~pkg.mod.Name" shows "Name", as Sphinx does
        target = target.rsplit(".", 1)[-1]
    return f"<code>{target}</code>"


def on_page_content(html: str, **_: Any) -> str:
    """Drop the role names from the rendered page."""
    return _ROLE.sub(_code, html)
