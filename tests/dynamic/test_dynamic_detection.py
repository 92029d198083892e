"""Moving-object detection, segmentation and motion (posegs_ros.dynamic.detection)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from posegs_ros.config import DynamicConfig
from posegs_ros.dynamic.detection import (
    GroupMotionHistory,
    MotionSegmenter,
    boundary_contrast,
    camera_induced_flow,
    closest_static_flow,
    flow_disagreement,
    flow_target_inside,
    motion_from_region_flow,
    motion_magnitude,
    object_motion,
    region_depth_fill,
    residual_change,
    robust_flow_threshold,
    should_merge,
    static_flow_bounds,
    static_flow_fields,
    texture_mask,
    warp_mask,
)
from posegs_ros.tracking.flow import DenseFlow
from posegs_ros.geometry import se3_exp
from posegs_ros.tracking.pose_solver import project_points

W, H, F = 256, 192, 230.0
K = np.array([[F, 0.0, (W - 1) / 2], [0.0, F, (H - 1) / 2], [0.0, 0.0, 1.0]])


def exp(xi: list[float]) -> np.ndarray:
    return se3_exp(torch.tensor(xi, dtype=torch.float64)).numpy()


def rot_deg(m: np.ndarray) -> float:
    return float(np.degrees(np.arccos(np.clip((np.trace(m[:3, :3]) - 1) / 2, -1, 1))))


def about(center: np.ndarray, rotvec: list[float], translation: list[float]) -> np.ndarray:
    """Map-frame motion: rotate by ``rotvec`` about ``center``, then translate."""
    r = exp([0, 0, 0, *rotvec])
    m = np.eye(4)
    m[:3, :3] = r[:3, :3]
    m[:3, 3] = center - r[:3, :3] @ center + np.asarray(translation)
    return m


def project(pose: np.ndarray, points: np.ndarray) -> np.ndarray:
    uv, _ = project_points((points - pose[:3, 3]) @ pose[:3, :3], K)
    return uv


# ------------------------------------------------------------------------------------------
# camera-induced flow
# ------------------------------------------------------------------------------------------


def test_camera_induced_flow_matches_analytic_plane_flow() -> None:
    z0 = 3.0
    depth = np.full((H, W), z0, np.float32)
    t = np.array([0.12, -0.05, 0.2])  # camera moves right, up, forward (camera-to-map pose)
    pose_to = np.eye(4)
    pose_to[:3, 3] = t
    flow = camera_induced_flow(depth, K, np.eye(4), pose_to)
    v, u = np.mgrid[0:H, 0:W].astype(np.float64)
    xn, yn = (u - K[0, 2]) / F, (v - K[1, 2]) / F
    u2 = K[0, 2] + F * (xn * z0 - t[0]) / (z0 - t[2])
    v2 = K[1, 2] + F * (yn * z0 - t[1]) / (z0 - t[2])
    assert flow.dtype == np.float32 and flow.shape == (H, W, 2)
    np.testing.assert_allclose(flow[..., 0], u2 - u, atol=1e-3)
    np.testing.assert_allclose(flow[..., 1], v2 - v, atol=1e-3)
    # the principal point's flow of a pure sideways move: -f t / z
    flat = camera_induced_flow(depth, K, np.eye(4), exp([0.12, 0, 0, 0, 0, 0]))
    np.testing.assert_allclose(flat[..., 0], -F * 0.12 / z0, atol=1e-3)
    np.testing.assert_allclose(flat[..., 1], 0.0, atol=1e-4)


def test_camera_induced_flow_identity_rotation_and_general_poses() -> None:
    rng = np.random.default_rng(0)
    depth = rng.uniform(1.0, 5.0, (H, W)).astype(np.float32)
    pose = exp([0.3, -0.2, 1.0, 0.1, 0.2, -0.3])
    assert np.abs(camera_induced_flow(depth, K, pose, pose)).max() < 1e-3
    # a pure rotation about the optical centre gives a depth-independent flow
    rot = pose @ exp([0, 0, 0, 0.0, 0.03, 0.0])
    f1 = camera_induced_flow(depth, K, pose, rot)
    f2 = camera_induced_flow(np.full_like(depth, 2.0), K, pose, rot)
    np.testing.assert_allclose(f1, f2, atol=1e-3)
    # general motion: agrees with projecting the lifted pixels by hand
    pose_to = pose @ exp([0.1, 0.05, -0.1, 0.02, -0.01, 0.03])
    flow = camera_induced_flow(depth, K, pose, pose_to)
    vs, us = rng.integers(0, H, 50), rng.integers(0, W, 50)
    z = depth[vs, us].astype(np.float64)
    cam = np.stack([(us - K[0, 2]) / F * z, (vs - K[1, 2]) / F * z, z], 1)
    world = cam @ pose[:3, :3].T + pose[:3, 3]
    uv = project(pose_to, world)
    np.testing.assert_allclose(flow[vs, us], uv - np.stack([us, vs], 1), atol=2e-3)


def test_camera_induced_flow_nan_for_unknown_depth_and_behind_camera() -> None:
    depth = np.full((H, W), 2.0, np.float32)
    depth[10, 20] = np.nan
    depth[11, 20] = 0.0
    depth[12, 20] = -1.0
    depth[50:60, 50:60] = 0.5  # will end up behind the camera
    pose_to = exp([0, 0, 1.0, 0, 0, 0])  # one metre forward
    flow = camera_induced_flow(depth, K, np.eye(4), pose_to)
    assert np.isnan(flow[10:13, 20]).all()
    assert np.isnan(flow[50:60, 50:60]).all()
    rest = np.ones((H, W), bool)
    rest[10:13, 20] = False
    rest[50:60, 50:60] = False
    assert np.isfinite(flow[rest]).all()
    inside = flow_target_inside(flow, margin_px=0)
    assert not inside[10, 20] and not inside[55, 55]


# ------------------------------------------------------------------------------------------
# flow disagreement on a known moving square (real DIS flow on a photograph)
# ------------------------------------------------------------------------------------------


def _two_frames(object_translation: tuple[float, float, float], seed: int = 0):
    """Two 256x192 views of a tilted textured plane (astronaut) ~4 m away with a textured square
    (chelsea, 0.6 m, fronto-parallel at z = 3) moving by ``object_translation`` (map frame =
    first camera).  Returns images, the map's (background) depth, true square mask in frame 1,
    both poses and the square's depth."""
    from skimage import data

    rng = np.random.default_rng(seed)
    tex = cv2.resize(data.astronaut(), (384, 384), interpolation=cv2.INTER_AREA).astype(np.float32)
    crop = np.array([[1.0, 0, -64], [0, 1, -96], [0, 0, 1]])
    n_b = np.array([0.0, -0.25, 1.0])
    n_b /= np.linalg.norm(n_b)
    d_b = 4.0
    pose1, pose2 = np.eye(4), exp([0.08, 0.02, 0.04, 0.0, 0.009, 0.0])
    rel = np.linalg.inv(pose2) @ pose1
    r, t = rel[:3, :3], rel[:3, 3]
    k_inv = np.linalg.inv(K)
    h_bg = K @ (r + np.outer(t, n_b) / d_b) @ k_inv  # plane-induced homography frame 1 -> 2
    img1 = cv2.warpPerspective(tex, crop, (W, H), flags=cv2.INTER_LINEAR)
    img2 = cv2.warpPerspective(tex, h_bg @ crop, (W, H), flags=cv2.INTER_LINEAR)
    v, u = np.mgrid[0:H, 0:W].astype(np.float64)
    rays = np.stack([(u - K[0, 2]) / F, (v - K[1, 2]) / F, np.ones_like(u)], -1)
    depth = (d_b / (rays @ n_b)).astype(np.float32)
    zs, side, x0, y0, n_tex = 3.0, 0.6, -0.55, -0.1, 96
    sticker = cv2.resize(data.chelsea()[60:260, 120:320], (n_tex, n_tex), interpolation=cv2.INTER_AREA)
    sc = F * side / zs / n_tex
    place = np.array([[sc, 0, F * x0 / zs + K[0, 2] + 0.5 * sc], [0, sc, F * y0 / zs + K[1, 2] + 0.5 * sc], [0, 0, 1]])
    m = np.asarray(object_translation, np.float64)
    h_obj = K @ (r + np.outer(r @ m + t, [0.0, 0.0, 1.0]) / zs) @ k_inv
    ones = np.full((n_tex, n_tex), 255, np.uint8)

    def paste(img: np.ndarray, hom: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        s = cv2.warpPerspective(sticker, hom @ place, (W, H), flags=cv2.INTER_LINEAR).astype(np.float32)
        a = cv2.warpPerspective(ones, hom @ place, (W, H), flags=cv2.INTER_LINEAR).astype(np.float32)[..., None] / 255
        return img * (1 - a) + s * a, a[..., 0] > 0.5

    img1, mask1 = paste(img1, np.eye(3))
    img2, _ = paste(img2, h_obj)
    img1 = np.clip(img1 + rng.normal(0, 2.0, img1.shape), 0, 255).astype(np.uint8)
    img2 = np.clip(img2 + rng.normal(0, 2.0, img2.shape), 0, 255).astype(np.uint8)
    return img1, img2, depth, mask1, pose1, pose2, zs


@pytest.fixture(scope="module")
def moving_square():
    img1, img2, depth, mask, pose1, pose2, zs = _two_frames((-0.06, 0.05, 0.0))
    observed = DenseFlow("dis", "medium")(img1, img2)
    return img1, img2, depth, mask, pose1, pose2, zs, observed


def test_flow_disagreement_finds_the_moving_square(moving_square) -> None:
    img1, _, depth, mask, pose1, pose2, _, observed = moving_square
    predicted = camera_induced_flow(depth, K, pose1, pose2)
    assert np.median(np.linalg.norm(predicted, axis=-1)) > 4.0  # the background really moves
    cand = flow_disagreement(observed, predicted, DynamicConfig().flow_threshold_px,
                             valid=flow_target_inside(predicted), textured=texture_mask(img1))
    iou = (cand & mask).sum() / (cand | mask).sum()
    false_pos = (cand & ~mask).sum() / (~mask).sum()
    assert iou >= 0.7, iou
    assert false_pos < 0.015, false_pos
    # no false positives away from the square (only its occlusion band, next to it)
    near = cv2.dilate(mask.astype(np.uint8), np.ones((25, 25), np.uint8)).astype(bool)
    assert not (cand & ~near).any()
    # the half-amplitude boundary refinement is what trims DIS's halo around the square
    raw = flow_disagreement(observed, predicted, 2.0, valid=flow_target_inside(predicted), edge_frac=0.0)
    assert (raw & ~mask).sum() > 1.5 * (cand & ~mask).sum()
    # the static-scene case: same camera motion, square glued to the plane's motion -> nothing
    # (observed flow = predicted flow + noise)
    rng = np.random.default_rng(2)
    noisy = predicted + rng.normal(0, 0.3, predicted.shape).astype(np.float32)
    assert not flow_disagreement(noisy, predicted, 2.0).any()


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_flow_disagreement_square_other_noise_seeds(seed: int) -> None:
    img1, img2, depth, mask, pose1, pose2, _ = _two_frames((-0.06, 0.05, 0.0), seed)
    observed = DenseFlow("dis", "medium")(img1, img2)
    predicted = camera_induced_flow(depth, K, pose1, pose2)
    valid = flow_target_inside(predicted)
    cand = flow_disagreement(observed, predicted, 2.0, valid=valid, textured=texture_mask(img1))
    near = cv2.dilate(mask.astype(np.uint8), np.ones((25, 25), np.uint8)).astype(bool)
    assert (cand & mask).sum() / (cand | mask).sum() >= 0.7
    assert not (cand & ~near).any()


def test_flow_disagreement_texture_filter_drops_blank_regions() -> None:
    image = np.zeros((H, W), np.uint8)  # blank, except a textured block
    rng = np.random.default_rng(4)
    image[50:90, 50:110] = rng.integers(0, 255, (40, 60))
    textured = texture_mask(image)
    assert textured[50:90, 50:110].all() and not textured[:40].any() and not textured[150:, 150:].any()
    predicted = np.zeros((H, W, 2), np.float32)
    observed = predicted.copy()
    observed[50:90, 50:110] = (5.0, 0.0)  # the textured block moves
    observed[30:100, 60:80] = (5.0, 0.0)  # (with a blank part of the same region)
    observed[140:180, 170:230] = (3.0, 2.0)  # flow drifting in a blank area
    cand = flow_disagreement(observed, predicted, 2.0, textured=textured)
    assert cand[50:90, 50:110].all() and cand[30:40, 60:80].all()
    assert not cand[140:, 160:].any()
    assert flow_disagreement(observed, predicted, 2.0)[140:180, 170:230].all()  # without the filter


def test_flow_disagreement_robust_threshold_and_cleanup() -> None:
    rng = np.random.default_rng(1)
    predicted = np.zeros((H, W, 2), np.float32)
    observed = rng.normal(0, 1.5, (H, W, 2)).astype(np.float32)  # very noisy flow: sigma 1.5 px
    observed[40:80, 60:110] += (9.0, 0.0)  # a moving block
    specks = [(150, 20), (10, 200), (120, 240)]
    for y, x in specks:
        observed[y, x] += (20.0, 0.0)
    thr = robust_flow_threshold(np.linalg.norm(observed - predicted, axis=-1).ravel(), 2.0)
    assert 4.0 < thr < 5.5  # ~3 sigma, above the 2 px floor
    cand = flow_disagreement(observed, predicted, 2.0)
    block = np.zeros((H, W), bool)
    block[40:80, 60:110] = True
    assert (cand & block).sum() > 0.9 * block.sum()
    assert (cand & ~block).sum() < 0.01 * (~block).sum()
    for y, x in specks:
        assert not cand[y, x]
    # invalid pixels and NaN never become candidates
    valid = np.ones((H, W), bool)
    valid[:, :85] = False
    observed[60, 100] = np.nan
    cand = flow_disagreement(observed, predicted, 2.0, valid=valid)
    assert not cand[:, :85].any() and not cand[60, 100]
    assert not flow_disagreement(observed, predicted, 2.0, valid=np.zeros((H, W), bool)).any()


def test_static_flow_explains_wrong_map_depth_but_not_motion() -> None:
    rng = np.random.default_rng(3)
    true_depth = rng.uniform(2.0, 4.0, (H, W))
    pose_from = exp([0.1, 0.0, 0.0, 0.0, 0.02, 0.0])
    pose_to = pose_from @ exp([0.08, 0.02, 0.05, 0.01, -0.02, 0.005])  # hand-held: shift + turn
    observed = camera_induced_flow(true_depth, K, pose_from, pose_to)
    for wrong in (1.6, 1 / 1.6):  # the map puts the surface 60 % too far / too near
        map_depth = true_depth * wrong
        predicted = camera_induced_flow(map_depth, K, pose_from, pose_to)
        assert np.median(np.linalg.norm(observed - predicted, axis=-1)) > 2.0  # flagged as moving today
        far, near = static_flow_bounds(map_depth, K, pose_from, pose_to, depth_slack=2.0)
        explained = closest_static_flow(observed, far, near)
        assert np.abs(explained - observed).max() < 0.02  # a static surface at a depth within the slack
        assert not flow_disagreement(observed, explained, 1.5).any()
        # with too little slack the depth error is motion again
        far, near = static_flow_bounds(map_depth, K, pose_from, pose_to, depth_slack=1.2)
        assert np.median(np.linalg.norm(observed - closest_static_flow(observed, far, near), axis=-1)) > 0.5
    far, near = static_flow_bounds(true_depth, K, pose_from, pose_to, depth_slack=2.0)
    seg = (near - far) / np.linalg.norm(near - far, axis=-1, keepdims=True)
    across = np.stack([-seg[..., 1], seg[..., 0]], -1)
    # an object moving 4 px across the epipolar line keeps its whole displacement as residual
    res = np.linalg.norm(observed + 4.0 * across - closest_static_flow(observed + 4.0 * across, far, near), axis=-1)
    np.testing.assert_allclose(res, 4.0, atol=0.05)
    # moving along it the wrong way, 4 px beyond the flow of infinite depth (no positive depth
    # gives that), keeps at least those 4 px
    wrong_way = camera_induced_flow(np.full((H, W), 1e9), K, pose_from, pose_to) - 4.0 * seg
    res = np.linalg.norm(wrong_way - closest_static_flow(wrong_way, far, near), axis=-1)
    assert res.min() > 3.95
    # no slack: the map's own camera-induced flow
    far, near = static_flow_bounds(true_depth, K, pose_from, pose_to, depth_slack=1.0)
    np.testing.assert_allclose(closest_static_flow(observed + 3.0, far, near), observed, atol=1e-3)
    with pytest.raises(ValueError):
        static_flow_bounds(true_depth, K, pose_from, pose_to, depth_slack=0.5)


@pytest.mark.parametrize("seed", range(4))
def test_the_one_pass_kernel_is_bitwise_the_numpy_detection_geometry(seed: int) -> None:
    """``static_flow_fields`` (numba, one pass) equals ``flow_target_inside(camera_induced_flow(...))``,
    ``closest_static_flow(..., *static_flow_bounds(...))`` and the residual's float64 norm bit for
    bit, with unknown, zero and negative depths, points behind the destination camera and pixels
    leaving the view."""
    rng = np.random.default_rng(seed)
    depth = (0.3 + 3.0 * rng.random((H, W))).astype(np.float32)
    depth[rng.random((H, W)) < 0.05] = np.nan
    depth[rng.random((H, W)) < 0.02] = 0.0
    depth[rng.random((H, W)) < 0.01] = -1.0
    pose_from = exp(list(rng.normal(size=6) * 0.5))
    step = [0.4, -0.3, 0.6] if seed == 3 else list(rng.normal(size=3) * 0.05)  # seed 3: some points end up behind
    pose_to = pose_from @ exp(step + list(rng.normal(size=3) * 0.05))
    observed = (rng.normal(size=(H, W, 2)) * 6.0).astype(np.float32)
    for slack in (1.0, 2.0):
        valid, static, residual = static_flow_fields(observed, depth, K, pose_from, pose_to, slack)
        assert np.array_equal(valid, flow_target_inside(camera_induced_flow(depth, K, pose_from, pose_to)))
        reference = closest_static_flow(observed, *static_flow_bounds(depth, K, pose_from, pose_to, slack))
        assert static.dtype == np.float32 and np.array_equal(static, reference, equal_nan=True)
        norm = np.linalg.norm(observed.astype(np.float64) - reference.astype(np.float64), axis=-1)
        assert residual.dtype == np.float64 and np.array_equal(residual, norm, equal_nan=True)
        assert 0.05 < valid.mean() < 0.99
        # the candidates from the kernel's residual are those flow_disagreement computes itself
        assert np.array_equal(flow_disagreement(observed, static, 1.5, valid=valid, residual=residual),
                              flow_disagreement(observed, static, 1.5, valid=valid))
    with pytest.raises(ValueError):
        static_flow_fields(observed, depth, K, pose_from, pose_to, 0.5)


def test_residual_change_tells_a_steady_motion_from_jitter() -> None:
    """A moving body's median residual stays put from frame to frame (the suite's objects changed
    by 0.01-0.27); camera jitter flips it (0.4-1.9 on static footage)."""
    steady = [np.array([5.0, -1.0]), np.array([5.2, -1.1]), np.array([4.9, -0.9])]
    assert residual_change(steady) < 0.1
    flipping = [np.array([2.0, -0.6]), np.array([-2.6, 0.2])]
    assert residual_change(flipping) > 1.5
    assert residual_change(steady + flipping) > 1.5  # one jump in the window is enough
    assert residual_change([np.array([1.0, 0.0])]) == float("inf")  # one frame says nothing yet
    assert residual_change([np.zeros(2), np.zeros(2)]) == 0.0


def test_boundary_contrast_tells_a_moving_body_from_a_smooth_error_field() -> None:
    rng = np.random.default_rng(5)
    valid = np.ones((H, W), bool)
    # a body moving on its own: 5 px of residual inside, flow noise outside
    residual = np.abs(rng.normal(0, 0.3, (H, W)))
    body = np.zeros((H, W), bool)
    body[60:120, 80:160] = True
    residual[body] += 5.0
    assert boundary_contrast(residual, body, valid) > 5.0
    # a wrong camera pose / rolling shutter: residual growing smoothly down the image; the rows
    # over the threshold form a region with nearly as much residual just outside it
    field = np.linspace(0.0, 4.0, H)[:, None] * np.ones((1, W)) + np.abs(rng.normal(0, 0.3, (H, W)))
    region = field > 2.5
    assert 1.0 < boundary_contrast(field, region, valid) < DynamicConfig().min_boundary_contrast
    # no ring to compare with: cannot tell, so it does not veto; no valid pixel inside: 0
    assert boundary_contrast(residual, np.ones((H, W), bool), valid) == float("inf")
    assert boundary_contrast(residual, body, np.zeros((H, W), bool)) == 0.0


def test_closest_static_flow_handles_nan_ends() -> None:
    far = np.zeros((4, 4, 2), np.float32)
    near = np.ones((4, 4, 2), np.float32) * 2.0
    near[0, 0] = np.nan  # the near point is behind the camera: only the far end remains
    far[1, 1] = np.nan
    out = closest_static_flow(np.ones((4, 4, 2), np.float32), far, near)
    np.testing.assert_allclose(out[2, 2], [1.0, 1.0])
    np.testing.assert_allclose(out[0, 0], [0.0, 0.0])
    np.testing.assert_allclose(out[1, 1], [2.0, 2.0])


# ------------------------------------------------------------------------------------------
# temporal segmentation
# ------------------------------------------------------------------------------------------


def _square(x: int, y: int, s: int = 20, shape: tuple[int, int] = (H, W)) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[y : y + s, x : x + s] = True
    return m


def _shift_flow(dx: float, dy: float) -> np.ndarray:
    f = np.zeros((H, W, 2), np.float32)
    f[..., 0], f[..., 1] = dx, dy
    return f


def test_segmenter_confirms_after_persistence_with_stable_ids() -> None:
    cfg = DynamicConfig(min_region_px=150, persistence=3, max_groups=4)
    seg = MotionSegmenter(cfg)
    assert seg.mask() is None
    rng = np.random.default_rng(0)
    ids = []
    for i in range(6):
        cand = _square(40 + 6 * i, 50 + 2 * i)  # moves 6 px right, 2 down per frame
        speck = rng.integers(0, [H, W], (8, 2))
        cand[speck[:, 0], speck[:, 1]] = True  # noise specks: too small to be regions
        regions = seg.update(cand, _shift_flow(6, 2) if i else None)
        assert len(regions) == 1
        r = regions[0]
        ids.append(r.id)
        assert r.confirmed == (i + 1 >= cfg.persistence)
        assert r.pixels == 400 and r.bbox == (40 + 6 * i, 50 + 2 * i, 20, 20)
        assert r.age == i + 1 and r.streak == i + 1 and r.observed
    assert len(set(ids)) == 1
    assert seg.mask().sum() == 400 and seg.mask(confirmed_only=False).sum() == 400


def test_segmenter_single_frame_blip_is_never_confirmed_and_dropped() -> None:
    cfg = DynamicConfig(min_region_px=150, persistence=2)
    seg = MotionSegmenter(cfg, grace_frames=1)
    (r,) = seg.update(_square(100, 100))
    assert not r.confirmed
    empty = np.zeros((H, W), bool)
    (r,) = seg.update(empty)  # missed: kept (grace) but its streak is reset
    assert not r.confirmed and r.streak == 0 and r.missed == 1 and not r.observed
    assert seg.update(empty) == []  # dropped after the grace period
    assert seg.mask().sum() == 0


def test_segmenter_without_flow_matches_by_overlap_and_keeps_ids_through_a_miss() -> None:
    cfg = DynamicConfig(min_region_px=100, persistence=2)
    seg = MotionSegmenter(cfg, grace_frames=2)
    seg.update(_square(30, 30, 30))
    (r,) = seg.update(_square(38, 33, 30))  # moved 8 px, no flow given: overlap still matches
    first_id = r.id
    assert r.confirmed
    (r,) = seg.update(_square(200, 150, 5))  # region missed (only a speck elsewhere)
    assert r.id == first_id and r.confirmed and r.missed == 1
    (r,) = seg.update(_square(40, 34, 30))
    assert r.id == first_id and r.confirmed and r.observed and r.streak == 1


def test_segmenter_flow_warp_associates_fast_objects() -> None:
    cfg = DynamicConfig(min_region_px=100, persistence=2)
    # 25 px per frame with a 20 px square: no overlap in place, full overlap after warping
    seg = MotionSegmenter(cfg)
    a = seg.update(_square(20, 60))[0].id
    regions = seg.update(_square(45, 60), _shift_flow(25, 0))
    assert [r.id for r in regions] == [a] and regions[0].confirmed
    seg2 = MotionSegmenter(cfg, grace_frames=0)
    b = seg2.update(_square(20, 60))[0].id
    regions = seg2.update(_square(45, 60), None)
    assert len(regions) == 1 and regions[0].id != b and not regions[0].confirmed


def test_segmenter_fragments_of_a_region_keep_one_id() -> None:
    cfg = DynamicConfig(min_region_px=150, persistence=2)
    seg = MotionSegmenter(cfg)
    (r,) = seg.update(_square(40, 40, 40))
    broken = _square(44, 40, 40)
    broken[:, 60:63] = False  # a gap splits it into two pieces
    broken[40:65, 44:60] = False  # the left one shrinks to 16 x 15 px...
    broken[65:80, 44:52] = False  # ... then to 8 x 15 = 120 px < min_region_px
    n, _ = cv2.connectedComponents(broken.astype(np.uint8))
    assert n == 3 and broken[:, :60].sum() == 120
    regions = seg.update(broken, _shift_flow(4, 0))
    assert [x.id for x in regions] == [r.id] and regions[0].confirmed
    assert regions[0].mask.sum() == broken.sum()
    # the same with the small piece big enough to be a region of its own: still one region
    broken[40:65, 52:60] = True
    regions = seg.update(broken, None)
    assert [x.id for x in regions] == [r.id] and regions[0].mask.sum() == broken.sum()


def test_segmenter_parts_of_a_weakly_moving_object_keep_one_id() -> None:
    # a slow object is often detected in parts: left half, then the right half 2 px further
    cfg = DynamicConfig(min_region_px=150, persistence=2)
    seg = MotionSegmenter(cfg, match_margin_px=8)
    (r,) = seg.update(_square(40, 40, 20) | _square(40, 60, 20))
    (r2,) = seg.update(_square(62, 40, 15) | _square(62, 55, 15))
    assert r2.id == r.id and r2.confirmed
    strict = MotionSegmenter(cfg, match_margin_px=0)
    (r,) = strict.update(_square(40, 40, 20) | _square(40, 60, 20))
    regions = strict.update(_square(62, 40, 15) | _square(62, 55, 15))
    assert r.id not in {x.id for x in regions if x.observed}


def test_segmenter_respects_max_groups_largest_first() -> None:
    cfg = DynamicConfig(min_region_px=100, persistence=2, max_groups=2)
    seg = MotionSegmenter(cfg)
    cand = _square(10, 10, 20) | _square(60, 10, 30) | _square(120, 10, 40) | _square(10, 120, 8)
    seg.update(cand)
    regions = seg.update(cand)
    confirmed = [r for r in regions if r.confirmed]
    assert [r.pixels for r in confirmed] == [1600, 900]
    assert len(regions) == 3  # the 20 px square waits for a slot; the 8 px one is too small
    # once the largest leaves, the waiting region takes its slot; the confirmed one keeps its id
    kept_id = confirmed[1].id
    cand2 = _square(10, 10, 20) | _square(60, 10, 30)
    seg.update(cand2)
    regions = seg.update(cand2)
    seg.update(cand2)
    regions = seg.update(cand2)
    confirmed = [r for r in regions if r.confirmed]
    assert sorted(r.pixels for r in confirmed) == [400, 900]
    assert kept_id in {r.id for r in confirmed}
    seg.drop(kept_id)
    assert kept_id not in {r.id for r in seg.regions}


def test_warp_mask_moves_a_mask_with_the_flow() -> None:
    m = _square(50, 40, 25)
    flow = _shift_flow(7.4, -3.2)
    flow[0, 0] = np.nan
    out = warp_mask(m, flow)
    assert (out == _square(57, 37, 25)).all()
    assert (warp_mask(m, None) == m).all()


# ------------------------------------------------------------------------------------------
# object motion
# ------------------------------------------------------------------------------------------


def _box_points(n: int, seed: int) -> np.ndarray:
    """Points on the surface of a 0.8 x 0.6 x 0.5 m box centred at (0.3, 0.1, 3.5)."""
    rng = np.random.default_rng(seed)
    half = np.array([0.4, 0.3, 0.25])
    p = rng.uniform(-1, 1, (n, 3))
    axis = rng.integers(0, 3, n)
    p[np.arange(n), axis] = np.sign(p[np.arange(n), axis])
    return p * half + np.array([0.3, 0.1, 3.5])


def test_object_motion_convention_and_exact_recovery() -> None:
    # object-to-map poses at two times; the map-frame motion is O_curr @ inv(O_prev)
    o_prev = exp([0.3, 0.1, 3.5, 0.1, -0.2, 0.05])
    o_curr = o_prev @ exp([0.08, -0.03, 0.05, 0.02, 0.04, -0.03])
    truth = o_curr @ np.linalg.inv(o_prev)
    cam_curr = exp([0.1, 0.02, 0.05, 0.01, -0.02, 0.0])
    pts = _box_points(800, 0)  # map points (previous time)
    pixels = project(cam_curr, (truth @ np.c_[pts, np.ones(len(pts))].T).T[:, :3])
    res = object_motion(pts, pixels, K, cam_curr)
    assert res.ok and res.num_points == 800 and res.inliers.all()
    np.testing.assert_allclose(res.motion, truth, atol=1e-6)
    assert res.median_error_px < 1e-4
    # the same with a guess, and translation-only on a pure translation
    res = object_motion(pts, pixels, K, cam_curr, init=truth @ exp([0.01, 0, 0, 0, 0.01, 0]))
    np.testing.assert_allclose(res.motion, truth, atol=1e-6)
    shift = about(np.zeros(3), [0, 0, 0], [0.07, -0.04, 0.1])
    pix_t = project(cam_curr, pts + shift[:3, 3])
    res_t = object_motion(pts, pix_t, K, cam_curr, dof="translation")
    np.testing.assert_allclose(res_t.motion, shift, atol=1e-7)
    np.testing.assert_allclose(res_t.displacement, shift[:3, 3], atol=1e-7)
    # too few points -> not ok, motion = init
    bad = object_motion(pts[:5], pixels[:5], K, cam_curr)
    assert not bad.ok and np.array_equal(bad.motion, np.eye(4))
    with pytest.raises(ValueError):
        object_motion(pts, pixels, K, cam_curr, dof="affine")


def test_object_motion_from_noisy_correspondences_with_outliers() -> None:
    pts = _box_points(1500, 1)
    centre = np.array([0.3, 0.1, 3.5])
    truth = about(centre, [0.0, 0.05, 0.02], [-0.12, 0.04, 0.06])  # ~3 deg spin + 14 cm shift
    cam_curr = exp([0.05, 0.0, 0.02, 0.0, 0.02, 0.0])
    pixels = project(cam_curr, pts @ truth[:3, :3].T + truth[:3, 3])
    rng = np.random.default_rng(2)
    pixels += rng.normal(0, 0.5, pixels.shape)
    out = rng.random(len(pts)) < 0.15
    pixels[out] += rng.uniform(-25, 25, (out.sum(), 2))
    res = object_motion(pts, pixels, K, cam_curr)
    assert res.ok
    true_disp = truth[:3, :3] @ centre + truth[:3, 3] - centre
    assert np.abs(res.displacement - true_disp).max() < 0.01
    assert abs(rot_deg(res.motion @ np.linalg.inv(truth))) < 0.6
    assert 0.8 < res.inlier_ratio < 0.9
    assert res.median_error_px < 1.0


def _object_depth_and_flow(truth: np.ndarray, cam_prev: np.ndarray, cam_curr: np.ndarray):
    """Depth of a fronto-parallel 0.9 m textured board at z = 3 (in the previous view) and the
    exact flow of its pixels under object motion ``truth`` and camera motion prev -> curr."""
    depth = np.full((H, W), 5.0, np.float32)  # the background
    mask = np.zeros((H, W), bool)
    mask[60:130, 90:160] = True
    depth[mask] = 3.0
    v, u = np.mgrid[0:H, 0:W].astype(np.float64)
    z = depth.astype(np.float64)
    cam = np.stack([(u - K[0, 2]) / F * z, (v - K[1, 2]) / F * z, z], -1).reshape(-1, 3)
    world = cam @ cam_prev[:3, :3].T + cam_prev[:3, 3]
    moved = np.where(mask.reshape(-1, 1), world @ truth[:3, :3].T + truth[:3, 3], world)
    flow = (project(cam_curr, moved) - np.stack([u, v], -1).reshape(-1, 2)).reshape(H, W, 2).astype(np.float32)
    return depth, mask, flow


def test_motion_from_region_flow_recovers_a_known_object_translation() -> None:
    cam_prev = exp([0.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    cam_curr = exp([0.06, 0.01, 0.03, 0.0, 0.01, 0.0])
    centre = np.array([(125 - K[0, 2]) / F * 3.0, (95 - K[1, 2]) / F * 3.0, 3.0])
    truth = about(centre, [0.0, 0.0, 0.03], [0.1, -0.05, 0.08])  # small in-plane spin + translation
    depth, mask, flow = _object_depth_and_flow(truth, cam_prev, cam_curr)
    res = motion_from_region_flow(depth, mask, flow, K, cam_prev, cam_curr)
    assert res.ok
    np.testing.assert_allclose(res.motion, truth, atol=2e-4)
    # noisy flow (0.3 px) plus 10 % wild vectors: the translation is still recovered
    rng = np.random.default_rng(3)
    noisy = flow + rng.normal(0, 0.3, flow.shape).astype(np.float32)
    wild = rng.random((H, W)) < 0.1
    noisy[wild] += rng.uniform(-15, 15, (wild.sum(), 2)).astype(np.float32)
    true_disp = truth[:3, :3] @ res.centroid + truth[:3, 3] - res.centroid
    res = motion_from_region_flow(depth, mask, noisy, K, cam_prev, cam_curr)
    assert np.abs(res.displacement - true_disp).max() < 0.015
    assert rot_deg(res.motion @ np.linalg.inv(truth)) < 1.5
    res_t = motion_from_region_flow(depth, mask, noisy, K, cam_prev, cam_curr, dof="translation")
    # translation-only ignores the 1.7 deg spin: the centroid shift is still right
    assert np.abs(res_t.displacement - true_disp).max() < 0.02


def test_motion_from_real_dis_flow_on_the_moving_square(moving_square) -> None:
    """End to end on images: detect the square, recover its 3D translation from DIS flow."""
    _, _, depth, mask, pose1, pose2, zs, observed = moving_square
    predicted = camera_induced_flow(depth, K, pose1, pose2)
    cand = flow_disagreement(observed, predicted, 2.0, valid=flow_target_inside(predicted))
    square_depth = depth.copy()
    square_depth[cand | mask] = zs  # the square's depth (monocular: not observable from flow alone)
    truth = np.array([-0.06, 0.05, 0.0])
    for dof in ("se3", "translation"):
        res = motion_from_region_flow(square_depth, cand, observed, K, pose1, pose2, dof=dof)
        assert res.ok and res.median_error_px < 0.6
        # sideways within 12 %; depth motion is weakly observed from two views of a small
        # fronto-parallel patch (1 cm in z scales its 46 px image by 0.3 %)
        assert np.abs(res.displacement[:2] - truth[:2]).max() < 0.0075, (dof, res.displacement)
        assert abs(res.displacement[2] - truth[2]) < 0.025, (dof, res.displacement)


def test_region_depth_fill_uses_a_robust_ring_depth() -> None:
    depth = np.full((H, W), 4.0, np.float32)
    depth[:, W // 2 :] = 6.0  # a step well away from the region
    rng = np.random.default_rng(0)
    depth[rng.random((H, W)) < 0.2] = np.nan  # holes
    mask = _square(60, 60, 30)
    depth[mask] = np.nan
    depth[62:80, 62:80] = 1.0  # stale values inside the region are overwritten
    ring = cv2.dilate(mask.astype(np.uint8), np.ones((7, 7), np.uint8)).astype(bool) & ~mask
    depth[ring & (rng.random((H, W)) < 0.1)] = 50.0  # a few wild ring values: median ignores them
    filled = region_depth_fill(depth, mask)
    assert np.allclose(filled[mask], 4.0)
    keep = ~mask & np.isfinite(depth)
    assert np.array_equal(filled[keep], depth[keep]) and np.isnan(filled[~mask & ~np.isfinite(depth)]).all()
    only = region_depth_fill(depth, mask, only_unknown=True)
    assert np.allclose(only[62:80, 62:80], 1.0) and np.allclose(only[85:90, 85:90], 4.0)
    # no depth near the region: the ring grows
    far = np.full((H, W), np.nan, np.float32)
    far[:, :10] = 2.5
    assert np.allclose(region_depth_fill(far, mask)[mask], 2.5)
    with pytest.raises(ValueError):
        region_depth_fill(np.full((H, W), np.nan, np.float32), mask)


# ------------------------------------------------------------------------------------------
# merging groups that stopped moving
# ------------------------------------------------------------------------------------------


def test_should_merge_still_group_but_not_a_moving_one() -> None:
    rng = np.random.default_rng(0)
    cfg = DynamicConfig()  # merge_motion = 0.005
    scale = 2.0
    still = [exp(list(np.r_[rng.normal(0, 0.001, 3), rng.normal(0, 0.0005, 3)])) for _ in range(6)]
    moving = [exp([0.05, 0.0, 0.0, 0.0, 0.0, 0.0]) for _ in range(6)]
    spinning = [exp([0.0, 0.0, 0.0, 0.0, 0.02, 0.0]) for _ in range(6)]
    assert should_merge(still, cfg.merge_motion, scale, frames=5)
    assert not should_merge(moving, cfg.merge_motion, scale, frames=5)
    assert not should_merge(spinning, cfg.merge_motion, scale, frames=5)
    assert not should_merge(still[:3], cfg.merge_motion, scale, frames=5)  # not enough history
    assert not should_merge(still[:4] + moving[:1], cfg.merge_motion, scale, frames=5)  # moved lately
    assert should_merge(moving[:2] + still[:5], cfg.merge_motion, scale, frames=5)  # stopped since
    # scene scale: 5 mm/frame is "still" in a 10 m scene but not in a 0.5 m one
    creep = [exp([0.005, 0, 0, 0, 0, 0])] * 5
    assert should_merge(creep, cfg.merge_motion, 10.0, frames=5)
    assert not should_merge(creep, cfg.merge_motion, 0.5, frames=5)
    # a spin about the object's own centre far from the map origin is judged by the centroid
    centre = np.array([5.0, 0.0, 10.0])
    tiny_spin = about(centre, [0.0, 0.001, 0.0], [0, 0, 0])
    assert motion_magnitude(tiny_spin, 1.0) > 0.01
    assert motion_magnitude(tiny_spin, 1.0, centre) == pytest.approx(0.001, abs=1e-6)


def test_group_motion_history_per_group() -> None:
    hist = GroupMotionHistory(DynamicConfig(merge_motion=0.01), frames=3)
    for _ in range(3):
        hist.add(1, exp([0.001, 0, 0, 0, 0, 0]))
        hist.add(2, exp([0.2, 0, 0, 0, 0, 0]))
    assert hist.should_merge(1) and not hist.should_merge(2) and not hist.should_merge(3)
    hist.add(1, exp([0.3, 0, 0, 0, 0, 0]))
    assert not hist.should_merge(1)
    assert hist.groups() == [1, 2]
    hist.drop(2)
    assert hist.groups() == [1]
