"""Motion groups on a synthetic sequence with a moving box: spawn, follow, mask, merge, and the
engine with groups on."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from posegs_ros.config import PosegsConfig, apply_flat
from posegs_ros.tracking.flow import DenseFlow
from posegs_ros.scene.gaussians import GaussianMap
from posegs_ros.dynamic.motion_groups import DirectMapAccess, MotionGroups


@pytest.fixture(scope="module")
def moving_box():
    from posegs_ros.tools.synth import SynthConfig, generate

    return generate(SynthConfig(seed=1, frames=14, width=160, height=120, dynamic=True))


def feed(groups: MotionGroups, seq, gmap: GaussianMap, frames) -> list:
    out = []
    for f in frames:
        alpha = np.ones(f.depth.shape, np.float32)
        out.append(groups.observe(f.blurred, f.pose, f.depth, alpha, seq.intrinsics, DirectMapAccess(gmap), 3.0, 0.5))
    return out


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def test_group_spawns_follows_the_box_and_masks_it(moving_box) -> None:
    seq = moving_box
    cfg = apply_flat(PosegsConfig(), {"dynamic.enabled": True})
    gmap = GaussianMap(0, 50_000)
    groups = MotionGroups(cfg, DenseFlow())
    obs = feed(groups, seq, gmap, seq.frames)
    spawned = [i for i, o in enumerate(obs) if o.spawned]
    assert spawned and spawned[0] <= cfg.dynamic.persistence + 3
    g = obs[spawned[0]].spawned[0]
    assert (gmap.group_ids == g).sum() > 50
    # the detected mask overlaps the ground-truth mask of the box
    late = [iou(o.mask, f.mask) for o, f in zip(obs[spawned[0]:], seq.frames[spawned[0]:]) if o.mask is not None]
    assert late and np.mean(late) > 0.5
    # the group's motion follows the box in the image (a monocular object's depth is a guess, so
    # the test compares where its centre is seen, not its 3D travel)
    last = len(seq.frames) - 1
    k = seq.intrinsics.numpy()

    def seen(point: np.ndarray, pose: np.ndarray) -> np.ndarray:
        x = (point - pose[:3, 3]) @ pose[:3, :3]
        return (k @ (x / x[2]))[:2]

    means = gmap.means.detach().double().numpy()[gmap.group_ids.numpy() == g]
    m = obs[last].poses[g]
    est_px = seen(m[:3, :3] @ means.mean(0) + m[:3, 3], seq.frames[last].pose)
    ys, xs = np.nonzero(seq.frames[last].mask)
    gt_px = np.array([xs.mean(), ys.mean()])
    start_px = seen(means.mean(0), seq.frames[spawned[0] - 1].pose)
    assert np.linalg.norm(gt_px - start_px) > 5.0  # the box really moved in the image
    assert np.linalg.norm(est_px - gt_px) < 0.35 * np.linalg.norm(gt_px - start_px) + 2.0
    # tracking would ignore the box's pixels next frame
    exclusion = groups.exclusion_mask()
    assert exclusion is not None and (exclusion & seq.frames[-1].mask).sum() > 0.5 * seq.frames[-1].mask.sum()


def test_group_that_stops_merges_into_the_static_map(moving_box) -> None:
    seq = moving_box
    cfg = apply_flat(PosegsConfig(), {"dynamic.enabled": True})
    gmap = GaussianMap(0, 50_000)
    groups = MotionGroups(cfg, DenseFlow())
    feed(groups, seq, gmap, seq.frames)
    assert groups.groups
    g = next(iter(groups.groups))
    pose = groups.groups[g].pose.copy()
    local = gmap.means.detach().double().numpy()[gmap.group_ids.numpy() == g]
    # the world stops: the same frame again and again
    still = [seq.frames[-1]] * 6
    obs = feed(groups, seq, gmap, still)
    assert any(g in o.merged for o in obs) and not groups.groups
    assert int((gmap.group_ids == g).sum()) == 0
    # merged Gaussians now sit, as static ones, where the group last was
    expected = local @ pose[:3, :3].T + pose[:3, 3]
    moved = gmap.means.detach().double().numpy()[-len(local):]
    assert np.allclose(np.sort(moved, axis=0), np.sort(expected, axis=0), atol=1e-4)


def test_engine_with_groups_reports_group_poses_and_masks(moving_box, fast_config) -> None:
    from posegs_ros.pipeline import Frame, Reconstructor

    cfg = apply_flat(fast_config, {"dynamic.enabled": True, "init.min_parallax_px": 2.5})
    engine = Reconstructor(cfg)
    results = [engine.process(Frame(f.blurred, f.stamp, moving_box.intrinsics, f.index)) for f in moving_box.frames]
    tracked = [r for r in results if r.has_pose]
    assert tracked, "the engine did not initialize"
    with_groups = [r for r in tracked if r.group_poses]
    if with_groups:  # the box is detected once two frames after initialization show it moving
        r = with_groups[-1]
        assert r.dynamic_mask is not None and r.dynamic_mask.any()
        assert all(np.isfinite(m).all() for m in r.group_poses.values())
        assert r.deblurred().shape == moving_box.frames[0].blurred.shape
    assert torch.isfinite(engine.backend.gmap.means).all()


def test_track_group_recovers_a_known_object_motion(moving_box) -> None:
    """Two frames: the box's Gaussians (lifted with true depth in frame a, group frame = map at
    a) are tracked into frame b against their own render; the solved motion matches the true
    object motion O_b inv(O_a)."""
    from posegs_ros.scene.blur import RenderSettings
    from posegs_ros.dynamic.motion_groups import track_group

    seq = moving_box
    a, b = seq.frames[6], seq.frames[7]
    k = seq.intrinsics.numpy()
    h, w = a.depth.shape
    gmap = GaussianMap(0, 50_000)
    vs, us = np.mgrid[0:h, 0:w]
    for group, sel in ((0, ~a.mask), (1, a.mask)):
        v, u = vs[sel], us[sel]
        z = a.depth[v, u].astype(np.float64)
        cam = np.stack([(u - k[0, 2]) / k[0, 0] * z, (v - k[1, 2]) / k[1, 1] * z, z], 1)
        world = cam @ a.pose[:3, :3].T + a.pose[:3, 3]
        rgb = torch.from_numpy(a.sharp[v, u].astype(np.float32) / 255)
        # small splats: big overlapping ones lifted from depth shift the render towards the near
        # side of slanted surfaces (front-to-back compositing), which the flow would read as motion
        gmap.add(torch.from_numpy(world).float(), rgb, torch.from_numpy(z / k[0, 0] * 0.35).float(),
                 opacities=0.95, group_ids=group)
    from posegs_ros.mapping.mapper import scene_tensors

    truth = b.object_pose @ np.linalg.inv(a.object_pose)
    settings = RenderSettings(w, h, near_plane=0.05, far_plane=100.0)
    track = track_group(DenseFlow(), b.sharp, seq.intrinsics, b.pose, scene_tensors(gmap, detach=True), settings,
                        1, np.eye(4), passes=2)
    assert track.ok and track.inlier_ratio > 0.8 and track.num_points > 100
    # compare where the box's points are seen in frame b: truth vs estimate vs not moving
    pts = gmap.means.detach().double().numpy()[gmap.group_ids.numpy() == 1]

    def seen(m: np.ndarray) -> np.ndarray:
        x = (pts @ m[:3, :3].T + m[:3, 3] - b.pose[:3, 3]) @ b.pose[:3, :3]
        return (x[:, :2] / x[:, 2:]) * [k[0, 0], k[1, 1]]

    moved = np.median(np.linalg.norm(seen(truth) - seen(np.eye(4)), axis=1))
    error = np.median(np.linalg.norm(seen(truth) - seen(track.pose), axis=1))
    assert moved > 3.0, "the box should move visibly between the two frames"
    assert error < 0.6 and error < 0.2 * moved  # on par with DIS flow between the two true images
    # the visible mask is where the box is in frame b
    assert iou(track.visible, b.mask) > 0.7


def test_final_refinement_carries_a_group_to_the_frames_before_its_detection(moving_box, fast_config) -> None:
    """Offline, the group detected late (after initialization + persistence) is tracked back
    through the earlier frames: every frame gets a pose of it and a mask that overlaps the box."""
    from posegs_ros.pipeline import Frame, Reconstructor, TrackingState

    cfg = apply_flat(fast_config, {"dynamic.enabled": True, "init.min_parallax_px": 2.5})
    engine = Reconstructor(cfg, keep_frames=True)
    results = [engine.process(Frame(f.blurred, f.stamp, moving_box.intrinsics, f.index)) for f in moving_box.frames]
    detected = [r.index for r in results if r.group_poses]
    assert detected, "the box was not detected online"
    engine.finalize(20)
    traj = engine.trajectory()
    before = [p for p in traj if p.index < detected[0]]
    assert before, "no tracked frame precedes the detection"
    # frames buffered before initialization are posed only offline, backward from the first
    # keyframe: the group is carried there too, over a longer walk (on some machines the
    # initialization waits until frame 8 of 14), and must still overlap the box
    first_online = min(r.index for r in results if r.state is not TrackingState.INITIALIZING)
    for p in traj:
        assert p.group_poses and all(np.isfinite(m).all() for m in p.group_poses.values())
        assert p.dynamic_mask is not None
        overlap = iou(p.dynamic_mask, moving_box.frames[p.index].mask)
        assert overlap > (0.3 if p.index >= first_online else 0.1), (p.index, overlap)
    assert np.mean([iou(p.dynamic_mask, moving_box.frames[p.index].mask) for p in before]) > 0.45


def _observe_sequence(synth_kwargs: dict, frames: int, seed: int) -> tuple:
    """Motion groups (defaults, groups on) fed a sequence with its GT poses and depth:
    (sequence, config, observations, the map)."""
    from posegs_ros.tools.synth import SynthConfig, generate

    seq = generate(SynthConfig(seed=seed, frames=frames, width=160, height=120, **synth_kwargs))
    cfg = apply_flat(PosegsConfig(), {"dynamic.enabled": True})
    groups, gmap = MotionGroups(cfg, DenseFlow()), GaussianMap(0, 50_000)
    return seq, cfg, feed(groups, seq, gmap, seq.frames), gmap


def test_a_large_fast_box_entering_the_view_is_detected_within_a_few_frames() -> None:
    seq, cfg, obs, _ = _observe_sequence(
        {"dynamic": True, "object_motion": "slide", "object_size": 0.7, "object_speed": 1.4}, 16, seed=0)
    seen = [i for i, f in enumerate(seq.frames) if f.mask.any()]
    spawned = [i for i, o in enumerate(obs) if o.spawned]
    assert seen and spawned and spawned[0] <= seen[0] + cfg.dynamic.persistence + 2
    assert all(o.mask is not None for o in obs[spawned[0]:])  # followed from then on
    large = [iou(o.mask, f.mask) for o, f in zip(obs, seq.frames) if f.mask.mean() > 0.1]
    assert large and np.mean(large) > 0.6  # once it covers a tenth of the image (~10 px of blur)


def test_two_boxes_get_two_groups() -> None:
    _, _, obs, _ = _observe_sequence({"dynamic": True, "object_motion": "slide", "objects": 2}, 10, seed=1)
    spawned = [g for o in obs for g in o.spawned]
    assert len(set(spawned)) == 2
    assert max(len(o.poses) for o in obs) == 2  # both at once


def test_a_static_scene_spawns_no_group() -> None:
    _, _, obs, _ = _observe_sequence({}, 20, seed=0)
    assert not any(o.spawned for o in obs) and all(o.mask is None for o in obs)


def test_a_box_that_leaves_the_view_is_parked_not_merged_into_the_static_map() -> None:
    from posegs_ros.dynamic.motion_groups import touches_border

    seq, _, obs, gmap = _observe_sequence(
        {"dynamic": True, "object_motion": "slide", "object_size": 0.7, "object_speed": 1.4}, 40, seed=0)
    seen = [i for i, f in enumerate(seq.frames) if f.mask.any()]
    assert seen[-1] < 36 and touches_border(seq.frames[seen[-1]].mask)  # it slides out of the view
    spawned = [g for o in obs for g in o.spawned]
    assert spawned and not any(o.merged for o in obs)  # never baked into the static map ...
    last = obs[-1]
    assert spawned[0] in last.poses and last.mask is None  # ... but kept, out of the view
    g = spawned[0]
    assert (gmap.group_ids == g).sum() > 50  # its Gaussians stay in its group
    means = gmap.means.detach().double().numpy()[gmap.group_ids.numpy() == g]
    k = seq.intrinsics.numpy()
    for f, o in zip(seq.frames[seen[-1] + 3:], obs[seen[-1] + 3:]):  # where they went: outside the image
        m = o.poses[g]
        x = (means @ m[:3, :3].T + m[:3, 3] - f.pose[:3, 3]) @ f.pose[:3, :3]
        u, v = (k @ (x / x[:, 2:3]).T)[:2]
        inside = (x[:, 2] > 0) & (u >= 0) & (u < seq.intrinsics.width) & (v >= 0) & (v < seq.intrinsics.height)
        assert inside.mean() < 0.05


def test_rolling_shutter_skew_spawns_no_group() -> None:
    """A static scene seen through a rolling shutter that skews each frame (rows read out later
    shifted further, alternating with the hand's direction): the flow disagrees with the
    camera's in the lower rows, smoothly and each frame the other way -- no moving body, so no
    group (real-camera false groups looked like this)."""
    import cv2

    from posegs_ros.tools.synth import SynthConfig, generate

    seq = generate(SynthConfig(seed=2, frames=12, width=160, height=120))
    h, w = seq.frames[0].depth.shape
    vs, us = np.mgrid[0:h, 0:w].astype(np.float32)

    def fed(cfg: PosegsConfig) -> list:
        groups, gmap = MotionGroups(cfg, DenseFlow()), GaussianMap(0, 50_000)
        out = []
        for j, f in enumerate(seq.frames):
            skew = 5.0 * (vs / h) ** 2 * (1 if j % 2 else -1)
            image = cv2.remap(f.blurred, us + skew, vs, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
            out.append(groups.observe(image, f.pose, f.depth, np.ones((h, w), np.float32), seq.intrinsics,
                                      DirectMapAccess(gmap), 3.0, 0.5))
        return out

    cfg = apply_flat(PosegsConfig(), {"dynamic.enabled": True})
    assert not any(o.spawned for o in fed(cfg))
    # each test alone keeps them out: the border contrast (a smooth field) and the residual's
    # steadiness (the skew alternates with the hand); without both the skewed rows become a group
    assert not any(o.spawned for o in fed(apply_flat(cfg, {"dynamic.min_boundary_contrast": 0.0})))
    assert not any(o.spawned for o in fed(apply_flat(cfg, {"dynamic.max_residual_change": float("inf")})))
    assert any(o.spawned for o in fed(apply_flat(cfg, {"dynamic.min_boundary_contrast": 0.0,
                                                       "dynamic.max_residual_change": float("inf")})))
