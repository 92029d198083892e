"""Generated tables of the README's ROS 2 section (parameters, topics / services, skip and
reset reasons).

Each table sits between ``<!-- generated:NAME -->`` and ``<!-- /generated:NAME -->`` in the
Markdown file; ``python -m posegs_ros.ros.docs README.md`` rewrites them from the code and
``--check`` fails when they are stale (a test runs the check), so the docs cannot drift.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Sequence

from .params import markdown_parameter_table
from .topics import markdown_interface_table

__all__ = ["markdown_reason_tables", "generated_sections", "update_markdown", "main"]


def markdown_reason_tables() -> str:
    """Skip reasons and reset reasons (the names in ``~/status``) as Markdown tables."""
    from .ingest import RESET_REASONS, SKIP_REASONS

    rows = ["| skip reason | meaning |", "|---|---|"]
    rows += [f"| `{name}` | {text} |" for name, text in SKIP_REASONS.items()]
    rows += ["", "| reset reason | meaning |", "|---|---|"]
    rows += [f"| `{name}` | {text} |" for name, text in RESET_REASONS.items()]
    return "\n".join(rows) + "\n"


def generated_sections() -> dict[str, str]:
    """Section name -> generated Markdown."""
    return {
        "parameters": markdown_parameter_table(),
        "interfaces": markdown_interface_table(),
        "reasons": markdown_reason_tables(),
    }


def update_markdown(text: str) -> str:
    """``text`` with every generated section replaced by its current content.

    Raises:
        ValueError: a section's markers are missing.
    """
    for name, body in generated_sections().items():
        pattern = re.compile(rf"(<!-- generated:{name} -->\n).*?(<!-- /generated:{name} -->)", re.DOTALL)
        if not pattern.search(text):
            raise ValueError(f"markers <!-- generated:{name} --> ... <!-- /generated:{name} --> not found")
        text = pattern.sub(lambda m, body=body: m.group(1) + body + m.group(2), text)
    return text


def main(argv: Sequence[str] | None = None) -> int:
    """Rewrite (or ``--check``) the generated tables of a Markdown file."""
    parser = argparse.ArgumentParser(prog="python -m posegs_ros.ros.docs", description=main.__doc__)
    parser.add_argument("markdown", type=Path, help="e.g. README.md")
    parser.add_argument("--check", action="store_true", help="exit 1 if the file is stale, change nothing")
    args = parser.parse_args(argv)
    text = args.markdown.read_text(encoding="utf-8")
    updated = update_markdown(text)
    if args.check:
        if updated != text:
            print(f"{args.markdown} is stale: run python -m posegs_ros.ros.docs {args.markdown}", file=sys.stderr)
            return 1
        return 0
    if updated != text:
        args.markdown.write_text(updated, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
