"""Synthetic sequences: ground-truth consistency, blur model and extent, determinism, outputs."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from posegs_ros.camera import Intrinsics
from posegs_ros.io import BagReader, read_tum
from posegs_ros.tools import synth
from posegs_ros.tools.synth import SynthConfig, generate, subframe_offsets, write

SMALL = SynthConfig(frames=4, width=160, height=120, subframes=3, fps=10.0, exposure=0.02)


@pytest.fixture(scope="module")
def small_sequence() -> synth.SynthSequence:
    return generate(SMALL)


def _reproject(seq: synth.SynthSequence, i: int, j: int, pose_j: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
    """Pixels of frame i lifted with GT depth and moved into frame j: (colour_i, colour_j at target)."""
    k = seq.intrinsics
    fi, fj = seq.frames[i], seq.frames[j]
    pose_j = fj.pose if pose_j is None else pose_j
    v, u = np.mgrid[2 : k.height - 2 : 2, 2 : k.width - 2 : 2]
    z = fi.depth[v, u].astype(np.float64)
    cam = np.stack([(u - k.cx) / k.fx * z, (v - k.cy) / k.fy * z, z, np.ones_like(z)], axis=-1).reshape(-1, 4)
    cam_j = (np.linalg.inv(pose_j) @ fi.pose @ cam.T).T
    uj = k.fx * cam_j[:, 0] / cam_j[:, 2] + k.cx
    vj = k.fy * cam_j[:, 1] / cam_j[:, 2] + k.cy
    inside = (uj > 2) & (uj < k.width - 3) & (vj > 2) & (vj < k.height - 3)
    uj, vj, zj = uj[inside], vj[inside], cam_j[inside, 2]
    depth_j = fj.depth[np.round(vj).astype(int), np.round(uj).astype(int)]
    visible = np.abs(depth_j - zj) < 0.01 * zj  # not occluded in frame j
    maps = np.stack([uj, vj], axis=1)[visible].astype(np.float32)
    colour_j = cv2.remap(fj.sharp, maps[:, 0:1], maps[:, 1:2], cv2.INTER_LINEAR)[:, 0].astype(np.float64)
    colour_i = fi.sharp[v.reshape(-1)[inside][visible], u.reshape(-1)[inside][visible]].astype(np.float64)
    return colour_i, colour_j


def test_ground_truth_depth_and_poses_map_pixels_onto_the_same_texture(small_sequence: synth.SynthSequence) -> None:
    seq = small_sequence
    baseline = np.linalg.norm(seq.frames[3].pose[:3, 3] - seq.frames[0].pose[:3, 3])
    assert baseline > 0.05  # real parallax between the two frames
    colour_0, colour_3 = _reproject(seq, 0, 3)
    assert len(colour_0) > 2000
    diff = np.abs(colour_0 - colour_3).mean(axis=1)
    assert np.median(diff) < 5.0 and np.percentile(diff, 90) < 18.0  # antialiasing / mip level differences
    # the same check with a wrong pose for frame 3 fails clearly: the test has teeth
    wrong = seq.frames[3].pose.copy()
    wrong[:3, 3] += [0.05, 0.0, 0.0]
    colour_0, colour_wrong = _reproject(seq, 0, 3, wrong)
    assert np.median(np.abs(colour_0 - colour_wrong).mean(axis=1)) > 3 * np.median(diff)


def test_blurred_frame_is_the_mean_of_sharp_subframe_renders(small_sequence: synth.SynthSequence) -> None:
    seq = small_sequence
    frame = seq.frames[2]
    offsets = subframe_offsets(SMALL.subframes)
    assert offsets.tolist() == pytest.approx([-1 / 3, 0.0, 1 / 3])
    for s, pose in zip(offsets, frame.subframe_poses):
        np.testing.assert_allclose(pose, seq.camera_path.pose(2 / SMALL.fps + s * SMALL.exposure))
    renders = [seq.scene.render(seq.intrinsics, pose, None, SMALL.supersample).rgb for pose in frame.subframe_poses]
    expected = np.clip(np.round(np.mean(renders, axis=0) * 255), 0, 255)
    assert np.abs(expected - frame.blurred).max() <= 1
    np.testing.assert_array_equal(frame.sharp, np.clip(np.round(renders[1] * 255), 0, 255).astype(np.uint8))


def test_generation_is_deterministic_given_the_seed(small_sequence: synth.SynthSequence) -> None:
    again = generate(SMALL)
    for a, b in zip(small_sequence.frames, again.frames):
        np.testing.assert_array_equal(a.blurred, b.blurred)
        np.testing.assert_array_equal(a.pose, b.pose)
    other = generate(SynthConfig(frames=1, width=160, height=120, subframes=3, fps=10.0, exposure=0.02, seed=1))
    assert not np.array_equal(other.frames[0].blurred, small_sequence.frames[0].blurred)


def test_blur_extent_of_a_known_translation() -> None:
    k = Intrinsics(100.0, 100.0, 15.5, 11.5, 32, 24)
    depth = np.full((24, 32), 2.0, np.float32)
    body = np.zeros((24, 32), np.int32)
    poses = np.stack([np.eye(4)] * 5)
    poses[:, 0, 3] = np.linspace(-0.01, 0.01, 5)  # 2 cm sideways during the exposure
    extent = synth._blur_extent(k, depth, body, np.eye(4), poses, None, None)
    assert extent == pytest.approx(100.0 * 0.02 / 2.0)  # f * baseline / depth = 1 px


def test_default_sequence_has_visible_blur_of_3_to_8_pixels() -> None:
    # The extent depends on the trajectory, exposure and focal length only, so the default
    # sequence is measured with one sub-frame and no supersampling (same numbers, 20x faster).
    defaults = SynthConfig()
    assert (defaults.width, defaults.height, defaults.frames, defaults.subframes) == (320, 240, 60, 9)
    seq = generate(SynthConfig(subframes=1, supersample=1))
    assert seq.intrinsics.fx == 250.0
    assert 3.0 <= float(seq.blur_px.mean()) <= 8.0
    travel = np.linalg.norm(seq.poses[-1, :3, 3] - seq.poses[0, :3, 3])
    assert 0.5 <= travel <= 1.0
    depths = np.concatenate([f.depth[np.isfinite(f.depth)] for f in seq.frames[::10]])
    assert 1.5 <= np.median(depths) <= 4.5


def test_blur_is_visible_in_the_images(small_sequence: synth.SynthSequence) -> None:
    def sharpness(image: np.ndarray) -> float:
        return float(cv2.Laplacian(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float64), cv2.CV_64F).var())

    frames = sorted(small_sequence.frames, key=lambda f: f.blur_px)[-2:]
    for frame in frames:
        assert frame.blur_px > 1.0
        assert sharpness(frame.blurred) < 0.8 * sharpness(frame.sharp)


def test_write_produces_bag_files_and_meta(tmp_path: Path, small_sequence: synth.SynthSequence) -> None:
    out = write(small_sequence, tmp_path / "out", storage="sqlite3")
    names = {p.name for p in out.iterdir()}
    assert names == {"bag", "sharp", "blurred", "depth", "gt.tum", "meta.json"}
    assert sorted(p.name for p in (out / "sharp").iterdir()) == [f"{i:04d}.png" for i in range(4)]
    depth = np.load(out / "depth" / "0001.npy")
    assert depth.dtype == np.float32 and depth.shape == (120, 160)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["blur_px_mean"] == pytest.approx(float(small_sequence.blur_px.mean()))
    assert len(meta["blur_px"]) == 4 and meta["subframes"] == 3 and meta["dynamic"] is False
    assert meta["intrinsics"]["fx"] == small_sequence.intrinsics.fx
    gt = read_tum(out / "gt.tum")
    with BagReader(out / "bag") as bag:
        assert set(bag.topics) == {"/camera/image_raw", "/camera/camera_info", "/ground_truth/pose",
                                   "/ground_truth/image_sharp"}
        frames = list(bag.camera_frames("/camera/image_raw"))
        sharp = list(bag.camera_frames("/ground_truth/image_sharp", "/camera/camera_info"))
        traj = bag.trajectory("/ground_truth/pose")
    assert len(frames) == 4 and frames[0].frame_id == "camera_optical_frame"
    np.testing.assert_array_equal(frames[2].image, small_sequence.frames[2].blurred)
    np.testing.assert_array_equal(sharp[2].image, small_sequence.frames[2].sharp)
    np.testing.assert_array_equal(cv2.imread(str(out / "blurred" / "0002.png"))[:, :, ::-1],
                                  small_sequence.frames[2].blurred)
    np.testing.assert_allclose(traj.poses, gt.poses, atol=1e-7)
    np.testing.assert_allclose(traj.stamps, gt.stamps, atol=1e-6)
    with pytest.raises(FileExistsError, match="--force"):
        write(small_sequence, out)
    (out / "notes.txt").write_text("keep me")
    write(small_sequence, out, force=True)
    assert (out / "notes.txt").exists() and (out / "meta.json").exists()


def test_dynamic_sequence_has_masks_and_object_poses(tmp_path: Path) -> None:
    cfg = SynthConfig(frames=3, width=160, height=120, subframes=3, dynamic=True, seed=2)
    seq = generate(cfg)
    moved = np.linalg.norm(seq.frames[2].object_pose[:3, 3] - seq.frames[0].object_pose[:3, 3])
    assert moved > 0.05  # fast enough to blur: ~1-2 m/s
    assert all(f.mask is not None and f.mask.dtype == bool for f in seq.frames)
    assert sum(int(f.mask.sum()) for f in seq.frames) > 200
    out = write(seq, tmp_path / "dyn")
    assert (out / "masks" / "0000.png").exists() and (out / "object.tum").exists()
    mask = cv2.imread(str(out / "masks" / "0001.png"), cv2.IMREAD_GRAYSCALE)
    np.testing.assert_array_equal(mask > 127, seq.frames[1].mask)
    with BagReader(out / "bag") as bag:
        objects = bag.trajectory("/ground_truth/object_pose")
    np.testing.assert_allclose(objects.poses[1], seq.frames[1].object_pose, atol=1e-9)
    assert len(json.loads((out / "meta.json").read_text())["object_poses"]) == 3


def test_two_sliding_boxes_cross_enter_and_leave_with_their_own_poses(tmp_path: Path) -> None:
    cfg = SynthConfig(frames=40, width=80, height=60, subframes=1, supersample=1, dynamic=True, objects=2,
                      object_motion="slide", seed=0)
    seq = generate(cfg)
    poses = np.stack([f.object_poses for f in seq.frames])  # [T, 2, 4, 4]
    assert poses.shape == (40, 2, 4, 4)
    np.testing.assert_array_equal(poses[:, 0], np.stack([f.object_pose for f in seq.frames]))
    step = np.diff(poses[:, :, 0, 3], axis=0)  # sideways (x) motion per frame
    assert np.all(np.abs(poses[:, :, 1:3, 3] - poses[:1, :, 1:3, 3]) < 1e-9)  # straight: y and z fixed
    assert np.median(step[:, 0]) * np.median(step[:, 1]) < 0  # they slide in opposite directions ...
    assert abs(poses[0, 0, 0, 3] - poses[0, 1, 0, 3]) > 1.0 > np.abs(poses[:, 0, 0, 3] - poses[:, 1, 0, 3]).min()
    seen = np.array([f.mask.any() for f in seq.frames])
    assert seen.any() and all(f.object_blur_px > 0 for f, s in zip(seq.frames, seen) if s)
    out = write(seq, tmp_path / "two")
    np.testing.assert_allclose(read_tum(out / "object_2.tum").poses, poses[:, 1], atol=1e-9)
    with BagReader(out / "bag") as bag:
        second = bag.trajectory("/ground_truth/object_pose_2")
    np.testing.assert_allclose(second.poses, poses[:, 1], atol=1e-9)
    meta = json.loads((out / "meta.json").read_text())
    assert [o["tum"] for o in meta["objects"]] == ["object.tum", "object_2.tum"]
    assert meta["object_frames_seen"] == int(seen.sum())


def test_each_box_is_in_the_mask_and_moves_with_its_own_pose() -> None:
    from posegs_ros.tools.scene import build_scene, look_at

    scene = build_scene(np.random.default_rng(0), dynamic=True, objects=2, object_size=0.6)
    k = Intrinsics(50.0, 50.0, 31.5, 23.5, 64, 48)
    camera = look_at(np.array([0.0, 0.0, 1.2]), np.array([0.0, 1.0, 1.2]))  # along world +y
    boxes = np.stack([np.eye(4), np.eye(4)])
    boxes[0, :3, 3], boxes[1, :3, 3] = [-0.5, 1.5, 1.2], [0.5, 1.5, 1.2]
    out = scene.render(k, camera, boxes, supersample=1, with_depth=True)
    assert out.body[24, 16] == 1 and out.body[24, 48] == 2 and out.depth[24, 16] == pytest.approx(1.2, abs=1e-4)
    boxes[1, :3, 3] = [5.0, 1.5, 1.2]  # the second box leaves the view, the first stays
    moved = scene.render(k, camera, boxes, supersample=1, with_depth=True)
    assert moved.body[24, 16] == 1 and not (moved.body == 2).any()
    with pytest.raises(ValueError, match="2 moving objects"):
        scene.render(k, camera, boxes[:1])


def test_a_sliding_box_enters_and_leaves_the_view() -> None:
    cfg = SynthConfig(frames=60, width=80, height=60, subframes=1, supersample=1, dynamic=True,
                      object_motion="slide", seed=0)
    frames = generate(cfg).frames
    seen = np.array([f.mask.any() for f in frames])
    assert not seen[0] and seen.any() and not seen[-1]  # starts outside, crosses, leaves
    assert all((f.object_blur_px > 0) == s for f, s in zip(frames, seen))


@pytest.mark.parametrize("motion", ["swing", "slide", "spin"])
def test_object_speed_scales_the_object_blur(motion: str) -> None:
    blur = {}
    for speed in (0.5, 1.5):
        cfg = SynthConfig(frames=6, width=80, height=60, subframes=1, supersample=1, dynamic=True,
                          object_motion=motion, object_speed=speed, seed=1, shake=0.0)
        frames = [f for f in generate(cfg).frames if f.mask.any()]
        assert frames, f"{motion}: the box should be in view"
        blur[speed] = np.mean([f.object_blur_px for f in frames])
    assert blur[1.5] > 1.5 * blur[0.5]  # the camera moves too: its share does not scale


def test_bad_object_settings_are_refused() -> None:
    for bad in ({"objects": 0}, {"objects": 4}, {"object_motion": "orbit"}, {"object_size": 3.0},
                {"object_speed": -1.0}):
        with pytest.raises(ValueError):
            SynthConfig(dynamic=True, **bad)


def test_cli_run_writes_and_refuses_non_empty_output(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    synth.add_arguments(parser)
    args = parser.parse_args([str(tmp_path / "cli"), "--frames", "2", "--width", "64", "--height", "48",
                              "--subframes", "3", "--storage", "mcap"])
    assert synth.run(args) == 0
    assert json.loads((tmp_path / "cli" / "meta.json").read_text())["storage"] == "mcap"
    assert synth.run(args) == 2  # not empty, no --force
    bad = parser.parse_args([str(tmp_path / "bad"), "--exposure", "0.5"])
    assert synth.run(bad) == 2  # exposure longer than a frame


def test_fine_texture_detail_has_more_high_frequency_content_in_the_same_room() -> None:
    def detail(seq: synth.SynthSequence) -> float:
        grey = cv2.cvtColor(seq.frames[0].sharp, cv2.COLOR_RGB2GRAY).astype(np.float32)
        return float(np.abs(cv2.Laplacian(grey, cv2.CV_32F)).mean())

    common = dict(seed=4, frames=1, width=160, height=120, subframes=1)
    default = synth.generate(synth.SynthConfig(**common))
    fine = synth.generate(synth.SynthConfig(**common, texture_detail="fine"))
    assert np.allclose(default.frames[0].pose, fine.frames[0].pose)  # same path
    assert np.allclose(default.frames[0].depth, fine.frames[0].depth)  # same geometry
    assert detail(fine) > 1.5 * detail(default)
    again = synth.generate(synth.SynthConfig(**common, texture_detail="fine"))
    assert np.array_equal(again.frames[0].sharp, fine.frames[0].sharp)
    with pytest.raises(ValueError, match="texture_detail"):
        synth.SynthConfig(texture_detail="coarse")
