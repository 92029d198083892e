"""The exposure time measured from how consecutive frames are blurred (blur commutation), on
sequences of the synthetic room (``posegs synth``: each frame the mean of sharp ray-cast
views over its exposure) with their true poses and depth, and made-up depth."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from posegs_ros.camera import Intrinsics
from posegs_ros.geometry import se3_log
from posegs_ros.tools.synth import SynthConfig, generate
from posegs_ros.tracking.tracker import neighbour_twist
from posegs_ros.tracking.exposure import (
    RATIOS,
    ExposureRatioEstimator,
    ExposureView,
    commutation_curve,
    exposure_gray,
    visible_points,
)

FPS = 30.0


@functools.lru_cache(maxsize=None)
def room(ratio: float, seed: int):
    """14 frames at 160x120 of the hand-held room with a stronger shake, exposed ``ratio`` of the period."""
    return generate(SynthConfig(seed=seed, frames=14, width=160, height=120, exposure=ratio / FPS, shake=1.8,
                                supersample=1))


def estimate(seq, gains: np.ndarray | None = None, prior: float = 0.5) -> ExposureRatioEstimator:
    """The estimate over ``seq`` from its true poses and depth (frames' brightness times ``gains``)."""
    est = ExposureRatioEstimator(prior, max_pairs=100)
    for i, f in enumerate(seq.frames):
        image = f.blurred if gains is None else np.clip(f.blurred * gains[i], 0, 255).astype(np.uint8)
        depth = torch.from_numpy(f.depth)
        points = visible_points(depth, torch.ones_like(depth), f.pose, seq.intrinsics)
        pair = est.push(f.stamp, f.pose, exposure_gray(image), points, 1.0 / FPS)
        if pair is not None:
            est.add(pair, seq.intrinsics)
    return est


@pytest.mark.parametrize("ratio", [0.3, 0.75, 1.0])
def test_the_measured_exposure_is_the_one_the_frames_were_made_with(ratio: float) -> None:
    for seed in (0, 1):
        est = estimate(room(ratio, seed))
        assert est.pairs >= 5
        # within 0.03: velocities from two frames on each side (a central difference read ~8 % long)
        assert est.value == pytest.approx(ratio, abs=0.03), (seed, est.curve / est.weight)


def test_a_sharp_camera_measures_no_exposure() -> None:
    for seed in (0, 2):
        est = estimate(room(0.0, seed))
        assert est.value == 0.0, (seed, est.curve / est.weight)


def test_auto_exposure_between_frames_does_not_change_the_measure() -> None:
    seq = room(0.75, 0)
    gains = np.random.default_rng(4).uniform(0.8, 1.2, len(seq.frames))
    dimmed = estimate(seq, gains)
    assert dimmed.value == pytest.approx(estimate(seq).value, abs=0.05)
    assert dimmed.value == pytest.approx(0.75, abs=0.1)


def test_a_steady_motion_cannot_tell_so_the_prior_stays() -> None:
    seq = room(0.75, 0)
    est = ExposureRatioEstimator(0.4)
    step = np.eye(4)
    step[0, 3] = 0.02
    for i, f in enumerate(seq.frames[:8]):  # the same step every period: a pair's two streaks agree
        pose = seq.frames[0].pose @ np.linalg.matrix_power(step, i)
        depth = torch.from_numpy(f.depth)
        pair = est.push(f.stamp, pose, exposure_gray(f.blurred), visible_points(depth, torch.ones_like(depth), pose,
                                                                                 seq.intrinsics), 1.0 / FPS)
        if pair is not None:  # the velocity of a steady motion is its step per period
            np.testing.assert_allclose(pair.a.motion, se3_log(torch.from_numpy(step)).numpy(), atol=1e-6)
            np.testing.assert_allclose(pair.a.motion, pair.b.motion, atol=1e-6)
            assert not est.add(pair, seq.intrinsics)
    assert est.pairs == 0 and est.skipped == 3
    assert est.value is None and est.ratio == 0.4


def views(seq, i: int) -> tuple[ExposureView, ExposureView, torch.Tensor]:
    """Frames ``i`` and ``i + 1`` of ``seq`` with their true motions, and the points ``i`` sees."""
    def view(j: int) -> ExposureView:
        f = seq.frames[j]
        rel = np.linalg.inv(seq.frames[j - 1].pose) @ seq.frames[j + 1].pose
        return ExposureView(exposure_gray(f.blurred), f.pose, se3_log(torch.from_numpy(rel)).numpy() / 2)

    depth = torch.from_numpy(seq.frames[i].depth)
    return view(i), view(i + 1), visible_points(depth, torch.ones_like(depth), seq.frames[i].pose, seq.intrinsics)


def test_the_curve_is_lowest_at_the_true_exposure_and_needs_points_both_frames_see() -> None:
    seq = room(1.0, 0)
    curves = [commutation_curve(*views(seq, i), seq.intrinsics) for i in range(1, len(seq.frames) - 2)]
    curve, streak_px = max(curves, key=lambda c: c[1])  # the pair whose streaks differ most
    assert streak_px > 1.5 and abs(RATIOS[int(np.argmin(curve))] - 1.0) <= 0.2
    a, b, points = views(seq, 5)
    far = a.pose.copy()
    far[:3, 3] += 50.0 * far[:3, 2]  # the first camera moved far ahead: the points are behind it
    assert commutation_curve(ExposureView(a.gray, far, a.motion), b, points, seq.intrinsics) is None


def test_push_pairs_frames_once_their_neighbours_are_known_and_a_gap_breaks_the_chain() -> None:
    seq = room(0.75, 0)
    est = ExposureRatioEstimator(0.5, max_pairs=3)
    period = 1.0 / FPS
    # (stamp in periods, the frame sees map points, a pair is handed out); 7 and 8 were dropped.
    # A pair is the third and fourth of six consecutive frames (two on each side give the velocity)
    steps = [(0, True, False), (1, True, False), (2, True, False), (3, True, False), (4, True, False),
             (5, True, True), (6, True, True), (9, True, False), (10, True, False), (11, False, False),
             (12, True, False), (13, True, False), (14, True, False), (15, True, True)]
    # 14 would pair 11 and 12, but 11 saw no points; after 15 three pairs: done
    gray = [exposure_gray(f.blurred) for f in seq.frames]
    poses = [f.pose for f in seq.frames]
    stamps = np.array([t * period for t, _, _ in steps])
    for i, (t, seen, expect) in enumerate(steps):
        depth = torch.from_numpy(seq.frames[i].depth)
        points = visible_points(depth, torch.ones_like(depth), poses[i], seq.intrinsics) if seen else None
        pair = est.push(t * period, poses[i], gray[i], points, period)
        assert (pair is not None) == expect, t
        if pair is not None:
            assert pair.a.gray is gray[i - 3] and pair.b.gray is gray[i - 2] and pair.points is not None
            assert np.array_equal(pair.a.pose, poses[i - 3]) and np.array_equal(pair.b.pose, poses[i - 2])
            for view, j in ((pair.a, i - 3), (pair.b, i - 2)):  # velocity at mid-exposure x one period
                want = neighbour_twist(stamps[i - 5 : i + 1], np.stack(poses[i - 5 : i + 1]), j - (i - 5), period, 1.0)
                np.testing.assert_allclose(view.motion, want, atol=1e-12)
    assert est.done


def test_visible_points_skip_transparent_and_excluded_pixels_and_land_on_the_depth() -> None:
    w, h, depth_m = 64, 48, 2.0
    intr = Intrinsics(50.0, 50.0, (w - 1) / 2, (h - 1) / 2, w, h)
    alpha = torch.ones(h, w)
    alpha[:, : w // 2] = 0.0
    exclude = np.zeros((h, w), bool)
    exclude[: h // 2] = True
    pose = np.eye(4)
    pose[:3, 3] = [1.0, 2.0, 3.0]
    pts = visible_points(torch.full((h, w), depth_m), alpha, pose, intr, exclude, max_points=400)
    assert 50 <= len(pts) <= 400 // 4 + 20
    cam = pts.numpy() - pose[:3, 3]
    np.testing.assert_allclose(cam[:, 2], depth_m)
    u = cam[:, 0] / cam[:, 2] * intr.fx + intr.cx
    v = cam[:, 1] / cam[:, 2] * intr.fy + intr.cy
    assert (u >= w // 2 - 1).all() and (v >= h // 2 - 1).all()


def test_a_curve_that_keeps_falling_or_hardly_varies_tells_nothing() -> None:
    est = ExposureRatioEstimator(0.5)
    r = est.ratios
    est.weight = 3.0
    est.curve = 3.0 * (1.0 - 0.4 * r / r.max())  # more smearing always agrees better: noise, not an exposure
    assert est.value is None and est.ratio == 0.5
    est.curve = 3.0 * (1.0 - 0.1 * np.abs(r - 0.6))  # a minimum, but 6 % deep
    assert est.value is None
    est.curve = 3.0 * (0.3 + np.abs(r - 0.6))  # deep, inside the candidates
    assert est.value == pytest.approx(0.6, abs=0.02)
    est.curve = 3.0 * (0.3 + 0.3 * (r - 0.15) ** 2 + 0.01 * (r == 0))  # flat from 0 to 0.2: as good as none
    assert est.value == 0.0
    est.curve = 3.0 * (0.3 + 0.3 * (r - 0.3) ** 2)  # 0.3: unsmeared agrees clearly worse
    assert est.value == pytest.approx(0.3, abs=0.02)
    est.weight = 1.0  # too few pairs yet
    assert est.value is None
