"""Robust Gauss-Newton pose from flow correspondences and photometric residuals."""

from __future__ import annotations

import numpy as np
import torch

from posegs_ros.tracking.flow import image_gradients
from posegs_ros.geometry import se3_exp
from posegs_ros.tracking.pose_solver import PhotometricTerm, project_points, solve_pose

K = np.array([[250.0, 0, 160], [0, 250.0, 120], [0, 0, 1]])


def exp(xi: list[float]) -> np.ndarray:
    return se3_exp(torch.tensor(xi, dtype=torch.float64)).numpy()


def scene(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([rng.uniform(-2, 2, n), rng.uniform(-1.5, 1.5, n), rng.uniform(2, 5, n)], 1)


def test_recovers_pose_with_outliers() -> None:
    pts = scene(2000, 0)
    truth = exp([0.05, -0.02, 0.03, 0.01, -0.02, 0.015])
    uv, _ = project_points((pts - truth[:3, 3]) @ truth[:3, :3], K)
    rng = np.random.default_rng(1)
    targets = uv + rng.normal(0, 0.3, uv.shape)
    bad = rng.random(len(pts)) < 0.2
    targets[bad] += rng.uniform(-30, 30, (bad.sum(), 2))
    res = solve_pose(pts, targets, K, np.eye(4), huber_px=1.0, iterations=15)
    assert np.abs(res.pose[:3, 3] - truth[:3, 3]).max() < 2e-3
    assert np.abs(res.pose[:3, :3] - truth[:3, :3]).max() < 1e-3
    assert 0.75 < res.inlier_ratio < 0.85
    assert res.median_error_px < 0.6


def test_photometric_term_alone_aligns_a_textured_plane() -> None:
    # a fronto-parallel textured plane at z = 3: render the reference, move the camera, sample
    rng = np.random.default_rng(2)
    tex = np.clip(rng.random((60, 80)), 0, 1).astype(np.float32)
    import cv2

    tex = cv2.GaussianBlur(cv2.resize(tex, (320, 240), interpolation=cv2.INTER_CUBIC), (0, 0), 2.0)
    truth = exp([0.02, 0.01, 0.0, 0.0, 0.0, 0.0])
    # observed image = texture seen from the moved camera: plane point (X, Y, 3) appears at
    # u = fx (X - tx) / 3 + cx, so the image shifts by -fx tx / 3
    shift = np.float32([[1, 0, -250 * 0.02 / 3], [0, 1, -250 * 0.01 / 3]])
    observed = cv2.warpAffine(tex, shift, (320, 240), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    vs, us = np.mgrid[20:220:4, 20:300:4]
    us, vs = us.ravel().astype(float), vs.ravel().astype(float)
    pts = np.stack([(us - 160) / 250 * 3, (vs - 120) / 250 * 3, np.full_like(us, 3.0)], 1)
    gu, gv = image_gradients(observed)
    photo = PhotometricTerm(pts, tex[vs.astype(int), us.astype(int)], observed, gu, gv, weight=1.0)
    # geometric targets deliberately useless (all weight on photometric): zero points
    res = solve_pose(pts[:0], np.zeros((0, 2)), K, np.eye(4), photometric=photo, image_size=(320, 240), iterations=30)
    assert np.abs(res.pose[:2, 3] - truth[:2, 3]).max() < 2e-3


def _photometric_problem(seed: int) -> tuple[np.ndarray, np.ndarray, PhotometricTerm]:
    """Flow targets with noise and outliers plus a photometric term on a textured plane."""
    import cv2

    rng = np.random.default_rng(seed)
    pts = scene(1500, seed)
    truth = exp(list(rng.normal(0, [0.03, 0.03, 0.03, 0.01, 0.01, 0.01])))
    uv, _ = project_points((pts - truth[:3, 3]) @ truth[:3, :3], K)
    targets = uv + rng.normal(0, 0.4, uv.shape)
    bad = rng.random(len(pts)) < 0.15
    targets[bad] += rng.uniform(-20, 20, (bad.sum(), 2))
    image = cv2.GaussianBlur(rng.random((240, 320)).astype(np.float32), (0, 0), 2.0)
    gu, gv = image_gradients(image)
    reference = rng.random(400)
    return pts, targets, PhotometricTerm(pts[:400], reference, image, gu, gv, weight=0.05)


def test_kernel_follows_the_reference_step_for_step() -> None:
    from posegs_ros.tracking.pose_solver import solve_pose_reference

    for seed in range(3):
        pts, targets, photo = _photometric_problem(seed)
        for photometric in (None, photo):
            kwargs = dict(huber_px=1.5, iterations=8, photometric=photometric, image_size=(320, 240))
            fast = solve_pose(pts, targets, K, np.eye(4), **kwargs)
            ref = solve_pose_reference(pts, targets, K, np.eye(4), **kwargs)
            assert fast.iterations == ref.iterations
            np.testing.assert_allclose(fast.pose, ref.pose, atol=1e-9)
            assert fast.inlier_ratio == ref.inlier_ratio
            assert abs(fast.median_error_px - ref.median_error_px) < 1e-7
            assert abs(fast.cost - ref.cost) <= 1e-7 * max(ref.cost, 1.0)


def test_kernel_se3_exp_matches_geometry() -> None:
    from posegs_ros.tracking._pose_kernels import se3_exp as kernel_exp

    rng = np.random.default_rng(4)
    for scale in (1e-7, 1e-3, 0.5, 2.0):
        xi = rng.normal(0, scale, 6)
        np.testing.assert_allclose(kernel_exp(xi), exp(list(xi)), atol=1e-12)


def test_kernel_se3_log_matches_geometry() -> None:
    from posegs_ros.geometry import se3_log
    from posegs_ros.tracking._pose_kernels import se3_log as kernel_log

    rng = np.random.default_rng(5)
    for scale in (1e-7, 1e-3, 0.5, 2.0, 3.1):
        xi = rng.normal(0, scale, 6)
        pose = exp(list(xi))
        np.testing.assert_allclose(kernel_log(pose), se3_log(torch.from_numpy(pose)).numpy(), atol=1e-10)
