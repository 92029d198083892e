"""TUM trajectory files: one pose per line, ``t x y z qx qy qz qw``.

``t`` is the image header stamp in seconds, ``x y z`` the camera position in the map and
``qx qy qz qw`` the camera-to-map rotation (Hamilton, scalar last), as the TUM RGB-D benchmark
and evo read them.  Lines starting with ``#`` and blank lines are ignored.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .files import atomic_write_text
from .poses import matrix_to_quaternion_xyzw, quaternion_xyzw_to_matrix

__all__ = ["Trajectory", "read_tum", "write_tum", "format_tum"]


@dataclass
class Trajectory:
    """Stamped camera-to-map poses."""

    stamps: np.ndarray  # [N] float64 seconds
    poses: np.ndarray  # [N, 4, 4] float64 camera-to-map

    def __post_init__(self) -> None:
        self.stamps = np.asarray(self.stamps, dtype=np.float64).reshape(-1)
        self.poses = np.asarray(self.poses, dtype=np.float64).reshape(-1, 4, 4)
        if self.stamps.shape[0] != self.poses.shape[0]:
            raise ValueError(f"{self.stamps.shape[0]} stamps but {self.poses.shape[0]} poses")

    def __len__(self) -> int:
        return int(self.stamps.shape[0])

    @property
    def positions(self) -> np.ndarray:
        """Camera centres ``[N, 3]``."""
        return self.poses[:, :3, 3]


def format_tum(stamps: np.ndarray, poses: np.ndarray) -> str:
    """TUM text of stamps ``[N]`` (seconds) and poses ``[N, 4, 4]``."""
    traj = Trajectory(stamps, poses)
    lines = []
    for t, pose in zip(traj.stamps, traj.poses):
        q = matrix_to_quaternion_xyzw(pose[:3, :3])
        x, y, z = pose[:3, 3]
        lines.append(f"{t:.9f} {x:.9f} {y:.9f} {z:.9f} {q[0]:.9f} {q[1]:.9f} {q[2]:.9f} {q[3]:.9f}")
    return "\n".join(lines) + ("\n" if lines else "")


def write_tum(path: str | os.PathLike[str], stamps: np.ndarray, poses: np.ndarray) -> Path:
    """Write a TUM trajectory file atomically; returns the path."""
    return atomic_write_text(path, "# t x y z qx qy qz qw\n" + format_tum(stamps, poses))


def read_tum(path: str | os.PathLike[str]) -> Trajectory:
    """Read a TUM trajectory file (commas are accepted as separators too).

    Raises:
        FileNotFoundError: no such file.
        ValueError: a line without 8 numbers (the message names file and line).
    """
    stamps: list[float] = []
    poses: list[np.ndarray] = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            parts = text.replace(",", " ").split()
            try:
                values = [float(v) for v in parts]
            except ValueError:
                values = []
            if len(values) != 8 or not np.all(np.isfinite(values)):
                raise ValueError(f"{path}:{number}: expected 't x y z qx qy qz qw', got {text!r}")
            pose = np.eye(4)
            pose[:3, :3] = quaternion_xyzw_to_matrix(np.array(values[4:8]))
            pose[:3, 3] = values[1:4]
            stamps.append(values[0])
            poses.append(pose)
    return Trajectory(np.array(stamps), np.array(poses).reshape(-1, 4, 4))
