"""posegs replay: outputs from a real rosbag2, determinism, and refusing bad bags without writing."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from posegs_ros.scene.gaussians import read_ply
from posegs_ros.io import BagWriter, camera_info_message, read_tum, rgb_to_image
from posegs_ros.io.camera_info import CameraModel
from posegs_ros.tools.replay import ReplayError, replay


@pytest.fixture(scope="module")
def synthetic_bag(small_sequence, tmp_path_factory) -> Path:
    from posegs_ros.tools.synth import write

    return write(small_sequence, tmp_path_factory.mktemp("synth") / "seq", storage="sqlite3") / "bag"


def test_replay_writes_every_output_and_evaluates(synthetic_bag, fast_config, tmp_path, small_sequence) -> None:
    out = tmp_path / "run"
    result = replay(synthetic_bag, out, fast_config, progress=False)
    n = len(small_sequence.frames)
    traj = read_tum(out / "trajectory.tum")
    assert len(traj) == result.metrics["summary"]["frames_with_pose"] == n
    assert np.allclose(traj.stamps, [f.stamp for f in small_sequence.frames], atol=1e-6)
    assert len(read_tum(out / "trajectory_online.tum")) <= n
    pngs = sorted(p.name for p in (out / "deblurred").glob("*.png"))
    assert pngs == [f"{i:04d}.png" for i in range(n)]
    assert read_ply(out / "map.ply")["means"].shape[0] == result.metrics["summary"]["gaussians"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["frames"]) == n and metrics["config"]["blur"]["subframes"] == fast_config.blur.subframes
    assert {"flow", "tracking", "mapping", "render", "total"} <= set(metrics["frames"][-1]["seconds"])
    ev = json.loads((out / "eval.json").read_text())
    assert ev["trajectory"]["matched"] == n and ev["deblurred"]["frames"] == n and ev["input"]["frames"] == n
    assert "trajectory_online" in ev
    assert (out / "report" / "index.html").exists() and (out / "report" / "strip.png").exists()
    assert not list(tmp_path.glob(".*partial"))


def test_replay_is_deterministic(synthetic_bag, fast_config, tmp_path) -> None:
    a = replay(synthetic_bag, tmp_path / "a", fast_config, progress=False, evaluate=False)
    b = replay(synthetic_bag, tmp_path / "b", fast_config, progress=False, evaluate=False)
    assert len(read_tum(a.out / "trajectory.tum")) > 0
    assert (a.out / "trajectory.tum").read_bytes() == (b.out / "trajectory.tum").read_bytes()
    assert (a.out / "map.ply").read_bytes() == (b.out / "map.ply").read_bytes()
    renders = sorted((a.out / "deblurred").glob("*.png"))
    assert renders and all(p.read_bytes() == (b.out / "deblurred" / p.name).read_bytes() for p in renders)


def test_existing_output_is_kept_unless_forced(synthetic_bag, fast_config, tmp_path) -> None:
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ReplayError, match="not empty"):
        replay(synthetic_bag, out, fast_config, progress=False, max_frames=2)
    assert (out / "keep.txt").read_text() == "mine"


def _write_bag(path: Path, frames, camera: CameraModel | None, encoding: str = "rgb8") -> Path:
    with BagWriter(path, storage="sqlite3") as bag:
        for f in frames:
            stamp = int(round(f.stamp * 1e9))
            if camera is not None:
                bag.write("/camera/camera_info", camera_info_message(camera, stamp, "cam"))
            image = rgb_to_image(f.blurred, stamp, "cam")
            if encoding != "rgb8":
                image = dataclasses.replace(image, fields={**image.fields, "encoding": encoding})
            bag.write("/camera/image_raw", image)
    return path


def test_missing_camera_info_is_refused_before_writing(small_sequence, fast_config, tmp_path) -> None:
    bag = _write_bag(tmp_path / "no_info", small_sequence.frames[:4], camera=None)
    out = tmp_path / "out"
    with pytest.raises(ReplayError, match="camera_info"):
        replay(bag, out, fast_config, progress=False)
    assert not out.exists() and not list(tmp_path.glob(".out*"))


def test_unsupported_encoding_is_refused_before_writing(small_sequence, fast_config, tmp_path) -> None:
    camera = CameraModel.from_intrinsics(small_sequence.intrinsics)
    bag = _write_bag(tmp_path / "yuv", small_sequence.frames[:4], camera, encoding="yuv422")
    out = tmp_path / "out"
    with pytest.raises(ReplayError, match="yuv422"):
        replay(bag, out, fast_config, progress=False)
    assert not out.exists()


def test_cli_reports_errors_with_exit_code(tmp_path, capsys) -> None:
    from posegs_ros.tools.cli import main

    assert main(["replay", str(tmp_path / "nothing"), "--out", str(tmp_path / "o"), "--quiet"]) == 1
    assert "no bag" in capsys.readouterr().err
    assert main(["replay", str(tmp_path / "nothing"), "--out", str(tmp_path / "o"), "--set", "blur.nope=1"]) == 2


def test_a_missing_ground_truth_file_is_refused_before_the_replay(synthetic_bag, tmp_path, capsys) -> None:
    """A mistyped --gt is reported at once (it used to surface in the evaluation, after the whole
    replay, which then left nothing behind)."""
    from posegs_ros.tools.cli import main

    out = tmp_path / "o"
    assert main(["replay", str(synthetic_bag), "--out", str(out), "--gt", str(tmp_path / "gt.tum"), "--quiet"]) == 2
    assert "--gt" in capsys.readouterr().err and not out.exists()
    with pytest.raises(ReplayError, match="no such file"):  # the library call too, before any frame
        replay(synthetic_bag, out, None, gt=tmp_path / "gt.tum")
    assert not out.exists()


def test_bag_too_short_to_initialize_is_reported_not_a_traceback(synthetic_bag, tmp_path, capsys) -> None:
    from posegs_ros.tools.cli import main

    out = tmp_path / "short"
    # two frames a 30th of a second apart: far too little parallax for the two-view initialization
    assert main(["replay", str(synthetic_bag), "--out", str(out), "--max-frames", "2", "--quiet",
                 "--set", "mapping.final_iters=0"]) == 1
    assert "never initialized" in capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    summary = metrics["summary"]
    assert summary["initialized"] is False and summary["frames_by_state"]["no pose"] == 2
    assert len(read_tum(out / "trajectory.tum")) == 0 and not (out / "map.ply").exists()
    assert not (out / "eval.json").exists()


def test_a_camera_larger_than_max_image_width_is_mapped_small_and_rendered_at_its_size(
    small_sequence, fast_config, tmp_path
) -> None:
    """The small sequence at twice its size in a bag, replayed with ``max_image_width`` at the
    original width: the engine works at 128x96, yet ``deblurred/`` comes at the camera's 256x192
    and is evaluated against its ground truth (sharp images of that size)."""
    import cv2

    from posegs_ros.tools.synth import write

    seq = small_sequence
    big = seq.intrinsics.scaled(2 * seq.intrinsics.width, 2 * seq.intrinsics.height)
    size = (big.width, big.height)
    frames = [dataclasses.replace(f, blurred=cv2.resize(f.blurred, size), sharp=cv2.resize(f.sharp, size),
                                  depth=cv2.resize(f.depth, size, interpolation=cv2.INTER_NEAREST))
              for f in seq.frames]
    bag = write(dataclasses.replace(seq, intrinsics=big, frames=frames), tmp_path / "big", storage="sqlite3") / "bag"
    cfg = dataclasses.replace(fast_config, max_image_width=seq.intrinsics.width)
    out = tmp_path / "run"
    result = replay(bag, out, cfg, progress=False)
    n = len(seq.frames)
    assert result.metrics["summary"]["frames_with_pose"] == n
    shapes = {cv2.imread(str(p)).shape for p in (out / "deblurred").glob("*.png")}
    assert shapes == {(big.height, big.width, 3)}
    ev = json.loads((out / "eval.json").read_text())
    assert ev["deblurred"]["frames"] == n and ev["deblurred"]["psnr_mean"] > 15.0
