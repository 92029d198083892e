"""From an image message (+ the camera_info in force) to what the engine takes; ROS-free.

The executor's callbacks only wrap the message in an :class:`InputImage` and enqueue it; the
worker thread calls :meth:`ImageConverter.convert` (decode, checks, undistortion through
:mod:`posegs_ros.io`, the same functions ``posegs replay`` uses) and :class:`StampGuard` (stamp
order, bag loops). Every refusal is a :class:`SkipImage` with a reason from :data:`SKIP_REASONS`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..camera import Intrinsics
from ..io import (
    CameraInfoError,
    CameraModel,
    MessageError,
    Undistorter,
    UnsupportedEncodingError,
    camera_model_from_msg,
    compressed_to_rgb,
    image_to_rgb,
    stamp_to_nanoseconds,
)

__all__ = [
    "SKIP_REASONS",
    "RESET_REASONS",
    "InputImage",
    "CameraImage",
    "SkipImage",
    "ImageConverter",
    "StampVerdict",
    "StampGuard",
]

# Why an image did not reach the engine (or its result was not published): name -> meaning.
SKIP_REASONS: dict[str, str] = {
    "no_camera_info": "no camera_info received yet on `camera_info` (the newest ros.queue_size images wait for one)",
    "bad_camera_info": "the latest camera_info is invalid (K, D, size or distortion model)",
    "camera_info_size_mismatch": "the image size differs from the latest camera_info's",
    "unsupported_encoding": "an image encoding / compressed format the node does not read",
    "bad_image_data": "image data inconsistent with its header (length != step x height, corrupt JPEG/PNG)",
    "stamp_not_increasing": "stamp equal to or slightly older than the previous image's (< ros.loop_reset_s)",
    "engine_rejected": "the engine refused the frame (FrameError)",
    "engine_error": "the engine raised an unexpected error on the frame",
    "non_finite_pose": "the engine returned a pose with NaN / inf: nothing published for the frame",
    "output_error": "building or publishing an output failed (the frame itself was processed)",
}

# Why the map was reset: name -> meaning.
RESET_REASONS: dict[str, str] = {
    "service": "~/reset was called",
    "time_jump_back": "image stamps jumped back by >= ros.loop_reset_s (bag loop, restarted player)",
    "camera_changed": "the camera's intrinsics or image size changed",
    "engine_failures": "ros.reset_after_failures consecutive engine errors / non-finite poses",
}


@dataclass(frozen=True)
class InputImage:
    """An image message as received, with the latest camera_info message at that moment."""

    msg: Any  # sensor_msgs/Image or sensor_msgs/CompressedImage (any backend)
    compressed: bool
    camera_info: Any | None  # sensor_msgs/CameraInfo, None if none has arrived yet
    received: float  # monotonic seconds when the callback ran
    index: int  # running count of received images (0-based)


@dataclass
class CameraImage:
    """An undistorted RGB image ready for :class:`posegs_ros.pipeline.Frame`."""

    rgb: np.ndarray  # [H, W, 3] uint8
    intrinsics: Intrinsics  # pinhole intrinsics of ``rgb``
    stamp_ns: int  # image header stamp
    frame_id: str  # image header frame_id
    index: int


class SkipImage(Exception):
    """An image that cannot be processed; ``reason`` is a key of :data:`SKIP_REASONS`."""

    def __init__(self, reason: str, detail: str) -> None:
        if reason not in SKIP_REASONS:
            raise ValueError(f"unknown skip reason {reason!r}")
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class ImageConverter:
    """Decodes image messages and removes lens distortion (maps cached per camera_info)."""

    def __init__(self) -> None:
        self.undistorter = Undistorter()
        self._info_msg: Any | None = None
        self._model: CameraModel | None = None

    def camera_model(self, camera_info: Any | None) -> CameraModel:
        """The validated camera model of a camera_info message (parsed once per message object)."""
        if camera_info is None:
            raise SkipImage("no_camera_info", "no camera_info received yet: images wait for one")
        if camera_info is not self._info_msg or self._model is None:
            try:
                model = camera_model_from_msg(camera_info)
            except CameraInfoError as err:
                raise SkipImage("bad_camera_info", f"invalid camera_info: {err}") from err
            except (AttributeError, TypeError, ValueError) as err:
                raise SkipImage("bad_camera_info", f"unreadable camera_info: {err}") from err
            self._info_msg, self._model = camera_info, model
        return self._model

    def convert(self, item: InputImage) -> CameraImage:
        """Decode, check and undistort one image.

        Raises:
            SkipImage: with the reason the image cannot be used.
        """
        msg = item.msg
        try:
            stamp_ns = stamp_to_nanoseconds(msg.header.stamp)
            frame_id = str(msg.header.frame_id)
        except (AttributeError, TypeError, ValueError) as err:
            raise SkipImage("bad_image_data", f"image header unreadable: {err}") from err
        model = self.camera_model(item.camera_info)
        try:
            rgb = compressed_to_rgb(msg) if item.compressed else image_to_rgb(msg)
        except UnsupportedEncodingError as err:
            raise SkipImage("unsupported_encoding", str(err)) from err
        except MessageError as err:
            raise SkipImage("bad_image_data", str(err)) from err
        except (AttributeError, TypeError, ValueError) as err:
            raise SkipImage("bad_image_data", f"image message unreadable: {err}") from err
        if rgb.shape[:2] != (model.height, model.width):
            raise SkipImage(
                "camera_info_size_mismatch",
                f"image is {rgb.shape[1]}x{rgb.shape[0]} but camera_info says {model.width}x{model.height}",
            )
        try:
            undistorted, intrinsics = self.undistorter(rgb, model)
        except (CameraInfoError, ValueError) as err:
            raise SkipImage("bad_camera_info", f"cannot undistort with this camera_info: {err}") from err
        return CameraImage(np.ascontiguousarray(undistorted), intrinsics, stamp_ns, frame_id, item.index)


class StampVerdict(enum.Enum):
    """What to do with an image given its stamp."""

    ACCEPT = "accept"
    SKIP = "skip"  # equal to / slightly older than the previous stamp
    RESET = "reset"  # far older: the input restarted (bag loop); reset the map, then accept


class StampGuard:
    """Stamp order policy: increasing stamps pass; a jump back by >= ``loop_reset_ns`` means a restart."""

    def __init__(self, loop_reset_ns: int) -> None:
        self.loop_reset_ns = int(loop_reset_ns)
        self.last_ns: int | None = None

    def check(self, stamp_ns: int) -> StampVerdict:
        """The verdict for ``stamp_ns`` (does not record it: call :meth:`accept` once used)."""
        if self.last_ns is None or stamp_ns > self.last_ns:
            return StampVerdict.ACCEPT
        if stamp_ns < self.last_ns and self.last_ns - stamp_ns >= self.loop_reset_ns:
            return StampVerdict.RESET
        return StampVerdict.SKIP

    def accept(self, stamp_ns: int) -> None:
        self.last_ns = int(stamp_ns)

    def reset(self) -> None:
        self.last_ns = None
