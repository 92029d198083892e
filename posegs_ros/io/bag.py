"""rosbag2 writing and reading with ``rosbags`` (no ROS installation needed).

Writing (:class:`BagWriter`)
    rosbag2 metadata **version 8**, ``mcap`` (default) or ``sqlite3`` storage, message
    definitions from ROS 2 Humble's typestore (identical to Jazzy's for the types written here).
    Why version 8: it is the newest version whose ``offered_qos_profiles`` is a YAML *string*;
    version 9 (Jazzy's own recordings) stores a YAML *list* there, which Humble's and Iron's
    ``ros2 bag`` fail to parse ("yaml-cpp: bad conversion").  Readers only look at the fields
    their version knows, so a version-8 bag plays on Humble (sqlite3 out of the box; mcap with
    ``ros-humble-rosbag2-storage-mcap``), Iron, Jazzy and later.  Every topic is offered with one
    explicit QoS profile (reliable, volatile, keep-last 10).  The bag is written into a hidden
    sibling directory and renamed into place when closed, so ``path`` never holds half a bag.
    Sources: rosbag2 PR #1476 (v9 QoS serialization), issues ros2/rosbag2#1520 and
    ros-visualization/rqt_bag#146 (v9 unreadable by older readers), ``rosbag2_storage/yaml.hpp``
    (fields decoded per version).  Not verified against a real ROS install (none here).

Reading (:class:`BagReader`)
    rosbag2 directories (any metadata version, mcap / sqlite3), single ``.mcap`` / ``.db3``
    files and ROS 1 ``.bag`` files through ``rosbags.highlevel.AnyReader``; types come from the
    bag's embedded definitions, else from the Humble typestore.  :meth:`BagReader.camera_frames`
    yields camera frames in bag order; :meth:`BagReader.trajectory` reads pose topics.
    Anything wrong with the file itself is a :class:`~posegs_ros.io.errors.BagError`; a bad
    individual message becomes a counted :class:`FrameSkip` (or a ``BagError`` with
    ``strict=True``, or from :meth:`CameraStream.check` with ``raise_on_error=True`` before any
    output is written).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .camera_info import CameraModel, camera_model_from_msg
from .errors import BagError, MessageError
from .image import compressed_to_rgb, image_to_rgb
from .messages import MessageData, TypestoreMessageFactory, default_typestore
from .poses import pose_message_to_matrix
from .stamps import stamp_to_nanoseconds
from .tum import Trajectory

__all__ = [
    "STORAGES",
    "BAG_VERSION",
    "IMAGE_TYPE",
    "COMPRESSED_IMAGE_TYPE",
    "CAMERA_INFO_TYPE",
    "BagWriter",
    "BagReader",
    "BagMessage",
    "CameraFrame",
    "FrameSkip",
    "CameraStream",
    "default_camera_info_topic",
]

STORAGES = ("mcap", "sqlite3")
BAG_VERSION = 8
IMAGE_TYPE = "sensor_msgs/msg/Image"
COMPRESSED_IMAGE_TYPE = "sensor_msgs/msg/CompressedImage"
CAMERA_INFO_TYPE = "sensor_msgs/msg/CameraInfo"
_POSE_TYPES = (
    "geometry_msgs/msg/PoseStamped",
    "geometry_msgs/msg/TransformStamped",
    "geometry_msgs/msg/PoseWithCovarianceStamped",
    "nav_msgs/msg/Odometry",
)


def _default_qos() -> list[Any]:
    from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime

    zero = QosTime(0, 0)  # 0 s = "unspecified" (infinite) deadline / lifespan / lease
    return [
        Qos(QosHistory.KEEP_LAST, 10, QosReliability.RELIABLE, QosDurability.VOLATILE, zero, zero,
            QosLiveliness.AUTOMATIC, zero, False)
    ]


class BagWriter:
    """Writes a rosbag2 directory at ``path`` (which must not exist); use as a context manager.

    Example::

        with BagWriter(out / "bag", storage="mcap") as bag:
            bag.write("/camera/image_raw", rgb_to_image(rgb, stamp_ns, "camera_optical_frame"))

    Args:
        path: the bag directory to create.
        storage: ``"mcap"`` or ``"sqlite3"``.
        typestore: ``rosbags`` typestore (default: ROS 2 Humble's); register custom types on it.
    """

    def __init__(self, path: str | os.PathLike[str], storage: str = "mcap", typestore: Any | None = None) -> None:
        if storage not in STORAGES:
            raise BagError(f"storage {storage!r} is not supported; supported: {', '.join(STORAGES)}")
        self.path = Path(path)
        if self.path.exists():
            raise BagError(f"{self.path} exists already; a bag is only written to a new path")
        self.storage = storage
        self.factory = TypestoreMessageFactory(typestore)
        self._staging: Path | None = None
        self._writer: Any | None = None
        self._connections: dict[tuple[str, str], Any] = {}
        self.counts: dict[str, int] = {}

    def open(self) -> BagWriter:
        """Start writing (called by ``with``)."""
        from rosbags.rosbag2 import StoragePlugin, Writer, WriterError

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._staging = self.path.parent / f".{self.path.name}.partial-{secrets.token_hex(4)}"
        self._staging.mkdir()
        plugin = StoragePlugin.MCAP if self.storage == "mcap" else StoragePlugin.SQLITE3
        try:
            self._writer = Writer(self._staging / self.path.name, version=BAG_VERSION, storage_plugin=plugin)
            self._writer.open()
        except (WriterError, OSError) as err:
            self._discard()
            raise BagError(f"cannot create bag {self.path}: {err}") from err
        return self

    def write(self, topic: str, message: MessageData, timestamp_ns: int | None = None) -> None:
        """Append one message; ``timestamp_ns`` (bag receive time) defaults to its header stamp."""
        if self._writer is None:
            raise BagError("BagWriter is not open: use it as a context manager or call open()")
        if timestamp_ns is None:
            stamp = message.fields.get("header", {}).get("stamp")
            if stamp is None:
                raise BagError(f"{message.msgtype} on {topic} has no header: pass timestamp_ns")
            timestamp_ns = int(stamp["sec"]) * 1_000_000_000 + int(stamp["nanosec"])
        typestore = self.factory.typestore
        msg = self.factory.build(message)
        key = (topic, message.msgtype)
        if key not in self._connections:
            self._connections[key] = self._writer.add_connection(
                topic, message.msgtype, typestore=typestore, offered_qos_profiles=_default_qos()
            )
        self._writer.write(self._connections[key], int(timestamp_ns), typestore.serialize_cdr(msg, message.msgtype))
        self.counts[topic] = self.counts.get(topic, 0) + 1

    def close(self) -> Path:
        """Finish the bag and move it to ``path``; returns ``path``."""
        if self._writer is None or self._staging is None:
            raise BagError("BagWriter is not open")
        writer, self._writer = self._writer, None
        try:
            writer.close()
            os.replace(self._staging / self.path.name, self.path)
        except Exception as err:
            self._discard()
            raise BagError(f"cannot finish bag {self.path}: {err}") from err
        self._discard()
        return self.path

    def abort(self) -> None:
        """Drop everything written so far; ``path`` is not created."""
        writer, self._writer = self._writer, None
        if writer is not None:
            with contextlib.suppress(Exception):
                writer.abort()
        self._discard()

    def _discard(self) -> None:
        if self._staging is not None:
            shutil.rmtree(self._staging, ignore_errors=True)
            self._staging = None

    def __enter__(self) -> BagWriter:
        return self.open()

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> Literal[False]:
        if exc_type is None:
            self.close()
        else:
            self.abort()
        return False


@dataclass(frozen=True)
class BagMessage:
    """One deserialized message: topic, type, bag (receive) time and the message object."""

    topic: str
    msgtype: str
    timestamp_ns: int
    msg: Any


@dataclass
class CameraFrame:
    """One image of a camera stream with the camera_info in force when it arrived."""

    index: int  # position of the image among the messages of its topic (0-based, skips included)
    stamp_ns: int  # image header stamp
    frame_id: str  # image header frame_id (the camera's optical frame)
    image: np.ndarray  # [H, W, 3] uint8 RGB, as recorded (still distorted)
    camera: CameraModel  # latest camera_info received before the image

    @property
    def stamp(self) -> float:
        """Header stamp in seconds."""
        return self.stamp_ns / 1e9


SkipKind = Literal["no_camera_info", "bad_image", "bad_camera_info"]


@dataclass(frozen=True)
class FrameSkip:
    """An image that did not become a :class:`CameraFrame`, and why."""

    index: int  # position of the image among the messages of its topic
    stamp_ns: int  # header stamp (bag time if the header could not be read)
    kind: SkipKind
    reason: str

    def __str__(self) -> str:
        return f"image {self.index} (t={self.stamp_ns / 1e9:.6f} s): {self.reason}"


def default_camera_info_topic(image_topic: str) -> str:
    """The camera_info beside an image topic: ``/cam/image_raw[/compressed]`` -> ``/cam/camera_info``."""
    base = image_topic.rstrip("/")
    if base.endswith("/compressed"):
        base = base[: -len("/compressed")]
    namespace = base.rsplit("/", 1)[0] if "/" in base else ""
    return f"{namespace}/camera_info"


class BagReader:
    """Reads a rosbag2 (or ROS 1 bag); use as a context manager.

    Raises:
        BagError: missing path, not a bag, corrupt metadata or storage file.
    """

    def __init__(self, path: str | os.PathLike[str], typestore: Any | None = None) -> None:
        self.path = Path(path)
        self._default_typestore = typestore if typestore is not None else default_typestore()
        self._reader: Any | None = None

    def open(self) -> BagReader:
        """Open the bag (called by ``with``)."""
        from rosbags.highlevel import AnyReader

        if not self.path.exists():
            raise BagError(f"no bag at {self.path}: the path does not exist")
        if self.path.is_dir() and not (self.path / "metadata.yaml").exists():
            raise BagError(f"{self.path} is not a rosbag2 directory: it has no metadata.yaml")
        try:
            reader = AnyReader([self.path], default_typestore=self._default_typestore)
            reader.open()
        except Exception as err:  # rosbags raises several types for unreadable input
            raise BagError(f"cannot open bag {self.path}: {err or type(err).__name__}") from err
        self._reader = reader
        return self

    def close(self) -> None:
        """Close the bag."""
        reader, self._reader = self._reader, None
        if reader is not None:
            with contextlib.suppress(Exception):
                reader.close()

    def __enter__(self) -> BagReader:
        return self.open()

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> Literal[False]:
        self.close()
        return False

    @property
    def _open_reader(self) -> Any:
        if self._reader is None:
            raise BagError("BagReader is not open: use it as a context manager or call open()")
        return self._reader

    @property
    def topics(self) -> dict[str, str]:
        """Topic name -> message type of every topic in the bag."""
        return {c.topic: c.msgtype for c in self._open_reader.connections}

    def message_count(self, topic: str) -> int:
        """Number of messages on ``topic`` (0 if absent)."""
        return sum(c.msgcount for c in self._open_reader.connections if c.topic == topic)

    def raw_messages(self, topics: Iterable[str]) -> Iterator[tuple[str, str, int, bytes]]:
        """``(topic, msgtype, bag time ns, CDR bytes)`` of ``topics`` in bag order, undeserialized."""
        reader = self._open_reader
        wanted = set(topics)
        connections = [c for c in reader.connections if c.topic in wanted]
        if not connections:
            return
        try:
            for connection, timestamp, raw in reader.messages(connections=connections):
                yield connection.topic, connection.msgtype, int(timestamp), raw
        except Exception as err:
            raise BagError(f"cannot read bag {self.path}: {err or type(err).__name__}") from err

    def deserialize(self, raw: bytes, msgtype: str) -> Any:
        """The message object of CDR bytes (``rosbags`` dataclass)."""
        return self._open_reader.deserialize(raw, msgtype)

    def messages(self, topics: Iterable[str]) -> Iterator[BagMessage]:
        """Deserialized messages of ``topics`` in bag order.

        Raises:
            BagError: a message that cannot be deserialized (names topic and bag time).
        """
        for topic, msgtype, timestamp, raw in self.raw_messages(topics):
            try:
                msg = self.deserialize(raw, msgtype)
            except Exception as err:
                raise BagError(f"{topic} at t={timestamp / 1e9:.6f} s: cannot deserialize {msgtype}: {err}") from err
            yield BagMessage(topic, msgtype, timestamp, msg)

    def trajectory(self, topic: str) -> Trajectory:
        """Header stamps and ``[4, 4]`` poses of a PoseStamped / TransformStamped / Odometry topic.

        Raises:
            BagError: topic missing or of another type.
        """
        msgtype = self.topics.get(topic)
        if msgtype is None:
            raise BagError(f"no topic {topic} in {self.path}; topics: {', '.join(sorted(self.topics))}")
        if msgtype not in _POSE_TYPES:
            raise BagError(f"{topic} holds {msgtype}, not a pose type ({', '.join(_POSE_TYPES)})")
        stamps, poses = [], []
        for item in self.messages([topic]):
            try:
                poses.append(pose_message_to_matrix(item.msg))
            except MessageError as err:
                raise BagError(f"{topic} at t={item.timestamp_ns / 1e9:.6f} s: {err}") from err
            stamps.append(stamp_to_nanoseconds(item.msg.header.stamp) / 1e9)
        return Trajectory(np.array(stamps), np.array(poses).reshape(-1, 4, 4))

    def camera_frames(
        self,
        image_topic: str,
        camera_info_topic: str | None = None,
        *,
        strict: bool = False,
        default_camera: CameraModel | None = None,
    ) -> CameraStream:
        """The camera stream of ``image_topic`` (see :class:`CameraStream`)."""
        return CameraStream(self, image_topic, camera_info_topic, strict=strict, default_camera=default_camera)


class CameraStream:
    """Camera frames of one image topic, in bag order, each with its latest camera_info.

    ``image_topic`` may hold ``sensor_msgs/Image`` or ``sensor_msgs/CompressedImage``; if it is
    not in the bag but ``<image_topic>/compressed`` is, that one is read.  camera_info comes from
    ``camera_info_topic`` (default: :func:`default_camera_info_topic`), published once or with
    every image: the latest one received before an image is used.  Images before any
    camera_info use ``default_camera`` if given, else are skipped (``kind="no_camera_info"``).

    Bad messages (unsupported encoding, truncated data, invalid camera_info, image size other
    than camera_info's) are skipped and recorded in :attr:`skips`; with ``strict=True`` they
    raise :class:`BagError` instead.  :meth:`check` reads the whole stream once without keeping
    anything, so a tool can refuse a bag before writing any output.
    """

    def __init__(
        self,
        bag: BagReader,
        image_topic: str,
        camera_info_topic: str | None = None,
        *,
        strict: bool = False,
        default_camera: CameraModel | None = None,
    ) -> None:
        self.bag = bag
        self.image_topic, self.compressed = self._resolve_image_topic(bag.topics, image_topic)
        self.camera_info_topic = camera_info_topic or default_camera_info_topic(self.image_topic)
        topics = bag.topics
        if self.camera_info_topic in topics and topics[self.camera_info_topic] != CAMERA_INFO_TYPE:
            raise BagError(f"{self.camera_info_topic} holds {topics[self.camera_info_topic]}, not {CAMERA_INFO_TYPE}")
        self.strict = strict
        self.default_camera = default_camera
        self.skips: list[FrameSkip] = []
        self.frames_read = 0

    @staticmethod
    def _resolve_image_topic(topics: dict[str, str], image_topic: str) -> tuple[str, bool]:
        kinds = {IMAGE_TYPE: False, COMPRESSED_IMAGE_TYPE: True}
        if image_topic in topics:
            if topics[image_topic] not in kinds:
                raise BagError(f"{image_topic} holds {topics[image_topic]}, not an Image or CompressedImage")
            return image_topic, kinds[topics[image_topic]]
        compressed = image_topic.rstrip("/") + "/compressed"
        if topics.get(compressed) == COMPRESSED_IMAGE_TYPE:
            return compressed, True
        images = sorted(t for t, m in topics.items() if m in kinds)
        raise BagError(
            f"no image topic {image_topic} (nor {compressed}) in the bag; image topics: {', '.join(images) or 'none'}"
        )

    @property
    def expected_images(self) -> int:
        """Number of image messages on the topic."""
        return self.bag.message_count(self.image_topic)

    def __iter__(self) -> Iterator[CameraFrame]:
        self.skips = []
        self.frames_read = 0
        for item in self._items():
            if isinstance(item, FrameSkip):
                if self.strict and item.kind != "no_camera_info":
                    raise BagError(f"{self.image_topic}: {item}")
                self.skips.append(item)
            else:
                self.frames_read += 1
                yield item

    def check(self, raise_on_error: bool = False) -> list[FrameSkip]:
        """Read the whole stream once (decoding every image, keeping nothing); return what would be skipped.

        With ``raise_on_error`` a :class:`BagError` summarizing the bad images and camera_infos
        (not the images that merely precede the first camera_info) is raised instead: a tool
        calls this before writing any output.
        """
        skips = [item for item in self._items() if isinstance(item, FrameSkip)]
        bad = [s for s in skips if s.kind != "no_camera_info"]
        if raise_on_error and bad:
            listed = "; ".join(str(s) for s in bad[:3]) + (f"; ... ({len(bad) - 3} more)" if len(bad) > 3 else "")
            raise BagError(
                f"{len(bad)} of {self.expected_images} images on {self.image_topic} cannot be used: {listed}"
            )
        return skips

    def _items(self) -> Iterator[CameraFrame | FrameSkip]:
        camera: CameraModel | None = self.default_camera
        camera_problem: str | None = None
        index = 0
        have_info_topic = self.camera_info_topic in self.bag.topics
        for topic, msgtype, timestamp, raw in self.bag.raw_messages([self.image_topic, self.camera_info_topic]):
            if topic == self.camera_info_topic:
                try:
                    camera, camera_problem = camera_model_from_msg(self.bag.deserialize(raw, msgtype)), None
                except Exception as err:
                    camera_problem = f"latest camera_info on {topic} is invalid: {err}"
                continue
            yield self._frame(index, timestamp, raw, msgtype, camera, camera_problem, have_info_topic)
            index += 1

    def _frame(
        self,
        index: int,
        timestamp: int,
        raw: bytes,
        msgtype: str,
        camera: CameraModel | None,
        camera_problem: str | None,
        have_info_topic: bool,
    ) -> CameraFrame | FrameSkip:
        try:
            msg = self.bag.deserialize(raw, msgtype)
            stamp = stamp_to_nanoseconds(msg.header.stamp)
        except Exception as err:
            return FrameSkip(index, timestamp, "bad_image", f"cannot deserialize {msgtype}: {err}")
        if camera_problem is not None:
            return FrameSkip(index, stamp, "bad_camera_info", camera_problem)
        if camera is None:
            where = "" if have_info_topic else " (topic not in the bag)"
            return FrameSkip(index, stamp, "no_camera_info", f"no camera_info on {self.camera_info_topic}{where} yet")
        try:
            image = compressed_to_rgb(msg) if self.compressed else image_to_rgb(msg)
        except MessageError as err:
            return FrameSkip(index, stamp, "bad_image", str(err))
        if image.shape[:2] != (camera.height, camera.width):
            return FrameSkip(
                index, stamp, "bad_camera_info",
                f"image is {image.shape[1]}x{image.shape[0]} but camera_info says {camera.width}x{camera.height}",
            )
        return CameraFrame(index, stamp, str(msg.header.frame_id), image, camera)
