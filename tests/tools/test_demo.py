"""posegs demo: the README's first command, end to end on a tiny sequence through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from posegs_ros.tools.cli import main


def _sets(overrides: dict) -> list[str]:
    args = []
    for name, value in overrides.items():
        args += ["--set", f"{name}={value}"]
    return args


def test_demo_synthesizes_reconstructs_and_reports(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], fast_engine_overrides: dict
) -> None:
    out = tmp_path / "demo"
    code = main(["demo", "--out", str(out), "--frames", "16", "--size", "128x96", "--preset", "fast",
                 *_sets(fast_engine_overrides)])
    text = capsys.readouterr().out
    assert code == 0, text
    for step in ("[1/3]", "[2/3]", "[3/3]", "deblurring gain", "ATE RMSE"):
        assert step in text
    assert (out / "replay" / "report" / "index.html").is_file()
    assert "posegs demo --preset best" in text  # what to try next
    metrics = json.loads((out / "replay" / "metrics.json").read_text())
    assert metrics["config"]["preset"] == "fast"
    assert metrics["config"]["mapping"]["final_iters"] == fast_engine_overrides["mapping.final_iters"]  # --set wins
    assert metrics["summary"]["frames_with_pose"] == 16
    # a second run refuses to overwrite without --force
    assert main(["demo", "--out", str(out), "--frames", "16", "--size", "128x96"]) == 2


def test_demo_rejects_a_bad_size(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--out", str(tmp_path / "d"), "--size", "big"]) == 2
    assert "--size" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_the_demo_runs_balanced_with_its_own_final_steps_unless_told_otherwise() -> None:
    """The demo's overlay (fewer final steps per frame, to finish within two minutes) applies to
    ``balanced`` only and yields to ``--set``."""
    import argparse

    from posegs_ros.config import preset_config
    from posegs_ros.tools.demo import DEMO_OVERLAYS, add_arguments
    from posegs_ros.tools.replay import config_from_args

    parser = argparse.ArgumentParser()
    add_arguments(parser)

    def steps(*argv: str) -> int:
        return config_from_args(parser.parse_args(list(argv)), None, DEMO_OVERLAYS).mapping.final_steps_per_view

    assert steps() == 12 < preset_config("balanced").mapping.final_steps_per_view
    assert steps("--preset", "best") == preset_config("best").mapping.final_steps_per_view
    assert steps("--preset", "fast") == preset_config("fast").mapping.final_steps_per_view
    assert steps("--set", "mapping.final_steps_per_view=16") == 16
