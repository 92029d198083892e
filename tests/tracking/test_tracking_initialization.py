"""Monocular two-view initialization on a synthetic blurred sequence with ground truth."""

from __future__ import annotations

import numpy as np

from posegs_ros.config import InitConfig
from posegs_ros.tracking.flow import DenseFlow
from posegs_ros.tracking.initialization import triangulate, try_two_view


def rotation_angle_deg(r: np.ndarray) -> float:
    return float(np.degrees(np.arccos(np.clip((np.trace(r) - 1) / 2, -1, 1))))


def test_two_view_recovers_relative_pose_and_depth(small_sequence) -> None:
    seq = small_sequence
    first, second = seq.frames[0], seq.frames[-1]
    cfg = InitConfig(min_parallax_px=2.0, min_inliers=150, baseline=0.5)
    result, reason = try_two_view(first.blurred, second.blurred, seq.intrinsics.numpy(), cfg, DenseFlow())
    assert result is not None, reason
    truth = np.linalg.inv(first.pose) @ second.pose
    est = result.pose_second
    assert rotation_angle_deg(est[:3, :3].T @ truth[:3, :3]) < 0.5
    t_est, t_true = est[:3, 3], truth[:3, 3]
    assert np.linalg.norm(t_est) == np.float64(0.5) or abs(np.linalg.norm(t_est) - 0.5) < 1e-9  # scale = baseline
    cos = t_est @ t_true / (np.linalg.norm(t_est) * np.linalg.norm(t_true))
    assert np.degrees(np.arccos(min(cos, 1.0))) < 5.0
    # depths agree with ground truth up to the monocular scale
    px = result.pixels_first.astype(int)
    gt = first.depth[px[:, 1], px[:, 0]]
    scale = np.median(gt / result.points[:, 2])
    assert np.median(np.abs(result.points[:, 2] * scale - gt) / gt) < 0.05
    assert result.depth_first.shape == first.depth.shape and np.isfinite(result.depth_first).all()


def test_no_initialization_without_parallax(small_sequence) -> None:
    seq = small_sequence
    result, reason = try_two_view(seq.frames[0].blurred, seq.frames[0].blurred.copy(), seq.intrinsics.numpy(),
                                  InitConfig(), DenseFlow())
    assert result is None and "moved" in reason


def test_triangulate_exact_points() -> None:
    k = np.array([[100.0, 0, 50], [0, 100.0, 40], [0, 0, 1]])
    pts = np.array([[0.1, -0.2, 2.0], [0.5, 0.3, 3.0], [-0.4, 0.1, 1.5]])
    pose_b = np.eye(4)
    pose_b[:3, 3] = [0.2, 0.0, 0.05]

    def proj(pose: np.ndarray) -> np.ndarray:
        x = (pts - pose[:3, 3]) @ pose[:3, :3]
        return (x[:, :2] / x[:, 2:]) * 100 + [50, 40]

    assert np.allclose(triangulate(k, np.eye(4), pose_b, proj(np.eye(4)), proj(pose_b)), pts, atol=1e-6)
