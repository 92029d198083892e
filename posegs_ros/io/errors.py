"""The errors of :mod:`posegs_ros.io`: one small hierarchy, each with a message that says what to fix.

``RosIoError``
 ├── ``MessageError``               a message whose fields cannot be converted
 │    ├── ``UnsupportedEncodingError``  image encoding / compressed format we do not read
 │    ├── ``ImageDataError``            data length, step or compressed payload inconsistent
 │    └── ``CameraInfoError``           invalid K, unknown distortion model, size mismatch
 └── ``BagError``                   a rosbag2 that cannot be opened, read or written
"""

from __future__ import annotations

__all__ = [
    "RosIoError",
    "MessageError",
    "UnsupportedEncodingError",
    "ImageDataError",
    "CameraInfoError",
    "BagError",
]


class RosIoError(Exception):
    """Base class of every error raised by :mod:`posegs_ros.io`."""


class MessageError(RosIoError, ValueError):
    """A ROS message whose fields cannot be converted."""


class UnsupportedEncodingError(MessageError):
    """An image encoding or compressed-image format that is not supported."""


class ImageDataError(MessageError):
    """Image data inconsistent with its header (length, step) or an undecodable payload."""


class CameraInfoError(MessageError):
    """A camera_info that cannot describe the image (invalid K, unknown model, wrong size)."""


class BagError(RosIoError):
    """A rosbag2 that is missing, corrupt, not a bag, or cannot be written."""
