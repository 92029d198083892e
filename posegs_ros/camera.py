"""Pinhole camera intrinsics, projection and unprojection (optical frame: x right, y down, z forward).

The engine only sees undistorted pinhole cameras: lens distortion from ``camera_info`` is
removed in :mod:`posegs_ros.io` before a frame reaches it.  Pixel coordinates follow the
OpenCV / ROS convention: the centre of the top-left pixel is ``(0, 0)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = ["Intrinsics", "project", "unproject", "unproject_depth", "pixel_grid"]


@dataclass(frozen=True)
class Intrinsics:
    """Pinhole intrinsics of an image of ``width`` x ``height`` pixels."""

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int

    def __post_init__(self) -> None:
        values = (self.fx, self.fy, self.cx, self.cy)
        if not all(np.isfinite(v) for v in values):
            raise ValueError(f"intrinsics must be finite, got fx,fy,cx,cy = {values}")
        if self.fx <= 0 or self.fy <= 0:
            raise ValueError(f"focal lengths must be positive, got fx={self.fx}, fy={self.fy}")
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"image size must be positive, got {self.width}x{self.height}")

    @classmethod
    def from_matrix(cls, k: Sequence[float] | np.ndarray, width: int, height: int) -> Intrinsics:
        """From a 3x3 camera matrix given as ``[3, 3]`` or row-major ``[9]`` (CameraInfo ``k``)."""
        m = np.asarray(k, dtype=np.float64).reshape(-1)
        if m.size not in (9, 12):
            raise ValueError(f"camera matrix needs 9 (K) or 12 (P) values, got {m.size}")
        cols = 3 if m.size == 9 else 4
        m = m.reshape(3, cols)
        return cls(float(m[0, 0]), float(m[1, 1]), float(m[0, 2]), float(m[1, 2]), int(width), int(height))

    @classmethod
    def from_camera_info(
        cls,
        k: Sequence[float] | np.ndarray,
        p: Sequence[float] | np.ndarray | None,
        width: int,
        height: int,
        rectified: bool,
    ) -> Intrinsics:
        """Intrinsics of the image the engine sees, from CameraInfo ``k`` [9] and ``p`` [12].

        When the image is undistorted / rectified (``rectified=True``, i.e. ``D`` was removed
        with maps targeting ``P``) the projection matrix ``P`` holds the new camera; otherwise
        ``K`` describes the raw image.  A ``P`` of all zeros (common in hand-written
        camera_info) falls back to ``K``.
        """
        if rectified and p is not None and np.any(np.asarray(p, dtype=np.float64)[:3]):
            return cls.from_matrix(p, width, height)
        return cls.from_matrix(k, width, height)

    def matrix(self, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> Tensor:
        """The ``[3, 3]`` camera matrix."""
        return torch.tensor(
            [[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]], dtype=dtype, device=device
        )

    def numpy(self) -> np.ndarray:
        """The ``[3, 3]`` camera matrix as float64 numpy."""
        return self.matrix(torch.float64).numpy()

    def scaled(self, width: int, height: int) -> Intrinsics:
        """Intrinsics of the same camera after resizing the image to ``width`` x ``height``.

        Pixel centres map as ``u' + 0.5 = (u + 0.5) * width / self.width``, which is what
        ``cv2.resize`` does.
        """
        sx, sy = width / self.width, height / self.height
        return Intrinsics(
            self.fx * sx, self.fy * sy, (self.cx + 0.5) * sx - 0.5, (self.cy + 0.5) * sy - 0.5, int(width), int(height)
        )

    def fov_degrees(self) -> tuple[float, float]:
        """Horizontal and vertical field of view in degrees."""
        return (
            float(np.degrees(2 * np.arctan(self.width / (2 * self.fx)))),
            float(np.degrees(2 * np.arctan(self.height / (2 * self.fy)))),
        )


def project(points: Tensor, k: Tensor, eps: float = 1e-6) -> tuple[Tensor, Tensor]:
    """Project camera-frame points ``[..., 3]`` with ``k`` ``[3, 3]``.

    Returns:
        uv ``[..., 2]`` pixel coordinates and depth ``[...]`` (z).  Points with ``z <= eps``
        get ``z`` clamped for the division: callers mask them with ``depth > near``.
    """
    z = points[..., 2]
    zc = z.clamp_min(eps)
    u = k[0, 0] * points[..., 0] / zc + k[0, 2]
    v = k[1, 1] * points[..., 1] / zc + k[1, 2]
    return torch.stack([u, v], dim=-1), z


def unproject(uv: Tensor, depth: Tensor, k: Tensor) -> Tensor:
    """Camera-frame points ``[..., 3]`` of pixels ``uv`` ``[..., 2]`` at depths ``[...]`` (z)."""
    x = (uv[..., 0] - k[0, 2]) / k[0, 0] * depth
    y = (uv[..., 1] - k[1, 2]) / k[1, 1] * depth
    return torch.stack([x, y, depth], dim=-1)


def pixel_grid(width: int, height: int, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> Tensor:
    """Pixel-centre coordinates ``[H, W, 2]`` (u, v)."""
    v, u = torch.meshgrid(
        torch.arange(height, dtype=dtype, device=device), torch.arange(width, dtype=dtype, device=device), indexing="ij"
    )
    return torch.stack([u, v], dim=-1)


def unproject_depth(depth: Tensor, k: Tensor) -> Tensor:
    """Camera-frame points ``[H, W, 3]`` of a depth map ``[H, W]`` (z per pixel)."""
    h, w = depth.shape[-2:]
    return unproject(pixel_grid(w, h, depth.dtype, depth.device), depth, k)
