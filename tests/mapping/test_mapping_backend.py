"""The mapping back end: inline and concurrent runs of the same work; snapshots tracking can
read while mapping writes; keyframes and edits taken between two steps; stop and errors.

Concurrency is checked with events and snapshot versions (what happened), never by sleeping."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from posegs_ros.camera import project
from posegs_ros.config import PosegsConfig, apply_flat
from posegs_ros.geometry import se3_inverse, transform_points
from posegs_ros.mapping.backend import MappingBackend
from posegs_ros.scene.blur import RenderSettings, render_views
from posegs_ros.scene.keyframes import Keyframe
from posegs_ros.scene.snapshot import MapStore
from posegs_ros.tracking.tracker import twist_units

TIMEOUT = 120.0  # generous bounds for a busy CI machine; the tests wait for events, not for time


def keyframe(frame, intrinsics, scale: float, fixed: bool = False) -> Keyframe:
    return Keyframe(frame.index, frame.stamp, torch.from_numpy(frame.blurred).float() / 255, intrinsics,
                    torch.from_numpy(frame.pose.copy()), torch.tensor([0.0, 0, 0, 0.002, 0.002, 0], dtype=torch.float64),
                    fixed=fixed, unit=twist_units(scale))


def start(seq, concurrent: bool, second: int = 4, depth_factor: np.ndarray | None = None,
          **overrides) -> MappingBackend:
    """A back end seeded from frame 0 (true depth, times ``depth_factor`` ``[H, W]`` if given) with
    keyframes 0 and ``second``."""
    cfg = apply_flat(PosegsConfig(), {"blur.subframes": 3, "init.mapping_rounds": 1, "mapping.idle_rounds": 0,
                                      "mapping.gaussian_iters": 4, "mapping.pose_iters": 2, "mapping.joint_iters": 2,
                                      **overrides})
    backend = MappingBackend(cfg, MapStore(), concurrent=concurrent)
    f0 = seq.frames[0]
    scale = float(np.median(f0.depth))
    h, w = f0.depth.shape
    vs, us = np.mgrid[0:h:3, 0:w:3]
    pixels = np.stack([us.ravel(), vs.ravel()], 1).astype(float)
    depth = f0.depth if depth_factor is None else f0.depth * depth_factor
    backend.seed(keyframe(f0, seq.intrinsics, scale, fixed=True), keyframe(seq.frames[second], seq.intrinsics, scale),
                 pixels, depth[vs.ravel(), us.ravel()].astype(float), 3.0, scale)
    return backend


def render(snap, seq) -> torch.Tensor:
    settings = RenderSettings(seq.intrinsics.width, seq.intrinsics.height, near_plane=0.01, far_plane=100.0)
    pose = torch.from_numpy(snap.keyframe_poses[1])[None]
    return render_views(snap.scene, pose, seq.intrinsics.matrix(torch.float64), settings).rgb[0]


def test_inline_work_runs_in_submit_and_is_published(small_sequence) -> None:
    seq = small_sequence
    backend = start(seq, concurrent=False)
    snap = backend.store.latest()
    assert snap.mapping_rounds == 1 and snap.num_keyframes == 2 and snap.window == (0, 1)
    backend.submit(keyframe(seq.frames[8], seq.intrinsics, backend.scene_scale))
    snap = backend.store.latest()
    assert snap.mapping_rounds == 2 and snap.num_keyframes == 3 and snap.window == (0, 1, 2)
    assert snap.stats["keyframes"] == 3 and snap.stats["steps"] == 16
    assert not np.array_equal(snap.keyframe_poses[2], seq.frames[8].pose)  # refined by its round
    assert backend.wait_idle(0.0) and not backend.running


def test_a_snapshot_renders_the_same_while_mapping_writes(small_sequence) -> None:
    seq = small_sequence
    backend = start(seq, concurrent=True, **{"mapping.gaussian_iters": 100_000})
    try:
        assert backend.in_round.wait(TIMEOUT), "the initial round did not start"
        snap = backend.store.latest()
        first = render(snap, seq)
        renders = [first]
        newer = snap
        for _ in range(3):  # render the same snapshot while at least three mapping steps land
            newer = backend.store.wait_newer(newer.version, TIMEOUT)
            renders.append(render(snap, seq))
        assert newer.version > snap.version
        # a round that outlasts the run still reports its work: steps and busy time as they go
        assert newer.mapping_rounds == 0 and newer.stats["steps"] > snap.stats["steps"]
        assert newer.stats["busy_seconds"] > snap.stats["busy_seconds"] >= 0.0
    finally:
        assert backend.stop(TIMEOUT)
    assert all(torch.equal(first, r) for r in renders)
    assert torch.equal(first, render(snap, seq))
    assert not torch.equal(snap.state["means"], backend.gmap.means.detach())  # mapping did write


def test_keyframes_and_edits_join_a_running_round(small_sequence) -> None:
    seq = small_sequence
    backend = start(seq, concurrent=True, **{"mapping.gaussian_iters": 100_000})
    ran: list[tuple[str, bool, int]] = []
    done = threading.Event()

    def edit(gmap, keyframes) -> None:
        ran.append((threading.current_thread().name, backend.in_round.is_set(), len(keyframes)))
        done.set()

    try:
        assert backend.in_round.wait(TIMEOUT)
        rounds = backend.store.latest().mapping_rounds
        backend.submit(keyframe(seq.frames[8], seq.intrinsics, backend.scene_scale))
        backend.edit(edit)
        assert done.wait(TIMEOUT)
        snap = backend.store.latest()
        while 2 not in snap.keyframe_poses:
            snap = backend.store.wait_newer(snap.version, TIMEOUT)
        assert snap.mapping_rounds == rounds  # integrated between two steps of the running round
        assert ran == [("posegs_mapping", True, 3)]
        assert backend.backlog == 0
    finally:
        assert backend.stop(TIMEOUT)


def test_stop_ends_a_round_in_flight_and_folds_its_poses(small_sequence) -> None:
    seq = small_sequence
    backend = start(seq, concurrent=True, **{"mapping.joint_iters": 100_000, "mapping.gaussian_iters": 1,
                                             "mapping.pose_iters": 1})
    assert backend.in_round.wait(TIMEOUT)
    snap = backend.store.wait_newer(backend.store.latest().version, TIMEOUT)  # a step has landed
    assert backend.stop(TIMEOUT)
    assert not backend.running and not backend.in_round.is_set()
    kf = backend.keyframes[1]
    assert torch.count_nonzero(kf.delta) == 0 and not kf.twist_u.requires_grad
    with pytest.raises(RuntimeError, match="stopped"):
        backend.submit(lambda: None)
    assert snap.version <= backend.publish().version
    # stopped: the caller owns the map, an edit runs at once in its thread and is published
    ran: list[str] = []
    before = backend.store.latest().version
    backend.edit(lambda gmap, keyframes: ran.append(threading.current_thread().name))
    assert ran == [threading.current_thread().name] and backend.store.latest().version > before


def test_a_failing_job_is_counted_and_the_thread_goes_on(small_sequence, caplog) -> None:
    seq = small_sequence
    backend = start(seq, concurrent=True)
    ran = threading.Event()
    try:
        assert backend.wait_idle(TIMEOUT)
        backend.submit(lambda: 1 / 0)
        backend.submit(ran.set)
        assert ran.wait(TIMEOUT) and backend.wait_idle(TIMEOUT)
        assert backend.stats.errors == 1 and backend.running
        assert any("ZeroDivisionError" in r.getMessage() for r in caplog.records)
    finally:
        assert backend.stop(TIMEOUT)


def _true_pixels_in(seq, j: int, i: int) -> np.ndarray:
    """``[H, W, 2]``: where each pixel of frame ``j`` lands in frame ``i`` (true depth and poses)."""
    depth = seq.frames[j].depth
    h, w = depth.shape
    vs, us = np.mgrid[0:h, 0:w]
    k = seq.intrinsics.matrix(torch.float64).numpy()
    cam = np.linalg.inv(k) @ np.stack([us.ravel(), vs.ravel(), np.ones(h * w)]) * depth.ravel()
    pose_j, pose_i = seq.frames[j].pose, seq.frames[i].pose
    world = pose_j[:3, :3] @ cam + pose_j[:3, 3:4]
    in_i = pose_i[:3, :3].T @ (world - pose_i[:3, 3:4])
    uv = k @ in_i
    return (uv[:2] / uv[2]).T.reshape(h, w, 2)


def test_triangulated_depth_keeps_only_content_both_keyframes_saw(small_sequence) -> None:
    """``mapping.defer_new_content``: a depth only where the flow between the keyframes comes back."""
    seq = small_sequence
    backend = start(seq, concurrent=False, **{"mapping.defer_new_content": True})
    scale = backend.scene_scale
    a, b = keyframe(seq.frames[0], seq.intrinsics, scale), keyframe(seq.frames[8], seq.intrinsics, scale)
    truth = seq.frames[8].depth
    h, w = truth.shape
    in_a = _true_pixels_in(seq, 8, 0)
    outside = (in_a[..., 0] < 0) | (in_a[..., 0] > w - 1) | (in_a[..., 1] < 0) | (in_a[..., 1] > h - 1)
    assert outside.mean() > 0.05  # part of frame 8 was never in frame 0's view
    depth = backend._triangulated_depth(a, b, consistent_only=True)
    ok = np.isfinite(depth)
    assert ok[~outside].mean() > 0.7
    assert np.median(np.abs(depth[ok & ~outside] / truth[ok & ~outside] - 1)) < 0.1
    # what entered at the border has no depth (the cells next to it may: 4 px splats)
    border = outside & (np.abs(in_a[..., 0] - np.clip(in_a[..., 0], 0, w - 1)) > 4)
    assert border.any() and ok[border].mean() < 0.05
    # where the flow from ``a`` back to ``b`` disagrees (occlusion, a mismatch) there is no depth either
    real_flow = backend.flow
    land = np.rint(in_a[30:62, 40:80].reshape(-1, 2)).astype(int)
    u0, v0 = np.clip(land.min(0), 0, None)
    u1, v1 = np.minimum(land.max(0) + 1, [w, h])

    def disagreeing(source: np.ndarray, destination: np.ndarray) -> np.ndarray:
        flow = real_flow(source, destination)
        if np.array_equal(source, (a.image.numpy() * 255).astype(np.uint8)):
            flow[v0:v1, u0:u1] += 3.0  # a -> b only: 3 px off in the patch
        return flow

    backend.flow = disagreeing
    depth_fb = backend._triangulated_depth(a, b, consistent_only=True)
    patch = np.zeros((h, w), bool)
    patch[34:58, 44:76] = True  # inside the region that lands in the patch, away from its edges
    assert ok[patch].mean() > 0.9 and np.isfinite(depth_fb[patch]).mean() < 0.1
    assert np.isfinite(depth_fb[~outside & ~patch]).mean() > 0.6


def _depth_error_in(backend: MappingBackend, frame, columns: slice) -> float:
    """Median absolute log error of the depth of the Gaussians ``frame`` sees in ``columns``."""
    cam = transform_points(se3_inverse(torch.from_numpy(frame.pose)), backend.gmap.means.detach().double())
    uv, z = project(cam, backend.keyframes[0].intrinsics.matrix(torch.float64))
    u, v = uv.round().long().unbind(-1)
    h, w = frame.depth.shape
    inside = (z > 0) & (u >= max(columns.start, 0)) & (u < min(columns.stop, w)) & (v >= 0) & (v < h)
    truth = torch.from_numpy(frame.depth.astype(np.float64))[v[inside], u[inside]]
    return float((z[inside] / truth).log().abs().median())


def test_the_first_map_takes_the_depth_of_the_first_keyframe_far_enough_that_matches(small_sequence) -> None:
    """``init.retriangulate_baseline``: a first map 30 % too deep on one half is re-triangulated at
    the first keyframe twice the initial baseline away whose flow comes back -- not earlier, not
    from a keyframe whose image does not match (it passes the turn to the next), and once."""
    seq = small_sequence
    h, w = seq.frames[0].depth.shape
    wrong = np.ones((h, w))
    wrong[:, w // 2 :] = 1.3
    backend = start(seq, concurrent=False, second=8, depth_factor=wrong, **{"init.retriangulate_baseline": 2.0})
    scale = backend.scene_scale
    assert _depth_error_in(backend, seq.frames[0], slice(w // 2, w)) > 0.25
    backend.submit(keyframe(seq.frames[12], seq.intrinsics, scale))  # 1.5x the initial baseline: too short
    assert backend.stats.retriangulated == 0 and not backend._first_map_settled
    noise = keyframe(seq.frames[18], seq.intrinsics, scale)  # 2.2x, but its image is not the scene
    noise.image = torch.from_numpy(np.random.default_rng(0).random((h, w, 3))).float()
    backend.submit(noise)
    assert backend.stats.retriangulated == 0 and not backend._first_map_settled
    backend.submit(keyframe(seq.frames[19], seq.intrinsics, scale))
    moved = backend.stats.retriangulated
    assert moved > 0.5 * len(backend.gmap)
    assert _depth_error_in(backend, seq.frames[0], slice(w // 2, w)) < 0.065  # the wrong half is (nearly) right
    assert _depth_error_in(backend, seq.frames[0], slice(0, w // 2)) < 0.03  # the right one stays about so
    assert backend.store.latest().stats["retriangulated"] == moved  # published
    means = backend.gmap.means.detach().clone()
    backend.keyframes.append(keyframe(seq.frames[21], seq.intrinsics, scale))
    backend._retriangulate_first_map(backend.keyframes[-1])
    assert torch.equal(backend.gmap.means.detach(), means) and backend.stats.retriangulated == moved  # once


def test_the_median_filter_drops_a_lone_outlier_and_leaves_wide_gaps_empty() -> None:
    from posegs_ros.mapping.backend import _nan_median_filter

    grid = np.full((9, 12), 2.0)
    grid[4, 4] = 50.0  # one wild sample
    grid[:, 7:] = np.nan  # no samples here
    out = _nan_median_filter(grid, 5)
    assert np.all(out[:, :9] == 2.0)  # the outlier is gone; the gap's first two columns see samples
    assert np.all(np.isnan(out[:, 9:]))  # further in, nothing to take a median of
