"""Focal self-calibration: point tracks on moving images, and the bundle adjustment's focal on
made scenes (a wrong focal given comes back, the right one stays)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from posegs_ros.tracking.calibration import PointTracks, estimate_focal_scale, track_points


def test_tracks_follow_a_known_image_shift() -> None:
    rng = np.random.default_rng(0)
    base = cv2.GaussianBlur((rng.random((160, 200)) * 255).astype(np.uint8), (0, 0), 1.5)
    shift = np.array([1.3, -0.6])
    grays = [cv2.warpAffine(base, np.float32([[1, 0, shift[0] * t], [0, 1, shift[1] * t]]), (200, 160),
                            flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT) for t in range(8)]
    tracks = track_points(grays, max_points=150)
    long = [(uv, f) for uv, f in zip(tracks.uv, tracks.frames) if len(f) == 8]
    assert len(long) > 60
    for uv, frames in long:
        inner = (uv[:, 0] > 25).all() and (uv[:, 0] < 175).all() and (uv[:, 1] > 25).all() and (uv[:, 1] < 135).all()
        if inner:  # away from the reflected border
            np.testing.assert_allclose(uv - uv[0], (frames - frames[0])[:, None] * shift, atol=0.15)


def made_scene(seed: int, views: int = 20) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A hand-held-like camera path (rotation ~15 deg, translation ~0.3) and points 1.5-4 m in front:
    camera-to-world ``[V, 4, 4]``, points ``[N, 3]``, intrinsics ``[3, 3]`` (320x240)."""
    rng = np.random.default_rng(seed)
    k = np.array([[260.0, 0, 160.0], [0, 260.0, 120.0], [0, 0, 1]])
    t = np.linspace(0, 1, views)
    poses = np.tile(np.eye(4), (views, 1, 1))
    angles = np.stack([0.12 * np.sin(2.0 * t + seed), 0.25 * t, 0.05 * np.cos(3.0 * t)], 1)
    poses[:, :3, :3] = Rotation.from_rotvec(angles).as_matrix()
    poses[:, :3, 3] = np.stack([0.3 * t, 0.05 * np.sin(4 * t), 0.1 * t], 1)
    pts = np.concatenate([rng.uniform(-2.5, 2.5, (250, 2)), rng.uniform(1.5, 4.0, (250, 1))], 1)
    return poses, pts, k


def tracks_of(poses: np.ndarray, pts: np.ndarray, k: np.ndarray, noise_px: float, seed: int) -> PointTracks:
    rng = np.random.default_rng(seed)
    uv, frames = [], []
    w2c = np.linalg.inv(poses)
    for x in pts:
        cam = w2c[:, :3, :3] @ x + w2c[:, :3, 3]
        pix = cam[:, :2] / cam[:, 2:3] @ np.diag([k[0, 0], k[1, 1]]) + k[:2, 2]
        seen = (cam[:, 2] > 0.1) & (pix[:, 0] >= 0) & (pix[:, 0] < 320) & (pix[:, 1] >= 0) & (pix[:, 1] < 240)
        if seen.sum() >= 4:
            uv.append(pix[seen] + rng.normal(0, noise_px, (seen.sum(), 2)))
            frames.append(np.flatnonzero(seen))
    return PointTracks(uv, frames)


@pytest.mark.parametrize("given_over_true", [1.12, 1.0, 0.9])
def test_the_adjustment_finds_the_focal_the_images_were_made_with(given_over_true: float) -> None:
    poses, pts, k = made_scene(seed=1)
    tracks = tracks_of(poses, pts, k, noise_px=0.3, seed=2)
    # the poses an engine would have found with the wrong focal: rotations shrunk or grown with it
    rotvec = Rotation.from_matrix(poses[:, :3, :3]).as_rotvec() / given_over_true
    start = poses.copy()
    start[:, :3, :3] = Rotation.from_rotvec(rotvec).as_matrix()
    given = k.copy()
    given[0, 0] *= given_over_true
    given[1, 1] *= given_over_true
    est = estimate_focal_scale(tracks, start, given, range(len(poses)), max_points=150)
    assert est is not None and est.points >= 100
    assert est.scale == pytest.approx(1.0 / given_over_true, rel=0.01)
    assert est.sigma < 0.01 and est.rms_px < 0.6
    assert est.rotation_deg > 10


def test_too_few_posed_views_give_no_estimate() -> None:
    poses, pts, k = made_scene(seed=4, views=6)
    tracks = tracks_of(poses, pts, k, noise_px=0.3, seed=5)
    poses[1:4] = np.nan  # not posed
    assert estimate_focal_scale(tracks, poses, k, range(6)) is None



def test_the_adjustments_analytic_jacobian_matches_finite_differences(monkeypatch) -> None:
    from scipy.optimize._numdiff import approx_derivative

    from posegs_ros.tracking import calibration

    poses, pts, k = made_scene(seed=3, views=12)
    problem = calibration._setup(tracks_of(poses, pts, k, noise_px=0.3, seed=6), poses, k, range(12), 40)
    assert problem is not None
    seen = {}

    def capture(residuals, jacobian, x0, n_cameras, max_evaluations):  # noqa: ANN001, ANN202
        seen.update(residuals=residuals, jacobian=jacobian, x0=x0)
        raise StopIteration

    monkeypatch.setattr(calibration, "_levenberg_marquardt", capture)
    with pytest.raises(StopIteration):
        calibration._solve(problem, k, 10)
    x = seen["x0"] + np.random.default_rng(0).normal(0, 0.01, len(seen["x0"]))
    x[0] += 0.3  # focal 35 % off, rotations away from zero
    numeric = approx_derivative(seen["residuals"], x, method="3-point")
    np.testing.assert_allclose(seen["jacobian"](x).toarray(), numeric, atol=1e-5 * np.abs(numeric).max())
