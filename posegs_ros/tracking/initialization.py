"""Monocular two-view initialization: flow -> essential matrix -> triangulation -> seed depth.

The scale of a monocular map is arbitrary; it is fixed here by giving the first baseline the
length ``InitConfig.baseline``.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
from scipy.interpolate import griddata

from ..config import InitConfig
from ..geometry import hat
from .flow import DenseFlow, flow_consistency, image_sharpness, texture_mask, textured_regions

__all__ = ["TwoViewResult", "try_two_view", "triangulate", "grid_samples", "unexplained_motion", "image_sharpness",
           "sharp_enough"]


@dataclass
class TwoViewResult:
    """A successful initialization: second camera pose and a dense depth map of the first."""

    pose_second: np.ndarray  # [4, 4] camera-to-map of the second frame (first frame = identity)
    depth_first: np.ndarray  # [H, W] float32 depth of the first frame (NaN outside the hull)
    points: np.ndarray  # [M, 3] triangulated inlier points (map frame = first camera)
    pixels_first: np.ndarray  # [M, 2] their pixels in the first frame
    inliers: int
    median_parallax_px: float
    median_angle_deg: float
    moving_first: np.ndarray | None = None  # [H, W] bool: regions of the first frame no static scene explains
    moving_second: np.ndarray | None = None  # [H, W] bool: the same in the second frame


def sharp_enough(sharpness: float, nearby: list[float], ratio: float) -> bool:
    """Whether a frame of ``sharpness`` (:func:`image_sharpness`) may be an initialization frame:
    at least ``ratio`` times the sharpest of ``nearby`` (the frames around it, itself included).
    Two-view geometry has no blur model: flow between motion-blurred frames under-estimates the
    rotation and bends the first map's depth, and every pose tracked later inherits that."""
    return ratio <= 0.0 or not nearby or sharpness >= ratio * max(nearby)


def grid_samples(width: int, height: int, stride: int, border: int = 4) -> np.ndarray:
    """Pixel centres ``[M, 2]`` (u, v) on a regular grid."""
    vs, us = np.mgrid[border : height - border : stride, border : width - border : stride]
    return np.stack([us.ravel(), vs.ravel()], axis=1).astype(np.float64)


def triangulate(k: np.ndarray, pose_a: np.ndarray, pose_b: np.ndarray, uv_a: np.ndarray, uv_b: np.ndarray) -> np.ndarray:
    """Linear (DLT) triangulation of pixel pairs ``[M, 2]`` seen from camera-to-map poses; -> ``[M, 3]``."""
    def proj(pose: np.ndarray) -> np.ndarray:
        w2c = np.linalg.inv(pose)
        return k @ w2c[:3]

    hom = cv2.triangulatePoints(proj(pose_a), proj(pose_b), uv_a.T.astype(np.float64), uv_b.T.astype(np.float64))
    w = hom[3]
    w = np.where(np.abs(w) < 1e-12, 1e-12, w)
    return (hom[:3] / w).T


def _rotate_pixels(uv: np.ndarray, r: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Where pixels ``[M, 2]`` move under the camera rotation ``r`` alone (infinite depth)."""
    rays = np.concatenate([uv, np.ones((len(uv), 1))], 1) @ np.linalg.inv(k).T
    moved = rays @ r.T @ k.T
    return moved[:, :2] / moved[:, 2:3]


def unexplained_motion(
    flow_out: np.ndarray,
    flow_back: np.ndarray,
    k: np.ndarray,
    relative: np.ndarray,
    min_region_px: int,
    textured: np.ndarray | None = None,
    epipolar_px: float = 3.0,
    consistency_px: float = 1.0,
    min_textured_frac: float = 0.5,
) -> np.ndarray:
    """Regions ``[H, W]`` bool of one view whose flow to the other view no static scene explains.

    A pixel is flagged when its flow lands inside the other image but fails the forward-backward
    check (the other view sees something else there: an object moved over it or away), or when
    it lands more than ``epipolar_px`` off the epipolar line of the two-view geometry (at any
    depth a static point stays on it). Pixels whose flow leaves the image (the camera moved on)
    are not flagged. An opening (9 px wide) removes specks and the thin strips a depth edge
    uncovers between the views (the result is grown back by 2 px); connected regions under
    ``min_region_px`` go, and so do regions with less than ``min_textured_frac`` of ``textured``
    pixels (``[H, W]`` bool, e.g. :func:`posegs_ros.tracking.flow.texture_mask`): dense flow
    drifts on blank walls.

    Args:
        flow_out: ``[H, W, 2]`` flow from this view to the other; ``flow_back`` the reverse.
        k: ``[3, 3]`` intrinsics.
        relative: ``[4, 4]`` pose of this camera in the other camera's frame
            (``inv(pose_other) @ pose_this`` for camera-to-map poses).
    """
    h, w = flow_out.shape[:2]
    vs, us = np.mgrid[0:h, 0:w].astype(np.float64)
    tu, tv = us + flow_out[..., 0], vs + flow_out[..., 1]
    inside = np.isfinite(tu) & np.isfinite(tv) & (tu >= 2) & (tu <= w - 3) & (tv >= 2) & (tv <= h - 3)
    inconsistent = inside & ~flow_consistency(flow_out, flow_back, threshold_px=consistency_px)
    r, t = relative[:3, :3], relative[:3, 3]
    k_inv = np.linalg.inv(k)
    fundamental = k_inv.T @ hat(torch.from_numpy(np.asarray(t, np.float64))).numpy() @ r @ k_inv  # x_other^T F x_this = 0 for static points
    lines = np.stack([us, vs, np.ones_like(us)], -1) @ fundamental.T
    with np.errstate(invalid="ignore", divide="ignore"):
        dist = np.abs(lines[..., 0] * tu + lines[..., 1] * tv + lines[..., 2]) / np.hypot(lines[..., 0], lines[..., 1])
    moving = inconsistent | (inside & (np.nan_to_num(dist, nan=0.0) > epipolar_px))
    moving = cv2.morphologyEx(moving.astype(np.uint8), cv2.MORPH_OPEN, np.ones((9, 9), np.uint8))
    n, labels, stats, _ = cv2.connectedComponentsWithStats(moving, connectivity=8)
    keep = stats[:, cv2.CC_STAT_AREA] >= max(min_region_px, 1)
    keep[0] = False
    regions = keep[labels]
    if textured is not None:
        regions = textured_regions(regions, textured, min_textured_frac)
    # grown by 2 px: a moving object's blurred rim disagrees only weakly
    return cv2.dilate(regions.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)


def _depth_in(pose: np.ndarray, points: np.ndarray) -> np.ndarray:
    return ((points - pose[:3, 3]) @ pose[:3, :3])[:, 2]


def try_two_view(
    first: np.ndarray,
    second: np.ndarray,
    k: np.ndarray,
    cfg: InitConfig,
    flow: DenseFlow,
) -> tuple[TwoViewResult | None, str]:
    """Attempt an initialization from two RGB frames ``[H, W, 3]``; returns (result, reason).

    ``result`` is None when parallax, inliers or triangulation angles are insufficient; the
    reason says which.
    """
    h, w = first.shape[:2]
    fwd = flow(first, second)
    samples = grid_samples(w, h, stride=4)
    su, sv = samples[:, 0].astype(int), samples[:, 1].astype(int)
    coarse = float(np.median(np.linalg.norm(fwd[sv, su], axis=1)))
    if coarse < 0.2 * cfg.min_parallax_px:  # most attempts end here, at the cost of one flow
        return None, f"flow {coarse:.1f} px: the camera has hardly moved"
    bwd = flow(second, first)
    consistent = flow_consistency(fwd, bwd, threshold_px=1.0)
    ok = consistent[sv, su]
    uv_a = samples[ok]
    uv_b = uv_a + fwd[sv[ok], su[ok]].astype(np.float64)
    if len(uv_a) < cfg.min_inliers:
        return None, f"only {len(uv_a)} consistent flow samples"
    flow_px = float(np.median(np.linalg.norm(uv_b - uv_a, axis=1)))
    if flow_px < 0.25 * cfg.min_parallax_px:  # (rotation can cancel translation: only a coarse pre-check)
        return None, f"flow {flow_px:.1f} px: the camera has hardly moved"
    e, mask = cv2.findEssentialMat(uv_a, uv_b, k, method=cv2.USAC_MAGSAC, prob=0.999, threshold=1.0)
    if e is None or e.shape != (3, 3):
        return None, "essential matrix estimation failed"
    n_in, r, t, mask = cv2.recoverPose(e, uv_a, uv_b, k, mask=mask)
    inl = mask.ravel() > 0
    if n_in < cfg.min_inliers:
        return None, f"{n_in} essential-matrix inliers < {cfg.min_inliers}"
    # parallax is the flow left after removing the rotation: only that part carries depth
    parallax = float(np.median(np.linalg.norm(uv_b[inl] - _rotate_pixels(uv_a[inl], r, k), axis=1)))
    if parallax < cfg.min_parallax_px:
        return None, f"translational parallax {parallax:.1f} px < {cfg.min_parallax_px} px (flow {flow_px:.1f} px)"
    # recoverPose: x_b = R x_a + t; camera-to-map of b with map = camera a
    pose_b = np.eye(4)
    pose_b[:3, :3] = r.T
    pose_b[:3, 3] = (-r.T @ t).ravel() * cfg.baseline / max(np.linalg.norm(t), 1e-12)
    pts = triangulate(k, np.eye(4), pose_b, uv_a[inl], uv_b[inl])
    za, zb = pts[:, 2], _depth_in(pose_b, pts)
    # ray angles: small angles mean (almost) pure rotation: depth unobservable
    ray_a = pts / np.linalg.norm(pts, axis=1, keepdims=True)
    ray_b = pts - pose_b[:3, 3]
    ray_b /= np.linalg.norm(ray_b, axis=1, keepdims=True)
    angles = np.degrees(np.arccos(np.clip((ray_a * ray_b).sum(1), -1, 1)))
    good = (za > 0) & (zb > 0) & np.isfinite(pts).all(1) & (angles > 0.3)
    if good.sum() < cfg.min_inliers:
        return None, f"{int(good.sum())} well-triangulated points < {cfg.min_inliers}"
    med_angle = float(np.median(angles[good]))
    if med_angle < 1.0:
        return None, f"median triangulation angle {med_angle:.2f} deg < 1 deg (rotation only?)"
    pts, px = pts[good], uv_a[inl][good]
    # reject depth outliers (far tail of the triangulation)
    z = pts[:, 2]
    lo, hi = np.percentile(z, [1, 99])
    keep = (z >= lo * 0.8) & (z <= hi * 1.2)
    pts, px = pts[keep], px[keep]
    depth = _dense_depth(px, pts[:, 2], w, h)
    moving_first = moving_second = None
    if cfg.moving_region_px > 0:
        moving_first = unexplained_motion(fwd, bwd, k, np.linalg.inv(pose_b), cfg.moving_region_px, texture_mask(first))
        moving_second = unexplained_motion(bwd, fwd, k, pose_b, cfg.moving_region_px, texture_mask(second))
    return (
        TwoViewResult(
            pose_second=pose_b,
            depth_first=depth,
            points=pts,
            pixels_first=px,
            inliers=int(n_in),
            median_parallax_px=parallax,
            median_angle_deg=med_angle,
            moving_first=moving_first if moving_first is not None and moving_first.any() else None,
            moving_second=moving_second if moving_second is not None and moving_second.any() else None,
        ),
        "ok",
    )


def _dense_depth(pixels: np.ndarray, depths: np.ndarray, width: int, height: int) -> np.ndarray:
    """Interpolate sparse depths ``[M]`` at ``pixels`` ``[M, 2]`` to ``[H, W]`` (inverse depth,
    linear inside the convex hull, nearest outside)."""
    vs, us = np.mgrid[0:height, 0:width]
    inv = 1.0 / depths
    lin = griddata(pixels, inv, (us, vs), method="linear")
    near = griddata(pixels, inv, (us, vs), method="nearest")
    inv_dense = np.where(np.isfinite(lin), lin, near)
    return (1.0 / np.maximum(inv_dense, 1e-6)).astype(np.float32)
