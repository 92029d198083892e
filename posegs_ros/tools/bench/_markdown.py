"""Shared pieces of the benchmarks: Markdown tables (the README's result tables are pasted from
them), run selection, printing and JSON of the rows, a replay's end-to-end seconds."""

from __future__ import annotations

import math
import json
from pathlib import Path
from typing import Any, Callable, Iterable

__all__ = ["cell", "table", "last_row", "select", "finish", "replay_seconds"]


def cell(value: Any, fmt: str, missing: str = "-") -> str:
    """``value`` formatted with ``fmt``; ``missing`` for None or a non-finite number (not measured)."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return missing
    return format(value, fmt)


def table(head: str, rows: Iterable[str]) -> str:
    """``head`` (``| a | b |``), its separator row and ``rows``, one table."""
    return "\n".join([head, "|---" * (head.count("|") - 1) + "|", *rows])


def last_row(rows: list[dict[str, Any]], fmt: Callable[[list[dict[str, Any]]], str]) -> str:
    """The table line of ``rows[-1]`` (printed as each run finishes)."""
    return fmt(rows[-1:]).splitlines()[-1]


def select(csv: str, known: Iterable[str], kind: str) -> list[str]:
    """The comma-separated names of ``csv``; SystemExit naming any not in ``known`` (before any work)."""
    known = list(known)
    names = [n.strip() for n in csv.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"unknown {kind}(s): {', '.join(unknown)}; known: {', '.join(known)}")
    return names


def finish(rows: list[dict[str, Any]], fmt: Callable[[list[dict[str, Any]]], str], json_path: Path | None) -> int:
    """Print the whole table of ``rows`` (after a blank line), write them as JSON to ``json_path``
    if given; returns the exit code 0."""
    print()
    print(fmt(rows))
    if json_path:
        json_path.write_text(json.dumps(rows, indent=2))
    return 0


def replay_seconds(summary: dict[str, Any]) -> float:
    """End-to-end seconds of a replay from its ``metrics.json`` summary: online processing,
    final refinement and the final renders."""
    return summary["seconds"] + summary["final_refinement_seconds"] + summary.get("final_render_seconds", 0.0)
