"""Markdown tables of the benchmarks (the README's result tables are pasted from them)."""

from __future__ import annotations

import math
from typing import Any, Iterable

__all__ = ["cell", "table"]


def cell(value: Any, fmt: str, missing: str = "-") -> str:
    """``value`` formatted with ``fmt``; ``missing`` for None or a non-finite number (not measured)."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return missing
    return format(value, fmt)


def table(head: str, rows: Iterable[str]) -> str:
    """``head`` (``| a | b |``), its separator row and ``rows``, one table."""
    return "\n".join([head, "|---" * (head.count("|") - 1) + "|", *rows])
