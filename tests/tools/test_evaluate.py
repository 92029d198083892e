"""Evaluation: known similarity transforms, PSNR edge cases, masks, report files, CLI."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from posegs_ros.io import Trajectory, quaternion_xyzw_to_matrix, write_tum
from posegs_ros.tools import evaluate as ev
from posegs_ros.tools.evaluate import PSNR_CAP_DB, evaluate, evaluate_images, evaluate_trajectory, write_report


def _trajectory(n: int = 40, seed: int = 0) -> Trajectory:
    """A smooth camera path with rotation and 3D motion."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / 30.0
    poses = np.zeros((n, 4, 4))
    for i, ti in enumerate(t):
        poses[i] = np.eye(4)
        poses[i, :3, :3] = quaternion_xyzw_to_matrix(np.array([0.1 * np.sin(ti), 0.2 * ti, 0.05, 1.0]))
        poses[i, :3, 3] = [0.8 * np.sin(1.3 * ti), 0.3 * ti, 0.1 * np.cos(2.1 * ti)] + rng.normal(0, 1e-3, 3)
    return Trajectory(1_700_000_000.0 + t, poses)


def _similarity(scale: float) -> np.ndarray:
    s = np.eye(4)
    s[:3, :3] = scale * quaternion_xyzw_to_matrix(np.array([0.2, -0.4, 0.3, 0.8]))
    s[:3, 3] = [1.5, -2.0, 0.7]
    return s


def _apply(similarity: np.ndarray, traj: Trajectory) -> Trajectory:
    """Move the cameras of ``traj`` by ``x -> s R x + t`` (orientations rotated by R)."""
    scale = np.cbrt(np.linalg.det(similarity[:3, :3]))
    rotation = similarity[:3, :3] / scale
    poses = traj.poses.copy()
    poses[:, :3, :3] = rotation @ traj.poses[:, :3, :3]
    poses[:, :3, 3] = traj.poses[:, :3, 3] @ similarity[:3, :3].T + similarity[:3, 3]
    return Trajectory(traj.stamps.copy(), poses)


def test_similarity_perturbation_gives_zero_ate_after_sim3_and_the_known_error_without() -> None:
    gt = _trajectory()
    est = _apply(_similarity(0.4), gt)
    metrics = evaluate_trajectory(gt, est)
    assert metrics.matched == 40
    assert metrics.ate_rmse_sim3 < 1e-9
    assert metrics.scale == pytest.approx(1 / 0.4, rel=1e-9)
    expected_unaligned = np.sqrt(np.mean(np.sum((est.positions - gt.positions) ** 2, axis=1)))
    assert metrics.ate_rmse_unaligned == pytest.approx(expected_unaligned, rel=1e-9)
    assert metrics.ate_rmse_se3 > 0.1  # a rigid alignment cannot undo the scale
    assert metrics.rpe_trans_rmse < 1e-9 and metrics.rpe_rot_rmse_deg < 1e-6
    np.testing.assert_allclose(metrics.alignment_sim3 @ _similarity(0.4), np.eye(4), atol=1e-9)


def test_rigid_perturbation_gives_zero_ate_after_se3() -> None:
    gt = _trajectory()
    metrics = evaluate_trajectory(gt, _apply(_similarity(1.0), gt))
    assert metrics.ate_rmse_se3 < 1e-9 and metrics.ate_rmse_sim3 < 1e-9
    assert metrics.scale == pytest.approx(1.0)


def test_known_noise_is_measured() -> None:
    gt = _trajectory(200)
    rng = np.random.default_rng(5)
    noisy = Trajectory(gt.stamps, gt.poses.copy())
    noisy.poses[:, :3, 3] += rng.normal(0, 0.01, (200, 3))
    metrics = evaluate_trajectory(gt, noisy)
    assert metrics.ate_rmse_unaligned == pytest.approx(0.01 * np.sqrt(3), rel=0.15)
    assert metrics.ate_rmse_sim3 <= metrics.ate_rmse_se3 <= metrics.ate_rmse_unaligned


def test_rotation_drift_shows_in_the_one_second_rpe() -> None:
    """A slow rotation drift (0.1 deg per frame about a fixed map axis, positions exact):
    per-frame RPE sees 0.1 deg, the ~1 s RPE the drift accumulated over 30 frames (3 deg)."""
    gt = _trajectory(120)
    drifting = Trajectory(gt.stamps, gt.poses.copy())
    for i in range(len(gt)):
        angle = np.radians(0.1 * i)
        spin = np.array([[1.0, 0.0, 0.0], [0.0, np.cos(angle), -np.sin(angle)], [0.0, np.sin(angle), np.cos(angle)]])
        drifting.poses[i, :3, :3] = spin @ gt.poses[i, :3, :3]
    metrics = evaluate_trajectory(gt, drifting)
    assert metrics.ate_rmse_sim3 < 1e-9  # positions untouched: ATE cannot see it
    assert metrics.rpe_1s_frames == 30  # stamps 1/30 s apart
    assert metrics.rpe_rot_rmse_deg == pytest.approx(0.1, rel=1e-3)
    assert metrics.rpe_1s_rot_rmse_deg == pytest.approx(3.0, rel=1e-3)
    summary = metrics.summary()
    assert summary["rpe_1s_frames"] == 30 and summary["rpe_1s_rot_rmse_deg"] == pytest.approx(3.0, rel=1e-3)


def test_rotation_gain_reads_rotations_made_too_small_about_the_axes_across_the_view() -> None:
    """A hand-held pan and tilt (turning about the camera's own axes) estimated with rotations 0.8x
    about x, 0.9x about y and exact about z (too small across the view, as a too long focal length
    makes them): the gains read that, whatever similarity the estimate lives in; exact reads 1."""
    from scipy.spatial.transform import Rotation

    n = 120
    t = np.arange(n) / 30.0
    rates = np.stack([0.3 * np.sin(1.1 * t), 0.5 * np.cos(0.7 * t), 0.2 * np.sin(2.3 * t + 0.4)], 1) / 30  # rad / frame
    gt_poses, est_poses = np.tile(np.eye(4), (n, 1, 1)), np.tile(np.eye(4), (n, 1, 1))
    for i in range(1, n):
        gt_poses[i, :3, :3] = gt_poses[i - 1, :3, :3] @ Rotation.from_rotvec(rates[i]).as_matrix()
        est_poses[i, :3, :3] = est_poses[i - 1, :3, :3] @ Rotation.from_rotvec(rates[i] * [0.8, 0.9, 1.0]).as_matrix()
        gt_poses[i, :3, 3] = est_poses[i, :3, 3] = [0.5 * t[i], 0.1 * np.sin(t[i]), 0.0]
    gt = Trajectory(1_700_000_000.0 + t, gt_poses)
    metrics = evaluate_trajectory(gt, _apply(_similarity(0.3), Trajectory(gt.stamps.copy(), est_poses)))
    assert metrics.rotation_gain_1s == pytest.approx([0.8, 0.9, 1.0], abs=0.02)
    assert metrics.summary()["rotation_gain_1s"] == metrics.rotation_gain_1s
    assert evaluate_trajectory(gt, _apply(_similarity(0.3), gt)).rotation_gain_1s == pytest.approx([1.0] * 3, abs=1e-9)
    assert ev.rotation_gain(gt_poses[:5, :3, :3], gt_poses[:5, :3, :3], 30) == [pytest.approx(float("nan"), nan_ok=True)] * 3


def test_the_one_second_rpe_of_a_short_trajectory_spans_what_there_is() -> None:
    gt = _trajectory(10)
    metrics = evaluate_trajectory(gt, _apply(_similarity(0.5), gt))
    assert metrics.rpe_1s_frames == 9 and metrics.rpe_1s_rot_rmse_deg < 1e-6 and metrics.rpe_1s_trans_rmse < 1e-9


def test_association_uses_the_tolerance() -> None:
    gt = _trajectory()
    shifted = Trajectory(gt.stamps + 0.004, gt.poses)
    assert evaluate_trajectory(gt, shifted, max_diff=0.005).matched == 40
    with pytest.raises(ValueError, match="within 0.001 s"):
        evaluate_trajectory(gt, shifted, max_diff=0.001)
    few = Trajectory(gt.stamps[:2], gt.poses[:2])
    with pytest.raises(ValueError, match="at least 3"):
        evaluate_trajectory(gt, few)


def _write_images(folder: Path, images: list[np.ndarray]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        cv2.imwrite(str(folder / f"{i:04d}.png"), image[:, :, ::-1])
    return folder


def _images(n: int = 4, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [cv2.GaussianBlur(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8), (5, 5), 1.0) for _ in range(n)]


def test_identical_images_have_infinite_psnr_handled_cleanly(tmp_path: Path) -> None:
    images = _images()
    gt = _write_images(tmp_path / "gt", images)
    same = _write_images(tmp_path / "same", images)
    metrics = evaluate_images(gt, same)
    assert all(math.isinf(v) for v in metrics.psnr) and metrics.identical == 4
    assert metrics.psnr_mean == PSNR_CAP_DB and metrics.ssim_mean == pytest.approx(1.0)
    result = evaluate(gt_images=gt, est_images=same)
    text = json.dumps(result.to_dict(), allow_nan=False)  # strict JSON: no Infinity tokens
    assert json.loads(text)["per_frame"]["0000.png"]["deblurred_psnr"] == "inf"


def test_psnr_of_a_known_difference(tmp_path: Path) -> None:
    images = _images(2)
    brighter = [np.clip(im.astype(int) + 1, 0, 255).astype(np.uint8) for im in images]
    for im in images:  # keep the +1 exact: no clipping
        assert im.max() < 255
    metrics = evaluate_images(_write_images(tmp_path / "gt", images), _write_images(tmp_path / "b", brighter))
    assert metrics.psnr == pytest.approx([10 * np.log10(255**2)] * 2)
    assert ev.mean_psnr([30.0, math.inf]) == pytest.approx((30.0 + PSNR_CAP_DB) / 2)


def test_mismatched_image_sets_raise(tmp_path: Path) -> None:
    gt = _write_images(tmp_path / "gt", _images(2))
    other = tmp_path / "other"
    other.mkdir()
    cv2.imwrite(str(other / "frame.png"), _images(1)[0])
    with pytest.raises(ValueError, match="no image file names in common"):
        evaluate_images(gt, other)
    small = tmp_path / "small"
    small.mkdir()
    cv2.imwrite(str(small / "0000.png"), np.zeros((10, 10, 3), np.uint8))
    with pytest.raises(ValueError, match="10x10"):
        evaluate_images(gt, small)


def test_mask_iou_and_psnr_inside_the_mask(tmp_path: Path) -> None:
    gt_masks, est_masks = tmp_path / "gt_masks", tmp_path / "est_masks"
    gt_masks.mkdir()
    est_masks.mkdir()
    a = np.zeros((40, 50), np.uint8)
    a[10:20, 10:30] = 255  # 200 px
    b = np.zeros((40, 50), np.uint8)
    b[10:20, 20:40] = 255  # overlaps 100 px, union 300
    for folder, mask0 in ((gt_masks, a), (est_masks, b)):
        cv2.imwrite(str(folder / "0000.png"), mask0)
        cv2.imwrite(str(folder / "0001.png"), np.zeros((40, 50), np.uint8))  # both empty: no IoU
    images = _images(2)
    changed = [im.copy() for im in images]
    changed[0][0:5, 0:5] = 0  # outside the GT mask: PSNR inside stays infinite
    gt_images = _write_images(tmp_path / "gt", images)
    est_images = _write_images(tmp_path / "est", changed)
    result = evaluate(gt_images=gt_images, est_images=est_images, gt_masks=gt_masks, est_masks=est_masks)
    assert result.masks.iou == [pytest.approx(1 / 3), None]
    assert result.masks.iou_mean == pytest.approx(1 / 3)
    assert math.isinf(result.masks.psnr_in_mask[0]) and result.masks.psnr_in_mask[1] is None
    assert result.deblurred.psnr[0] < 60


def test_report_files_and_numbers(tmp_path: Path) -> None:
    gt = _trajectory()
    est = _apply(_similarity(0.5), gt)
    est.poses[:, :3, 3] += np.random.default_rng(0).normal(0, 0.002, (40, 3))
    write_tum(tmp_path / "gt.tum", gt.stamps, gt.poses)
    write_tum(tmp_path / "est.tum", est.stamps, est.poses)
    images = _images(6)
    gt_images = _write_images(tmp_path / "sharp", images)
    est_images = _write_images(tmp_path / "deblurred", [cv2.GaussianBlur(im, (3, 3), 0.5) for im in images])
    inputs = _write_images(tmp_path / "blurred", [cv2.GaussianBlur(im, (9, 9), 3.0) for im in images])
    result = evaluate(tmp_path / "gt.tum", tmp_path / "est.tum", gt_images=gt_images, est_images=est_images,
                      input_images=inputs)
    assert result.deblurred.psnr_mean > result.input.psnr_mean
    index = write_report(result, tmp_path / "report")
    names = {p.name for p in (tmp_path / "report").iterdir()}
    assert names == {"eval.json", "trajectory.png", "errors.png", "strip.png", "index.html"}
    for png in ("trajectory.png", "errors.png", "strip.png"):
        image = cv2.imread(str(tmp_path / "report" / png))
        assert image is not None and image.shape[0] > 200 and image.shape[1] > 300
    data = json.loads((tmp_path / "report" / "eval.json").read_text())
    assert data["trajectory"]["ate_rmse_sim3"] == pytest.approx(result.trajectory.ate_rmse_sim3)
    assert data["trajectory"]["scale"] == pytest.approx(2.0, rel=0.01)
    assert set(data["per_frame"]["0003.png"]) == {"deblurred_psnr", "deblurred_ssim", "input_psnr", "input_ssim",
                                                  "vs_input_psnr", "vs_input_ssim"}
    assert data["vs_input"]["psnr_mean"] == pytest.approx(result.vs_input.psnr_mean)  # renders vs what was seen
    page = index.read_text()
    assert f"{result.trajectory.ate_rmse_sim3 * 100:.2f} cm" in page
    assert 'src="strip.png"' in page and f"{result.deblurred.psnr_mean:.2f} dB" in page


def test_report_with_trajectory_only(tmp_path: Path) -> None:
    gt = _trajectory()
    result = ev.EvalResult(trajectory=evaluate_trajectory(gt, _apply(_similarity(2.0), gt)))
    write_report(result, tmp_path / "r")
    assert {p.name for p in (tmp_path / "r").iterdir()} == {"eval.json", "trajectory.png", "errors.png", "index.html"}


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gt = _trajectory()
    write_tum(tmp_path / "gt.tum", gt.stamps, gt.poses)
    est = _apply(_similarity(0.5), gt)
    write_tum(tmp_path / "est.tum", est.stamps, est.poses)
    parser = argparse.ArgumentParser()
    ev.add_arguments(parser)
    args = parser.parse_args(["--gt", str(tmp_path / "gt.tum"), "--est", str(tmp_path / "est.tum"),
                              "--out", str(tmp_path / "out")])
    assert ev.run(args) == 0
    assert "ATE RMSE Sim(3) 0.0000 m (scale 2.0000)" in capsys.readouterr().out
    assert (tmp_path / "out" / "index.html").exists()
    assert ev.run(parser.parse_args([])) == 2
    assert ev.run(parser.parse_args(["--gt", str(tmp_path / "gt.tum")])) == 2
    assert ev.run(parser.parse_args(["--gt", str(tmp_path / "missing.tum"), "--est", str(tmp_path / "est.tum")])) == 2


def test_renders_against_the_input_without_sharp_ground_truth(tmp_path: Path) -> None:
    """A real camera has no sharp ground truth: the renders are compared with the input frames."""
    images = _images(4)
    inputs = _write_images(tmp_path / "input", images)
    renders = _write_images(tmp_path / "renders", [cv2.GaussianBlur(im, (3, 3), 0.8) for im in images])
    result = evaluate(est_images=renders, input_images=inputs)
    assert result.deblurred is None and result.input is None
    assert 15 < result.vs_input.psnr_mean < 60 and len(result.vs_input.names) == 4
    assert "renders vs input" in ev.summary_text(result)
    write_report(result, tmp_path / "report")
    page = (tmp_path / "report" / "index.html").read_text()
    assert f"{result.vs_input.psnr_mean:.2f} dB" in page and (tmp_path / "report" / "strip.png").is_file()
    with pytest.raises(ValueError, match="--gt-images or --input-images"):
        evaluate(est_images=renders)


def test_ssim_equals_scikit_images_structural_similarity() -> None:
    """The box-filter SSIM is scikit-image's for 8-bit images (RGB and grey, smooth and noisy),
    and refuses images it cannot window."""
    from skimage.metrics import structural_similarity

    from posegs_ros.tools.evaluate import ssim

    rng = np.random.default_rng(4)
    yy, xx = np.mgrid[0:50, 0:61]
    smooth = np.stack([127 + 100 * np.sin(xx / 7.0 + k) * np.cos(yy / 5.0) for k in range(3)], -1).astype(np.uint8)
    noisy = np.clip(smooth.astype(int) + rng.integers(-40, 41, smooth.shape), 0, 255).astype(np.uint8)
    other = rng.integers(0, 256, smooth.shape, dtype=np.uint8)
    for a, b in [(smooth, noisy), (noisy, other), (smooth, smooth)]:
        assert ssim(a, b) == pytest.approx(structural_similarity(a, b, channel_axis=2, data_range=255), abs=1e-12)
        assert ssim(a[..., 0], b[..., 0]) == pytest.approx(
            structural_similarity(a[..., 0], b[..., 0], data_range=255), abs=1e-12)
    with pytest.raises(ValueError, match="at least 7"):
        ssim(smooth[:6], noisy[:6])
    with pytest.raises(ValueError, match="one shape"):
        ssim(smooth, noisy[:40])
