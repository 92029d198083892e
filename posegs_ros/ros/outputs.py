"""Output messages of one processed frame, the path and the keyframe frustums (ROS-free).

Everything here returns :class:`~posegs_ros.io.MessageData`; the node's factory turns it into
rclpy messages, tests turn it into ``rosbags`` messages.
"""

from __future__ import annotations

import bisect

from collections import deque
from typing import Iterable, Mapping

import numpy as np

from ..camera import Intrinsics
from ..io import MessageData, header_fields, pose_fields, transform_stamped_message

__all__ = [
    "is_finite_pose",
    "camera_transforms",
    "PathHistory",
    "frustum_segments",
    "keyframe_markers",
    "KEYFRAME_NAMESPACE",
]

PATH_TYPE = "nav_msgs/msg/Path"
MARKER_ARRAY_TYPE = "visualization_msgs/msg/MarkerArray"
KEYFRAME_NAMESPACE = "posegs_keyframes"
_LINE_LIST = 5  # visualization_msgs/Marker.LINE_LIST
_ADD = 0  # visualization_msgs/Marker.ADD
_DELETEALL = 3  # visualization_msgs/Marker.DELETEALL
_OLD_KEYFRAMES_RGBA = (0.2, 0.5, 1.0, 0.9)
_NEWEST_KEYFRAME_RGBA = (1.0, 0.55, 0.0, 1.0)


def is_finite_pose(pose: np.ndarray) -> bool:
    """True for a finite ``[4, 4]`` matrix."""
    pose = np.asarray(pose)
    return pose.shape == (4, 4) and bool(np.all(np.isfinite(pose)))


def camera_transforms(
    pose: np.ndarray,
    group_poses: Mapping[int, np.ndarray],
    stamp_ns: int,
    map_frame: str,
    camera_frame: str,
    object_prefix: str,
) -> list[MessageData]:
    """TF of the camera (``map_frame`` -> ``camera_frame``) and of each finite moving-object pose."""
    transforms = [transform_stamped_message(pose, stamp_ns, map_frame, camera_frame)]
    for group, group_pose in sorted(group_poses.items()):
        if is_finite_pose(group_pose):
            transforms.append(transform_stamped_message(group_pose, stamp_ns, map_frame, f"{object_prefix}{group}"))
    return transforms


class PathHistory:
    """The camera path published on ``~/path``: newest ``max_poses`` poses (0 = all).

    Each pose's message fields are computed once, when it is appended.
    """

    def __init__(self, max_poses: int) -> None:
        self._poses: deque[tuple[int, dict]] = deque(maxlen=max_poses if max_poses > 0 else None)

    def append(self, stamp_ns: int, pose: np.ndarray) -> None:
        """Add a pose; one older than the newest (a frame posed late) goes to its place in time."""
        item = (int(stamp_ns), pose_fields(np.asarray(pose, dtype=np.float64)))
        if not self._poses or item[0] >= self._poses[-1][0]:
            self._poses.append(item)
            return
        at = bisect.bisect_right([s for s, _ in self._poses], item[0])
        if self._poses.maxlen is not None and len(self._poses) == self._poses.maxlen:
            if at == 0:
                return  # older than everything kept
            self._poses.popleft()
            at -= 1
        self._poses.insert(at, item)

    def clear(self) -> None:
        self._poses.clear()

    def __len__(self) -> int:
        return len(self._poses)

    def message(self, map_frame: str) -> MessageData:
        """``nav_msgs/Path`` of the poses (stamped with the newest pose's stamp; 0 when empty)."""
        stamp = self._poses[-1][0] if self._poses else 0
        poses = [{"header": header_fields(s, map_frame), "pose": fields} for s, fields in self._poses]
        return MessageData(PATH_TYPE, {"header": header_fields(stamp, map_frame), "poses": poses})


def frustum_segments(pose: np.ndarray, intrinsics: Intrinsics, depth: float) -> np.ndarray:
    """``[16, 3]`` endpoints of the 8 line segments of a camera frustum, in the map frame.

    The frustum's apex is the camera centre; its base is the image rectangle at ``depth``
    along the optical axis (optical frame: x right, y down, z forward).
    """
    w, h = float(intrinsics.width), float(intrinsics.height)
    corners_px = np.array([[0.0, 0.0], [w, 0.0], [w, h], [0.0, h]])
    corners = np.empty((4, 3))
    corners[:, 0] = (corners_px[:, 0] - intrinsics.cx) / intrinsics.fx * depth
    corners[:, 1] = (corners_px[:, 1] - intrinsics.cy) / intrinsics.fy * depth
    corners[:, 2] = depth
    pose = np.asarray(pose, dtype=np.float64)
    world = corners @ pose[:3, :3].T + pose[:3, 3]
    apex = pose[:3, 3]
    points = []
    for i in range(4):
        points += [apex, world[i]]  # apex -> corner
    for i in range(4):
        points += [world[i], world[(i + 1) % 4]]  # base rectangle
    return np.asarray(points)


def _line_marker(
    marker_id: int, points: np.ndarray, stamp_ns: int, frame: str, width: float, rgba: tuple[float, ...]
) -> dict:
    return {
        "header": header_fields(stamp_ns, frame),
        "ns": KEYFRAME_NAMESPACE,
        "id": marker_id,
        "type": _LINE_LIST,
        "action": _ADD,
        "pose": {"orientation": {"w": 1.0}},
        "scale": {"x": float(width)},
        "color": dict(zip("rgba", (float(c) for c in rgba))),
        "points": [{"x": float(x), "y": float(y), "z": float(z)} for x, y, z in points],
    }


def keyframe_markers(
    poses: Iterable[np.ndarray], intrinsics: Intrinsics | None, stamp_ns: int, map_frame: str, depth: float
) -> MessageData:
    """``visualization_msgs/MarkerArray``: DELETEALL, then the keyframe frustums as LINE_LISTs.

    Marker 0 holds every keyframe but the newest, marker 1 the newest (another colour).
    Starting with DELETEALL keeps RViz in step after a reset. Non-finite poses are left out;
    without intrinsics (no image yet) only the DELETEALL is sent.
    """
    delete_all = {"header": header_fields(stamp_ns, map_frame), "ns": KEYFRAME_NAMESPACE, "action": _DELETEALL}
    markers: list[dict] = [delete_all]
    finite = [p for p in poses if is_finite_pose(p)]
    if intrinsics is not None and finite:
        width = depth * 0.04
        if len(finite) > 1:
            older = np.concatenate([frustum_segments(p, intrinsics, depth) for p in finite[:-1]])
            markers.append(_line_marker(0, older, stamp_ns, map_frame, width, _OLD_KEYFRAMES_RGBA))
        newest = frustum_segments(finite[-1], intrinsics, depth)
        markers.append(_line_marker(1, newest, stamp_ns, map_frame, width * 1.5, _NEWEST_KEYFRAME_RGBA))
    return MessageData(MARKER_ARRAY_TYPE, {"markers": markers})
