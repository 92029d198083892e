"""Tracking a frame against a map: known small motion, lost detection, constant velocity."""

from __future__ import annotations

import numpy as np
import torch

from posegs_ros.scene.blur import RenderSettings
from posegs_ros.config import PosegsConfig, apply_flat
from posegs_ros.tracking.flow import DenseFlow
from posegs_ros.scene.gaussians import GaussianMap
from posegs_ros.geometry import se3_exp, se3_log
from posegs_ros.scene.keyframes import Keyframe
from posegs_ros.mapping.mapper import Mapper, scene_tensors
from posegs_ros.tracking.tracker import Tracker, initial_twist, neighbour_twist, predict_constant_velocity, twist_units


def rotation_error_deg(a: np.ndarray, b: np.ndarray) -> float:
    """Angle (degrees) between the rotations of poses ``a`` and ``b`` ``[4, 4]``."""
    return float(np.degrees(np.arccos(np.clip((np.trace(a[:3, :3].T @ b[:3, :3]) - 1) / 2, -1, 1))))


def map_from_ground_truth(seq, cfg):
    """A map seeded from frame 0's GT depth and fitted to its sharp image for a few steps."""
    f0 = seq.frames[0]
    gmap = GaussianMap(0, 50_000)
    mapper = Mapper(cfg, gmap, np.random.default_rng(0))
    mapper.set_scene_scale(float(np.median(f0.depth)))
    kf = Keyframe(0, f0.stamp, torch.from_numpy(f0.sharp).float() / 255, seq.intrinsics, torch.from_numpy(f0.pose),
                  torch.zeros(6, dtype=torch.float64), fixed=True, unit=twist_units(mapper.scene_scale))
    h, w = f0.depth.shape
    vs, us = np.mgrid[0:h:2, 0:w:2]
    mapper.add_from_depth(kf, np.stack([us.ravel(), vs.ravel()], 1).astype(float), f0.depth[vs.ravel(), us.ravel()].astype(float), stride=2.0, opacity=0.6)
    mapper.optimize([kf], None)
    return gmap, mapper


import pytest


@pytest.mark.parametrize("render_scale", [1.0])
def test_tracks_known_small_motion(small_sequence, render_scale: float) -> None:
    seq = small_sequence
    # a three-frame jump tracked from the old pose (no prediction): always two render/flow passes
    cfg = apply_flat(PosegsConfig(), {"blur.enabled": False, "mapping.gaussian_iters": 40, "mapping.pose_iters": 0,
                                      "mapping.joint_iters": 0, "tracking.refine_steps": 0,
                                      "tracking.render_scale": render_scale, "tracking.repass_px": 0.0})
    gmap, mapper = map_from_ground_truth(seq, cfg)
    tracker = Tracker(cfg, DenseFlow())
    settings = RenderSettings(seq.intrinsics.width, seq.intrinsics.height)
    f0, f3 = seq.frames[0], seq.frames[3]
    res = tracker.track(f3.blurred, torch.from_numpy(f3.blurred).float() / 255, seq.intrinsics, f0.pose.copy(), np.zeros(6),
                        scene_tensors(gmap, True), settings, scene_scale=mapper.scene_scale)
    assert not res.lost and res.inlier_ratio > 0.8
    moved = np.linalg.norm(f3.pose[:3, 3] - f0.pose[:3, 3])
    err = np.linalg.norm(res.pose[:3, 3] - f3.pose[:3, 3])
    assert moved > 0.02 and err < 0.5 * moved, (err, moved)
    rot_err = rotation_error_deg(res.pose, f3.pose)
    rot_moved = rotation_error_deg(f0.pose, f3.pose)
    assert rot_err < 0.5 * rot_moved + 0.05
    assert 0.9 < res.coverage <= 1.0
    assert res.render.rgb.shape[1:3] == (round(seq.intrinsics.height * render_scale), round(seq.intrinsics.width * render_scale))


def test_a_per_call_photometric_weight_acts_as_the_configured_one(small_sequence) -> None:
    """The final refinement's re-tracking passes its own photometric weight
    (mapping.final_photometric_weight): the call's weight does exactly what the same weight in
    the tracking configuration does, and still tracks."""
    seq = small_sequence
    base = {"blur.enabled": False, "mapping.gaussian_iters": 40, "mapping.pose_iters": 0, "mapping.joint_iters": 0,
            "tracking.refine_steps": 0, "tracking.repass_px": 0.0}
    cfg = apply_flat(PosegsConfig(), base)
    gmap, mapper = map_from_ground_truth(seq, cfg)
    settings = RenderSettings(seq.intrinsics.width, seq.intrinsics.height)
    f0, f3 = seq.frames[0], seq.frames[3]

    def track(config: PosegsConfig, weight: float | None) -> np.ndarray:
        res = Tracker(config, DenseFlow()).track(
            f3.blurred, None, seq.intrinsics, f0.pose.copy(), np.zeros(6), scene_tensors(gmap, True), settings,
            refine=False, scene_scale=mapper.scene_scale, photometric_weight=weight)
        assert not res.lost
        return res.pose

    for weight in (0.0, 0.5):
        configured = track(apply_flat(PosegsConfig(), {**base, "tracking.photometric_weight": weight}), None)
        assert np.array_equal(track(cfg, weight), configured)
        assert np.linalg.norm(configured[:3, 3] - f3.pose[:3, 3]) < 0.5 * np.linalg.norm(f3.pose[:3, 3] - f0.pose[:3, 3])
    assert not np.array_equal(track(cfg, 0.0), track(cfg, 0.5))  # the weight reaches the solve


def test_tracking_of_an_unrelated_image_is_lost(small_sequence) -> None:
    seq = small_sequence
    cfg = apply_flat(PosegsConfig(), {"blur.enabled": False, "mapping.gaussian_iters": 10, "mapping.pose_iters": 0,
                                      "mapping.joint_iters": 0, "tracking.refine_steps": 0})
    gmap, mapper = map_from_ground_truth(seq, cfg)
    noise = np.random.default_rng(0).integers(0, 256, seq.frames[0].blurred.shape, dtype=np.uint8)
    res = Tracker(cfg, DenseFlow()).track(
        noise, torch.from_numpy(noise).float() / 255, seq.intrinsics, seq.frames[0].pose.copy(), np.zeros(6),
        scene_tensors(gmap, True), RenderSettings(seq.intrinsics.width, seq.intrinsics.height), scene_scale=mapper.scene_scale,
    )
    assert res.lost and res.reason


def test_a_consistent_flow_the_map_does_not_explain_is_a_mismatch_not_a_loss(small_sequence) -> None:
    """Above tracking.max_reprojection_px with the flow matching (high intensity correlation) the
    frame is tracked and flagged as a map mismatch; a low correlation or an error past
    tracking.lost_reprojection_px is a loss."""
    import dataclasses

    seq = small_sequence
    base = apply_flat(PosegsConfig(), {"blur.enabled": False, "mapping.gaussian_iters": 40, "mapping.pose_iters": 0,
                                       "mapping.joint_iters": 0, "tracking.refine_steps": 0})
    gmap, mapper = map_from_ground_truth(seq, base)
    f0, f3 = seq.frames[0], seq.frames[3]

    def track(**tracking):
        cfg = dataclasses.replace(base, tracking=dataclasses.replace(base.tracking, **tracking))
        return Tracker(cfg, DenseFlow()).track(
            f3.blurred, torch.from_numpy(f3.blurred).float() / 255, seq.intrinsics, f0.pose.copy(), np.zeros(6),
            scene_tensors(gmap, True), RenderSettings(seq.intrinsics.width, seq.intrinsics.height),
            scene_scale=mapper.scene_scale)

    good = track()
    assert not good.lost and not good.mismatch and good.median_error_px > 0
    strict = 0.5 * good.median_error_px  # the same frame against a tolerance it exceeds
    flagged = track(max_reprojection_px=strict)
    assert flagged.mismatch and not flagged.lost and flagged.reason
    np.testing.assert_allclose(flagged.pose, good.pose, atol=1e-9)  # the flag changes no pose
    assert track(max_reprojection_px=strict, mismatch_min_ncc=1.01).lost  # correlation below the bar
    hard = track(max_reprojection_px=strict, lost_reprojection_px=strict)
    assert hard.lost and not hard.mismatch


def test_constant_velocity_prediction_and_twist_guess() -> None:
    a = np.eye(4)
    step = se3_exp(torch.tensor([0.1, 0.0, 0.02, 0.0, 0.05, 0.0], dtype=torch.float64)).numpy()
    b = a @ step
    assert np.allclose(predict_constant_velocity(b, a), b @ step, atol=1e-12)
    half = predict_constant_velocity(b, a, dt_ratio=0.5)
    assert np.allclose(half[:3, 3], (b @ se3_exp(torch.tensor([0.05, 0, 0.01, 0, 0.025, 0], dtype=torch.float64)).numpy())[:3, 3])
    assert np.allclose(predict_constant_velocity(b, None), b)
    assert np.allclose(initial_twist(a, b, 0.5), [0.05, 0.0, 0.01, 0.0, 0.025, 0.0], atol=1e-12)


def test_neighbour_twist_is_the_velocity_at_mid_exposure() -> None:
    """On a shaking hand-held path (the synthetic camera's, 30 Hz) the twist from two frames on
    each side is within a fraction of the backward difference's error of the true velocity x
    exposure; a constant twist is recovered exactly; dropped frames and the ends are handled."""
    from posegs_ros.tools.synth import CameraPath

    path = CameraPath.random(np.random.default_rng(3), shake=1.8)
    period, exposure = 1.0 / 30.0, 1.0 / 60.0
    stamps = np.arange(40) * period + 0.2
    poses = np.stack([path.pose(t) for t in stamps])

    def true_twist(t: float) -> np.ndarray:  # d/dt log(inv(P(t)) P(t + h)) by a tiny central step
        h = 1e-5
        inv = np.linalg.inv(path.pose(t))
        fwd, back = (se3_log(torch.from_numpy(inv @ path.pose(t + dt))).numpy() for dt in (h, -h))
        return (fwd - back) / (2 * h) * exposure

    ours, backward = [], []
    for i in range(2, 38):
        truth = true_twist(stamps[i])
        ours.append(np.linalg.norm(neighbour_twist(stamps, poses, i, exposure, 2.5 * period) - truth))
        backward.append(np.linalg.norm(initial_twist(poses[i - 1], poses[i], exposure / period) - truth))
    assert np.median(ours) < 0.2 * np.median(backward), (np.median(ours), np.median(backward))

    # a frame dropped next to frame 10: uneven stamps, still close to the truth
    keep = np.array([i for i in range(40) if i != 11])
    i = int(np.flatnonzero(keep == 10)[0])
    dropped = neighbour_twist(stamps[keep], poses[keep], i, exposure, 2.5 * period)
    truth = true_twist(stamps[10])
    assert np.linalg.norm(dropped - truth) < 0.5 * np.linalg.norm(initial_twist(poses[9], poses[10], exposure / period) - truth)

    # at the last frame (no neighbour after it) two before it still beat the backward difference
    ends, backward = [], []
    for i in range(2, 38):
        truth = true_twist(stamps[i])
        ends.append(np.linalg.norm(neighbour_twist(stamps[: i + 1], poses[: i + 1], i, exposure, 2.5 * period) - truth))
        backward.append(np.linalg.norm(initial_twist(poses[i - 1], poses[i], exposure / period) - truth))
    assert np.median(ends) < 0.5 * np.median(backward), (np.median(ends), np.median(backward))

    # constant twist: exact, at the ends too (first frame, or one after a gap past max_gap_s);
    # a frame with a single neighbour and none on the other side: None
    step = se3_exp(torch.tensor([0.02, -0.01, 0.03, 0.01, -0.02, 0.005], dtype=torch.float64)).numpy()
    line = np.stack([np.linalg.matrix_power(step, k) for k in range(5)])
    constant = initial_twist(line[1], line[2], exposure / period)
    for stamps_, i in ((np.arange(5) * period, 2), (np.arange(5) * period, 0), (np.arange(5) * period, 4)):
        assert np.allclose(neighbour_twist(stamps_, line, i, exposure, 2.5 * period), constant, atol=1e-9)
    gap = np.array([0.0, 1.0, 1.0 + period, 1.0 + 2 * period, 1.0 + 3 * period])
    assert np.allclose(neighbour_twist(gap, line, 1, exposure, 2.5 * period), constant, atol=1e-9)
    assert neighbour_twist(gap, line, 0, exposure, 2.5 * period) is None
    assert neighbour_twist(np.arange(2) * period, line[:2], 1, exposure, 2.5 * period) is None


def test_neighbour_path_bends_with_the_acceleration() -> None:
    """A yaw that accelerates at a constant rate is recovered exactly (twist = rate x exposure,
    bend = half the acceleration x exposure^2); on the shaking hand-held path the bent path
    follows the true sub-exposure poses much closer than the straight one."""
    from posegs_ros.tools.synth import CameraPath
    from posegs_ros.tracking.tracker import neighbour_path

    period, exposure = 1.0 / 30.0, 1.0 / 30.0
    stamps = np.arange(7) * period
    rate, accel = 0.4, -9.0  # rad/s, rad/s^2: the yaw rate reverses within a few frames
    yaw = rate * stamps + 0.5 * accel * stamps**2
    poses = np.stack([se3_exp(torch.tensor([0, 0, 0, 0, y, 0], dtype=torch.float64)).numpy() for y in yaw])
    twist, bend = neighbour_path(stamps, poses, 3, exposure, 2.5 * period)
    assert np.allclose(twist, [0, 0, 0, 0, (rate + accel * stamps[3]) * exposure, 0], atol=1e-9)
    assert np.allclose(bend, [0, 0, 0, 0, 0.5 * accel * exposure**2, 0], atol=1e-9)
    assert np.allclose(neighbour_twist(stamps, poses, 3, exposure, 2.5 * period), twist)
    first, first_bend = neighbour_path(stamps, poses, 0, exposure, 2.5 * period)  # one-sided: still exact
    assert np.allclose(first, [0, 0, 0, 0, rate * exposure, 0], atol=1e-9)
    assert np.allclose(first_bend, bend, atol=1e-9)

    path = CameraPath.random(np.random.default_rng(3), shake=1.8)
    stamps = np.arange(40) * period + 0.2
    poses = np.stack([path.pose(t) for t in stamps])
    offsets = np.linspace(-0.5, 0.5, 9)
    straight_err, bent_err = [], []
    for i in range(2, 38):
        twist, bend = neighbour_path(stamps, poses, i, exposure, 2.5 * period)
        for s in offsets:
            truth = path.pose(stamps[i] + s * exposure)
            for xi, errors in ((s * twist, straight_err), (s * twist + s * s * bend, bent_err)):
                model = poses[i] @ se3_exp(torch.from_numpy(xi)).numpy()
                errors.append(rotation_error_deg(model, truth))
    assert np.mean(bent_err) < 0.5 * np.mean(straight_err), (np.mean(bent_err), np.mean(straight_err))


def test_tracking_against_a_blurred_render_with_the_bend_finds_the_mid_exposure_pose(small_sequence) -> None:
    """A frame whose camera turns back within the exposure (its streak folds, the centroid lies
    off the mid-exposure pose): the final re-tracking's flow from a blurred render along the
    straight path lands near the streak's centroid, along the bent path at the pose itself."""
    from posegs_ros.scene.blur import render_exposure

    seq = small_sequence
    cfg = apply_flat(PosegsConfig(), {"blur.enabled": True, "mapping.gaussian_iters": 40, "mapping.pose_iters": 0,
                                      "mapping.joint_iters": 0, "tracking.refine_steps": 0, "tracking.repass_px": 0.0})
    gmap, mapper = map_from_ground_truth(seq, cfg)
    tracker = Tracker(cfg, DenseFlow())
    settings = RenderSettings(seq.intrinsics.width, seq.intrinsics.height)
    scene = scene_tensors(gmap, True)
    pose = torch.from_numpy(seq.frames[0].pose)
    twist = torch.tensor([0.0, 0.0, 0.0, 0.004, 0.01, 0.0], dtype=torch.float64)
    bend = torch.tensor([0.0, 0.0, 0.0, 0.03, 0.08, 0.0], dtype=torch.float64)  # ~3 px of fold at f = 100
    observed, _ = render_exposure(scene, pose, twist, seq.intrinsics.matrix(torch.float64), settings, 15, bend=bend)
    image = (observed.clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8)
    errors = {}
    for name, b in (("straight", None), ("bent", bend.numpy())):
        res = tracker.track(image, torch.from_numpy(image).float() / 255, seq.intrinsics, pose.numpy().copy(),
                            twist.numpy(), scene, settings, refine=False, scene_scale=mapper.scene_scale,
                            blurred_subframes=9, photometric_weight=0.1, bend=b)
        assert not res.lost
        errors[name] = rotation_error_deg(res.pose, pose.numpy())
    centroid_deg = float(np.degrees(np.linalg.norm(bend[3:].numpy()) / 12))
    assert errors["straight"] > 0.4 * centroid_deg, (errors, centroid_deg)
    assert errors["bent"] < 0.3 * errors["straight"], (errors, centroid_deg)


def test_match_brightness_scales_the_render_to_the_frame() -> None:
    """An auto-exposure step (frame 30 % brighter) is recovered from the covered pixels alone,
    however soft the render is; too little coverage leaves the render as it is."""
    import cv2

    from posegs_ros.tracking.tracker import match_brightness

    rng = np.random.default_rng(0)
    scene = cv2.GaussianBlur(rng.integers(40, 160, (96, 128)).astype(np.uint8), (5, 5), 1.0)
    frame = np.clip(scene * 1.3, 0, 255).astype(np.uint8)
    render = cv2.GaussianBlur(scene, (9, 9), 3.0)  # a young map renders softer than the camera sees
    covered = np.zeros(scene.shape, bool)
    covered[:, :80] = True  # the map covers the left part only
    adjusted, gain = match_brightness(render, frame, covered)
    assert gain == pytest.approx(1.3, rel=0.02)
    assert abs(float(adjusted[covered].mean()) - float(frame[covered].mean())) < 1.0
    tiny = np.zeros(scene.shape, bool)
    tiny[:4, :4] = True
    same, one = match_brightness(render, frame, tiny)
    assert one == 1.0 and same is render
    assert match_brightness(render, np.full_like(frame, 255), covered)[1] == 2.0  # clipped


def test_a_large_unmodelled_moving_patch_is_dropped_and_the_pose_solved_again(small_sequence) -> None:
    """A quarter of the frame shows a patch that moved on its own (nothing in the map explains
    it): Huber alone lets it pull the pose; dropping the outliers and solving again does not."""
    seq = small_sequence
    base = {"blur.enabled": False, "mapping.gaussian_iters": 40, "mapping.pose_iters": 0, "mapping.joint_iters": 0,
            "tracking.refine_steps": 0}
    cfg = apply_flat(PosegsConfig(), base)
    gmap, mapper = map_from_ground_truth(seq, cfg)
    settings = RenderSettings(seq.intrinsics.width, seq.intrinsics.height)
    f2 = seq.frames[2]
    h, w = f2.blurred.shape[:2]
    image = f2.blurred.copy()
    ys, xs = slice(h // 4, 3 * h // 4), slice(w // 2, w)  # a quarter of the image ...
    image[ys, xs] = np.roll(f2.blurred, (6, -14), axis=(0, 1))[ys, xs]  # ... slid 14 px left and 6 down

    def error(outlier_px: float, frame: np.ndarray | None = None) -> float:
        tracker = Tracker(apply_flat(cfg, {"tracking.outlier_px": outlier_px}), DenseFlow())
        res = tracker.track(image if frame is None else frame, None, seq.intrinsics, predicted, np.zeros(6), scene_tensors(gmap, True),
                            settings, scene_scale=mapper.scene_scale)
        assert not res.lost
        return float(np.linalg.norm(res.pose[:3, 3] - f2.pose[:3, 3]))

    predicted = f2.pose @ se3_exp(torch.tensor([0.004, -0.003, 0.002, 0.002, -0.001, 0.001], dtype=torch.float64)).numpy()
    clean, huber_only, resolved = error(4.0, f2.blurred), error(0.0), error(4.0)
    # (128x96: the clean frame itself tracks to ~1 cm at a scene depth of ~4 m)
    assert huber_only > 3.0 * clean  # the patch drags a Huber-only solve away
    assert resolved < 0.4 * huber_only and resolved < 2.0 * clean


def test_a_live_deadline_cuts_the_extra_pass_and_a_smaller_scale_still_tracks(small_sequence) -> None:
    import time

    seq = small_sequence
    cfg = apply_flat(PosegsConfig(), {"blur.enabled": False, "mapping.gaussian_iters": 40, "mapping.pose_iters": 0,
                                      "mapping.joint_iters": 0, "tracking.refine_steps": 0, "tracking.repass_px": 0.0})
    gmap, mapper = map_from_ground_truth(seq, cfg)
    tracker = Tracker(cfg, DenseFlow())
    f0, f3 = seq.frames[0], seq.frames[3]
    moved = np.linalg.norm(f3.pose[:3, 3] - f0.pose[:3, 3])

    def track(**kw):
        res = tracker.track(f3.blurred, None, seq.intrinsics, f0.pose.copy(), np.zeros(6), scene_tensors(gmap, True),
                            RenderSettings(seq.intrinsics.width, seq.intrinsics.height), refine=False,
                            scene_scale=mapper.scene_scale, **kw)
        return res, np.linalg.norm(res.pose[:3, 3] - f3.pose[:3, 3])

    free, err_free = track()
    assert free.passes == 2 and not free.passes_cut
    late, err_late = track(deadline=time.perf_counter())  # the next frame is already due: one pass only
    assert late.passes == 1 and late.passes_cut and not late.lost
    assert err_free < 0.5 * moved and err_late < moved, (err_free, err_late, moved)
    small, err_small = track(scale=0.75)
    assert small.render.rgb.shape[1:3] == (round(seq.intrinsics.height * 0.75), round(seq.intrinsics.width * 0.75))
    assert not small.lost and err_small < 0.8 * moved, (err_small, moved)  # 96x72 pixels: coarse, but it tracks


def test_tracking_resolution_drops_when_frames_take_too_long_and_climbs_back() -> None:
    from posegs_ros.tracking.tracker import TrackingResolution

    res = TrackingResolution(1.0, 0.5, settle=5)
    assert res.levels == (1.0, 0.75, 0.5625)
    assert TrackingResolution(1.0, 1.0).levels == (1.0,)  # fixed (offline)
    budget = 0.030

    def frames_until_change(seconds: float) -> int:
        start = res.scale
        for n in range(1, 200):
            if res.update(seconds, budget) != start:
                return n
        return 0

    assert frames_until_change(0.040) == 5  # not before ``settle`` frames at a scale
    assert res.scale == 0.75
    assert frames_until_change(0.040) == 5 and res.scale == 0.5625
    assert frames_until_change(0.040) == 0 and res.scale == 0.5625  # too slow still: not below the floor
    assert frames_until_change(0.025) == 0  # within the budget but no headroom: stays
    assert 1 <= frames_until_change(0.015) < 10 and res.scale == 0.75  # time to spare (x 1.4 < budget): one step up
    assert frames_until_change(0.040) == 5 and res.scale == 0.5625  # that climb did not hold: down again ...
    assert frames_until_change(0.015) == 10 and res.scale == 0.75  # ... and the next climb waits twice as long
    assert frames_until_change(0.025) == 0  # within the budget, no headroom: stays
    assert res.changes == 5


def test_the_flow_is_smoothed_as_much_as_the_frame_is_blurrier_than_the_map(small_sequence) -> None:
    """tracking.flow_blur_match: a frame smeared along its motion is matched with both images
    smoothed in proportion to the smear, a sharp one is not; 0 turns it off, flow_presmooth_px
    stays the least. (That the smoothing makes the flow more accurate: test_tracking_flow.py.)"""
    import cv2

    seq = small_sequence
    base = {"blur.enabled": False, "mapping.gaussian_iters": 40, "mapping.pose_iters": 0, "mapping.joint_iters": 0,
            "tracking.refine_steps": 0, "tracking.repass_px": 0.0}
    cfg = apply_flat(PosegsConfig(), base)
    gmap, mapper = map_from_ground_truth(seq, cfg)
    f0, f2 = seq.frames[0], seq.frames[2]

    def track(config: PosegsConfig, streak: int):
        image = cv2.filter2D(f2.sharp, -1, np.full((1, streak), 1 / streak, np.float32))
        res = Tracker(config, DenseFlow.from_config(config.tracking)).track(
            image, None, seq.intrinsics, f0.pose.copy(), np.zeros(6), scene_tensors(gmap, True),
            RenderSettings(seq.intrinsics.width, seq.intrinsics.height), refine=False, scene_scale=mapper.scene_scale)
        assert not res.lost
        rot_err = rotation_error_deg(res.pose, f2.pose)
        assert rot_err < 0.4, (streak, rot_err)
        return res.flow_sigma

    sigmas = [track(cfg, streak) for streak in (1, 3, 7)]
    assert sigmas[0] < 0.3 < sigmas[1] < sigmas[2] <= cfg.tracking.flow_blur_match_max_px, sigmas
    assert track(apply_flat(PosegsConfig(), {**base, "tracking.flow_blur_match": 0.0}), 7) == 0.0
    assert track(apply_flat(PosegsConfig(), {**base, "tracking.flow_presmooth_px": 2.5}), 1) == 2.5
