"""Stamps, poses, point clouds, message factories, TUM files and atomic writes."""

from __future__ import annotations

import array
import json
import math
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from posegs_ros.io import (
    AttributeMessageFactory,
    MessageData,
    MessageError,
    TypestoreMessageFactory,
    atomic_open,
    atomic_write_json,
    atomic_write_text,
    format_tum,
    header_fields,
    matrix_to_quaternion_xyzw,
    pointcloud2_to_points,
    points_to_pointcloud2,
    pose_message_to_matrix,
    pose_stamped_message,
    quaternion_xyzw_to_matrix,
    read_tum,
    rgb_to_image,
    seconds_to_nanoseconds,
    stamp_to_nanoseconds,
    stamp_to_seconds,
    time_fields,
    transform_stamped_message,
    write_tum,
)


def _random_pose(rng: np.random.Generator) -> np.ndarray:
    q = rng.normal(size=4)
    pose = np.eye(4)
    pose[:3, :3] = quaternion_xyzw_to_matrix(q)
    pose[:3, 3] = rng.normal(size=3)
    return pose


def test_stamps_convert_exactly() -> None:
    ns = 1_700_000_000_123_456_789
    fields = time_fields(ns)
    assert fields == {"sec": 1_700_000_000, "nanosec": 123_456_789}
    stamp = SimpleNamespace(**fields)
    assert stamp_to_nanoseconds(stamp) == ns
    assert stamp_to_seconds(stamp) == pytest.approx(1_700_000_000.123456789, abs=1e-6)
    assert time_fields(-1) == {"sec": -1, "nanosec": 999_999_999}
    assert seconds_to_nanoseconds(1.5) == 1_500_000_000
    assert abs(seconds_to_nanoseconds(1_700_000_000.0333333) - 1_700_000_000_033_333_300) < 1000  # float64
    assert header_fields(5, "map") == {"stamp": {"sec": 0, "nanosec": 5}, "frame_id": "map"}
    with pytest.raises(ValueError, match="int32"):
        time_fields(2**31 * 10**9)


def test_quaternions_are_xyzw_with_non_negative_w_at_every_angle() -> None:
    rng = np.random.default_rng(1)
    for _ in range(200):
        pose = _random_pose(rng)
        q = matrix_to_quaternion_xyzw(pose[:3, :3])
        assert q[3] >= 0 and abs(np.linalg.norm(q) - 1) < 1e-12
        np.testing.assert_allclose(quaternion_xyzw_to_matrix(q), pose[:3, :3], atol=1e-12)
    half_turn = np.diag([1.0, -1.0, -1.0])  # 180 deg about x
    np.testing.assert_allclose(np.abs(matrix_to_quaternion_xyzw(half_turn)), [1, 0, 0, 0], atol=1e-12)
    with pytest.raises(MessageError, match="quaternion"):
        quaternion_xyzw_to_matrix(np.zeros(4))


def test_pose_and_transform_messages_round_trip_through_rosbags() -> None:
    factory = TypestoreMessageFactory()
    ts = factory.typestore
    pose = _random_pose(np.random.default_rng(2))
    msg = factory.build(pose_stamped_message(pose, 7, "map"))
    raw = ts.serialize_cdr(msg, "geometry_msgs/msg/PoseStamped")
    back = ts.deserialize_cdr(raw, "geometry_msgs/msg/PoseStamped")
    assert back.header.frame_id == "map"
    np.testing.assert_allclose(pose_message_to_matrix(back), pose, atol=1e-12)
    tf = factory.build(transform_stamped_message(pose, 7, "map", "camera_optical_frame"))
    assert tf.child_frame_id == "camera_optical_frame" and tf.header.frame_id == "map"
    np.testing.assert_allclose(pose_message_to_matrix(tf), pose, atol=1e-12)
    with pytest.raises(MessageError):
        pose_stamped_message(np.eye(3), 0)


def test_point_cloud_packs_rgb_as_rviz_expects() -> None:
    xyz = np.array([[0.0, 1.0, 2.0], [np.nan, 0.0, 0.0], [-1.5, 0.25, 3.0]])
    rgb = np.array([[255, 0, 0], [1, 2, 3], [10, 20, 30]], dtype=np.uint8)
    data = points_to_pointcloud2(xyz, rgb, 0, "map")
    fields = data.fields
    assert fields["width"] == 2 and fields["point_step"] == 16 and fields["is_dense"] is True
    assert [f["name"] for f in fields["fields"]] == ["x", "y", "z", "rgb"]
    packed = fields["data"].reshape(2, 16)[0, 12:16].view("<u4")[0]
    assert packed == 0xFF0000
    msg = TypestoreMessageFactory().build(data)
    points, colors = pointcloud2_to_points(msg)
    np.testing.assert_allclose(points, xyz[[0, 2]], atol=1e-6)
    np.testing.assert_array_equal(colors, rgb[[0, 2]])
    float_colors = points_to_pointcloud2(xyz[:1], np.array([[1.0, 0.5, 0.0]]), 0, "map")
    assert pointcloud2_to_points(TypestoreMessageFactory().build(float_colors))[1].tolist() == [[255, 128, 0]]


def test_typestore_factory_reports_unknown_fields_and_types() -> None:
    factory = TypestoreMessageFactory()
    with pytest.raises(MessageError, match="no field"):
        factory.build(MessageData("std_msgs/msg/Header", {"stamp": {}, "frame": "x"}))
    with pytest.raises(MessageError, match="not in the typestore"):
        factory.build(MessageData("my_msgs/msg/Nothing", {}))
    with pytest.raises(MessageError, match="fixed array"):
        factory.build(MessageData("sensor_msgs/msg/CameraInfo", {"k": [1.0, 2.0]}))
    defaults = factory.build(MessageData("sensor_msgs/msg/CameraInfo", {}))
    assert defaults.k.shape == (9,) and defaults.d.shape == (0,) and defaults.roi.do_rectify is False


# --- an rclpy-shaped message API (default construction, attribute assignment) -------------------


class _FakeTime:
    def __init__(self) -> None:
        self.sec, self.nanosec = 0, 0


class _FakeHeader:
    def __init__(self) -> None:
        self.stamp, self.frame_id = _FakeTime(), ""


class _FakePointField:
    def __init__(self) -> None:
        self.name, self.offset, self.datatype, self.count = "", 0, 0, 0


class _FakeImage:
    def __init__(self) -> None:
        self.header = _FakeHeader()
        self.height = self.width = self.step = self.is_bigendian = 0
        self.encoding = ""
        self.data = array.array("B")


class _FakeCameraInfo:
    def __init__(self) -> None:
        self.header = _FakeHeader()
        self.height = self.width = 0
        self.distortion_model = ""
        self.d = array.array("d")
        self.k, self.r, self.p = np.zeros(9), np.zeros(9), np.zeros(12)


class _FakeCloud:
    def __init__(self) -> None:
        self.header = _FakeHeader()
        self.height = self.width = self.point_step = self.row_step = 0
        self.fields: list[Any] = []
        self.is_bigendian = self.is_dense = False
        self.data = array.array("B")

    @classmethod
    def get_fields_and_field_types(cls) -> dict[str, str]:
        return {"fields": "sequence<sensor_msgs/PointField>"}


_FAKE_CLASSES = {
    "sensor_msgs/msg/Image": _FakeImage,
    "sensor_msgs/msg/CameraInfo": _FakeCameraInfo,
    "sensor_msgs/msg/PointCloud2": _FakeCloud,
    "sensor_msgs/msg/PointField": _FakePointField,
}


def test_attribute_factory_builds_rclpy_shaped_messages() -> None:
    from posegs_ros.camera import Intrinsics
    from posegs_ros.io import CameraModel, camera_info_message, camera_model_from_msg, image_to_rgb

    factory = AttributeMessageFactory(_FAKE_CLASSES.__getitem__)
    rgb = np.random.default_rng(0).integers(0, 256, (4, 5, 3), dtype=np.uint8)
    image = factory.build(rgb_to_image(rgb, 1_500_000_000, "cam"))
    assert isinstance(image.data, array.array) and image.data.typecode == "B"
    assert image.header.stamp.sec == 1 and image.header.stamp.nanosec == 500_000_000
    np.testing.assert_array_equal(image_to_rgb(image), rgb)
    model = CameraModel.from_intrinsics(Intrinsics(10.0, 11.0, 2.0, 1.5, 5, 4), [0.1, 0, 0, 0, 0])
    info = factory.build(camera_info_message(model, 0, "cam"))
    assert isinstance(info.d, array.array) and info.d.typecode == "d" and isinstance(info.k, np.ndarray)
    assert camera_model_from_msg(info).d.tolist() == [0.1, 0, 0, 0, 0]
    cloud = factory.build(points_to_pointcloud2(np.ones((3, 3)), np.zeros((3, 3), np.uint8), 0, "map"))
    assert [f.name for f in cloud.fields] == ["x", "y", "z", "rgb"] and isinstance(cloud.fields[0], _FakePointField)
    np.testing.assert_allclose(pointcloud2_to_points(cloud)[0], np.ones((3, 3)))
    with pytest.raises(MessageError, match="no field"):
        factory.build(MessageData("sensor_msgs/msg/Image", {"pixels": 1}))


# --- TUM files and atomic writes -----------------------------------------------------------------


def test_tum_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    stamps = 1_700_000_000.0 + np.arange(5) / 30.0
    poses = np.stack([_random_pose(rng) for _ in range(5)])
    path = write_tum(tmp_path / "traj.tum", stamps, poses)
    traj = read_tum(path)
    np.testing.assert_allclose(traj.stamps, stamps, atol=1e-6)
    np.testing.assert_allclose(traj.poses, poses, atol=1e-8)
    assert format_tum(stamps[:1], poses[:1]).count(" ") == 7


def test_tum_reader_names_the_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.tum"
    path.write_text("# header\n0 0 0 0 0 0 0 1\n1 2 3\n")
    with pytest.raises(ValueError, match=r"bad.tum:3"):
        read_tum(path)


def test_atomic_writes_replace_whole_files_and_clean_up(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "file.txt"
    atomic_write_text(target, "first")
    atomic_write_text(target, "second")
    assert target.read_text() == "second"
    with pytest.raises(RuntimeError):
        with atomic_open(target, "w") as handle:
            handle.write("partial")
            raise RuntimeError("crash while writing")
    assert target.read_text() == "second"
    assert sorted(p.name for p in target.parent.iterdir()) == ["file.txt"]  # no temp files left
    assert oct(os.stat(target).st_mode & 0o777) != oct(0o600)  # umask-based, not mkstemp's 0600


def test_json_is_strict_with_non_finite_values_as_strings(tmp_path: Path) -> None:
    path = atomic_write_json(tmp_path / "x.json", {"a": math.inf, "b": [np.float32(1.5), np.nan], "c": np.arange(2)})

    def reject(name: str) -> None:
        raise AssertionError(f"non-standard JSON constant {name}")

    assert json.loads(path.read_text(), parse_constant=reject) == {"a": "inf", "b": [1.5, "nan"], "c": [0, 1]}
