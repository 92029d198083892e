"""Poses as 4x4 camera-to-map float64 matrices <-> ``geometry_msgs`` Pose / Transform messages.

ROS quaternions are ``(x, y, z, w)``; the engine's are ``wxyz`` (see :mod:`posegs_ros.geometry`).
Matrices are ``[4, 4] float64``: rotation block orthonormal, last row ``0 0 0 1``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import MessageError
from .messages import MessageData
from .stamps import header_fields

__all__ = [
    "matrix_to_quaternion_xyzw",
    "quaternion_xyzw_to_matrix",
    "pose_fields",
    "pose_stamped_message",
    "transform_stamped_message",
    "pose_to_matrix",
    "transform_to_matrix",
    "pose_message_to_matrix",
]

POSE_STAMPED_TYPE = "geometry_msgs/msg/PoseStamped"
TRANSFORM_STAMPED_TYPE = "geometry_msgs/msg/TransformStamped"


def _check_pose(matrix: np.ndarray) -> np.ndarray:
    m = np.asarray(matrix, dtype=np.float64)
    if m.shape != (4, 4) or not np.all(np.isfinite(m)):
        raise MessageError(f"a pose must be a finite [4, 4] matrix, got shape {m.shape}")
    return m


def matrix_to_quaternion_xyzw(rotation: np.ndarray) -> np.ndarray:
    """Unit quaternion ``[4]`` (x, y, z, w), ``w >= 0``, of a rotation matrix ``[3, 3]``.

    Uses the largest of the four diagonal combinations (Shepperd), accurate at every angle;
    the matrix is orthonormalized first (SVD), so slightly drifted rotations are fine.
    """
    u, _, vt = np.linalg.svd(np.asarray(rotation, dtype=np.float64))
    r = u @ np.diag([1.0, 1.0, np.sign(np.linalg.det(u @ vt))]) @ vt
    trace = np.trace(r)
    candidates = np.array([1 + trace, 1 + r[0, 0] - r[1, 1] - r[2, 2], 1 - r[0, 0] + r[1, 1] - r[2, 2],
                           1 - r[0, 0] - r[1, 1] + r[2, 2]])
    best = int(np.argmax(candidates))
    s = 2.0 * np.sqrt(candidates[best])  # 4 * |largest component|
    if best == 0:
        q = [(r[2, 1] - r[1, 2]) / s, (r[0, 2] - r[2, 0]) / s, (r[1, 0] - r[0, 1]) / s, s / 4]
    elif best == 1:
        q = [s / 4, (r[0, 1] + r[1, 0]) / s, (r[0, 2] + r[2, 0]) / s, (r[2, 1] - r[1, 2]) / s]
    elif best == 2:
        q = [(r[0, 1] + r[1, 0]) / s, s / 4, (r[1, 2] + r[2, 1]) / s, (r[0, 2] - r[2, 0]) / s]
    else:
        q = [(r[0, 2] + r[2, 0]) / s, (r[1, 2] + r[2, 1]) / s, s / 4, (r[1, 0] - r[0, 1]) / s]
    quat = np.asarray(q)
    quat /= np.linalg.norm(quat)
    return -quat if quat[3] < 0 else quat


def quaternion_xyzw_to_matrix(q: np.ndarray) -> np.ndarray:
    """Rotation matrix ``[3, 3]`` of a quaternion ``[4]`` (x, y, z, w), normalized first."""
    q = np.asarray(q, dtype=np.float64)
    norm = np.linalg.norm(q)
    if not np.isfinite(norm) or norm < 1e-6:
        raise MessageError(f"orientation {q.tolist()} is not a rotation (quaternion norm {norm})")
    x, y, z, w = q / norm
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ]
    )


def _xyz(v: np.ndarray) -> dict[str, float]:
    return {"x": float(v[0]), "y": float(v[1]), "z": float(v[2])}


def _xyzw(q: np.ndarray) -> dict[str, float]:
    return {"x": float(q[0]), "y": float(q[1]), "z": float(q[2]), "w": float(q[3])}


def pose_fields(matrix: np.ndarray) -> dict[str, Any]:
    """``geometry_msgs/Pose`` fields (position, orientation xyzw) of a ``[4, 4]`` pose."""
    m = _check_pose(matrix)
    return {"position": _xyz(m[:3, 3]), "orientation": _xyzw(matrix_to_quaternion_xyzw(m[:3, :3]))}


def pose_stamped_message(matrix: np.ndarray, stamp_ns: int, frame_id: str = "map") -> MessageData:
    """``geometry_msgs/PoseStamped`` fields: the pose of a camera (or object) in ``frame_id``."""
    return MessageData(POSE_STAMPED_TYPE, {"header": header_fields(stamp_ns, frame_id), "pose": pose_fields(matrix)})


def transform_stamped_message(
    matrix: np.ndarray, stamp_ns: int, parent_frame: str, child_frame: str
) -> MessageData:
    """``geometry_msgs/TransformStamped`` fields of the child-to-parent pose ``matrix`` (TF)."""
    m = _check_pose(matrix)
    return MessageData(
        TRANSFORM_STAMPED_TYPE,
        {
            "header": header_fields(stamp_ns, parent_frame),
            "child_frame_id": str(child_frame),
            "transform": {
                "translation": _xyz(m[:3, 3]),
                "rotation": _xyzw(matrix_to_quaternion_xyzw(m[:3, :3])),
            },
        },
    )


def _to_matrix(translation: Any, rotation: Any) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] = quaternion_xyzw_to_matrix(np.array([rotation.x, rotation.y, rotation.z, rotation.w], dtype=np.float64))
    m[:3, 3] = [float(translation.x), float(translation.y), float(translation.z)]
    if not np.all(np.isfinite(m)):
        raise MessageError(f"pose has non-finite values: {m[:3, 3].tolist()}")
    return m


def pose_to_matrix(pose: Any) -> np.ndarray:
    """``[4, 4] float64`` of a ``geometry_msgs/Pose`` (``.position``, ``.orientation``)."""
    return _to_matrix(pose.position, pose.orientation)


def transform_to_matrix(transform: Any) -> np.ndarray:
    """``[4, 4] float64`` of a ``geometry_msgs/Transform`` (``.translation``, ``.rotation``)."""
    return _to_matrix(transform.translation, transform.rotation)


def pose_message_to_matrix(msg: Any) -> np.ndarray:
    """``[4, 4]`` pose of a PoseStamped, PoseWithCovarianceStamped, Odometry or TransformStamped."""
    if hasattr(msg, "transform"):
        return transform_to_matrix(msg.transform)
    pose = msg.pose
    if hasattr(pose, "pose"):  # PoseWithCovariance (Odometry, PoseWithCovarianceStamped)
        pose = pose.pose
    return pose_to_matrix(pose)
