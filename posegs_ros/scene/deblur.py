"""The deblurred output of a live frame: the map's sharp render plus what the map does not explain.

The blur model predicts a frame as the mean of sharp views along the exposure (``T exp(s d)``,
:mod:`posegs_ros.scene.blur`).  With the render's depth the same model acts in image space: a
pixel of the mid-exposure view moves along a short path during the exposure, so blurring an
image ``X`` is the mean of ``X`` warped along those paths (:func:`exposure_warps`,
:func:`blur_image`).

A live map is young: it explains part of each frame, sharply, and misses detail it has not
learnt yet.  :func:`fuse_deblurred` returns ``R + (I - B(R))`` for the sharp render ``R``, the
observed frame ``I`` and the image-space blur ``B``: where the map explains the frame
(``B(R) = I``) this is the render; what it does not explain is added back as observed (still
blurred, never invented); where the map is empty the frame is taken as it is.  It is one step
of van Cittert's deconvolution started from the render -- more steps amplify the model's
errors (measured: README, real time).
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

from ..camera import Intrinsics
from ..geometry import se3_exp
from .blur import exposure_offsets

__all__ = ["exposure_warps", "blur_image", "fuse_deblurred"]


def exposure_warps(
    depth: np.ndarray, intrinsics: Intrinsics, twist: np.ndarray, subframes: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Remap fields ``(map_x, map_y)`` ``[H, W]`` float32, one per sub-frame: the blurred frame's
    pixel ``q`` takes, at exposure time ``s``, the mid-exposure image's value at ``map(q)``.

    ``depth`` ``[H, W]``: z-depth of the mid-exposure view (NaN or <= 0 where unknown: those
    pixels do not move). ``twist`` ``[6]``: the frame's exposure twist (camera motion over the
    exposure, body frame). Pixel displacements are evaluated at ``q`` (small-motion approximation).
    """
    h, w = depth.shape
    k = intrinsics.numpy()
    vs, us = np.mgrid[0:h, 0:w].astype(np.float64)
    known = np.isfinite(depth) & (depth > 0)
    z = np.where(known, depth, 1.0).astype(np.float64)
    points = np.stack([(us - k[0, 2]) / k[0, 0] * z, (vs - k[1, 2]) / k[1, 1] * z, z], -1)  # [H, W, 3] camera at s=0
    warps = []
    for s in exposure_offsets(subframes, torch.float64):
        motion = np.linalg.inv(se3_exp(s * torch.from_numpy(np.asarray(twist, np.float64))).numpy())  # camera s <- 0
        moved = points @ motion[:3, :3].T + motion[:3, 3]
        zs = np.maximum(moved[..., 2], 1e-9)
        du = np.where(known, k[0, 0] * moved[..., 0] / zs + k[0, 2] - us, 0.0)
        dv = np.where(known, k[1, 1] * moved[..., 1] / zs + k[1, 2] - vs, 0.0)
        warps.append(((us - du).astype(np.float32), (vs - dv).astype(np.float32)))
    return warps


def blur_image(image: np.ndarray, warps: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """The blur model applied to an image ``[H, W, C]`` float32: mean of its warps."""
    out = np.zeros_like(image, dtype=np.float32)
    for map_x, map_y in warps:
        out += cv2.remap(image, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return out / max(len(warps), 1)


def fuse_deblurred(
    render: np.ndarray,
    observed: np.ndarray,
    depth: np.ndarray,
    intrinsics: Intrinsics,
    twist: np.ndarray,
    subframes: int,
) -> np.ndarray:
    """``R + (I - B(R))`` (see the module doc) ``[H, W, 3]`` uint8, from the sharp ``render`` and
    the ``observed`` frame (both ``[H, W, 3]`` uint8), the render's ``depth`` ``[H, W]`` (NaN
    where the map is empty: the frame shows there) and the frame's exposure ``twist`` ``[6]``."""
    r = render.astype(np.float32)
    i = observed.astype(np.float32)
    fused = r + (i - blur_image(r, exposure_warps(depth, intrinsics, twist, subframes)))
    fused = np.where(np.isfinite(depth)[..., None], fused, i)
    return np.clip(fused + 0.5, 0, 255).astype(np.uint8)
