"""bench real: windows of a 7-Scenes-layout folder (written from a synthetic sequence) replayed
in child processes, rows read back from their outputs."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from posegs_ros.tools.bench import real as bench_real
from posegs_ros.tools.cli import main


def _seven_scenes(sequence, root: Path) -> Path:  # noqa: ANN001 - a SynthSequence
    """The sequence's blurred frames and GT poses as a 7-Scenes folder (K for 640x480)."""
    root.mkdir(parents=True)
    k = sequence.intrinsics
    scale = 640 / k.width
    (root / "camera-intrinsics.txt").write_text(
        f"{k.fx * scale} 0 {(k.cx + 0.5) * scale - 0.5}\n0 {k.fy * scale} {(k.cy + 0.5) * scale - 0.5}\n0 0 1\n")
    for i, frame in enumerate(sequence.frames):
        cv2.imwrite(str(root / f"frame-{i:06d}.color.png"), frame.blurred[:, :, ::-1])
        (root / f"frame-{i:06d}.pose.txt").write_text(
            "\n".join(" ".join(f"{v:.9e}" for v in row) for row in frame.pose) + "\n")
    return root


def test_windows_parse_and_refuse_nonsense() -> None:
    assert bench_real.parse_windows("300:150, 450:150") == [(300, 150), (450, 150)]
    for bad in ("300", "a:b", "-1:5", "3:1", ""):
        with pytest.raises(ValueError):
            bench_real.parse_windows(bad)


def test_window_replayed_in_a_child_and_tabulated(
    tmp_path: Path, small_sequence, fast_engine_overrides: dict, capsys: pytest.CaptureFixture[str]  # noqa: ANN001
) -> None:
    source = _seven_scenes(small_sequence, tmp_path / "seq-01")
    sets = [a for name, value in fast_engine_overrides.items() for a in ("--set", f"{name}={value}")]
    work = tmp_path / "work"
    code = main(["bench", "real", str(source), "--windows", "4:16", "--resize", "128x96", "--work", str(work),
                 "--json", str(tmp_path / "rows.json"), "--preset", "fast", *sets])
    text = capsys.readouterr().out
    assert code == 0, text
    (row,) = json.loads((tmp_path / "rows.json").read_text())
    assert row["window"] == "4:16" and row["frames"] == 16 and row["posed"] >= 14
    assert np.isfinite(row["ate_cm"]) and np.isfinite(row["ate_online_cm"]) and np.isfinite(row["rpe_cm"])
    assert np.isfinite(row["rpe_1s_cm"]) and np.isfinite(row["rpe_1s_deg"])
    assert len(row["rotation_gain"]) == 3 and all(np.isfinite(row["rotation_gain"]))
    assert row["psnr_vs_input"] > 15  # renders explain the input frames
    assert row["peak_rss_mb"] > 100  # the child's own peak (torch alone is more)
    assert "| 4:16 |" in text
    meta = json.loads((work / "w4_16" / "meta.json").read_text())
    assert meta["image_files"][0] == "frame-000004.color.png"
    metrics = json.loads((work / "run_w4_16" / "metrics.json").read_text())
    assert metrics["config"]["preset"] == "fast"  # the options reached the child
    counters = metrics["summary"]["counters"]
    assert (row["mismatch"], row["lost"]) == (counters["mismatch_frames"], counters["lost_frames"])


def test_bad_options_refused_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "real", str(tmp_path), "--windows", "0:1"]) == 2
    assert main(["bench", "real", str(tmp_path), "--set", "mapping.nope=1"]) == 2
    assert main(["bench", "real", str(tmp_path / "missing"), "--work", str(tmp_path / "w")]) == 2
    assert "missing" in capsys.readouterr().err
