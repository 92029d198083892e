"""ROS-free message I/O: ROS messages <-> numpy, rosbag2 files, trajectory files, atomic writes.

Shared by the rclpy node and the offline tools; never imports rclpy.  Reading functions are
duck-typed on message fields (``rosbags`` and rclpy messages alike); writing functions return
:class:`MessageData` that a per-backend :class:`MessageFactory` turns into message objects
(:class:`TypestoreMessageFactory` for ``rosbags``, :class:`AttributeMessageFactory` for rclpy).
``rosbags`` itself is imported lazily, only by the bag functions and the typestore factory.
"""

from __future__ import annotations

from .bag import (
    BAG_VERSION,
    STORAGES,
    BagMessage,
    BagReader,
    BagWriter,
    CameraFrame,
    CameraStream,
    FrameSkip,
    default_camera_info_topic,
)
from .camera_info import DISTORTION_MODELS, CameraModel, Undistorter, camera_info_message, camera_model_from_msg
from .errors import BagError, CameraInfoError, ImageDataError, MessageError, RosIoError, UnsupportedEncodingError
from .files import (
    atomic_open,
    atomic_save_npy,
    atomic_write_bytes,
    atomic_write_image,
    atomic_write_json,
    atomic_write_text,
    json_safe,
)
from .image import (
    SUPPORTED_ENCODINGS,
    compressed_to_rgb,
    depth_to_image,
    image_to_depth,
    image_to_rgb,
    mask_to_image,
    rgb_to_compressed,
    rgb_to_image,
)
from .messages import AttributeMessageFactory, MessageData, MessageFactory, TypestoreMessageFactory, uint8_buffer
from .pointcloud import pointcloud2_to_points, points_to_pointcloud2
from .poses import (
    matrix_to_quaternion_xyzw,
    pose_fields,
    pose_message_to_matrix,
    pose_stamped_message,
    pose_to_matrix,
    quaternion_xyzw_to_matrix,
    transform_stamped_message,
    transform_to_matrix,
)
from .stamps import (
    header_fields,
    nanoseconds_to_seconds,
    seconds_to_nanoseconds,
    stamp_to_nanoseconds,
    stamp_to_seconds,
    time_fields,
)
from .tum import Trajectory, format_tum, read_tum, write_tum

__all__ = [
    # errors
    "RosIoError", "MessageError", "UnsupportedEncodingError", "ImageDataError", "CameraInfoError", "BagError",
    # message construction
    "MessageData", "MessageFactory", "TypestoreMessageFactory", "AttributeMessageFactory", "uint8_buffer",
    # images
    "SUPPORTED_ENCODINGS", "image_to_rgb", "image_to_depth", "rgb_to_image", "depth_to_image", "mask_to_image",
    "compressed_to_rgb", "rgb_to_compressed",
    # camera_info
    "DISTORTION_MODELS", "CameraModel", "camera_model_from_msg", "camera_info_message", "Undistorter",
    # stamps, poses, point clouds
    "stamp_to_nanoseconds", "stamp_to_seconds", "seconds_to_nanoseconds", "nanoseconds_to_seconds",
    "time_fields", "header_fields",
    "matrix_to_quaternion_xyzw", "quaternion_xyzw_to_matrix", "pose_fields", "pose_stamped_message",
    "transform_stamped_message", "pose_to_matrix", "transform_to_matrix", "pose_message_to_matrix",
    "points_to_pointcloud2", "pointcloud2_to_points",
    # files
    "atomic_open", "atomic_write_bytes", "atomic_write_text", "atomic_write_json", "atomic_write_image",
    "atomic_save_npy", "json_safe", "Trajectory", "read_tum", "write_tum", "format_tum",
    # bags
    "STORAGES", "BAG_VERSION", "BagWriter", "BagReader", "BagMessage", "CameraFrame", "FrameSkip",
    "CameraStream", "default_camera_info_topic",
]
