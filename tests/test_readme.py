"""The README's two opening commands and CI stay in step."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    """The first two shell commands of the README's fenced ``bash`` blocks."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    commands = []
    for block in blocks[:2]:
        lines = [line for line in block.splitlines() if line.strip() and not line.lstrip().startswith("#")]
        assert len(lines) == 1, f"an opening README block should hold exactly one command: {block!r}"
        commands.append(lines[0].strip())
    return commands


def test_readme_opens_with_demo_and_test_commands() -> None:
    demo, tests = _readme_commands()
    assert demo.startswith("python3 -m venv .venv") and demo.endswith("posegs demo")
    assert "pip install torch==2.13.0" in demo and "pip install -e ." in demo
    assert tests.startswith("python3 -m venv .venv") and "python -m pytest" in tests
    assert demo.index("torch==2.13.0") < demo.index("pip install -e")


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    _, tests = _readme_commands()
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    ci_lines = [line.strip() for line in ci.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert tests in ci_lines, "the README's test command must appear verbatim in .ci/run"
