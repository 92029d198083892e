"""The README's ROS 2 section stays true to the code (ROS-free)."""

from __future__ import annotations

import ast
import re

import pytest
from ros_support import REPO, launch_arguments

from posegs_ros.ros.docs import generated_sections, main, update_markdown

DOC = REPO / "README.md"


def _ros2_section() -> str:
    """The README from its ``## ROS 2`` heading to the next ``## `` heading (or the end)."""
    text = DOC.read_text(encoding="utf-8")
    assert "\n## ROS 2\n" in text, "README.md has no ## ROS 2 section"
    section = text.split("\n## ROS 2\n", 1)[1]
    return section.split("\n## ", 1)[0]


def test_generated_tables_are_current() -> None:
    text = DOC.read_text(encoding="utf-8")
    assert update_markdown(text) == text, "README.md is stale: run python -m posegs_ros.ros.docs README.md"
    for body in generated_sections().values():
        assert body in _ros2_section()
    assert main(["--check", str(DOC)]) == 0


def test_stale_or_broken_docs_are_detected(tmp_path) -> None:  # noqa: ANN001 - pytest fixture
    stale = tmp_path / "README.md"
    stale.write_text(DOC.read_text().replace("| `ros.queue_size` |", "| `ros.queue_len` |"))
    assert main(["--check", str(stale)]) == 1
    assert main([str(stale)]) == 0 and main(["--check", str(stale)]) == 0  # rewritten
    with pytest.raises(ValueError, match="generated:parameters"):
        update_markdown("no markers here")


def test_launch_argument_table_matches_the_launch_file() -> None:
    section = _ros2_section().split("Launch arguments of `reconstruct.launch.py`", 1)[1].split("###", 1)[0]
    documented = set(re.findall(r"^\| `(\w+)` \|", section, re.M))
    assert documented == set(launch_arguments())


def test_pip_line_installs_what_setup_py_requires() -> None:
    tree = ast.parse((REPO / "setup.py").read_text())
    requires = next(
        [e.value for e in node.value.elts]
        for node in ast.walk(tree)
        if isinstance(node, ast.keyword) and node.arg == "install_requires"
    )
    text = _ros2_section()
    for requirement in requires:
        name = re.split(r"[<>=]", requirement)[0]
        assert name in text, f"the README's ROS 2 section does not pip-install {requirement}"


def test_docs_cover_the_issue_topics() -> None:
    text = _ros2_section()
    for needle in ("colcon build", "ros2 launch posegs_ros reconstruct.launch.py", "bag:=", "rviz:=true",
                   "### TF tree", "### Scale", "init.baseline", "### QoS", "~/save_map", "~/reset"):
        assert needle in text, needle
