"""Per-frame outputs: TF, path, keyframe frustums (ROS-free, built into real message classes)."""

from __future__ import annotations

import math

import numpy as np

from posegs_ros.camera import Intrinsics
from posegs_ros.io import matrix_to_quaternion_xyzw, transform_to_matrix
from posegs_ros.ros.outputs import (
    KEYFRAME_NAMESPACE,
    PathHistory,
    camera_transforms,
    frustum_segments,
    is_finite_pose,
    keyframe_markers,
)


def _pose(angle: float, t: tuple[float, float, float]) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    pose = np.eye(4)
    pose[:3, :3] = [[c, 0, s], [0, 1, 0], [-s, 0, c]]  # yaw about the optical y axis
    pose[:3, 3] = t
    return pose


def test_camera_and_object_transforms(factory) -> None:  # noqa: ANN001 - pytest fixture
    pose = _pose(0.3, (1.0, -2.0, 0.5))
    obj = _pose(-0.1, (0.0, 0.2, 3.0))
    messages = [factory.build(m) for m in camera_transforms(
        pose, {2: obj, 3: np.full((4, 4), np.nan)}, 1_700_000_000_123_456_789, "map", "cam_optical", "posegs_object_"
    )]
    assert [m.child_frame_id for m in messages] == ["cam_optical", "posegs_object_2"]  # NaN group left out
    assert all(m.header.frame_id == "map" for m in messages)
    assert messages[0].header.stamp.sec == 1_700_000_000 and messages[0].header.stamp.nanosec == 123_456_789
    assert np.allclose(transform_to_matrix(messages[0].transform), pose)
    assert np.allclose(transform_to_matrix(messages[1].transform), obj)
    q = matrix_to_quaternion_xyzw(pose[:3, :3])
    assert np.isclose(messages[0].transform.rotation.w, q[3])


def test_path_history_keeps_the_newest_poses(factory) -> None:  # noqa: ANN001
    path = PathHistory(max_poses=3)
    assert factory.build(path.message("map")).poses == []
    for i in range(5):
        path.append(1_000 + i, _pose(0.0, (i, 0.0, 0.0)))
    msg = factory.build(path.message("map"))
    assert len(msg.poses) == 3 and [p.pose.position.x for p in msg.poses] == [2.0, 3.0, 4.0]
    assert msg.header.frame_id == "map" and msg.header.stamp.nanosec == 1_004
    assert all(p.header.frame_id == "map" for p in msg.poses)
    path.clear()
    assert len(path) == 0
    unlimited = PathHistory(0)
    for i in range(20):
        unlimited.append(i, np.eye(4))
    assert len(unlimited) == 20


def test_frustum_geometry() -> None:
    k = Intrinsics(fx=100.0, fy=50.0, cx=40.0, cy=30.0, width=80, height=60)
    pose = _pose(0.5, (1.0, 2.0, 3.0))
    seg = frustum_segments(pose, k, depth=2.0)
    assert seg.shape == (16, 3)
    apex = pose[:3, 3]
    assert np.allclose(seg[0:8:2], apex)  # four edges start at the camera centre
    corners = seg[1:8:2]
    local = (corners - apex) @ pose[:3, :3]  # back into the camera frame
    assert np.allclose(local[:, 2], 2.0)  # base at the requested depth along the optical axis
    pixels = local[:, :2] / local[:, 2:] * [k.fx, k.fy] + [k.cx, k.cy]
    assert np.allclose(pixels, [[0, 0], [80, 0], [80, 60], [0, 60]])  # and it is the image rectangle
    assert np.allclose(seg[8:16:2], corners) and np.allclose(seg[9:16:2], np.roll(corners, -1, axis=0))


def test_keyframe_markers(factory) -> None:  # noqa: ANN001
    k = Intrinsics(fx=80.0, fy=80.0, cx=40.0, cy=30.0, width=80, height=60)
    poses = [_pose(0.1 * i, (0.1 * i, 0.0, 0.0)) for i in range(4)] + [np.full((4, 4), np.nan)]
    msg = factory.build(keyframe_markers(poses, k, 5, "map", depth=0.2))
    delete_all, older, newest = msg.markers
    assert delete_all.action == 3 and delete_all.ns == KEYFRAME_NAMESPACE  # DELETEALL first
    assert older.type == 5 and older.action == 0 and len(older.points) == 16 * 3  # LINE_LIST
    assert newest.type == 5 and len(newest.points) == 16
    assert (newest.color.r, newest.color.b) != (older.color.r, older.color.b)
    assert older.header.frame_id == "map" and older.scale.x > 0 and older.pose.orientation.w == 1.0
    assert np.isclose(newest.points[0].x, poses[3][0, 3])
    empty = factory.build(keyframe_markers([], None, 5, "map", depth=0.2))
    assert [m.action for m in empty.markers] == [3]


def test_is_finite_pose() -> None:
    assert is_finite_pose(np.eye(4)) and not is_finite_pose(np.eye(3)) and not is_finite_pose(np.full((4, 4), np.inf))
