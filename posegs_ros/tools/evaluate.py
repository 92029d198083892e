"""``posegs eval``: trajectory metrics (evo) and image metrics (PSNR, SSIM, mask IoU), with a report.

Library use (``posegs replay`` / ``posegs demo``)::

    result = evaluate(gt_tum="gt.tum", est_tum="trajectory.tum", gt_images="sharp", est_images="deblurred",
                      input_images="blurred")
    write_report(result, "out/eval")   # eval.json, trajectory.png, errors.png, strip.png, index.html

Trajectory metrics come from evo: poses associated by timestamp (``max_diff`` seconds),
ATE RMSE of positions after a Sim(3) Umeyama alignment (monocular: scale is free; the recovered
scale is reported), after an SE(3) alignment, and without alignment; RPE over 1-frame deltas
and over ~1 s (the frames of one second at the median frame period: drift, e.g. a slow rotation
error that per-frame RPE and ATE hardly show), translation after the Sim(3) scale correction,
rotation in degrees.

Image metrics: images matched by file name (``NNNN.png``) in both folders, 8-bit, data range
255.  PSNR of identical images is infinite: per frame it is reported as ``inf`` (``"inf"`` in
JSON); the mean uses each frame's PSNR capped at :data:`PSNR_CAP_DB` (so it stays finite) and
``identical`` counts the frames that hit the cap because they are identical.  SSIM is
scikit-image's (Gaussian-free 7x7 window, colour channels averaged).  Masks: IoU per frame of
the binarized (> 127) masks; frames where both masks are empty have no IoU (``None``) and are
left out of the mean; PSNR inside the GT mask compares estimated and GT images on its pixels.
"""

from __future__ import annotations

import argparse
import copy
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

__all__ = [
    "PSNR_CAP_DB",
    "TrajectoryMetrics",
    "ImageMetrics",
    "MaskMetrics",
    "EvalResult",
    "psnr",
    "mean_psnr",
    "evaluate_trajectory",
    "rotation_gain",
    "evaluate_images",
    "ssim",
    "evaluate_masks",
    "evaluate",
    "write_report",
    "add_arguments",
    "run",
]

PSNR_CAP_DB = 100.0
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclass
class TrajectoryMetrics:
    """ATE / RPE of an estimated trajectory against ground truth (GT units: metres)."""

    matched: int  # associated pose pairs
    gt_poses: int
    est_poses: int
    max_diff: float  # association tolerance (s)
    ate_rmse_sim3: float
    ate_rmse_se3: float
    ate_rmse_unaligned: float
    ate_sim3_stats: dict[str, float]  # rmse, mean, median, std, min, max, sse
    scale: float  # Sim(3) scale applied to the estimate
    alignment_sim3: np.ndarray  # [4, 4] scale * R | t mapping the estimate onto GT
    rpe_trans_rmse: float  # metres per frame, after the Sim(3) scale correction
    rpe_rot_rmse_deg: float  # degrees per frame
    rpe_1s_frames: int  # the frame step of the drift RPE below: the frames in ~1 s (median frame period)
    rpe_1s_trans_rmse: float  # metres over ~1 s (``rpe_1s_frames`` frames), after the Sim(3) scale correction
    rpe_1s_rot_rmse_deg: float  # degrees over ~1 s: rotation drift, which the per-frame RPE and ATE hide
    # [3] estimated over GT rotation about the camera's x (pitch), y (yaw), z (roll) axes over ~1 s
    # (see rotation_gain): 1 = rotations of the right size; a wrong focal length scales x and y, not z
    rotation_gain_1s: list[float]
    stamps: np.ndarray  # [N] matched GT stamps (s)
    ate_errors: np.ndarray  # [N] position error after Sim(3) alignment
    ate_errors_se3: np.ndarray  # [N] after SE(3) alignment
    gt_positions: np.ndarray  # [N, 3]
    est_positions_sim3: np.ndarray  # [N, 3] aligned estimate

    def summary(self) -> dict[str, Any]:
        """Scalars for eval.json."""
        return {
            "matched": self.matched, "gt_poses": self.gt_poses, "est_poses": self.est_poses,
            "max_diff_s": self.max_diff, "ate_rmse_sim3": self.ate_rmse_sim3, "ate_rmse_se3": self.ate_rmse_se3,
            "ate_rmse_unaligned": self.ate_rmse_unaligned, "ate_sim3": self.ate_sim3_stats, "scale": self.scale,
            "alignment_sim3": self.alignment_sim3, "rpe_trans_rmse": self.rpe_trans_rmse,
            "rpe_rot_rmse_deg": self.rpe_rot_rmse_deg, "rpe_1s_frames": self.rpe_1s_frames,
            "rpe_1s_trans_rmse": self.rpe_1s_trans_rmse, "rpe_1s_rot_rmse_deg": self.rpe_1s_rot_rmse_deg,
            "rotation_gain_1s": self.rotation_gain_1s,
        }


@dataclass
class ImageMetrics:
    """PSNR / SSIM of one image folder against the GT folder."""

    names: list[str]
    psnr: list[float]  # dB, inf for identical images
    ssim: list[float]
    psnr_mean: float  # mean of per-frame PSNR capped at PSNR_CAP_DB
    ssim_mean: float
    identical: int  # frames with infinite PSNR

    def summary(self) -> dict[str, Any]:
        return {"frames": len(self.names), "psnr_mean": self.psnr_mean, "ssim_mean": self.ssim_mean,
                "identical": self.identical, "psnr_cap_db": PSNR_CAP_DB}

    def per_frame(self) -> dict[str, dict[str, float]]:
        return {n: {"psnr": p, "ssim": s} for n, p, s in zip(self.names, self.psnr, self.ssim)}


@dataclass
class MaskMetrics:
    """IoU of estimated vs GT masks, and PSNR inside the GT mask."""

    names: list[str]
    iou: list[float | None]  # None when both masks are empty
    iou_mean: float | None
    psnr_in_mask: list[float | None]  # None without images or with an empty GT mask
    psnr_in_mask_mean: float | None

    def summary(self) -> dict[str, Any]:
        return {"frames": len(self.names), "iou_mean": self.iou_mean, "psnr_in_mask_mean": self.psnr_in_mask_mean,
                "frames_with_iou": sum(v is not None for v in self.iou)}


@dataclass
class EvalResult:
    """Everything ``posegs eval`` measured; ``paths`` remembers the inputs for the report."""

    trajectory: TrajectoryMetrics | None = None
    deblurred: ImageMetrics | None = None  # estimated (deblurred) images vs GT
    input: ImageMetrics | None = None  # input (blurred) images vs GT
    vs_input: ImageMetrics | None = None  # estimated images vs the input images (fit to the observations)
    masks: MaskMetrics | None = None
    paths: dict[str, str | None] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary (non-finite floats become strings via ``json_safe``)."""
        from ..io import json_safe

        out: dict[str, Any] = {"inputs": self.paths}
        if self.trajectory is not None:
            out["trajectory"] = self.trajectory.summary()
            out["trajectory_per_pose"] = {
                "stamps": self.trajectory.stamps, "ate_sim3": self.trajectory.ate_errors,
                "ate_se3": self.trajectory.ate_errors_se3,
            }
        per_frame: dict[str, dict[str, Any]] = {}
        for key, metrics in (("deblurred", self.deblurred), ("input", self.input), ("vs_input", self.vs_input)):
            if metrics is not None:
                out[key] = metrics.summary()
                for name, values in metrics.per_frame().items():
                    per_frame.setdefault(name, {}).update({f"{key}_{k}": v for k, v in values.items()})
        if self.masks is not None:
            out["masks"] = self.masks.summary()
            for name, iou, p in zip(self.masks.names, self.masks.iou, self.masks.psnr_in_mask):
                per_frame.setdefault(name, {}).update({"iou": iou, "psnr_in_mask": p})
        if per_frame:
            out["per_frame"] = dict(sorted(per_frame.items()))
        return json_safe(out)


# --- trajectory --------------------------------------------------------------------------------


def _evo_trajectory(stamps: np.ndarray, poses: np.ndarray, name: str) -> Any:
    from evo.core.trajectory import PoseTrajectory3D

    traj = PoseTrajectory3D(poses_se3=[np.asarray(p, np.float64) for p in poses],
                            timestamps=np.asarray(stamps, np.float64))
    traj.name = name
    return traj


def _ape(reference: Any, estimate: Any) -> Any:
    from evo.core import metrics

    ape = metrics.APE(metrics.PoseRelation.translation_part)
    ape.process_data((reference, estimate))
    return ape


def _rpe(reference: Any, estimate: Any, delta: int) -> tuple[float, float]:
    """RMSE of the relative pose error over ``delta`` frames of two associated evo trajectories:
    (translation, same units as the poses; rotation angle, degrees)."""
    from evo.core import metrics

    out = []
    for relation in (metrics.PoseRelation.translation_part, metrics.PoseRelation.rotation_angle_deg):
        rpe = metrics.RPE(relation, delta=delta, delta_unit=metrics.Unit.frames)
        rpe.process_data((reference, estimate))
        out.append(float(rpe.get_statistic(metrics.StatisticsType.rmse)))
    return out[0], out[1]


def rotation_gain(gt_rotations: np.ndarray, est_rotations: np.ndarray, delta: int) -> list[float]:
    """Least-squares gain of the estimated relative rotations over the ground truth's, per camera axis.

    For every pair of frames ``delta`` apart, both relative rotations ``R_i^T R_{i+delta}`` are
    taken as rotation vectors in the camera frame; the gain of axis ``a`` is
    ``sum(gt_a * est_a) / sum(gt_a ** 2)``. Independent of how the trajectories are aligned and
    of the map's scale; a focal length off by a factor ``c`` gives about ``1 / c`` on x and y (the
    axes across the view) and 1 on z. NaN for an axis the ground truth does not turn about.

    Args:
        gt_rotations, est_rotations: ``[N, 3, 3]`` camera-to-world rotations of associated poses.
        delta: frame step.
    """
    from scipy.spatial.transform import Rotation

    if len(gt_rotations) <= delta:
        return [float("nan")] * 3
    relative = lambda r: (Rotation.from_matrix(r[:-delta]).inv() * Rotation.from_matrix(r[delta:])).as_rotvec()  # noqa: E731
    g, e = relative(np.asarray(gt_rotations)), relative(np.asarray(est_rotations))
    power = (g * g).sum(0)
    return [float((g[:, a] * e[:, a]).sum() / power[a]) if power[a] > 1e-12 else float("nan") for a in range(3)]


def evaluate_trajectory(gt: Any, est: Any, max_diff: float = 0.01) -> TrajectoryMetrics:
    """ATE / RPE of ``est`` against ``gt`` (both :class:`posegs_ros.io.Trajectory`).

    Raises:
        ValueError: fewer than 3 associated poses, or a degenerate (e.g. motionless) trajectory.
    """
    from evo.core import metrics, sync
    from evo.core.geometry import GeometryException

    reference = _evo_trajectory(gt.stamps, gt.poses, "ground truth")
    estimate = _evo_trajectory(est.stamps, est.poses, "estimate")
    try:
        reference, estimate = sync.associate_trajectories(reference, estimate, max_diff=max_diff)
    except sync.SyncException as err:
        raise ValueError(f"no pose of the estimate is within {max_diff} s of a GT pose: {err}") from err
    if reference.num_poses < 3:
        raise ValueError(f"only {reference.num_poses} poses associated within {max_diff} s: need at least 3")
    unaligned = _ape(reference, estimate)
    est_sim3, est_se3 = copy.deepcopy(estimate), copy.deepcopy(estimate)
    try:
        rotation, translation, scale = est_sim3.align(reference, correct_scale=True)
        est_se3.align(reference, correct_scale=False)
    except GeometryException as err:
        raise ValueError(f"cannot align the trajectories (degenerate, e.g. no motion): {err}") from err
    ape_sim3, ape_se3 = _ape(reference, est_sim3), _ape(reference, est_se3)
    rpe_trans, rpe_rot = _rpe(reference, est_sim3, 1)
    period = float(np.median(np.diff(reference.timestamps)))
    drift_frames = int(min(max(round(1.0 / period), 1) if period > 0 else 1, reference.num_poses - 1))
    rpe_1s_trans, rpe_1s_rot = _rpe(reference, est_sim3, drift_frames)
    gain = rotation_gain(np.asarray(reference.poses_se3)[:, :3, :3], np.asarray(estimate.poses_se3)[:, :3, :3],
                         drift_frames)
    alignment = np.eye(4)
    alignment[:3, :3] = scale * rotation
    alignment[:3, 3] = translation
    rmse = metrics.StatisticsType.rmse
    return TrajectoryMetrics(
        matched=reference.num_poses, gt_poses=len(gt), est_poses=len(est), max_diff=max_diff,
        ate_rmse_sim3=float(ape_sim3.get_statistic(rmse)), ate_rmse_se3=float(ape_se3.get_statistic(rmse)),
        ate_rmse_unaligned=float(unaligned.get_statistic(rmse)),
        ate_sim3_stats={k: float(v) for k, v in ape_sim3.get_all_statistics().items()},
        scale=float(scale), alignment_sim3=alignment,
        rpe_trans_rmse=rpe_trans, rpe_rot_rmse_deg=rpe_rot, rpe_1s_frames=drift_frames,
        rpe_1s_trans_rmse=rpe_1s_trans, rpe_1s_rot_rmse_deg=rpe_1s_rot, rotation_gain_1s=gain,
        stamps=np.asarray(reference.timestamps), ate_errors=np.asarray(ape_sim3.error),
        ate_errors_se3=np.asarray(ape_se3.error), gt_positions=np.asarray(reference.positions_xyz),
        est_positions_sim3=np.asarray(est_sim3.positions_xyz),
    )


# --- images ------------------------------------------------------------------------------------


def psnr(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    """PSNR (dB, peak 255) of two uint8 images ``[H, W, C]``; ``inf`` if identical (on ``mask``)."""
    diff = a.astype(np.float64) - b.astype(np.float64)
    if mask is not None:
        diff = diff[mask]
    if diff.size == 0:
        return float("nan")
    mse = float(np.mean(diff * diff))
    return float("inf") if mse == 0.0 else 10.0 * math.log10(255.0**2 / mse)


SSIM_WINDOW = 7  # scikit-image's default window for structural_similarity


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM of two uint8 images ``[H, W, C]`` or ``[H, W]``: scikit-image's
    ``structural_similarity(a, b, channel_axis=2, data_range=255)`` (7x7 uniform windows, sample
    covariance, K1 0.01, K2 0.03, the mean over the image less 3 px at each border, channels
    averaged) with OpenCV's box filters, to float64 rounding and about twice as fast."""
    import cv2

    if a.shape != b.shape or a.ndim not in (2, 3):
        raise ValueError(f"ssim: need two images of one shape [H, W(, C)], got {a.shape} and {b.shape}")
    if min(a.shape[:2]) < SSIM_WINDOW:
        raise ValueError(f"ssim: images must be at least {SSIM_WINDOW} px on each side, got {a.shape[:2]}")
    x, y = a.astype(np.float64), b.astype(np.float64)

    def mean(t: np.ndarray) -> np.ndarray:
        return cv2.boxFilter(t, -1, (SSIM_WINDOW, SSIM_WINDOW), normalize=True, borderType=cv2.BORDER_REFLECT)

    ux, uy = mean(x), mean(y)
    n = SSIM_WINDOW * SSIM_WINDOW
    cov = n / (n - 1.0)
    vx, vy, vxy = cov * (mean(x * x) - ux * ux), cov * (mean(y * y) - uy * uy), cov * (mean(x * y) - ux * uy)
    c1, c2 = (0.01 * 255.0) ** 2, (0.03 * 255.0) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    r = (SSIM_WINDOW - 1) // 2
    inner = s[r:-r, r:-r].reshape(-1, 1 if a.ndim == 2 else a.shape[2])
    return float(inner.mean(axis=0).mean())


def mean_psnr(values: list[float]) -> float:
    """Mean PSNR with each frame capped at :data:`PSNR_CAP_DB` (identical frames count as the cap)."""
    finite_or_inf = [v for v in values if not math.isnan(v)]
    if not finite_or_inf:
        return float("nan")
    return float(np.mean([min(v, PSNR_CAP_DB) for v in finite_or_inf]))


def _image_files(directory: Path) -> dict[str, Path]:
    if not directory.is_dir():
        raise FileNotFoundError(f"image folder {directory} does not exist")
    return {p.name: p for p in sorted(directory.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}


def _read_rgb(path: Path) -> np.ndarray:
    import cv2

    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"cannot read image {path}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _read_mask(path: Path) -> np.ndarray:
    import cv2

    mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if mask is None:
        raise ValueError(f"cannot read mask {path}")
    return mask > 127


def _common_names(gt: dict[str, Path], other: dict[str, Path], what: str) -> list[str]:
    names = sorted(set(gt) & set(other))
    if not names:
        raise ValueError(f"no {what} file names in common (e.g. GT has {sorted(gt)[:3]}, other {sorted(other)[:3]})")
    return names


def evaluate_images(gt_dir: str | Path, est_dir: str | Path) -> ImageMetrics:
    """PSNR / SSIM of the images of ``est_dir`` against same-named images of ``gt_dir`` (two
    threads: reading and the metrics' filters release the GIL)."""
    from concurrent.futures import ThreadPoolExecutor

    gt_files, est_files = _image_files(Path(gt_dir)), _image_files(Path(est_dir))
    names = _common_names(gt_files, est_files, "image")

    def measure(name: str) -> tuple[float, float]:
        gt, est = _read_rgb(gt_files[name]), _read_rgb(est_files[name])
        if gt.shape != est.shape:
            raise ValueError(f"{name}: {est_files[name]} is {est.shape[1]}x{est.shape[0]}, "
                             f"GT {gt_files[name]} is {gt.shape[1]}x{gt.shape[0]}")
        return psnr(gt, est), ssim(gt, est)

    with ThreadPoolExecutor(max_workers=2) as pool:
        values = list(pool.map(measure, names))
    psnrs, ssims = [v[0] for v in values], [v[1] for v in values]
    return ImageMetrics(names, psnrs, ssims, mean_psnr(psnrs), float(np.mean(ssims)),
                        sum(math.isinf(v) for v in psnrs))


def evaluate_masks(
    gt_dir: str | Path, est_dir: str | Path, gt_images: str | Path | None = None,
    est_images: str | Path | None = None,
) -> MaskMetrics:
    """IoU of same-named masks; with both image folders also PSNR inside the GT mask."""
    gt_files, est_files = _image_files(Path(gt_dir)), _image_files(Path(est_dir))
    names = _common_names(gt_files, est_files, "mask")
    gt_image_files = _image_files(Path(gt_images)) if gt_images else {}
    est_image_files = _image_files(Path(est_images)) if est_images else {}
    ious: list[float | None] = []
    inside: list[float | None] = []
    for name in names:
        gt, est = _read_mask(gt_files[name]), _read_mask(est_files[name])
        if gt.shape != est.shape:
            raise ValueError(f"{name}: mask sizes differ ({est.shape} vs GT {gt.shape})")
        union = np.count_nonzero(gt | est)
        ious.append(None if union == 0 else np.count_nonzero(gt & est) / union)
        value = None
        if name in gt_image_files and name in est_image_files and gt.any():
            value = psnr(_read_rgb(gt_image_files[name]), _read_rgb(est_image_files[name]), gt)
        inside.append(value)
    valid_iou = [v for v in ious if v is not None]
    valid_psnr = [v for v in inside if v is not None]
    return MaskMetrics(names, ious, float(np.mean(valid_iou)) if valid_iou else None, inside,
                       mean_psnr(valid_psnr) if valid_psnr else None)


def masked_psnr(gt_masks: str | Path, gt_images: str | Path, est_images: str | Path) -> tuple[list[float], float | None]:
    """PSNR of ``est_images`` vs ``gt_images`` inside each same-named GT mask (frames with an
    empty mask are skipped); returns (per-frame values, capped mean or None)."""
    masks, gts, ests = _image_files(Path(gt_masks)), _image_files(Path(gt_images)), _image_files(Path(est_images))
    values = []
    for name in sorted(set(masks) & set(gts) & set(ests)):
        mask = _read_mask(masks[name])
        if mask.any():
            values.append(psnr(_read_rgb(gts[name]), _read_rgb(ests[name]), mask))
    return values, (mean_psnr(values) if values else None)


def evaluate(
    gt_tum: str | Path | None = None,
    est_tum: str | Path | None = None,
    *,
    gt_images: str | Path | None = None,
    est_images: str | Path | None = None,
    input_images: str | Path | None = None,
    gt_masks: str | Path | None = None,
    est_masks: str | Path | None = None,
    max_diff: float = 0.01,
) -> EvalResult:
    """Every metric the given inputs allow (see the module docstring)."""
    from ..io import read_tum

    result = EvalResult(paths={
        "gt": _str(gt_tum), "est": _str(est_tum), "gt_images": _str(gt_images), "est_images": _str(est_images),
        "input_images": _str(input_images), "gt_masks": _str(gt_masks), "est_masks": _str(est_masks),
    })
    if (gt_tum is None) != (est_tum is None):
        raise ValueError("trajectory evaluation needs both --gt and --est")
    if gt_tum is not None and est_tum is not None:
        result.trajectory = evaluate_trajectory(read_tum(gt_tum), read_tum(est_tum), max_diff)
    if est_images and input_images:  # also without sharp GT (real cameras): how well renders explain the input
        result.vs_input = evaluate_images(input_images, est_images)
    if (gt_images or est_images) and not (gt_images or input_images):
        raise ValueError("image metrics need --gt-images or --input-images")
    if gt_images and est_images:
        result.deblurred = evaluate_images(gt_images, est_images)
    if gt_images and input_images:
        result.input = evaluate_images(gt_images, input_images)
    if (gt_masks is None) != (est_masks is None):
        raise ValueError("mask metrics need both --gt-masks and --est-masks")
    if gt_masks is not None and est_masks is not None:
        result.masks = evaluate_masks(gt_masks, est_masks, gt_images, est_images)
    return result


def _str(path: str | Path | None) -> str | None:
    return None if path is None else str(path)


def write_report(result: EvalResult, out_dir: str | Path, strip_frames: int = 5) -> Path:
    """Write ``eval.json``, ``trajectory.png``, ``errors.png``, ``strip.png``, ``index.html``."""
    from .report import write_report as _write

    return _write(result, out_dir, strip_frames=strip_frames)


# --- CLI ---------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gt", type=Path, help="ground-truth trajectory (TUM: t x y z qx qy qz qw)")
    parser.add_argument("--est", type=Path, help="estimated trajectory (TUM)")
    parser.add_argument("--max-diff", type=float, default=0.01, help="timestamp association tolerance (s)")
    parser.add_argument("--gt-images", type=Path, help="folder of sharp GT images (NNNN.png)")
    parser.add_argument("--est-images", type=Path, help="folder of estimated (deblurred) images, same names")
    parser.add_argument("--input-images", type=Path,
                        help="folder of input (blurred) images, same names (vs GT, and the estimate vs them)")
    parser.add_argument("--gt-masks", type=Path, help="folder of GT dynamic-object masks")
    parser.add_argument("--est-masks", type=Path, help="folder of estimated masks, same names")
    parser.add_argument("--out", type=Path, help="write eval.json + report (index.html, PNGs) here")


def summary_text(result: EvalResult) -> str:
    """A few human-readable lines with the headline numbers."""
    lines = []
    if result.trajectory is not None:
        t = result.trajectory
        lines.append(f"trajectory: {t.matched} poses matched | ATE RMSE Sim(3) {t.ate_rmse_sim3:.4f} m "
                     f"(scale {t.scale:.4f}) | SE(3) {t.ate_rmse_se3:.4f} m | RPE {t.rpe_trans_rmse:.4f} m, "
                     f"{t.rpe_rot_rmse_deg:.3f} deg per frame; {t.rpe_1s_trans_rmse:.4f} m, "
                     f"{t.rpe_1s_rot_rmse_deg:.2f} deg over {t.rpe_1s_frames} frames (~1 s); rotation gain x / y / z "
                     + " / ".join(f"{g:.2f}" for g in t.rotation_gain_1s))
    for label, metrics in (("deblurred", result.deblurred), ("input", result.input)):
        if metrics is not None:
            lines.append(f"{label} vs GT: {len(metrics.names)} images | PSNR {metrics.psnr_mean:.2f} dB | "
                         f"SSIM {metrics.ssim_mean:.4f}")
    if result.vs_input is not None:
        lines.append(f"renders vs input: {len(result.vs_input.names)} images | PSNR {result.vs_input.psnr_mean:.2f} dB | "
                     f"SSIM {result.vs_input.ssim_mean:.4f}")
    if result.deblurred is not None and result.input is not None:
        lines.append(f"deblurring gain: {result.deblurred.psnr_mean - result.input.psnr_mean:+.2f} dB PSNR")
    if result.masks is not None:
        iou = result.masks.iou_mean
        inside = result.masks.psnr_in_mask_mean
        lines.append(f"masks: {len(result.masks.names)} | IoU {'n/a' if iou is None else f'{iou:.4f}'} | "
                     f"PSNR inside GT mask {'n/a' if inside is None else f'{inside:.2f} dB'}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if not any([args.gt, args.est, args.gt_images, args.gt_masks, args.input_images and args.est_images]):
        log.error("nothing to evaluate: give --gt/--est and/or --gt-images or --input-images with --est-images")
        return 2
    try:
        result = evaluate(args.gt, args.est, gt_images=args.gt_images, est_images=args.est_images,
                          input_images=args.input_images, gt_masks=args.gt_masks, est_masks=args.est_masks,
                          max_diff=args.max_diff)
    except (ValueError, FileNotFoundError) as err:
        log.error("%s", err)
        return 2
    print(summary_text(result))
    if args.out is not None:
        index = write_report(result, args.out)
        print(f"report: {index}")
    return 0
