"""rosbag2 round trips through rosbags, camera streams, skips, and corrupt bags."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from posegs_ros.camera import Intrinsics
from posegs_ros.io import (
    BAG_VERSION,
    BagError,
    BagReader,
    BagWriter,
    CameraModel,
    MessageData,
    camera_info_message,
    default_camera_info_topic,
    pose_stamped_message,
    rgb_to_compressed,
    rgb_to_image,
)

T0 = 1_700_000_000_000_000_000
DT = 33_333_333
INTRINSICS = Intrinsics(80.0, 80.0, 31.5, 23.5, 64, 48)
CAMERA = CameraModel.from_intrinsics(INTRINSICS)


def _image(i: int, h: int = 48, w: int = 64) -> np.ndarray:
    rng = np.random.default_rng(i)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _pose(i: int) -> np.ndarray:
    pose = np.eye(4)
    pose[:3, 3] = [0.01 * i, -0.02 * i, 0.5]
    return pose


def _write(path: Path, frames: int = 5, storage: str = "mcap", info_from: int = 0, info_every: bool = True,
           compressed: bool = False, bad: dict[int, str] | None = None) -> Path:
    """A camera bag: camera_info (from frame ``info_from``, with every image or once), images, GT poses."""
    bad = bad or {}
    topic = "/camera/image_raw/compressed" if compressed else "/camera/image_raw"
    with BagWriter(path, storage=storage) as bag:
        for i in range(frames):
            ns = T0 + i * DT
            if i == info_from or (info_every and i > info_from):
                bag.write("/camera/camera_info", camera_info_message(CAMERA, ns, "cam"))
            data = rgb_to_compressed(_image(i), ns, "cam", "png") if compressed else rgb_to_image(_image(i), ns, "cam")
            if bad.get(i) == "encoding":
                data = MessageData(data.msgtype, {**data.fields, "encoding": "yuv422"})
            elif bad.get(i) == "truncated":
                data = MessageData(data.msgtype, {**data.fields, "data": data.fields["data"][:-7]})
            bag.write(topic, data)
            bag.write("/ground_truth/pose", pose_stamped_message(_pose(i), ns, "map"))
    return path


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_bag_round_trip_types_stamps_sizes(tmp_path: Path, storage: str) -> None:
    path = _write(tmp_path / "bag", frames=6, storage=storage)
    meta = yaml.safe_load((path / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    assert meta["version"] == BAG_VERSION == 8 and meta["storage_identifier"] == storage
    qos = meta["topics_with_message_count"][0]["topic_metadata"]["offered_qos_profiles"]
    assert isinstance(qos, str) and "reliability: 1" in qos  # v8: QoS as a YAML string (Humble reads it)
    with BagReader(path) as bag:
        assert bag.topics == {
            "/camera/camera_info": "sensor_msgs/msg/CameraInfo",
            "/camera/image_raw": "sensor_msgs/msg/Image",
            "/ground_truth/pose": "geometry_msgs/msg/PoseStamped",
        }
        assert bag.message_count("/camera/image_raw") == 6
        stream = bag.camera_frames("/camera/image_raw")
        frames = list(stream)
        assert stream.skips == [] and stream.frames_read == 6
        for i, frame in enumerate(frames):
            assert frame.index == i and frame.stamp_ns == T0 + i * DT and frame.frame_id == "cam"
            np.testing.assert_array_equal(frame.image, _image(i))
            np.testing.assert_array_equal(frame.camera.k, INTRINSICS.numpy())
        traj = bag.trajectory("/ground_truth/pose")
        np.testing.assert_allclose(traj.stamps, (T0 + np.arange(6) * DT) / 1e9)
        np.testing.assert_allclose(traj.poses, np.stack([_pose(i) for i in range(6)]), atol=1e-12)
        messages = list(bag.messages(["/ground_truth/pose"]))
        assert [m.timestamp_ns for m in messages] == [T0 + i * DT for i in range(6)]


def test_camera_info_published_once_is_used_for_every_image(tmp_path: Path) -> None:
    path = _write(tmp_path / "bag", frames=4, info_every=False)
    with BagReader(path) as bag:
        stream = bag.camera_frames("/camera/image_raw")
        assert len(list(stream)) == 4 and not stream.skips


def test_images_before_camera_info_are_counted_skips(tmp_path: Path) -> None:
    path = _write(tmp_path / "bag", frames=5, info_from=2)
    with BagReader(path) as bag:
        stream = bag.camera_frames("/camera/image_raw", strict=True)  # strict does not fail on these
        assert len(stream.check(raise_on_error=True)) == 2
        frames = list(stream)
        assert [f.index for f in frames] == [2, 3, 4]
        assert [(s.index, s.kind) for s in stream.skips] == [(0, "no_camera_info"), (1, "no_camera_info")]
        assert "/camera/camera_info" in stream.skips[0].reason


def test_missing_camera_info_topic_skips_all_unless_a_default_camera_is_given(tmp_path: Path) -> None:
    path = _write(tmp_path / "bag", frames=3)
    with BagReader(path) as bag:
        stream = bag.camera_frames("/camera/image_raw", camera_info_topic="/other/camera_info")
        assert list(stream) == [] and len(stream.skips) == 3
        assert "not in the bag" in stream.skips[0].reason
        defaulted = bag.camera_frames("/camera/image_raw", "/other/camera_info", default_camera=CAMERA)
        assert len(list(defaulted)) == 3


def test_compressed_topic_is_found_next_to_the_raw_name(tmp_path: Path) -> None:
    path = _write(tmp_path / "bag", frames=3, compressed=True)
    with BagReader(path) as bag:
        stream = bag.camera_frames("/camera/image_raw")
        assert stream.image_topic == "/camera/image_raw/compressed" and stream.compressed
        assert stream.camera_info_topic == "/camera/camera_info"
        frames = list(stream)
        assert len(frames) == 3
        np.testing.assert_array_equal(frames[1].image, _image(1))  # png: lossless
        direct = bag.camera_frames("/camera/image_raw/compressed")
        assert len(list(direct)) == 3
        with pytest.raises(BagError, match="image topics: /camera/image_raw/compressed"):
            bag.camera_frames("/front/image_raw")


def test_default_camera_info_topic() -> None:
    assert default_camera_info_topic("/cam/image_raw") == "/cam/camera_info"
    assert default_camera_info_topic("/cam/image_raw/compressed") == "/cam/camera_info"
    assert default_camera_info_topic("image") == "/camera_info"


def test_bad_messages_are_reported_or_fail_strictly(tmp_path: Path) -> None:
    path = _write(tmp_path / "bag", frames=5, bad={1: "encoding", 3: "truncated"})
    with BagReader(path) as bag:
        stream = bag.camera_frames("/camera/image_raw")
        problems = stream.check()  # a dry run: nothing is kept
        assert [(p.index, p.kind) for p in problems] == [(1, "bad_image"), (3, "bad_image")]
        assert "yuv422" in problems[0].reason and "expected step" in problems[1].reason
        assert [f.index for f in stream] == [0, 2, 4]
        assert len(stream.skips) == 2 and str(stream.skips[0]).startswith("image 1 ")
        strict = bag.camera_frames("/camera/image_raw", strict=True)
        with pytest.raises(BagError, match="image 1 .*yuv422"):
            list(strict)
        with pytest.raises(BagError, match="2 of 5 images on /camera/image_raw cannot be used: image 1 .*image 3"):
            stream.check(raise_on_error=True)


def test_camera_info_of_another_size_skips_the_frame(tmp_path: Path) -> None:
    path = tmp_path / "bag"
    small = CameraModel.from_intrinsics(Intrinsics(40.0, 40.0, 15.5, 11.5, 32, 24))
    with BagWriter(path) as bag:
        bag.write("/camera/camera_info", camera_info_message(small, T0, "cam"))
        bag.write("/camera/image_raw", rgb_to_image(_image(0), T0, "cam"))
    with BagReader(path) as bag:
        stream = bag.camera_frames("/camera/image_raw")
        assert list(stream) == [] and stream.skips[0].kind == "bad_camera_info"
        assert "camera_info says 32x24" in stream.skips[0].reason


def test_camera_info_ties_with_images_keep_write_order_across_chunks(tmp_path: Path) -> None:
    # 30 frames of 160x120 (~1.7 MB) span several mcap chunks; camera_info and image share stamps
    path = tmp_path / "bag"
    camera = CameraModel.from_intrinsics(Intrinsics(100.0, 100.0, 79.5, 59.5, 160, 120))
    with BagWriter(path) as bag:
        for i in range(30):
            ns = T0 + i * DT
            bag.write("/camera/camera_info", camera_info_message(camera, ns, "cam"))
            bag.write("/camera/image_raw", rgb_to_image(_image(i, 120, 160), ns, "cam"))
    with BagReader(path) as bag:
        stream = bag.camera_frames("/camera/image_raw")
        assert len(list(stream)) == 30 and not stream.skips


def test_writer_refuses_existing_paths_and_leaves_nothing_on_error(tmp_path: Path) -> None:
    (tmp_path / "taken").mkdir()
    with pytest.raises(BagError, match="exists"):
        BagWriter(tmp_path / "taken")
    with pytest.raises(BagError, match="storage"):
        BagWriter(tmp_path / "x", storage="rosbag_v2")
    with pytest.raises(RuntimeError):
        with BagWriter(tmp_path / "aborted") as bag:
            bag.write("/camera/image_raw", rgb_to_image(_image(0), T0, "cam"))
            raise RuntimeError("crash")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def test_corrupt_missing_and_non_bag_paths_raise_bag_error(tmp_path: Path) -> None:
    with pytest.raises(BagError, match="does not exist"):
        BagReader(tmp_path / "missing").open()
    (tmp_path / "empty").mkdir()
    with pytest.raises(BagError, match="metadata.yaml"):
        BagReader(tmp_path / "empty").open()
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "metadata.yaml").write_text("rosbag2_bagfile_information: [this is not: a bag")
    with pytest.raises(BagError, match="cannot open bag"):
        BagReader(garbage).open()
    noise = tmp_path / "noise.mcap"
    noise.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(BagError):
        BagReader(noise).open()
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(BagError):
        BagReader(text).open()


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_truncated_storage_file_raises_bag_error(tmp_path: Path, storage: str) -> None:
    path = _write(tmp_path / "bag", frames=6, storage=storage)
    data_file = next(p for p in path.iterdir() if p.suffix in (".mcap", ".db3"))
    data_file.write_bytes(data_file.read_bytes()[: data_file.stat().st_size // 2])
    with pytest.raises(BagError):
        with BagReader(path) as bag:
            list(bag.camera_frames("/camera/image_raw"))
