"""Robust Gauss-Newton for a camera pose from 3D-2D flow correspondences + photometric residuals.

This is JOGS's "3D optical flow" pose step, in closed form: map points lifted from the
rendered depth are moved by the optical flow to where the observation shows them; the pose
minimizes their reprojection error (geometric term) together with the intensity difference
between the observation at the projection and the rendered intensity (photometric term).

Poses are camera-to-map ``[4, 4]`` float64; updates are right-multiplied,
``T <- T @ exp(delta)`` with ``delta = (rho, phi)`` (see :mod:`posegs_ros.geometry`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from .flow import bilinear_sample
from ..geometry import se3_exp

__all__ = ["PhotometricTerm", "PoseSolveResult", "solve_pose", "solve_pose_reference", "huber_weights", "project_points"]


@dataclass
class PhotometricTerm:
    """Direct photometric residuals ``I_obs(pi(T^-1 P)) - I_ref`` for points ``P``."""

    points: np.ndarray  # [M, 3] map-frame points
    reference: np.ndarray  # [M] intensities in [0, 1] expected at the points' projections
    image: np.ndarray  # [H, W] float32 observed intensities in [0, 1]
    grad_u: np.ndarray  # [H, W] d image / du
    grad_v: np.ndarray  # [H, W] d image / dv
    weight: float = 1.0  # relative weight after both terms are normalized by their robust scale


@dataclass
class PoseSolveResult:
    pose: np.ndarray  # [4, 4] camera-to-map
    inlier_ratio: float  # geometric residuals below 3 Huber thresholds / all residuals
    median_error_px: float  # median reprojection error at the solution
    num_points: int
    iterations: int
    cost: float


def huber_weights(r: np.ndarray, k: float) -> np.ndarray:
    """IRLS weights of the Huber loss for residual norms ``r`` ``[M]``."""
    a = np.abs(r)
    return np.where(a <= k, 1.0, k / np.maximum(a, 1e-12))


def huber_cost(r: np.ndarray, k: float) -> float:
    """Sum of the Huber loss of residual norms ``r`` ``[M]`` (``r`` >= 0)."""
    return float(np.sum(np.where(r <= k, 0.5 * r**2, k * (r - 0.5 * k))))


def damped_step(
    h: np.ndarray,
    g: np.ndarray,
    damping: float,
    current: float,
    evaluate: Callable[[np.ndarray], tuple[float, Any]],
    tries: int = 6,
) -> tuple[Any | None, np.ndarray, float, float]:
    """One Levenberg-Marquardt step on the normal equations ``h`` ``[P, P]``, ``g`` ``[P]``.

    Raises the damping tenfold until ``evaluate(step) -> (cost, state)`` does not increase the
    ``current`` cost. Returns ``(state or None, last step, new damping, cost)``.
    """
    eye = np.eye(len(g))
    step = np.zeros(len(g))
    for _ in range(tries):
        step = -np.linalg.solve(h + damping * (np.diag(np.diag(h)) + 1e-9 * eye), g)
        c, state = evaluate(step)
        if np.isfinite(c) and c <= current:
            return state, step, max(damping * 0.3, 1e-7), c
        damping *= 10.0
    return None, step, damping, current


def project_points(points_cam: np.ndarray, k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates ``[M, 2]`` and depths ``[M]`` of camera-frame points ``[M, 3]``."""
    z = points_cam[:, 2]
    zc = np.where(np.abs(z) < 1e-9, 1e-9, z)
    uv = np.stack([k[0, 0] * points_cam[:, 0] / zc + k[0, 2], k[1, 1] * points_cam[:, 1] / zc + k[1, 2]], axis=1)
    return uv, z


def _point_jacobians(x: np.ndarray, k: np.ndarray) -> np.ndarray:
    """d pixel / d delta ``[M, 2, 6]`` for camera points ``x`` ``[M, 3]`` under ``T @ exp(delta)``."""
    fx, fy = k[0, 0], k[1, 1]
    inv_z = 1.0 / x[:, 2]
    j_proj = np.zeros((x.shape[0], 2, 3))
    j_proj[:, 0, 0] = fx * inv_z
    j_proj[:, 0, 2] = -fx * x[:, 0] * inv_z * inv_z
    j_proj[:, 1, 1] = fy * inv_z
    j_proj[:, 1, 2] = -fy * x[:, 1] * inv_z * inv_z
    # d x' / d delta = [-I, hat(x)]
    j_point = np.zeros((x.shape[0], 3, 6))
    j_point[:, 0, 0] = j_point[:, 1, 1] = j_point[:, 2, 2] = -1.0
    j_point[:, 0, 4], j_point[:, 0, 5] = -x[:, 2], x[:, 1]
    j_point[:, 1, 3], j_point[:, 1, 5] = x[:, 2], -x[:, 0]
    j_point[:, 2, 3], j_point[:, 2, 4] = -x[:, 1], x[:, 0]
    return j_proj @ j_point


def _robust_scale(r: np.ndarray, floor: float) -> float:
    """1.4826 * median absolute residual, at least ``floor``."""
    if r.size == 0:
        return floor
    return max(1.4826 * float(np.median(np.abs(r))), floor)


def _to_camera(pose: np.ndarray, points: np.ndarray) -> np.ndarray:
    r, t = pose[:3, :3], pose[:3, 3]
    return (points - t) @ r


def _retract(pose: np.ndarray, delta: np.ndarray) -> np.ndarray:
    return pose @ se3_exp(torch.from_numpy(delta)).numpy()


def solve_pose(
    points: np.ndarray,
    targets: np.ndarray,
    k: np.ndarray,
    pose_init: np.ndarray,
    huber_px: float = 1.5,
    iterations: int = 8,
    photometric: PhotometricTerm | None = None,
    image_size: tuple[int, int] | None = None,
    near: float = 1e-3,
) -> PoseSolveResult:
    """Levenberg-damped, Huber-robust Gauss-Newton for the pose that maps ``points`` onto ``targets``.

    One GIL-free numba call (:mod:`posegs_ros.tracking._pose_kernels`) that follows
    :func:`solve_pose_reference` step for step (tests compare them).

    Args:
        points: ``[M, 3]`` map-frame points (lifted from the rendered depth).
        targets: ``[M, 2]`` pixels where the observation shows them (render pixel + flow).
        k: ``[3, 3]`` intrinsics.
        pose_init: ``[4, 4]`` camera-to-map starting pose (the prediction).
        photometric: optional direct term, normalized against the geometric one by robust scales.
        image_size: ``(width, height)``; photometric samples leaving the image are dropped.
    """
    from . import _pose_kernels

    f64 = lambda a: np.ascontiguousarray(a, dtype=np.float64)  # noqa: E731
    f32 = lambda a: np.ascontiguousarray(a, dtype=np.float32)  # noqa: E731
    if photometric is not None:
        ph = photometric
        extra = (f64(ph.points).reshape(-1, 3), f64(ph.reference).reshape(-1), f32(ph.image), f32(ph.grad_u),
                 f32(ph.grad_v), float(ph.weight))
    else:
        empty = np.zeros((1, 1), np.float32)
        extra = (np.zeros((0, 3)), np.zeros(0), empty, empty, empty, 0.0)
    size = np.array(image_size if image_size is not None else (0, 0), dtype=np.float64)
    pose, it, cost, rg, valid = _pose_kernels.solve(
        f64(points).reshape(-1, 3), f64(targets).reshape(-1, 2), f64(k), f64(pose_init), float(huber_px),
        int(iterations), *extra, size, float(near),
    )
    return _result(pose, rg, valid, huber_px, points.shape[0], it, cost)


def _result(pose: np.ndarray, rg: np.ndarray, valid: np.ndarray, huber_px: float, m: int, it: int,
            cost: float) -> PoseSolveResult:
    errors = np.linalg.norm(rg[valid], axis=1)
    inliers = int(np.sum(errors < 3.0 * huber_px))
    return PoseSolveResult(
        pose=pose,
        inlier_ratio=inliers / max(m, 1),
        median_error_px=float(np.median(errors)) if errors.size else float("inf"),
        num_points=m,
        iterations=it,
        cost=cost,
    )


def solve_pose_reference(
    points: np.ndarray,
    targets: np.ndarray,
    k: np.ndarray,
    pose_init: np.ndarray,
    huber_px: float = 1.5,
    iterations: int = 8,
    photometric: PhotometricTerm | None = None,
    image_size: tuple[int, int] | None = None,
    near: float = 1e-3,
) -> PoseSolveResult:
    """NumPy twin of :func:`solve_pose` (the readable reference the kernel is tested against).

    Args:
        points: ``[M, 3]`` map-frame points (lifted from the rendered depth).
        targets: ``[M, 2]`` pixels where the observation shows them (render pixel + flow).
        k: ``[3, 3]`` intrinsics.
        pose_init: ``[4, 4]`` camera-to-map starting pose (the prediction).
        photometric: optional direct term, normalized against the geometric one by robust scales.
        image_size: ``(width, height)``; photometric samples leaving the image are dropped.
    """
    pose = pose_init.astype(np.float64).copy()
    k = k.astype(np.float64)
    m = points.shape[0]

    def residuals(p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
        x = _to_camera(p, points)
        uv, z = project_points(x, k)
        valid = z > near
        rg = uv - targets
        rp = vp = None
        if photometric is not None:
            xp = _to_camera(p, photometric.points)
            uvp, zp = project_points(xp, k)
            vp = zp > near
            if image_size is not None:
                w, h = image_size
                vp &= (uvp[:, 0] >= 0) & (uvp[:, 0] <= w - 1) & (uvp[:, 1] >= 0) & (uvp[:, 1] <= h - 1)
            rp = bilinear_sample(photometric.image, uvp[:, 0], uvp[:, 1]) - photometric.reference
        return rg, valid, rp, vp

    def cost(rg: np.ndarray, valid: np.ndarray, rp: np.ndarray | None, vp: np.ndarray | None, sp: float) -> float:
        c = huber_cost(np.linalg.norm(rg[valid], axis=1), huber_px)
        if rp is not None and vp is not None and photometric is not None:
            c += photometric.weight * huber_cost(np.abs(rp[vp]) / sp * huber_px, huber_px)
        return c

    rg, valid, rp, vp = residuals(pose)
    # the photometric scale is fixed from the start so that costs stay comparable across steps
    sp = _robust_scale(rp[vp], 1e-3) if rp is not None and vp is not None else 1.0
    current = cost(rg, valid, rp, vp, sp)
    damping = 1e-4
    it = 0
    for it in range(1, iterations + 1):
        x = _to_camera(pose, points)
        jg = _point_jacobians(x[valid], k)  # [V, 2, 6]
        r = rg[valid]
        w = huber_weights(np.linalg.norm(r, axis=1), huber_px)
        h = np.einsum("m,mai,maj->ij", w, jg, jg)
        g = np.einsum("m,mai,ma->i", w, jg, r)
        if photometric is not None and rp is not None and vp is not None and vp.any():
            xp = _to_camera(pose, photometric.points[vp])
            uvp, _ = project_points(xp, k)
            gu = bilinear_sample(photometric.grad_u, uvp[:, 0], uvp[:, 1])
            gv = bilinear_sample(photometric.grad_v, uvp[:, 0], uvp[:, 1])
            jp = np.einsum("ma,mai->mi", np.stack([gu, gv], 1), _point_jacobians(xp, k))  # [P, 6]
            # scale residuals to pixel-like units: r * huber / sp
            s = huber_px / sp
            rps = rp[vp] * s
            wp = photometric.weight * huber_weights(rps, huber_px)
            h += np.einsum("m,mi,mj->ij", wp, jp * s, jp * s)
            g += np.einsum("m,mi,m->i", wp, jp * s, rps)
        def evaluate(step: np.ndarray) -> tuple[float, tuple[Any, ...]]:
            candidate = _retract(pose, step)
            res = residuals(candidate)
            return cost(*res, sp), (candidate, *res)

        state, step, damping, current = damped_step(h, g, damping, current, evaluate)
        if state is None:
            break
        pose, rg, valid, rp, vp = state
        if np.linalg.norm(step) < 1e-8:
            break
    return _result(pose, rg, valid, huber_px, m, it, current)
