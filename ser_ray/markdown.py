"""Markdown that reports write: cells and text from data made inert (:func:`esc`), tables
(:func:`table`). A call id, a metadata value or a file name can hold anything; the learning
report and the night's report both write it through here."""

from __future__ import annotations

import re
from typing import Any, Iterable, Sequence


def esc(text: Any) -> str:
    """``text`` as inert Markdown: one line (``\\r``, ``\\n``, tabs become spaces), no HTML
    (``<script>``, ``<img onerror>``, autolinks: ``<``, ``>``, ``&`` as entities), no link
    or image (``[``, ``]`` escaped), no code span or table cell break (`` ` ``, ``|``)."""
    text = " ".join(str(text).split())
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return re.sub(r"([\\`\[\]|])", r"\\\1", text)


def table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    """A Markdown table: ``header`` as given (trusted), every cell through :func:`esc`."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(esc(v) for v in row) + " |" for row in rows]
    return lines
