"""Monocular two-view initialization on a synthetic blurred sequence with ground truth."""

from __future__ import annotations

import numpy as np
import pytest

from posegs_ros.config import InitConfig
from posegs_ros.tracking.flow import DenseFlow
from posegs_ros.tracking.initialization import image_sharpness, sharp_enough, triangulate, try_two_view


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


def test_two_view_leaves_a_moving_box_out_and_flags_nothing_when_static(small_sequence) -> None:
    from posegs_ros.tools.synth import SynthConfig, generate

    seq = generate(SynthConfig(seed=0, frames=13, width=160, height=120, dynamic=True, object_motion="slide",
                               object_size=0.7, object_speed=1.4))
    first, second = seq.frames[0], seq.frames[12]
    assert not first.mask.any() and second.mask.mean() > 0.1  # the box entered between the two frames
    cfg = InitConfig(min_parallax_px=2.0, min_inliers=150, moving_region_px=40)
    result, reason = try_two_view(first.blurred, second.blurred, seq.intrinsics.numpy(), cfg, DenseFlow())
    assert result is not None, reason
    moving = result.moving_second
    assert moving is not None
    assert (moving & second.mask).sum() / (moving | second.mask).sum() > 0.6  # the box, in the second frame
    assert (moving & second.mask).sum() > 0.8 * second.mask.sum()
    # in the first frame: the background the box covers later (the second view sees something else there)
    if result.moving_first is not None:
        assert result.moving_first.mean() < 1.5 * second.mask.mean()
    # a static scene: nothing is left out
    quiet, reason = try_two_view(small_sequence.frames[0].blurred, small_sequence.frames[-1].blurred,
                                 small_sequence.intrinsics.numpy(), InitConfig(min_parallax_px=2.0, min_inliers=150,
                                                                               moving_region_px=40), DenseFlow())
    assert quiet is not None, reason
    assert quiet.moving_first is None and quiet.moving_second is None
    off, _ = try_two_view(first.blurred, second.blurred, seq.intrinsics.numpy(),
                          InitConfig(min_parallax_px=2.0, min_inliers=150, moving_region_px=0), DenseFlow())
    assert off is not None and off.moving_second is None  # 0 turns it off


def test_sharpness_falls_with_the_motion_blur_of_a_frame(small_sequence) -> None:
    frames = small_sequence.frames
    assert all(image_sharpness(f.sharp) > image_sharpness(f.blurred) for f in frames)
    sharpness = np.log([image_sharpness(f.blurred) for f in frames])
    blur = np.log([f.blur_px for f in frames])
    assert np.corrcoef(sharpness, blur)[0, 1] < -0.7  # the blurrier the frame, the less sharp (-0.85 here)
    image = frames[0].blurred
    darker = (image * 0.6).astype(np.uint8)  # an exposure gain does not read as blur
    assert image_sharpness(darker) == pytest.approx(image_sharpness(image), rel=0.03)
    grey = image[..., 1]
    assert image_sharpness(grey) > 0 and image_sharpness(np.full_like(grey, 128)) == 0.0
    assert image_sharpness(np.zeros_like(grey)) == 0.0


def test_sharp_enough_compares_with_the_sharpest_nearby_frame() -> None:
    assert sharp_enough(80.0, [100.0, 50.0, 80.0], 0.8)
    assert not sharp_enough(79.0, [100.0, 79.0], 0.8)
    assert sharp_enough(1.0, [100.0], 0.0)  # ratio 0: any frame
    assert sharp_enough(5.0, [], 0.8)
