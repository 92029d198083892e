"""Per-frame camera tracking against the Gaussian map.

1. render colour + depth at the predicted pose (constant velocity);
2. dense optical flow render -> observation;
3. lift the flowed pixels to 3D with the rendered depth and solve the pose by robust
   Gauss-Newton on reprojection + photometric residuals (:mod:`posegs_ros.tracking.pose_solver`);
4. a few Adam steps of the blur-aware render loss on the pose correction and the exposure
   twist only (the Gaussians stay fixed).

Tracking is declared lost when too few flow correspondences agree with the solved pose.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch
from torch import Tensor

from ..scene.blur import (
    RenderOutput, RenderSettings, SceneTensors, exposure_subframes, render_exposure, render_views,
)
from ..scene.loss import photometric_loss
from ..camera import Intrinsics
from ..config import PosegsConfig
from .flow import DenseFlow, bilinear_sample, image_gradients, matching_blur_sigma, robust_flow_threshold, to_gray
from ..geometry import se3_exp
from . import _pose_kernels
from .pose_solver import PhotometricTerm, PoseSolveResult, project_points, solve_pose

__all__ = ["TrackingResult", "Tracker", "TrackingResolution", "predict_constant_velocity", "initial_twist", "neighbour_twist",
           "neighbour_path", "twist_units"]

log = logging.getLogger(__name__)


COVERED_ALPHA = 0.5  # a pixel is covered by the map when its rendered opacity exceeds this
SAMPLE_ALPHA = 0.7  # pixels used for tracking: opaque enough for their rendered depth to be reliable


def twist_units(scene_scale: float) -> Tensor:
    """Per-component units ``[6]`` of twists: ``scene_scale`` for translation, 1 for rotation."""
    return torch.tensor([scene_scale] * 3 + [1.0] * 3, dtype=torch.float64)


def predict_constant_velocity(previous: np.ndarray, before_previous: np.ndarray | None, dt_ratio: float = 1.0) -> np.ndarray:
    """Constant-velocity prediction ``[4, 4]``: repeat the last relative motion (scaled by ``dt_ratio``)."""
    if before_previous is None:
        return previous.copy()
    rel = np.linalg.inv(before_previous) @ previous
    xi = _pose_kernels.se3_log(np.ascontiguousarray(rel, dtype=np.float64)) * float(np.clip(dt_ratio, 0.0, 3.0))
    return previous @ _pose_kernels.se3_exp(xi)


def interpolate_pose(start: np.ndarray, end: np.ndarray, weight: float) -> np.ndarray:
    """Pose ``[4, 4]`` a fraction ``weight`` in [0, 1] along the constant twist from ``start`` to ``end``."""
    rel = np.linalg.inv(start) @ end
    xi = _pose_kernels.se3_log(np.ascontiguousarray(rel, dtype=np.float64)) * float(np.clip(weight, 0.0, 1.0))
    return start @ _pose_kernels.se3_exp(xi)


def initial_twist(previous: np.ndarray, current: np.ndarray, exposure_ratio: float) -> np.ndarray:
    """Exposure twist ``[6]`` guess: the inter-frame motion times exposure / frame interval.

    The blur loss is symmetric in the twist (``d`` and ``-d`` blur alike), so its gradient
    vanishes at ``d = 0``: refinement must start away from zero.
    """
    rel = np.linalg.inv(previous) @ current
    return _pose_kernels.se3_log(np.ascontiguousarray(rel, dtype=np.float64)) * exposure_ratio


def neighbour_twist(
    stamps: np.ndarray, poses: np.ndarray, index: int, exposure_s: float, max_gap_s: float
) -> np.ndarray | None:
    """Exposure twist ``[6]`` of frame ``index`` from the poses around it: the body-frame
    velocity at its stamp (``d/dt log(inv(P_i) P(t))`` at ``t_i``) times ``exposure_s``.

    ``stamps`` ``[K]`` (seconds, increasing) and ``poses`` ``[K, 4, 4]`` of consecutive posed
    frames. Neighbours up to two on each side within ``max_gap_s`` of the next one in: a cubic
    in time through two on each side (the five-point derivative on even stamps), a quadratic
    through one on each side (the central difference); at an end of the sequence (no neighbour
    on one side) a quadratic through two on the other (the three-point one-sided derivative).
    The backward difference that tracking makes online is late by half a frame interval: its
    error grows with the camera's acceleration (hand-held shake turns the velocity within a
    frame). ``None`` with fewer neighbours than that.
    """
    path = neighbour_path(stamps, poses, index, exposure_s, max_gap_s)
    return None if path is None else path[0]


def neighbour_path(
    stamps: np.ndarray, poses: np.ndarray, index: int, exposure_s: float, max_gap_s: float
) -> tuple[np.ndarray, np.ndarray] | None:
    """Exposure twist and bend ``([6], [6])`` of frame ``index`` from the poses around it: the
    polynomial of :func:`neighbour_twist` over the exposure ``s`` in ``[-1/2, 1/2]`` (``tau = s
    * exposure_s``) to second order, ``log(inv(P_i) P(s)) ~ s * twist + s^2 * bend``. The bend
    is half the body-frame acceleration times ``exposure_s^2``: the streak of a camera whose
    motion turns within the exposure is curved (it folds back where the hand reverses), and its
    centroid is off the mid-exposure pose by about ``bend / 12``. None as :func:`neighbour_twist`."""
    k = len(stamps)
    sides = []
    for step in (-1, 1):
        kept, j = [], index
        while len(kept) < 2:
            nxt = j + step
            if not 0 <= nxt < k or abs(float(stamps[nxt] - stamps[j])) > max_gap_s:
                break
            kept.append(nxt)
            j = nxt
        sides.append(kept)
    if sides[0] and sides[1]:
        near = sides[0][:1] + sides[1][:1]
        both = sides[0] + sides[1] if len(sides[0]) == 2 and len(sides[1]) == 2 else near
        degree = 3 if len(both) == 4 else 2
    elif len(sides[0]) == 2 or len(sides[1]) == 2:  # an end of the sequence: the quadratic through two on one side
        both, degree = sides[0] or sides[1], 2
    else:
        return None
    inv = np.linalg.inv(poses[index])
    tau = np.array([float(stamps[j] - stamps[index]) for j in both])
    if not (np.abs(tau) > 0).all():
        return None
    logs = np.stack([_pose_kernels.se3_log(np.ascontiguousarray(inv @ poses[j], dtype=np.float64)) for j in both])
    basis = np.stack([tau**p for p in range(1, degree + 1)], axis=1)  # [n, degree]: value 0 at t_i
    coef, *_ = np.linalg.lstsq(basis, logs, rcond=None)
    if not np.isfinite(coef).all():
        return None
    e = float(exposure_s)
    return coef[0] * e, coef[1] * e * e


@dataclass
class TrackingResult:
    pose: np.ndarray  # [4, 4] camera-to-map, mid-exposure
    twist: np.ndarray  # [6] exposure twist
    lost: bool
    mismatch: bool  # tracked, but the median reprojection error exceeds tracking.max_reprojection_px
    inlier_ratio: float
    median_error_px: float
    coverage: float  # fraction of pixels the map covers (alpha > COVERED_ALPHA) at the prediction
    points: np.ndarray  # [M, 3] map points used (for keyframe parallax checks)
    flow: np.ndarray  # [H, W, 2] flow render -> observation (last pass)
    render: RenderOutput  # render of the last pass (at the pose its Gauss-Newton started from; blurred if asked)
    render_pose: np.ndarray  # [4, 4] the pose ``render`` was made at (at ``render``'s image size)
    exclude: np.ndarray | None = None  # [h, w] bool pixels tracking left out (moving objects), at ``render``'s size
    timings: dict[str, float] = field(default_factory=dict)
    reason: str = ""
    twist_refined: bool = False  # the blur-aware refinement set ``twist`` (else it is ``twist_init``)
    passes: int = 0  # render -> flow -> solve passes run
    passes_cut: bool = False  # another pass was wanted but would have run past the deadline
    gain: float = 1.0  # the frame's brightness over the render's (match_brightness): frame ~ gain * render
    flow_sigma: float = 0.0  # pre-smoothing of the flow (sigma, pixels at full size; tracking.flow_blur_match)

    @property
    def exposure(self) -> np.ndarray:
        """``[2]`` affine exposure (log gain, bias) of the frame relative to the map, as keyframes keep it."""
        return np.array([math.log(self.gain), 0.0])


def _render_gray(rgb: np.ndarray) -> np.ndarray:
    """``[H, W]`` uint8 grey of a render ``[H, W, 3]`` float in [0, 1] (one conversion, one rounding)."""
    gray = cv2.cvtColor(np.ascontiguousarray(rgb, dtype=np.float32), cv2.COLOR_RGB2GRAY)
    return np.clip(gray * 255.0 + 0.5, 0.0, 255.0).astype(np.uint8)


def match_brightness(
    ref_gray: np.ndarray, obs_gray: np.ndarray, covered: np.ndarray, stride: int = 4
) -> tuple[np.ndarray, float]:
    """The render's grey ``[H, W]`` uint8 brought to the frame's brightness by one gain: the ratio
    of the frame's to the render's mean grey over the ``covered`` ``[H, W]`` bool pixels (means,
    so neither a pose still off by a few pixels nor a render softer than the frame biases it),
    clipped to [0.5, 2]. Returns the adjusted grey and the gain; fewer than 100 covered samples
    or a black render: unchanged."""
    pick = covered[::stride, ::stride]
    ref = ref_gray[::stride, ::stride][pick]
    if ref.size < 100:
        return ref_gray, 1.0
    ref_mean = float(ref.mean())
    if ref_mean < 1.0:
        return ref_gray, 1.0
    gain = float(np.clip(float(obs_gray[::stride, ::stride][pick].mean()) / ref_mean, 0.5, 2.0))
    adjusted = np.clip(ref_gray.astype(np.float32) * gain + 0.5, 0.0, 255.0).astype(np.uint8)
    return adjusted, gain


# The pose is solved again without the outliers only when they are this large a share of the
# samples: a coherent population (something the map does not explain, e.g. a moving object),
# not the few occlusion-edge samples every frame has (those Huber handles; static scenes keep
# their single solve and exactly their results).
OUTLIER_FRACTION = 0.05
OUTLIER_ROUNDS = 3  # drop / solve rounds: each solve without the outliers sharpens the next split

def _inliers(points: np.ndarray, targets: np.ndarray, k: np.ndarray, pose: np.ndarray, limit_px: float) -> np.ndarray | None:
    """``[M]`` bool: map points ``[M, 3]`` that ``pose`` projects within ``limit_px`` (or 3 robust
    sigmas of the residuals, if larger) of their flow ``targets`` ``[M, 2]``; None if the pose is not finite."""
    if not np.isfinite(pose).all():
        return None
    uv, z = project_points((points - pose[:3, 3]) @ pose[:3, :3], k)
    r = np.linalg.norm(uv - targets, axis=1)
    return (r < robust_flow_threshold(r, limit_px)) & (z > 0)


def _median_flow_px(flow: np.ndarray, alpha: np.ndarray, stride: int = 4) -> float:
    """Median flow magnitude ``[H, W, 2]`` over the pixels the map covers, sampled every ``stride`` (0 if none)."""
    sub = flow[::stride, ::stride][alpha[::stride, ::stride] > COVERED_ALPHA]
    return float(np.median(np.hypot(sub[:, 0], sub[:, 1]))) if len(sub) else 0.0


class _Observation:
    """The observed frame as tracking uses it: grey ``[H, W]`` in [0, 1] and its gradients (once per frame)."""

    def __init__(self, gray: np.ndarray, gradients: bool) -> None:
        self.intensity = gray.astype(np.float32) / 255.0
        self.gradients = image_gradients(self.intensity) if gradients else None


def _ncc(a: np.ndarray, b: np.ndarray) -> float:
    """Normalized cross-correlation of two intensity samples ``[M]`` (0 for constant ones)."""
    a = a - a.mean()
    b = b - b.mean()
    den = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / den) if den > 1e-12 else 0.0


class TrackingResolution:
    """Live camera: the tracking scale that keeps up with the camera on this machine.

    Tracking runs at ``top`` (``tracking.render_scale``). While a frame's tracking takes longer
    than its budget (smoothed over frames) the scale drops a step (x ``step``, not below
    ``floor``); with ``headroom`` to spare it climbs back. Each climb that had to be undone
    doubles the frames waited before the next one (no oscillation between two scales).

    Args:
        top: the largest (preferred) scale.
        floor: the smallest scale (``>= top``: fixed at ``top``).
        settle: frames measured at a scale before it may change.
    """

    def __init__(self, top: float, floor: float, step: float = 0.75, headroom: float = 1.4, settle: int = 15) -> None:
        levels = [top]
        while levels[-1] * step >= floor - 1e-9:
            levels.append(levels[-1] * step)
        self.levels = tuple(levels)
        self.headroom = headroom
        self.settle = settle
        self.changes = 0
        self._level = 0
        self._mean: float | None = None
        self._frames = 0
        self._climb_wait = settle
        self._climb_on_trial = False  # the last climb has not held for 2 x settle frames yet

    @property
    def scale(self) -> float:
        """The current tracking scale."""
        return self.levels[self._level]

    def update(self, seconds: float, budget: float) -> float:
        """Account one frame's tracking time (``seconds``) against ``budget`` (seconds); returns the
        scale for the next frame."""
        self._mean = seconds if self._mean is None else 0.8 * self._mean + 0.2 * seconds
        self._frames += 1
        if self._frames < self.settle:
            return self.scale
        if self._mean > budget and self._level + 1 < len(self.levels):
            if self._climb_on_trial:  # the climb did not hold: wait longer before the next one
                self._climb_wait = min(self._climb_wait * 2, 40 * self.settle)
                self._climb_on_trial = False
            self._move(+1)
        elif self._level > 0 and self._mean * self.headroom < budget and self._frames >= self._climb_wait:
            self._move(-1)
            self._climb_on_trial = True
        elif self._frames >= 2 * self.settle:
            self._climb_on_trial = False  # the last climb held
        return self.scale

    def _move(self, direction: int) -> None:
        self._level += direction
        self._mean, self._frames = None, 0
        self.changes += 1
        log.info("tracking at %.0f %% of the image size to keep up with the camera", 100 * self.scale)


class Tracker:
    """Tracks frames against the current map."""

    def __init__(self, cfg: PosegsConfig, flow: DenseFlow) -> None:
        """``flow``: full-resolution flow (the final refinement's re-tracking); at a tracking
        scale < 1 the tracker keeps a flow of its own for the smaller images."""
        self.cfg = cfg
        self.flow = flow
        self._flows: dict[float, DenseFlow] = {1.0: flow}

    def _flow_at(self, scale: float) -> DenseFlow:
        """The flow for images at ``scale`` of the camera's size (one OpenCV instance per scale)."""
        if scale not in self._flows:
            t = self.cfg.tracking
            self._flows[scale] = DenseFlow.from_config(t, scale)
        return self._flows[scale]

    def track(
        self,
        image: np.ndarray,
        target: Tensor | None,
        intrinsics: Intrinsics,
        pose_pred: np.ndarray,
        twist_init: np.ndarray,
        scene: SceneTensors,
        settings: RenderSettings,
        exclude: np.ndarray | None = None,
        refine: bool = True,
        scene_scale: float = 1.0,
        blurred_subframes: int = 1,
        deadline: float | None = None,
        scale: float | None = None,
        photometric_weight: float | None = None,
        bend: np.ndarray | None = None,
    ) -> TrackingResult:
        """Track one frame.

        Args:
            image: ``[H, W, 3]`` uint8 observed (blurred) frame.
            target: ``[H, W, 3]`` float tensor of the same frame in [0, 1] (needed with ``refine``).
            pose_pred: ``[4, 4]`` predicted camera-to-map pose.
            twist_init: ``[6]`` starting exposure twist (not zero: see :func:`initial_twist`).
            exclude: ``[H, W]`` bool pixels to ignore (moving objects).
            refine: run the blur-aware render-loss steps after Gauss-Newton.
            blurred_subframes: with an odd count > 1, the flow goes from the blurred render
                (mean of that many sub-frame renders along ``twist_init``) to the observation,
                so both sides carry the same blur; depth comes from the middle (mid-exposure)
                sub-frame. Needs a trusted twist (final refinement); 1 = sharp render.
            deadline: ``time.perf_counter()`` value by which tracking should be done (a live
                camera's next frame): another pass runs only if one more, as long as the last,
                still ends before it. ``None``: no limit (offline, reproducible).
            scale: render, flow and solve at this fraction of the image size (``None``:
                ``tracking.render_scale``); blurred renders always run at full size.
            photometric_weight: weight of the photometric residuals in Gauss-Newton (``None``:
                ``tracking.photometric_weight``).
            bend: ``[6]`` second-order term of the blurred render's exposure path
                (:func:`~posegs_ros.scene.blur.exposure_poses`); None = straight.
        """
        t = self.cfg.tracking
        timings = {"render": 0.0, "flow": 0.0, "gauss_newton+refine": 0.0}
        full = intrinsics
        scale = (t.render_scale if scale is None else scale) if blurred_subframes <= 1 else 1.0
        if scale != 1.0:  # render, flow and solve at a reduced resolution (pixel thresholds scale along)
            intrinsics = full.scaled(max(8, round(full.width * scale)), max(8, round(full.height * scale)))
            size = (intrinsics.width, intrinsics.height)
            image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
            if exclude is not None:
                exclude = cv2.resize(exclude.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST).astype(bool)
            settings = dataclasses.replace(settings, width=size[0], height=size[1])
            scale = intrinsics.width / full.width
        k = intrinsics.matrix(torch.float64)
        obs_gray = to_gray(image)  # once per frame: the flow's destination and the photometric term's image
        weight = t.photometric_weight if photometric_weight is None else photometric_weight
        obs = _Observation(obs_gray, weight > 0)
        pose_pass = pose_pred
        gain = 1.0
        solved: PoseSolveResult | None = None
        first: tuple[RenderOutput, float, np.ndarray] | None = None
        passes = 0
        cut = False
        pass_seconds = 0.0
        flow_sigma: float | None = None
        for _ in range(max(t.flow_passes, 1)):
            if passes and deadline is not None and time.perf_counter() + pass_seconds > deadline:
                cut = True  # keep up with the camera: the next frame matters more than a finer pose of this one
                break
            passes += 1
            t0 = pass_start = time.perf_counter()
            with torch.no_grad():
                if blurred_subframes > 1 and blurred_subframes % 2 == 1:
                    blurred, subs = render_exposure(
                        scene, torch.from_numpy(pose_pass), torch.from_numpy(twist_init), k, settings, blurred_subframes,
                        bend=None if bend is None else torch.from_numpy(bend),
                    )
                    mid = blurred_subframes // 2  # offset s = 0
                    out = RenderOutput(blurred[None], subs.depth[mid : mid + 1], subs.alpha[mid : mid + 1])
                else:
                    out = render_views(scene, torch.from_numpy(pose_pass)[None], k, settings)
            timings["render"] += time.perf_counter() - t0
            render_pose = pose_pass
            ref_gray = _render_gray(out.rgb[0].numpy())
            depth = out.depth[0, ..., 0].numpy()
            alpha = out.alpha[0, ..., 0].numpy()
            covered = alpha > COVERED_ALPHA
            if t.match_brightness:
                ref_gray, gain = match_brightness(ref_gray, obs_gray, covered if exclude is None else covered & ~exclude)
            t0 = time.perf_counter()
            if flow_sigma is None:  # once per frame, at the prediction: how much blurrier the frame is than the map
                flow_sigma = self._flow_sigma(ref_gray, obs_gray, covered, scale)
            flow = self._flow_at(scale)(ref_gray, obs_gray, flow_sigma)
            timings["flow"] += time.perf_counter() - t0
            if first is None:
                first = (out, float(covered.mean()), flow)
            t0 = time.perf_counter()
            solved, points, ncc = self._gauss_newton(obs, ref_gray, depth, alpha, flow, intrinsics, pose_pass, exclude,
                                                     scale, weight)
            timings["gauss_newton+refine"] += time.perf_counter() - t0
            if solved is None or not np.isfinite(solved.pose).all():
                break
            pose_pass = solved.pose
            pass_seconds = time.perf_counter() - pass_start
            if _median_flow_px(flow, alpha) / scale <= t.repass_px:
                break  # the render was already close to the observation: another pass would not move the pose
        assert first is not None
        _, coverage, _ = first  # coverage at the prediction: what the map explains before tracking
        t0 = time.perf_counter()
        lost = (
            solved is None
            or solved.inlier_ratio < t.min_inlier_ratio
            or solved.median_error_px > t.lost_reprojection_px * scale
            or not np.isfinite(solved.pose).all()
            or ncc < t.min_ncc
        )
        # the flow matches (intensities agree) but the map's depth does not explain it: a map to correct
        mismatch = not lost and solved.median_error_px > t.max_reprojection_px * scale
        if mismatch and ncc < t.mismatch_min_ncc:
            lost, mismatch = True, False
        pose = pose_pred if solved is None or not np.isfinite(solved.pose).all() else solved.pose
        twist = twist_init.copy()
        refined = not lost and refine and t.refine_steps > 0
        if refined:
            if target is None:
                raise ValueError("the blur-aware refinement needs the target image tensor")
            if scale != 1.0:
                raise ValueError("the blur-aware refinement runs at full resolution: use tracking.render_scale 1.0")
            pose, twist = self.refine(target, intrinsics, pose, twist, scene, settings, alpha, exclude, scene_scale)
        timings["gauss_newton+refine"] += time.perf_counter() - t0
        reason = ""
        if solved is None:
            reason = "too few valid correspondences"
        elif lost or mismatch:
            reason = (f"inlier ratio {solved.inlier_ratio:.2f}, median error {solved.median_error_px / scale:.2f} px, "
                      f"intensity correlation {ncc:.2f}")
        return TrackingResult(
            pose=pose,
            twist=twist,
            lost=lost,
            mismatch=mismatch,
            inlier_ratio=0.0 if solved is None else solved.inlier_ratio,
            median_error_px=float("inf") if solved is None else solved.median_error_px,
            coverage=coverage,
            points=points,
            flow=flow,
            render=out,
            render_pose=render_pose,
            exclude=exclude,
            timings=timings,
            reason=reason,
            twist_refined=refined,
            passes=passes,
            passes_cut=cut,
            gain=gain,
            flow_sigma=0.0 if flow_sigma is None else flow_sigma / scale,
        )

    def _flow_sigma(self, render_gray: np.ndarray, obs_gray: np.ndarray, covered: np.ndarray, scale: float) -> float:
        """Pre-smoothing (sigma, pixels of these ``[H, W]`` images) of the flow from the render to
        the frame: ``tracking.flow_blur_match`` x the blur that makes the render (over ``covered``
        ``[H, W]`` bool) as unsharp as the frame, capped, at least ``tracking.flow_presmooth_px``.
        DIS matches a sharp render against a motion-blurred frame poorly (detail on one side only);
        smoothing both in proportion to the frame's blur keeps the flow, and the pose, accurate
        (README, "Blur-matched flow")."""
        t = self.cfg.tracking
        base = t.flow_presmooth_px * scale
        if t.flow_blur_match <= 0 or covered.mean() < 0.05:  # too little of the map in view to compare
            return base
        matched = t.flow_blur_match * matching_blur_sigma(render_gray, obs_gray, covered)
        return max(base, min(matched, t.flow_blur_match_max_px * scale))

    def _gauss_newton(
        self,
        obs: _Observation,
        ref_gray: np.ndarray,
        depth: np.ndarray,
        alpha: np.ndarray,
        flow: np.ndarray,
        intrinsics: Intrinsics,
        pose_pred: np.ndarray,
        exclude: np.ndarray | None,
        scale: float,
        photometric_weight: float,
    ) -> tuple[PoseSolveResult | None, np.ndarray, float]:
        """Solve the pose from flowed samples of the render (``ref_gray`` ``[H, W]`` uint8, its
        ``depth`` and ``alpha``); also returns the normalized cross-correlation of rendered and
        observed intensities at the flow correspondences (near 0 when the observation does not
        show the map, whatever the flow says). ``scale``: the images' size relative to the
        camera's (pixel thresholds and the sample stride follow it); ``photometric_weight``: the
        direct term's weight, as :meth:`track` resolved it."""
        t = self.cfg.tracking
        h, w = depth.shape
        s = max(1, round(t.sample_stride * scale))
        vs, us = np.mgrid[s // 2 : h : s, s // 2 : w : s]
        us, vs = us.ravel(), vs.ravel()
        valid = (alpha[vs, us] > SAMPLE_ALPHA) & np.isfinite(depth[vs, us]) & (depth[vs, us] > 0)
        if exclude is not None:
            valid &= ~exclude[vs, us]
        us, vs = us[valid], vs[valid]
        if len(us) < 50:
            return None, np.zeros((0, 3)), 0.0
        z = depth[vs, us].astype(np.float64)
        k = intrinsics.numpy()
        cam = np.stack([(us - k[0, 2]) / k[0, 0] * z, (vs - k[1, 2]) / k[1, 1] * z, z], 1)
        points = cam @ pose_pred[:3, :3].T + pose_pred[:3, 3]
        targets = np.stack([us, vs], 1) + flow[vs, us].astype(np.float64)
        inside = (targets[:, 0] >= 0) & (targets[:, 0] <= w - 1) & (targets[:, 1] >= 0) & (targets[:, 1] <= h - 1)
        points, targets = points[inside], targets[inside]
        ref = ref_gray[vs[inside], us[inside]].astype(np.float32) / 255.0
        ncc = _ncc(ref, bilinear_sample(obs.intensity, targets[:, 0], targets[:, 1]))
        photometric = None
        if obs.gradients is not None:
            gu, gv = obs.gradients
            photometric = PhotometricTerm(points, ref, obs.intensity, gu, gv, photometric_weight)
        result = solve_pose(
            points, targets, k, pose_pred, huber_px=t.huber_px * scale, iterations=t.gn_iterations,
            photometric=photometric, image_size=(w, h),
        )
        pose = result.pose
        for _ in range(OUTLIER_ROUNDS if t.outlier_px > 0 else 0):
            keep = _inliers(points, targets, k, pose, t.outlier_px * scale)
            if keep is None or keep.sum() < 50 or keep.mean() >= 1.0 - OUTLIER_FRACTION:
                break
            again = solve_pose(
                points[keep], targets[keep], k, pose, huber_px=t.huber_px * scale, iterations=t.gn_iterations,
                photometric=None if photometric is None else dataclasses.replace(
                    photometric, points=points[keep], reference=ref[keep]),
                image_size=(w, h),
            )
            if not np.isfinite(again.pose).all():
                break
            pose = again.pose
        # (inlier ratio and error, for the lost test, stay the first solve's)
        return dataclasses.replace(result, pose=pose), points, ncc

    def refine(
        self,
        target: Tensor,
        intrinsics: Intrinsics,
        pose: np.ndarray,
        twist: np.ndarray,
        scene: SceneTensors,
        settings: RenderSettings,
        alpha: np.ndarray,
        exclude: np.ndarray | None,
        scene_scale: float = 1.0,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Blur-aware refinement of the pose correction and exposure twist (Gaussians fixed).

        Parameters are optimized in units where a translation of ``scene_scale`` (the map's
        median depth) weighs like one radian, so one learning rate fits both parts.
        """
        t = self.cfg.tracking
        blur_on = self.cfg.blur.enabled
        b = self.cfg.blur
        subframes = exposure_subframes(b.subframes, [twist], intrinsics.fx, intrinsics.width, intrinsics.height,
                                       scene_scale, b.subframe_spacing_px, b.max_subframes) if blur_on else 1
        base = torch.from_numpy(pose)
        unit = twist_units(scene_scale)
        u_delta = torch.zeros(6, dtype=torch.float64, requires_grad=True)
        u_twist = torch.from_numpy(twist / unit.numpy()).requires_grad_(blur_on)
        params = [u_delta] + ([u_twist] if blur_on else [])
        opt = torch.optim.Adam(params, lr=t.refine_lr)
        mask_np = alpha > SAMPLE_ALPHA
        if exclude is not None:
            mask_np &= ~exclude
        mask = torch.from_numpy(mask_np)
        k = intrinsics.matrix(torch.float64)
        best = (float("inf"), pose, twist)
        for _ in range(t.refine_steps):
            opt.zero_grad(set_to_none=True)
            cur = base @ se3_exp(u_delta * unit)
            d = u_twist * unit
            pred, _ = render_exposure(scene, cur, d if blur_on else torch.zeros(6, dtype=torch.float64), k, settings, subframes)
            loss = photometric_loss(pred, target, ssim_weight=0.0, mask=mask)
            value = float(loss.detach())
            if not np.isfinite(value):
                break
            if value < best[0]:
                best = (value, cur.detach().numpy().copy(), d.detach().numpy().copy())
            loss.backward()
            if not all(p.grad is None or bool(torch.isfinite(p.grad).all()) for p in params):
                break
            opt.step()
        return best[1], best[2]
