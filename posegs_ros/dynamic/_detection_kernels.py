"""Numba kernel of motion detection's per-pixel geometry: one pass over the image instead of
a dozen full-image numpy temporaries.

:func:`static_flow_fields` gives, for the previous frame's rendered depth and the two camera
poses, what :mod:`posegs_ros.dynamic.detection` computes with numpy as

    predicted = camera_induced_flow(depth, k, pose_from, pose_to)
    valid = flow_target_inside(predicted, margin)
    static = closest_static_flow(observed, *static_flow_bounds(depth, k, pose_from, pose_to, slack))

with the same arithmetic in the same precision and order (float64 rays and projections of
float32 depths, float32 segment geometry), so the results are bitwise those of the numpy
functions (``tests/dynamic/test_dynamic_detection.py`` checks it on random inputs).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

__all__ = ["static_flow_fields"]

_TINY = np.float32(1e-12)  # a shorter squared segment is a point (numpy compares it in float32 too)


@njit(cache=True, error_model="numpy")
def _project(ray0: float, ray1: float, ray2: float, z: np.float32, t: np.ndarray, fx: float, fy: float, cx: float,
             cy: float, u: float, v: float, near: float) -> tuple[np.float32, np.float32]:
    """Flow ``(du, dv)`` float32 of the point at depth ``z`` along the rotated ray (NaN when
    the depth is unknown or the point is behind the destination camera)."""
    ok = math.isfinite(z) and z > 0
    zz = z if ok else np.float32(1.0)
    x = ray0 * np.float64(zz) + t[0]
    y = ray1 * np.float64(zz) + t[1]
    z2 = ray2 * np.float64(zz) + t[2]
    ok = ok and z2 > near
    if not ok:
        return np.float32(np.nan), np.float32(np.nan)
    inv = 1.0 / z2
    return np.float32(fx * x * inv + cx - u), np.float32(fy * y * inv + cy - v)


@njit(cache=True, error_model="numpy")
def static_flow_fields(observed: np.ndarray, depth: np.ndarray, k: np.ndarray, rot32: np.ndarray, t32: np.ndarray,
                       slack: np.float32, margin: float, near: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(valid [H, W] bool, static [H, W, 2] float32, residual [H, W] float64)`` for ``observed`` flow ``[H, W, 2]``
    float32 and ``depth`` ``[H, W]`` float32 of the source view; ``k`` ``[3, 3]`` float64;
    ``rot32`` ``[3, 3]`` / ``t32`` ``[3]``: the source-to-destination camera transform rounded
    to float32 and held as float64 (as the numpy path uses it).

    ``valid``: the camera-induced flow is finite and lands ``margin`` px inside the image;
    ``static``: the flow on the epipolar segment of depths ``[depth / slack, depth * slack]``
    closest to the observed one; ``residual``: ``|observed - static|`` in float64 (``sqrt(du^2 +
    dv^2)``, as ``np.linalg.norm`` over the last axis sums its two squares)."""
    h, w = depth.shape
    fx, fy, cx, cy = k[0, 0], k[1, 1], k[0, 2], k[1, 2]
    valid = np.zeros((h, w), np.bool_)
    static = np.empty((h, w, 2), np.float32)
    residual = np.empty((h, w), np.float64)
    hi_u, hi_v = w - 1 - margin, h - 1 - margin
    for v in range(h):
        vf = np.float64(np.float32(v))
        yn = (vf - cy) / fy
        for u in range(w):
            uf = np.float64(np.float32(u))
            xn = (uf - cx) / fx
            ray0 = rot32[0, 0] * xn + rot32[0, 1] * yn + rot32[0, 2]
            ray1 = rot32[1, 0] * xn + rot32[1, 1] * yn + rot32[1, 2]
            ray2 = rot32[2, 0] * xn + rot32[2, 1] * yn + rot32[2, 2]
            d = depth[v, u]
            pu, pv = _project(ray0, ray1, ray2, d, t32, fx, fy, cx, cy, uf, vf, near)
            if math.isfinite(pu) and math.isfinite(pv):
                tu, tv = np.float64(u) + np.float64(pu), np.float64(v) + np.float64(pv)
                valid[v, u] = tu >= margin and tu <= hi_u and tv >= margin and tv <= hi_v
            far_u, far_v = _project(ray0, ray1, ray2, d * slack, t32, fx, fy, cx, cy, uf, vf, near)
            near_u, near_v = _project(ray0, ray1, ray2, d / slack, t32, fx, fy, cx, cy, uf, vf, near)
            # each component falls back on the other end's where it is NaN
            if not math.isfinite(far_u):
                far_u = near_u
            if not math.isfinite(far_v):
                far_v = near_v
            if not math.isfinite(near_u):
                near_u = far_u
            if not math.isfinite(near_v):
                near_v = far_v
            seg_u, seg_v = near_u - far_u, near_v - far_v
            length2 = seg_u * seg_u + seg_v * seg_v
            s = ((observed[v, u, 0] - far_u) * seg_u + (observed[v, u, 1] - far_v) * seg_v) / length2
            if not (length2 > _TINY and math.isfinite(s)):
                s = np.float32(0.0)
            s = min(max(s, np.float32(0.0)), np.float32(1.0))
            su, sv = far_u + s * seg_u, far_v + s * seg_v
            static[v, u, 0] = su
            static[v, u, 1] = sv
            du = np.float64(observed[v, u, 0]) - np.float64(su)
            dv = np.float64(observed[v, u, 1]) - np.float64(sv)
            residual[v, u] = math.sqrt(du * du + dv * dv)
    return valid, static, residual
