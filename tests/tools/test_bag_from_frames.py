"""bag-from-frames: tiny fake TUM RGB-D and 7-Scenes folders converted and read back."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from posegs_ros.io import BagReader, matrix_to_quaternion_xyzw, quaternion_xyzw_to_matrix, read_tum
from posegs_ros.tools import bag_from_frames as bff

W, H = 64, 48


def _image(i: int) -> np.ndarray:
    return np.random.default_rng(i).integers(0, 256, (H, W, 3), dtype=np.uint8)


def _gt_pose(t: float) -> np.ndarray:
    """Ground truth as an analytic function of time: linear translation, constant-rate yaw."""
    pose = np.eye(4)
    angle = 0.2 * t
    pose[:3, :3] = quaternion_xyzw_to_matrix(np.array([0.0, 0.0, np.sin(angle / 2), np.cos(angle / 2)]))
    pose[:3, 3] = [0.5 * t, -0.25 * t, 1.0]
    return pose


def _tum_folder(root: Path, frames: int = 6) -> Path:
    """TUM layout: rgb/ images at ~30 Hz, ground truth at 100 Hz covering all but the last image."""
    (root / "rgb").mkdir(parents=True)
    stamps = 1305031102.175304 + np.arange(frames) / 30.0
    lines = ["# color images", "# file: 'fake.bag'", "# timestamp filename"]
    for i, t in enumerate(stamps):
        name = f"rgb/{t:.6f}.png"
        cv2.imwrite(str(root / name), _image(i)[:, :, ::-1])
        lines.append(f"{t:.6f} {name}")
    (root / "rgb.txt").write_text("\n".join(lines) + "\n")
    gt_lines = ["# ground truth trajectory", "# timestamp tx ty tz qx qy qz qw"]
    for t in np.arange(stamps[0] - 0.05, stamps[-2] + 0.01, 0.01):
        pose = _gt_pose(t - stamps[0])
        q = matrix_to_quaternion_xyzw(pose[:3, :3])
        gt_lines.append(f"{t:.4f} " + " ".join(f"{v:.6f}" for v in [*pose[:3, 3], *q]))
    (root / "groundtruth.txt").write_text("\n".join(gt_lines) + "\n")
    return root


def _seven_scenes_folder(root: Path, frames: int = 4) -> Path:
    root.mkdir(parents=True)
    for i in range(frames):
        cv2.imwrite(str(root / f"frame-{i:06d}.color.png"), _image(i)[:, :, ::-1])
        pose = _gt_pose(i / 30.0)
        (root / f"frame-{i:06d}.pose.txt").write_text(
            "\n".join(" ".join(f"{v:.8e}" for v in row) for row in pose) + "\n")
    return root


def test_tum_folder_converts_with_detected_calibration_and_interpolated_gt(tmp_path: Path) -> None:
    source = _tum_folder(tmp_path / "rgbd_dataset_freiburg1_fake")
    result = bff.convert(source, tmp_path / "out", storage="sqlite3")
    assert result.layout == "tum" and result.frames == 6 and result.frames_with_pose == 5
    spec = bff.TUM_CAMERAS["freiburg1"]
    k = result.intrinsics  # calibration of 640x480 scaled to the 64x48 images
    assert (k.width, k.height) == (W, H) and k.fx == pytest.approx(spec.fx / 10)
    with BagReader(tmp_path / "out" / "bag") as bag:
        assert set(bag.topics) == {"/camera/image_raw", "/camera/camera_info", "/ground_truth/pose"}
        frames = list(bag.camera_frames("/camera/image_raw"))
        traj = bag.trajectory("/ground_truth/pose")
    rgb_stamps = [float(line.split()[0]) for line in (source / "rgb.txt").read_text().splitlines()
                  if not line.startswith("#")]
    assert [f.stamp for f in frames] == pytest.approx(rgb_stamps, abs=1e-6)
    np.testing.assert_array_equal(frames[3].image, _image(3))
    assert frames[0].camera.distortion_model == "plumb_bob"
    np.testing.assert_allclose(frames[0].camera.d, spec.d)
    assert frames[0].camera.k[0, 0] == pytest.approx(spec.fx / 10)
    for t, pose in zip(traj.stamps, traj.poses):  # interpolation reproduces the analytic path
        np.testing.assert_allclose(pose, _gt_pose(t - rgb_stamps[0]), atol=2e-5)
    gt = read_tum(tmp_path / "out" / "gt.tum")
    assert len(gt) == 5
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert meta["frames_without_pose"] == 1 and meta["calibration"] == "TUM published freiburg1"


def test_resize_scales_the_intrinsics(tmp_path: Path) -> None:
    source = _tum_folder(tmp_path / "rgbd_dataset_freiburg3_fake", frames=3)
    result = bff.convert(source, tmp_path / "out", resize=(32, 24), max_frames=2)
    spec = bff.TUM_CAMERAS["freiburg3"]
    assert result.frames == 2
    k = result.intrinsics
    assert (k.width, k.height) == (32, 24)
    assert k.fx == pytest.approx(spec.fx / 20) and k.cx == pytest.approx((spec.cx + 0.5) / 20 - 0.5)
    with BagReader(tmp_path / "out" / "bag") as bag:
        frames = list(bag.camera_frames("/camera/image_raw"))
    assert frames[0].image.shape == (24, 32, 3) and len(frames) == 2
    assert not frames[0].camera.has_distortion  # freiburg3 images are already undistorted


def test_seven_scenes_folder_converts_with_default_intrinsics(tmp_path: Path) -> None:
    source = _seven_scenes_folder(tmp_path / "chess" / "seq-01")
    result = bff.convert(source, tmp_path / "out", fps=30.0)
    assert result.layout == "7scenes" and result.frames == 4 and result.frames_with_pose == 4
    assert result.intrinsics.fx == pytest.approx(58.5)
    with BagReader(tmp_path / "out" / "bag") as bag:
        frames = list(bag.camera_frames("/camera/image_raw"))
        traj = bag.trajectory("/ground_truth/pose")
    assert np.diff([f.stamp for f in frames]) == pytest.approx([1 / 30.0] * 3, abs=1e-6)
    np.testing.assert_allclose(traj.poses[2], _gt_pose(2 / 30.0), atol=1e-7)
    explicit = bff.convert(source, tmp_path / "out2", camera="60,61,31.5,23.5")
    assert (explicit.intrinsics.fx, explicit.intrinsics.fy) == (60.0, 61.0)


def test_errors_are_clear(tmp_path: Path) -> None:
    unknown = _tum_folder(tmp_path / "my_recording", frames=2)
    with pytest.raises(ValueError, match="--camera"):
        bff.convert(unknown, tmp_path / "out")
    (tmp_path / "scene" / "seq-01").mkdir(parents=True)
    with pytest.raises(ValueError, match="seq-01"):
        bff.read_dataset(tmp_path / "scene")
    with pytest.raises(ValueError, match="fx,fy,cx,cy"):
        bff.parse_camera("1,2,3", W, H)
    with pytest.raises(ValueError, match="WxH"):
        bff.parse_size("640-480")
    assert bff.tum_camera_name("rgbd_dataset_freiburg2_xyz") == "freiburg2"
    assert bff.tum_camera_name("fr3_office") == "freiburg3"
    assert bff.tum_camera_name("office") is None


def test_cli(tmp_path: Path) -> None:
    source = _seven_scenes_folder(tmp_path / "seq-02", frames=2)
    parser = argparse.ArgumentParser()
    bff.add_arguments(parser)
    args = parser.parse_args([str(source), str(tmp_path / "out"), "--resize", "32x24", "--storage", "mcap"])
    assert bff.run(args) == 0
    assert bff.run(args) == 2  # output not empty
    assert bff.run(parser.parse_args([str(tmp_path / "nothing"), str(tmp_path / "o")])) == 2


def test_seven_scenes_window_and_intrinsics_file(tmp_path: Path) -> None:
    source = _seven_scenes_folder(tmp_path / "seq-03", frames=6)
    (source / "camera-intrinsics.txt").write_text("580 0 318\n0 581 241\n0 0 1\n")
    result = bff.convert(source, tmp_path / "out", first_frame=2, max_frames=3)
    assert result.frames == 3
    assert (result.intrinsics.fx, result.intrinsics.fy) == pytest.approx((58.0, 58.1))  # 640x480 K, 64x48 images
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert meta["image_files"] == [f"frame-{i:06d}.color.png" for i in (2, 3, 4)]
    with BagReader(tmp_path / "out" / "bag") as bag:
        traj = bag.trajectory("/ground_truth/pose")
    assert traj.stamps[0] == pytest.approx(2 / 30.0)  # the source's stamps: windows line up with each other
    np.testing.assert_allclose(traj.poses[0], _gt_pose(2 / 30.0), atol=1e-7)
    with pytest.raises(ValueError, match="from image 6"):
        bff.convert(source, tmp_path / "out2", first_frame=6)
    (source / "camera-intrinsics.txt").write_text("580 0 318\n0 581 241\n")
    with pytest.raises(ValueError, match="3x3"):
        bff.read_dataset(source)
