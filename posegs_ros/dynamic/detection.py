"""Moving objects: detection, segmentation into motion regions, and per-object SE(3) motion.

Everything here works on numpy arrays (no ROS, no rendering):

1. :func:`camera_induced_flow` -- the flow a *static* scene would show between two camera poses,
   given the depth of the first view;
2. :func:`static_flow_bounds` / :func:`closest_static_flow` -- the flows a static point could
   show if the map's depth were off by up to a factor (its epipolar segment), and the one nearest
   the observation; :func:`flow_disagreement` -- pixels whose observed flow disagrees with it
   (robust threshold, morphological opening);
3. :class:`MotionSegmenter` -- connected candidate regions, associated across frames (previous
   masks warped with the frame-to-frame flow), confirmed after ``persistence`` frames;
4. :func:`object_motion` / :func:`motion_from_region_flow` -- the object's SE(3) motion from
   3D-2D correspondences, solved as a virtual camera pose with
   :func:`posegs_ros.tracking.pose_solver.solve_pose`;
5. :func:`should_merge` / :class:`GroupMotionHistory` -- a group that stopped moving merges back.

Conventions (see DESIGN.md): poses are camera-to-map ``[4, 4]`` float64, optical frame (x right,
y down, z forward), pixel centres OpenCV-style (top-left pixel centre at ``(0, 0)``); flow
``[H, W, 2]`` holds ``(du, dv)`` moving pixel ``(u, v)`` of the *source* image to
``(u + du, v + dv)`` in the *destination* image (as :mod:`posegs_ros.tracking.flow`).

Object motion convention: ``motion`` ``M`` is a map-frame transform acting on map points, so a
point ``X`` of the object (map coordinates at the earlier time) is at ``M @ X`` at the later
time and is observed at ``pixel = project(K, inv(camera_pose) @ M @ X)``.  For an object with
object-to-map poses ``O_prev``, ``O_curr``: ``M = O_curr @ inv(O_prev)``.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import cv2
import numpy as np

from ..config import DynamicConfig
from ..tracking.flow import robust_flow_threshold, texture_mask, textured_regions
from ..tracking.pose_solver import damped_step, huber_cost, huber_weights, project_points, solve_pose

__all__ = [
    "camera_induced_flow",
    "flow_disagreement",
    "static_flow_bounds",
    "closest_static_flow",
    "static_flow_fields",
    "boundary_contrast",
    "residual_change",
    "robust_flow_threshold",
    "flow_target_inside",
    "texture_mask",
    "warp_mask",
    "MotionRegion",
    "MotionSegmenter",
    "ObjectMotionResult",
    "object_motion",
    "motion_from_region_flow",
    "motion_from_flowed_pixels",
    "region_depth_fill",
    "motion_magnitude",
    "should_merge",
    "GroupMotionHistory",
]

# --------------------------------------------------------------------------------------------
# 1. camera-induced flow
# --------------------------------------------------------------------------------------------


def camera_induced_flow(
    depth: np.ndarray,
    k: np.ndarray,
    pose_from: np.ndarray,
    pose_to: np.ndarray,
    near: float = 1e-6,
) -> np.ndarray:
    """Flow ``[H, W, 2]`` float32 of a static scene from the ``pose_from`` view to the ``pose_to`` view.

    Args:
        depth: ``[H, W]`` z-depth of the ``from`` view (NaN / <= 0 = unknown).
        k: ``[3, 3]`` intrinsics.
        pose_from, pose_to: ``[4, 4]`` camera-to-map poses.
        near: points whose depth in the ``to`` camera is ``<= near`` (behind it) get NaN.

    Returns:
        ``flow[v, u] = (u', v') - (u, v)`` where ``(u', v')`` is the projection in the ``to``
        view of the point seen at ``(u, v)``; NaN where depth is unknown or the point is behind.
    """
    return _static_flows([depth], k, pose_from, pose_to, near)[0]


def _static_flows(depths: list[np.ndarray], k: np.ndarray, pose_from: np.ndarray, pose_to: np.ndarray,
                  near: float = 1e-6) -> list[np.ndarray]:
    """:func:`camera_induced_flow` for several ``[H, W]`` depth maps of the same view: the
    rotated pixel rays are shared (a point at depth ``z`` is ``z * R @ ray + t`` in the ``to`` camera)."""
    k = np.asarray(k, dtype=np.float64)
    h, w = np.shape(depths[0])
    v, u = np.mgrid[0:h, 0:w].astype(np.float32)
    rel = np.linalg.inv(np.asarray(pose_to, dtype=np.float64)) @ np.asarray(pose_from, dtype=np.float64)
    r, t = rel[:3, :3], rel[:3, 3]
    xn, yn = (u - k[0, 2]) / k[0, 0], (v - k[1, 2]) / k[1, 1]
    rays = [np.float32(r[i, 0]) * xn + np.float32(r[i, 1]) * yn + np.float32(r[i, 2]) for i in range(3)]
    out = []
    for depth in depths:
        depth = np.asarray(depth, dtype=np.float32)
        with np.errstate(invalid="ignore"):
            ok = np.isfinite(depth) & (depth > 0)
        z = np.where(ok, depth, np.float32(1.0))
        x, y, z2 = (rays[i] * z + np.float32(t[i]) for i in range(3))
        ok &= z2 > near
        inv = np.float32(1.0) / np.where(ok, z2, np.float32(1.0))
        flow = np.stack([k[0, 0] * x * inv + k[0, 2] - u, k[1, 1] * y * inv + k[1, 2] - v], axis=-1).astype(np.float32)
        flow[~ok] = np.nan
        out.append(flow)
    return out


# --------------------------------------------------------------------------------------------
# 2. flow disagreement
# --------------------------------------------------------------------------------------------


def static_flow_bounds(
    depth: np.ndarray, k: np.ndarray, pose_from: np.ndarray, pose_to: np.ndarray, depth_slack: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Flows ``[H, W, 2]`` of a static point seen at depth ``depth * depth_slack`` (far) and
    ``depth / depth_slack`` (near): the ends of the epipolar segment a static scene point can
    move along when the map's depth is wrong by up to that factor.

    Between two views a static point at inverse depth ``1/z`` lands on a straight segment of the
    destination image parametrised by ``1/z`` (the projective image of its viewing ray), so every
    depth in ``[depth / slack, depth * slack]`` gives a flow on the segment between the two.
    ``depth_slack = 1`` gives :func:`camera_induced_flow` twice.
    """
    if depth_slack < 1.0:
        raise ValueError(f"depth_slack must be >= 1, got {depth_slack}")
    depth = np.asarray(depth, dtype=np.float32)
    far, near = _static_flows([depth * np.float32(depth_slack), depth / np.float32(depth_slack)], k, pose_from, pose_to)
    return far, near


def closest_static_flow(observed: np.ndarray, far: np.ndarray, near: np.ndarray) -> np.ndarray:
    """Per pixel, the flow on the segment ``far -> near`` ``[H, W, 2]`` closest to ``observed``.

    With the bounds of :func:`static_flow_bounds` this is the static explanation of the
    observation that needs the smallest depth correction within the slack: a static surface the
    map puts at a somewhat wrong depth moves along its epipolar line and is explained; an object
    moving across that line, or along it by more than the slack allows (including the wrong way,
    as no positive depth could), keeps a residual. Where one end is NaN (its point behind the
    destination camera) the other end alone is used.
    """
    far = np.where(np.isfinite(far), far, near).astype(np.float32)
    near = np.where(np.isfinite(near), near, far)
    seg_u, seg_v = near[..., 0] - far[..., 0], near[..., 1] - far[..., 1]
    length2 = seg_u * seg_u + seg_v * seg_v
    observed = np.asarray(observed, np.float32)
    with np.errstate(invalid="ignore", divide="ignore"):
        t = ((observed[..., 0] - far[..., 0]) * seg_u + (observed[..., 1] - far[..., 1]) * seg_v) / length2
    t = np.clip(np.where((length2 > 1e-12) & np.isfinite(t), t, 0.0), 0.0, 1.0)
    return np.stack([far[..., 0] + t * seg_u, far[..., 1] + t * seg_v], -1).astype(np.float32)


def static_flow_fields(
    observed: np.ndarray, depth: np.ndarray, k: np.ndarray, pose_from: np.ndarray, pose_to: np.ndarray,
    depth_slack: float, margin_px: float = 2.0, near: float = 1e-6,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Detection's per-pixel geometry in one pass: ``(valid [H, W] bool, static [H, W, 2] float32,
    residual [H, W] float64)``, bitwise ``flow_target_inside(camera_induced_flow(depth, ...),
    margin_px)``, ``static = closest_static_flow(observed, *static_flow_bounds(depth, ...,
    depth_slack))`` and the float64 norm of ``observed - static`` that :func:`flow_disagreement`
    thresholds (a numba kernel; those numpy functions are its reference and say what the fields
    mean)."""
    if depth_slack < 1.0:
        raise ValueError(f"depth_slack must be >= 1, got {depth_slack}")
    from ._detection_kernels import static_flow_fields as kernel

    rel = np.linalg.inv(np.asarray(pose_to, dtype=np.float64)) @ np.asarray(pose_from, dtype=np.float64)
    rot32 = rel[:3, :3].astype(np.float32).astype(np.float64)
    t32 = rel[:3, 3].astype(np.float32).astype(np.float64)
    return kernel(np.ascontiguousarray(observed, np.float32), np.ascontiguousarray(depth, np.float32),
                  np.ascontiguousarray(k, np.float64), rot32, t32, np.float32(depth_slack), float(margin_px), float(near))


def flow_disagreement(
    observed: np.ndarray,
    predicted: np.ndarray,
    threshold_px: float,
    valid: np.ndarray | None = None,
    k_sigma: float = 3.0,
    open_px: int = 1,
    edge_frac: float = 0.5,
    edge_px: int = 6,
    textured: np.ndarray | None = None,
    min_textured_frac: float = 0.3,
    residual: np.ndarray | None = None,
) -> np.ndarray:
    """Motion candidates ``[H, W]`` bool: pixels whose observed flow disagrees with the predicted one.

    Args:
        observed: ``[H, W, 2]`` measured flow (e.g. :class:`posegs_ros.tracking.flow.DenseFlow`).
        predicted: ``[H, W, 2]`` camera-induced flow (:func:`camera_induced_flow`); NaN = unknown.
        threshold_px: floor of the threshold (``DynamicConfig.flow_threshold_px``).
        valid: ``[H, W]`` bool pixels to consider (e.g. rendered opacity high); ``None`` = all.
        k_sigma: the threshold is ``max(threshold_px, k_sigma * s)`` with ``s`` the robust sigma of
            the residuals over valid pixels (:func:`robust_flow_threshold`), so noisy flow or a
            slightly wrong pose raises it instead of flagging the whole image.
        open_px: radius of the square opening (``2 * open_px + 1`` wide) that removes isolated
            noisy pixels; 0 disables it.
        edge_frac, edge_px: boundary refinement.  Dense flow (DIS's patches + variational
            smoothing) smears an object's flow a few pixels into its surroundings, so the raw
            candidates form a halo around it.  Within ``edge_px`` of each connected region's
            border, pixels are kept only when their residual exceeds ``edge_frac`` times the
            region's median residual (the half-amplitude contour of a smoothed step);
            the interior is untouched (rotating objects have small residuals near their spin
            centre).  ``edge_frac = 0`` disables it.
        textured, min_textured_frac: optional ``[H, W]`` bool of pixels with enough texture for
            trustworthy flow (:func:`texture_mask` of the *source* image).  Connected candidate
            regions with less than ``min_textured_frac`` textured pixels are dropped (dense flow
            drifts in blank areas); kept regions keep their blank pixels, so a moving object
            with blank patches gets no holes.

        residual: ``[H, W]`` float64 ``|observed - predicted|`` when already computed
            (:func:`static_flow_fields` gives it); ``observed`` and ``predicted`` are then not read.

    Invalid pixels (mask, NaN in either flow) are never candidates.
    """
    if residual is None:
        residual = np.linalg.norm(np.asarray(observed, np.float64) - np.asarray(predicted, np.float64), axis=-1)
    res = residual
    ok = np.isfinite(res)
    if valid is not None:
        ok &= valid.astype(bool)
    if not ok.any():
        return np.zeros(res.shape, dtype=bool)
    thr = robust_flow_threshold(res[ok], threshold_px, k_sigma)
    cand = ok & (np.where(ok, res, 0.0) > thr)
    if open_px > 0:
        kernel = np.ones((2 * open_px + 1, 2 * open_px + 1), np.uint8)
        cand = cv2.morphologyEx(cand.astype(np.uint8), cv2.MORPH_OPEN, kernel).astype(bool)
    if edge_frac > 0 and edge_px > 0 and cand.any():
        n, labels = cv2.connectedComponents(cand.astype(np.uint8), connectivity=8)
        med = np.zeros(n)
        lab = labels[cand]
        order = np.argsort(lab, kind="stable")
        groups = np.split(res[cand][order], np.cumsum(np.bincount(lab, minlength=n))[:-1])
        for i in range(1, n):
            med[i] = np.median(groups[i])
        kernel = np.ones((2 * edge_px + 1, 2 * edge_px + 1), np.uint8)
        interior = cv2.erode(cand.astype(np.uint8), kernel).astype(bool)
        strong = np.where(cand, res, 0.0) > edge_frac * med[labels]
        cand &= interior | strong
        if open_px > 0:
            kernel = np.ones((2 * open_px + 1, 2 * open_px + 1), np.uint8)
            cand = cv2.morphologyEx(cand.astype(np.uint8), cv2.MORPH_OPEN, kernel).astype(bool)
    if textured is not None:
        cand = textured_regions(cand, textured, min_textured_frac)
    return cand


def boundary_contrast(residual: np.ndarray, region: np.ndarray, valid: np.ndarray, inner_px: int = 4,
                      outer_px: int = 10) -> float:
    """How sharply the flow residual ``[H, W]`` drops at the border of ``region`` ``[H, W]`` bool:
    median residual inside over the median in a ring ``inner_px``..``outer_px`` outside it
    (``valid`` pixels only; ``inf`` when the ring is empty, 0 when the region has no valid pixel).

    A body moving on its own is a separate surface: its residual stops at its silhouette (the
    ring sits on the static background; ``inner_px`` skips dense flow's halo). What a wrong
    camera pose, rolling shutter or a smooth depth error leave is a residual *field* that fades
    across the image; where it crosses the threshold it forms regions too, but with about as
    much residual just outside (a contrast near 1-2) as inside.
    """
    inside = region & valid & np.isfinite(residual)
    if not inside.any():
        return 0.0

    def grown(r: int) -> np.ndarray:
        return cv2.dilate(region.astype(np.uint8), np.ones((2 * r + 1, 2 * r + 1), np.uint8)).astype(bool)

    ring = grown(outer_px) & ~grown(inner_px) & valid & np.isfinite(residual)
    if not ring.any():
        return float("inf")
    return float(np.median(residual[inside]) / max(float(np.median(residual[ring])), 1e-3))


def residual_change(vectors: list[np.ndarray]) -> float:
    """Largest change between consecutive median flow residuals ``vectors`` (each ``[2]``, oldest
    first) of one region, relative to the larger of the two: 0 for a steady residual, 2 for one
    that flips sign; ``inf`` with fewer than two.

    A body moving on its own keeps moving the same way from one frame pair to the next, so its
    residual against the static explanation is steady. What camera shake, strong motion blur
    (dense flow between frames smeared in different directions) or a wrongly mapped surface
    leave oscillates with the camera's jitter: consecutive residuals point different ways.
    """
    if len(vectors) < 2:
        return float("inf")
    changes = [float(np.linalg.norm(b - a)) / max(float(np.linalg.norm(a)), float(np.linalg.norm(b)), 1e-9)
               for a, b in zip(vectors, vectors[1:])]
    return max(changes)


def flow_target_inside(flow: np.ndarray, margin_px: float = 2.0) -> np.ndarray:
    """``[H, W]`` bool: finite ``flow`` ``[H, W, 2]`` whose target stays ``margin_px`` inside the image.

    Use it (with the predicted flow) as ``valid`` for :func:`flow_disagreement`: pixels leaving
    the view have no trustworthy observed flow.
    """
    h, w = flow.shape[:2]
    v, u = np.mgrid[0:h, 0:w]
    tu, tv = u + flow[..., 0], v + flow[..., 1]
    with np.errstate(invalid="ignore"):
        return (
            np.isfinite(flow).all(axis=-1)
            & (tu >= margin_px) & (tu <= w - 1 - margin_px) & (tv >= margin_px) & (tv <= h - 1 - margin_px)
        )


# --------------------------------------------------------------------------------------------
# 3. temporal segmentation
# --------------------------------------------------------------------------------------------


def warp_mask(mask: np.ndarray, flow: np.ndarray | None, close_px: int = 1) -> np.ndarray:
    """Forward-warp a ``[H, W]`` bool mask with ``flow`` ``[H, W, 2]`` (source -> destination).

    Each mask pixel is splatted to its rounded flowed position (pixels with NaN flow use the
    median flow of the mask); a closing of radius ``close_px`` fills splatting holes.
    ``flow=None`` returns a copy.
    """
    mask = mask.astype(bool)
    if flow is None or not mask.any():
        return mask.copy()
    h, w = mask.shape
    ys, xs = np.nonzero(mask)
    f = flow[ys, xs].astype(np.float64)
    bad = ~np.isfinite(f).all(axis=1)
    if bad.all():
        return mask.copy()
    if bad.any():
        f[bad] = np.median(f[~bad], axis=0)
    nx = np.rint(xs + f[:, 0]).astype(np.int64)
    ny = np.rint(ys + f[:, 1]).astype(np.int64)
    inside = (nx >= 0) & (nx < w) & (ny >= 0) & (ny < h)
    out = np.zeros((h, w), np.uint8)
    out[ny[inside], nx[inside]] = 1
    if close_px > 0:
        kernel = np.ones((2 * close_px + 1, 2 * close_px + 1), np.uint8)
        out = cv2.morphologyEx(out, cv2.MORPH_CLOSE, kernel)
    return out.astype(bool)


@dataclass
class MotionRegion:
    """One tracked region of motion candidates (in the coordinates of the last ``update``)."""

    id: int  # stable across frames, starts at 1
    mask: np.ndarray  # [H, W] bool (the predicted, flow-warped mask when not observed this frame)
    bbox: tuple[int, int, int, int]  # (x, y, width, height) of the mask
    pixels: int  # mask pixel count
    age: int  # frames since the region first appeared (1 on its first frame)
    streak: int  # consecutive frames it was observed (0 when missed this frame)
    missed: int  # consecutive frames it was not observed (0 when observed this frame)
    confirmed: bool  # persisted >= `persistence` frames and holds one of the `max_groups` slots

    @property
    def observed(self) -> bool:
        """Whether a candidate region matched it in the last frame."""
        return self.missed == 0


@dataclass
class _Track:
    id: int
    mask: np.ndarray
    age: int = 1
    streak: int = 1
    missed: int = 0
    confirmed: bool = False


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    if xs.size == 0:
        return (0, 0, 0, 0)
    return (int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1))


class MotionSegmenter:
    """Temporal segmentation of motion candidates into persistent, identified regions.

    Per :meth:`update`: connected components (8-connectivity) of the candidates with at least
    ``cfg.min_region_px`` pixels are matched one-to-one to the live regions of the previous
    frame by overlap after warping those masks with the frame-to-frame flow (and dilating them
    by ``match_margin_px``; largest intersection first); further components of any size lying mostly (``min_overlap`` of their
    own area) inside a matched region's predicted mask join it as fragments.  A region observed in
    ``cfg.persistence`` consecutive frames becomes ``confirmed`` (if one of ``cfg.max_groups``
    slots is free: confirmed regions keep their slot, new ones are admitted largest first);
    once confirmed it stays so until dropped.  A region missed for more than ``grace_frames``
    consecutive frames is dropped (an unconfirmed one loses its streak at its first miss).

    Args:
        cfg: ``DynamicConfig`` (uses ``min_region_px``, ``persistence``, ``max_groups``).
        grace_frames: frames a missed region is kept (with its flow-warped mask) before dropping.
        min_overlap: a component ``B`` matches a region with predicted mask ``A`` when
            ``|dilate(A) & B| / min(|A|, |B|)`` reaches this.
        match_margin_px: the dilation radius above: a weakly moving object is often detected in
            parts, a different part each frame; the margin lets them keep one id.
    """

    def __init__(
        self, cfg: DynamicConfig, grace_frames: int = 2, min_overlap: float = 0.3, match_margin_px: int = 8
    ) -> None:
        self.cfg = cfg
        self.grace_frames = int(grace_frames)
        self.min_overlap = float(min_overlap)
        self.match_margin_px = int(match_margin_px)
        self._tracks: list[_Track] = []
        self._next_id = 1
        self._shape: tuple[int, int] | None = None
        self.regions: list[MotionRegion] = []

    def reset(self) -> None:
        """Forget all regions (ids keep increasing)."""
        self._tracks = []
        self.regions = []

    def drop(self, region_id: int) -> None:
        """Forget one region (e.g. after its group merged back into the static map)."""
        self._tracks = [t for t in self._tracks if t.id != region_id]
        self.regions = [r for r in self.regions if r.id != region_id]

    def update(self, candidates: np.ndarray, flow_prev_to_curr: np.ndarray | None = None) -> list[MotionRegion]:
        """Process one frame's candidates ``[H, W]`` bool; returns all live regions.

        ``flow_prev_to_curr`` ``[H, W, 2]`` is the flow from the previous ``candidates`` image to
        this one (``None``: regions are matched in place, fine for objects moving less than
        their size per frame).  Returned list: confirmed regions first, each group sorted by
        pixel count descending; filter with ``r.confirmed``.
        """
        cand = candidates.astype(bool)
        self._shape = (int(cand.shape[0]), int(cand.shape[1]))
        n, labels, stats, _ = cv2.connectedComponentsWithStats(cand.astype(np.uint8), connectivity=8)
        comps = [i for i in range(1, n) if stats[i, cv2.CC_STAT_AREA] >= self.cfg.min_region_px]
        areas = {i: int(stats[i, cv2.CC_STAT_AREA]) for i in range(1, n)}

        # predicted masks of the live tracks, and their overlap with every component
        pairs: list[tuple[int, float, int, int]] = []  # (intersection, score, track index, component)
        pieces: list[tuple[float, int, int]] = []  # (score w.r.t. the component, track index, component)
        for ti, tr in enumerate(self._tracks):
            tr.mask = warp_mask(tr.mask, flow_prev_to_curr)
            area = int(tr.mask.sum())
            if area == 0 or n <= 1:
                continue
            inter = np.bincount(labels[tr.mask], minlength=n)
            grown = tr.mask
            if self.match_margin_px > 0:
                r = self.match_margin_px
                ker = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
                grown = cv2.dilate(tr.mask.astype(np.uint8), ker).astype(bool)
            near = np.bincount(labels[grown], minlength=n)
            for c in np.flatnonzero(near[1:]) + 1:
                if areas[c] >= self.cfg.min_region_px:
                    score = near[c] / min(area, areas[c])
                    if score >= self.min_overlap:
                        pairs.append((int(near[c]), float(score), ti, int(c)))
                own = inter[c] / areas[c]
                if own >= self.min_overlap:
                    pieces.append((float(own), ti, int(c)))
        pairs.sort(key=lambda p: (-p[0], -p[1]))
        used_t: set[int] = set()
        used_c: set[int] = set()
        for _, _, ti, c in pairs:
            if ti in used_t or c in used_c:
                continue
            used_t.add(ti)
            used_c.add(c)
            tr = self._tracks[ti]
            tr.mask = labels == c
            tr.age += 1
            tr.streak += 1
            tr.missed = 0
        # fragments: other components (of any size) lying mostly inside the predicted mask of a
        # matched region join it, so a region that breaks up does not spawn extra regions
        pieces.sort(key=lambda p: -p[0])
        for _, ti, c in pieces:
            if ti in used_t and c not in used_c:
                used_c.add(c)
                self._tracks[ti].mask |= labels == c

        kept: list[_Track] = []
        for ti, tr in enumerate(self._tracks):
            if ti not in used_t:
                tr.age += 1
                tr.streak = 0
                tr.missed += 1
                if tr.missed > self.grace_frames or not tr.mask.any():
                    continue
            kept.append(tr)
        for c in comps:
            if c not in used_c:
                kept.append(_Track(id=self._next_id, mask=labels == c))
                self._next_id += 1
        self._tracks = kept

        # confirmation: confirmed tracks keep their slots, new ones are admitted largest first
        slots = self.cfg.max_groups - sum(t.confirmed for t in self._tracks)
        ready = [t for t in self._tracks if not t.confirmed and t.streak >= self.cfg.persistence]
        ready.sort(key=lambda t: -int(t.mask.sum()))
        for t in ready[: max(slots, 0)]:
            t.confirmed = True

        regions = [
            MotionRegion(
                id=t.id, mask=t.mask.copy(), bbox=_bbox(t.mask), pixels=int(t.mask.sum()), age=t.age,
                streak=t.streak, missed=t.missed, confirmed=t.confirmed,
            )
            for t in self._tracks
        ]
        regions.sort(key=lambda r: (not r.confirmed, -r.pixels))
        self.regions = regions
        return regions

    def mask(self, confirmed_only: bool = True) -> np.ndarray | None:
        """Union ``[H, W]`` bool of the last regions' masks (``None`` before the first update)."""
        if self._shape is None:
            return None
        out = np.zeros(self._shape, bool)
        for r in self.regions:
            if r.confirmed or not confirmed_only:
                out |= r.mask
        return out


# --------------------------------------------------------------------------------------------
# 4. object motion
# --------------------------------------------------------------------------------------------


@dataclass
class ObjectMotionResult:
    """Object motion ``M`` ``[4, 4]`` (map frame): ``pixel ~ project(K, inv(camera_pose) @ M @ X)``."""

    motion: np.ndarray  # [4, 4] float64
    inliers: np.ndarray  # [M] bool: reprojection error < inlier_px at the solution
    median_error_px: float  # median reprojection error (inf when not solved)
    num_points: int
    ok: bool  # enough correspondences and a finite solution
    centroid: np.ndarray  # [3] map-frame centroid of the (finite) input points, before the motion

    @property
    def inlier_ratio(self) -> float:
        return float(self.inliers.mean()) if self.inliers.size else 0.0

    @property
    def displacement(self) -> np.ndarray:
        """``[3]`` map-frame displacement of the centroid, ``M c - c``.

        Prefer it to ``motion[:3, 3]`` when judging how far the object moved: the translation
        of ``M`` is relative to the map origin, so a small rotation error leaks into it.
        """
        return self.motion[:3, :3] @ self.centroid + self.motion[:3, 3] - self.centroid


def _solve_translation(
    points: np.ndarray, targets: np.ndarray, k: np.ndarray, camera_pose: np.ndarray, t0: np.ndarray,
    huber_px: float, iterations: int, near: float = 1e-3,
) -> np.ndarray:
    """Huber-IRLS Levenberg-Marquardt for a pure map-frame translation ``t`` ``[3]`` with
    ``targets ~ project(inv(camera_pose) @ (points + t))``."""
    r_c, p_c = camera_pose[:3, :3], camera_pose[:3, 3]

    def resid(t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        x = (points + t - p_c) @ r_c
        uv, z = project_points(x, k)
        return uv - targets, z > near, x

    def cost(r: np.ndarray, valid: np.ndarray) -> float:
        return huber_cost(np.linalg.norm(r[valid], axis=1), huber_px)

    t = t0.astype(np.float64).copy()
    r, valid, x = resid(t)
    current = cost(r, valid)
    damping = 1e-4
    for _ in range(iterations):
        xv = x[valid]
        inv_z = 1.0 / xv[:, 2]
        j_proj = np.zeros((len(xv), 2, 3))
        j_proj[:, 0, 0] = k[0, 0] * inv_z
        j_proj[:, 0, 2] = -k[0, 0] * xv[:, 0] * inv_z**2
        j_proj[:, 1, 1] = k[1, 1] * inv_z
        j_proj[:, 1, 2] = -k[1, 1] * xv[:, 1] * inv_z**2
        jac = j_proj @ r_c.T  # d x / d t = R_c^T
        rv = r[valid]
        w = huber_weights(np.linalg.norm(rv, axis=1), huber_px)
        h = np.einsum("m,mai,maj->ij", w, jac, jac)
        g = np.einsum("m,mai,ma->i", w, jac, rv)

        def evaluate(step: np.ndarray) -> tuple[float, tuple[np.ndarray, ...]]:
            r_n, valid_n, x_n = resid(t + step)
            return cost(r_n, valid_n), (t + step, r_n, valid_n, x_n)

        state, step, damping, current = damped_step(h, g, damping, current, evaluate)
        if state is None:
            break
        t, r, valid, x = state
        if np.linalg.norm(step) < 1e-10:
            break
    return t


def object_motion(
    points_map: np.ndarray,
    pixels: np.ndarray,
    k: np.ndarray,
    camera_pose: np.ndarray,
    init: np.ndarray | None = None,
    huber_px: float = 1.5,
    iterations: int = 20,
    inlier_px: float | None = None,
    min_points: int = 12,
    dof: str = "se3",
) -> ObjectMotionResult:
    """Robust SE(3) object motion from map points ``[M, 3]`` and the pixels ``[M, 2]`` they move to.

    ``camera_pose`` ``[4, 4]`` is the camera-to-map pose of the image holding ``pixels``.  Moving
    the object by ``M`` is seen like moving the camera by ``inv(M)``: with the virtual
    camera-to-map pose ``C' = inv(M) @ C`` we have ``inv(C') = inv(C) @ M``, so
    ``pixel = project(inv(C') @ X)`` -- a plain camera-pose problem, solved by
    :func:`posegs_ros.tracking.pose_solver.solve_pose` from ``C'_0 = inv(init) @ C``; then
    ``M = C @ inv(C')``.

    Args:
        init: initial motion guess ``[4, 4]`` (``None`` = identity), e.g. the last frame's motion.
        huber_px: Huber threshold of the reprojection residuals.
        inlier_px: inlier threshold (default ``3 * huber_px``).
        min_points: fewer finite correspondences give ``ok=False`` and ``motion = init``.
        dof: ``"se3"`` (6 DoF, the above) or ``"translation"`` (``M = [I, t]``, 3 DoF, its own
            Huber Levenberg-Marquardt; the rotation of ``init`` is ignored).  The object's own
            rotation is weakly observed from a small region (it trades off against the
            translation), so 6-DoF rotations from two frames are noisy; translation-only is
            better conditioned, but biased when the object really spins (measured on
            ``posegs synth --dynamic``: se3 is better there, see the tests / report).
    """
    if dof not in ("se3", "translation"):
        raise ValueError(f"dof must be 'se3' or 'translation', got {dof!r}")
    c = np.asarray(camera_pose, dtype=np.float64)
    m0 = np.eye(4) if init is None else np.asarray(init, dtype=np.float64)
    pts = np.asarray(points_map, dtype=np.float64).reshape(-1, 3)
    uv = np.asarray(pixels, dtype=np.float64).reshape(-1, 2)
    if inlier_px is None:
        inlier_px = 3.0 * huber_px
    kk = np.asarray(k, np.float64)
    finite = np.isfinite(pts).all(axis=1) & np.isfinite(uv).all(axis=1)
    inliers = np.zeros(len(pts), bool)
    nf = int(finite.sum())
    centroid = pts[finite].mean(axis=0) if nf else np.zeros(3)
    if nf < min_points:
        return ObjectMotionResult(m0.copy(), inliers, float("inf"), nf, False, centroid)
    if dof == "translation":
        motion = np.eye(4)
        motion[:3, 3] = _solve_translation(pts[finite], uv[finite], kk, c, m0[:3, 3], huber_px, iterations)
    else:
        virtual0 = np.linalg.inv(m0) @ c
        res = solve_pose(pts[finite], uv[finite], kk, virtual0, huber_px=huber_px, iterations=iterations)
        motion = c @ np.linalg.inv(res.pose)
        motion[3] = (0.0, 0.0, 0.0, 1.0)
    if not np.isfinite(motion).all():
        return ObjectMotionResult(m0.copy(), inliers, float("inf"), nf, False, centroid)
    moved = pts[finite] @ motion[:3, :3].T + motion[:3, 3]
    proj, z = project_points((moved - c[:3, 3]) @ c[:3, :3], kk)
    err = np.where(z > 1e-6, np.linalg.norm(proj - uv[finite], axis=1), np.inf)
    inliers[np.flatnonzero(finite)] = err < inlier_px
    median = float(np.median(err))
    return ObjectMotionResult(motion, inliers, median, nf, bool(np.isfinite(median)), centroid)


def region_depth_fill(
    depth: np.ndarray,
    mask: np.ndarray,
    ring_px: int = 8,
    gap_px: int = 2,
    percentile: float = 50.0,
    only_unknown: bool = False,
) -> np.ndarray:
    """Copy of ``depth`` ``[H, W]`` with the ``mask`` ``[H, W]`` region filled by a robust ring depth.

    The ring is the band between ``gap_px`` and ``gap_px + ring_px`` pixels around the mask (the
    gap skips the object's smeared boundary); its finite positive depths' ``percentile`` (median
    by default) fills the region.  The ring doubles (up to 4 times) when it holds no depth, then
    the whole image's finite depth is used.  ``only_unknown`` fills only non-finite / <= 0 pixels.
    Raises ``ValueError`` when the image has no valid depth at all.
    """
    depth = np.asarray(depth)
    mask = mask.astype(bool)
    out = depth.astype(np.float32, copy=True)
    if not mask.any():
        return out
    good = np.isfinite(depth) & (depth > 0)
    m8 = mask.astype(np.uint8)

    def dilate(r: int) -> np.ndarray:
        if r <= 0:
            return mask
        return cv2.dilate(m8, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))).astype(bool)

    inner = dilate(gap_px)
    value: float | None = None
    ring = ring_px
    for _ in range(5):
        band = dilate(gap_px + ring) & ~inner & good
        if band.any():
            value = float(np.percentile(depth[band], percentile))
            break
        ring *= 2
    if value is None:
        rest = good & ~mask
        if not rest.any():
            raise ValueError("region_depth_fill: the depth map has no finite positive value outside the region")
        value = float(np.percentile(depth[rest], percentile))
    fill = mask & ~good if only_unknown else mask
    out[fill] = value
    return out


def motion_from_region_flow(
    depth: np.ndarray,
    mask: np.ndarray,
    flow: np.ndarray,
    k: np.ndarray,
    pose_prev: np.ndarray,
    pose_curr: np.ndarray,
    init: np.ndarray | None = None,
    stride: int = 2,
    erode_px: int = 3,
    max_points: int = 4000,
    huber_px: float = 1.5,
    iterations: int = 20,
    dof: str = "se3",
) -> ObjectMotionResult:
    """Object motion of a region from the flow between two views.

    Masked pixels of the ``prev`` view (every ``stride``-th, after eroding the mask by
    ``erode_px`` to skip the boundary, where dense flow mixes object and background motion;
    the erosion is halved until at least a quarter of the region remains) are lifted with
    ``depth`` ``[H, W]`` and ``pose_prev`` to map points, moved by ``flow`` ``[H, W, 2]`` (prev -> curr) to target pixels of the
    ``curr`` view, and :func:`object_motion` solves the motion seen from ``pose_curr``.

    ``depth`` is the depth of the object in the ``prev`` view: the rendered depth when the object
    is in the map, else :func:`region_depth_fill` (monocular: the object's depth and motion are
    only known up to that assumption).  At most ``max_points`` correspondences (evenly strided).
    """
    h, w = mask.shape
    m = mask.astype(bool)
    e = erode_px
    while e > 0:
        eroded = cv2.erode(m.astype(np.uint8), np.ones((2 * e + 1,) * 2, np.uint8)).astype(bool)
        if eroded.sum() >= max(12, m.sum() // 4):
            m = eroded
            break
        e //= 2
    sel = np.zeros_like(m)
    sel[::stride, ::stride] = True
    m &= sel
    ys, xs = np.nonzero(m)
    z = np.asarray(depth, np.float64)[ys, xs]
    f = np.asarray(flow, np.float64)[ys, xs]
    ok = np.isfinite(z) & (z > 0) & np.isfinite(f).all(axis=1)
    ys, xs, z, f = ys[ok], xs[ok], z[ok], f[ok]
    if len(xs) > max_points:
        pick = np.linspace(0, len(xs) - 1, max_points).round().astype(np.int64)
        ys, xs, z, f = ys[pick], xs[pick], z[pick], f[pick]
    return motion_from_flowed_pixels(xs, ys, z, f, (w, h), k, pose_prev, pose_curr, init=init, huber_px=huber_px,
                                     iterations=iterations, dof=dof, edge_px=0.5)


def motion_from_flowed_pixels(
    xs: np.ndarray,
    ys: np.ndarray,
    z: np.ndarray,
    flow_at: np.ndarray,
    size: tuple[int, int],
    k: np.ndarray,
    pose_from: np.ndarray,
    pose_to: np.ndarray,
    init: np.ndarray | None = None,
    huber_px: float = 1.5,
    iterations: int = 20,
    min_points: int = 12,
    dof: str = "se3",
    edge_px: float = 0.5,
) -> ObjectMotionResult:
    """Object motion from pixels ``xs, ys`` ``[M]`` of the ``from`` view at depths ``z`` ``[M]``
    and their flow ``flow_at`` ``[M, 2]`` into the ``to`` view (image ``size`` = (width, height)).

    The pixels are lifted with ``pose_from`` to map points, moved by their flow to target pixels
    (kept when within ``edge_px`` of the outer pixel centres) and :func:`object_motion` solves
    the motion seen from ``pose_to``.
    """
    w, h = size
    k = np.asarray(k, np.float64)
    cam = np.stack([(xs - k[0, 2]) / k[0, 0] * z, (ys - k[1, 2]) / k[1, 1] * z, z], axis=1)
    pp = np.asarray(pose_from, np.float64)
    points = cam @ pp[:3, :3].T + pp[:3, 3]
    targets = np.stack([xs, ys], axis=1) + np.asarray(flow_at, np.float64)
    inside = ((targets[:, 0] >= -edge_px) & (targets[:, 0] <= w - 1 + edge_px)
              & (targets[:, 1] >= -edge_px) & (targets[:, 1] <= h - 1 + edge_px))
    return object_motion(points[inside], targets[inside], k, pose_to, init=init, huber_px=huber_px,
                         iterations=iterations, min_points=min_points, dof=dof)


# --------------------------------------------------------------------------------------------
# 5. merging groups that stopped moving
# --------------------------------------------------------------------------------------------


def motion_magnitude(motion: np.ndarray, scene_scale: float = 1.0, centroid: np.ndarray | None = None) -> float:
    """Size of one per-frame motion: ``|M c - c| / scene_scale + angle(R)`` (radians).

    ``centroid`` ``c`` ``[3]`` is the group's centre in the map (default: map origin, i.e. the
    translation of ``M``); measuring the centre's displacement keeps a spin about the object's
    own centre from counting as a large translation.
    """
    m = np.asarray(motion, np.float64)
    c = np.zeros(3) if centroid is None else np.asarray(centroid, np.float64)
    disp = float(np.linalg.norm(m[:3, :3] @ c + m[:3, 3] - c))
    cos = np.clip((np.trace(m[:3, :3]) - 1.0) / 2.0, -1.0, 1.0)
    return disp / max(float(scene_scale), 1e-12) + float(np.arccos(cos))


def should_merge(
    motions: list[np.ndarray],
    merge_motion: float,
    scene_scale: float,
    frames: int,
    centroid: np.ndarray | None = None,
) -> bool:
    """Whether each of the last ``frames`` per-frame motions ``[4, 4]`` has
    :func:`motion_magnitude` below ``merge_motion`` (``DynamicConfig.merge_motion``).

    ``scene_scale`` normalizes translations (the map's median depth; 1.0 = map units).  Fewer
    than ``frames`` motions, or any non-finite one among them, give ``False``.
    """
    if frames <= 0 or len(motions) < frames:
        return False
    for m in motions[-frames:]:
        if not np.isfinite(m).all():
            return False
        if motion_magnitude(m, scene_scale, centroid) >= merge_motion:
            return False
    return True


@dataclass
class GroupMotionHistory:
    """Per-group history of per-frame motions, answering :func:`should_merge` per group.

    ``frames`` is the number of consecutive still frames required (not in ``DynamicConfig``).
    """

    cfg: DynamicConfig
    frames: int = 5
    _motions: dict[int, deque[np.ndarray]] = field(default_factory=dict, repr=False)
    _centroids: dict[int, np.ndarray] = field(default_factory=dict, repr=False)

    def add(self, group: int, motion: np.ndarray, centroid: np.ndarray | None = None) -> None:
        """Record group ``group``'s motion ``[4, 4]`` for this frame (and its current map centroid)."""
        q = self._motions.setdefault(group, deque(maxlen=max(self.frames, 1)))
        q.append(np.asarray(motion, np.float64).copy())
        if centroid is not None:
            self._centroids[group] = np.asarray(centroid, np.float64).copy()

    def should_merge(self, group: int, scene_scale: float = 1.0) -> bool:
        """Whether ``group`` stayed below ``cfg.merge_motion`` for the last ``frames`` frames."""
        q = self._motions.get(group)
        if q is None:
            return False
        return should_merge(list(q), self.cfg.merge_motion, scene_scale, self.frames, self._centroids.get(group))

    def drop(self, group: int) -> None:
        """Forget a group (merged or deleted)."""
        self._motions.pop(group, None)
        self._centroids.pop(group, None)

    def groups(self) -> list[int]:
        return sorted(self._motions)
