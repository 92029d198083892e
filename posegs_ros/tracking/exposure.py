"""The camera's exposure time from how two consecutive frames are blurred.

Frame ``a`` is the sharp scene smeared along its own streak ``k_a`` (the image path of each
point while the shutter is open), frame ``b`` along ``k_b``. Smearing ``a`` once more along
``b``'s streak and ``b`` along ``a``'s gives the same image (``S * k_a * k_b = S * k_b * k_a``,
up to the warp between the two views) -- only when the streaks have their true length. A
streak is the frame's motion over one frame period times the exposure ratio (exposure time /
frame period), so comparing the two twice-smeared images over candidate ratios and keeping
the one where they agree measures the exposure time from the frames alone: neither the map's
sharpness (which the exposure guess itself shapes) nor its texture biases it. The map enters
only through its depth, which places each pixel's point in the other frame.

The motion blur model seeds every exposure twist with ``ratio x motion``; mapping then refines
the keyframes' twists, but a map fitted with a too-short exposure carries the rest of the blur
(a long-exposure camera deblurred with ``0.5`` keeps half of it).
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..camera import Intrinsics, pixel_grid, project, unproject
from ..geometry import se3_exp, se3_inverse, transform_points
from ..scene.blur import exposure_offsets, subframes_for_blur
from .flow import smoothed_grey
from .tracker import COVERED_ALPHA, neighbour_twist

__all__ = [
    "RATIOS",
    "ExposureView",
    "exposure_gray",
    "visible_points",
    "streak_field",
    "commutation_curve",
    "ExposurePair",
    "ExposureRatioEstimator",
]

RATIOS = np.round(np.arange(0.0, 1.5001, 0.1), 2)  # candidate exposure ratios (1 = shutter open all period;
# beyond 1 only so that a curve whose minimum is near 1 can rise again after it)
_MARGIN_PX = 2.0  # samples this close to the image border are left out (the streak leaves the image)
_MIN_POINTS = 500
_CHAIN = 6  # frames around a pair: two on each side give each frame's velocity (five-point derivative)


@dataclass
class ExposureView:
    """One tracked frame as the exposure estimate uses it.

    ``pose @ exp(s * motion)`` for ``s`` in ``[-1/2, 1/2]`` spans one frame period around the
    frame's mid-exposure pose; its exposure covers ``s`` in ``[-r/2, r/2]`` for the ratio ``r``.
    """

    gray: Tensor  # [H, W] float32 in [0, 1], full image size
    pose: np.ndarray  # [4, 4] camera-to-map at mid-exposure
    motion: np.ndarray  # [6] twist (rho, phi) of one frame period, camera frame


def exposure_gray(image: np.ndarray, sigma: float = 1.0) -> Tensor:
    """``[H, W]`` float32 grey in [0, 1] of an RGB uint8 frame ``[H, W, 3]``, smoothed by a
    Gaussian of ``sigma`` pixels (both frames of a pair alike: resampling one of them at
    sub-pixel positions then smooths it no more than the other)."""
    return torch.from_numpy(smoothed_grey(image, sigma) / np.float32(255.0))


def visible_points(depth: Tensor, alpha: Tensor, pose: np.ndarray, intrinsics: Intrinsics,
                   exclude: np.ndarray | None = None, max_points: int = 1500,
                   min_alpha: float = COVERED_ALPHA) -> Tensor:
    """Map points ``[P, 3]`` of a render: depth ``[h, w]`` and opacity ``[h, w]`` made at ``pose``
    ``[4, 4]`` (camera-to-map) with ``intrinsics`` scaled to ``h x w``; pixels on a regular grid
    (at most ``max_points``) where the map is opaque and not ``exclude`` ``[h, w]`` (moving),
    each at a random sub-pixel place with its pixel's depth."""
    h, w = depth.shape
    stride = max(1, int(np.ceil(np.sqrt(h * w / max(max_points, 1)))))
    k = intrinsics.scaled(w, h).matrix(torch.float64) if (w, h) != (intrinsics.width, intrinsics.height) \
        else intrinsics.matrix(torch.float64)
    pix = pixel_grid(w, h, torch.float64)[stride // 2 :: stride, stride // 2 :: stride]
    d = depth[stride // 2 :: stride, stride // 2 :: stride].to(torch.float64)
    keep = (alpha[stride // 2 :: stride, stride // 2 :: stride] > min_alpha) & (d > 0) & torch.isfinite(d)
    if exclude is not None:
        keep &= ~torch.from_numpy(np.asarray(exclude, bool)[stride // 2 :: stride, stride // 2 :: stride])
    # each point at a random place inside its pixel (fixed seed): its projection into either frame
    # then falls at a random sub-pixel position, so bilinear sampling smooths both frames alike
    # (points on the pixel centres of one frame would sample that one frame unsmoothed)
    pix = pix[keep] + torch.rand(pix[keep].shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64) - 0.5
    return transform_points(torch.from_numpy(np.asarray(pose, np.float64)), unproject(pix, d[keep], k))


def streak_field(points: Tensor, motion: np.ndarray, k: Tensor) -> Tensor:
    """Image displacement ``[P, 2]`` of camera-frame points ``[P, 3]`` over one frame period of
    the camera motion ``motion`` ``[6]`` (from ``s = -1/2`` to ``s = 1/2``), intrinsics ``k`` ``[3, 3]``."""
    xi = torch.as_tensor(np.asarray(motion, np.float64), dtype=points.dtype)
    ends = []
    for s in (-0.5, 0.5):
        # a sub-frame camera at pose @ exp(s xi) sees inv(exp(s xi)) X
        ends.append(project(transform_points(se3_inverse(se3_exp(s * xi)), points), k)[0])
    return ends[1] - ends[0]


def _sample(gray: Tensor, pixels: Tensor) -> Tensor:
    """Bilinear samples of ``gray`` ``[H, W]`` at ``pixels`` ``[..., 2]`` (x, y) -> ``[...]``."""
    h, w = gray.shape
    scale = torch.tensor([2.0 / max(w - 1, 1), 2.0 / max(h - 1, 1)], dtype=pixels.dtype)
    grid = (pixels * scale - 1.0).to(gray.dtype).reshape(1, 1, -1, 2)
    out = F.grid_sample(gray[None, None], grid, mode="bilinear", padding_mode="border", align_corners=True)
    return out.reshape(pixels.shape[:-1])


def commutation_curve(
    a: ExposureView,
    b: ExposureView,
    points: Tensor,
    intrinsics: Intrinsics,
    ratios: np.ndarray = RATIOS,
    spacing_px: float = 1.0,
    max_subframes: int = 15,
    min_streak_px: float = 0.0,
) -> tuple[np.ndarray, float] | None:
    """Disagreement ``[R]`` of the two twice-smeared frames at each candidate exposure ratio.

    Args:
        a, b: consecutive frames (the order does not matter).
        points: ``[P, 3]`` map points seen by both (e.g. a render's depth back-projected).
        intrinsics: the frames' camera (full image size).
        ratios: ``[R]`` candidate exposure ratios.
        spacing_px: largest gap between the samples along the longest streak.

    Returns ``(curve, streak_px)``: the mean absolute grey difference per ratio (the second
    frame brought to the first's brightness) and the median difference of the two frames'
    streaks at ratio 1 (how much the pair can tell: equal streaks agree at any ratio); None with
    fewer than 500 points inside both frames.
    """
    k = intrinsics.matrix(torch.float64)
    pts = points.to(torch.float64)
    cam_a = transform_points(se3_inverse(torch.from_numpy(np.asarray(a.pose, np.float64))), pts)
    cam_b = transform_points(se3_inverse(torch.from_numpy(np.asarray(b.pose, np.float64))), pts)
    pix_a, z_a = project(cam_a, k)
    pix_b, z_b = project(cam_b, k)
    w, h = intrinsics.width, intrinsics.height

    def inside(p: Tensor, z: Tensor) -> Tensor:
        return (z > 1e-6) & (p[:, 0] > _MARGIN_PX) & (p[:, 0] < w - 1 - _MARGIN_PX) & \
            (p[:, 1] > _MARGIN_PX) & (p[:, 1] < h - 1 - _MARGIN_PX)

    keep = inside(pix_a, z_a) & inside(pix_b, z_b)
    if int(keep.sum()) < _MIN_POINTS:
        return None
    cam_a, cam_b, pix_a, pix_b = cam_a[keep], cam_b[keep], pix_a[keep], pix_b[keep]
    streak_a = streak_field(cam_a, a.motion, k)  # [P, 2] at ratio 1 (first order: the streak scales with it)
    streak_b = streak_field(cam_b, b.motion, k)
    differ = float((streak_a - streak_b).norm(dim=1).median())
    if differ < min_streak_px:
        return None
    longest = float(torch.maximum(streak_a.norm(dim=1), streak_b.norm(dim=1)).max()) * float(np.max(ratios))
    # at least 3 samples: every candidate ratio smears (one sample would leave the curve flat)
    offsets = exposure_offsets(max(3, subframes_for_blur(longest, spacing_px, max_subframes)), torch.float64)
    steps = torch.as_tensor(np.asarray(ratios, np.float64))[:, None] * offsets[None]  # [R, S]
    # a smeared along b's streak, b along a's: [R, S, P] samples, averaged over the streak
    twice_a = _sample(a.gray, pix_a[None, None] + steps[..., None, None] * streak_b[None, None]).mean(1)
    twice_b = _sample(b.gray, pix_b[None, None] + steps[..., None, None] * streak_a[None, None]).mean(1)
    gain = twice_a.mean() / twice_b.mean().clamp_min(1e-6)  # auto-exposure: b at a's brightness
    curve = (twice_a - gain * twice_b).abs().mean(1).double().numpy()
    return curve, differ


@dataclass
class ExposurePair:
    """Two consecutive frames to compare and the map points ``[P, 3]`` the first one sees."""

    a: ExposureView
    b: ExposureView
    points: Tensor


class ExposureRatioEstimator:
    """Accumulates :func:`commutation_curve` over pairs of consecutive frames; the exposure
    ratio is the minimum of their sum (each pair's curve scaled to its maximum and weighted by
    its depth ``1 - min / max``: pairs whose streaks agree are flat and weigh nothing).

    Frames come in order through :meth:`push`, which hands back a pair once its two frames'
    motions are known (velocities from two frames on each side: two frames after the pair are
    needed); :meth:`add` compares it (tens of milliseconds: a caller may run it on another
    thread; the estimate is read under a lock).

    Args:
        prior: the ratio in use until enough pairs agree (``blur.exposure_ratio``).
        max_pairs: pairs counted before the estimate stops taking more (its cost is bounded).
        min_weight: summed pair weight needed before :attr:`value` is trusted.
        min_streak_px: pairs whose streaks differ less than this (median, pixels) are skipped.
        max_gap: a frame step longer than this many camera periods breaks the chain (dropped frames).
        min_depth: the summed curve's least variation (``1 - min / max``) that counts as a measurement.
        zero_tolerance: a curve whose value at ratio 0 is within this fraction of its range above
            its minimum reads 0. A sharp pair's small misregistration (depth, poses, resampling)
            agrees a little better once smeared by any short streak, so its minimum lands at
            0.1-0.2 with the value at 0 only 1-3 % of the range above it (sharp synthetic rooms);
            a blurred pair's value at 0 lies tens of % above.
    """

    def __init__(self, prior: float, max_pairs: int = 40, min_weight: float = 2.0, min_streak_px: float = 1.0,
                 max_gap: float = 1.5, min_depth: float = 0.25, ratios: np.ndarray = RATIOS,
                 zero_tolerance: float = 0.05) -> None:
        self.prior = float(prior)
        self.max_pairs = int(max_pairs)
        self.min_weight = float(min_weight)
        self.min_streak_px = float(min_streak_px)
        self.max_gap = float(max_gap)
        self.min_depth = float(min_depth)
        self.zero_tolerance = float(zero_tolerance)
        self.ratios = np.asarray(ratios, np.float64)
        self.curve = np.zeros(len(self.ratios))
        self.weight = 0.0
        self.pairs = 0  # pairs that counted
        self.skipped = 0  # pairs that could not tell (too few shared points, too little streak difference)
        self._lock = threading.Lock()
        self._chain: deque[tuple[float, np.ndarray, Tensor, Tensor | None]] = deque(maxlen=_CHAIN)
        self._handed = 0  # pairs handed out by push() and not yet added

    @property
    def done(self) -> bool:
        """Enough pairs counted (or handed out to be): :meth:`push` hands out no more."""
        with self._lock:
            return self.pairs + self._handed >= self.max_pairs

    def restart_chain(self) -> None:
        """Forget the frames pushed so far (a new map: their poses are in another frame)."""
        self._chain.clear()

    def push(self, stamp: float, pose: np.ndarray, gray: Tensor, points: Tensor | None,
             period: float) -> ExposurePair | None:
        """The next tracked frame: ``pose`` ``[4, 4]`` camera-to-map, ``gray`` ``[H, W]`` float in
        [0, 1], ``points`` ``[P, 3]`` map points it sees (None: none). Returns the pair of the
        third and fourth of the last six consecutive frames once they are known, else None: each
        frame's motion is its velocity at mid-exposure from two frames on each side
        (:func:`~posegs_ros.tracking.tracker.neighbour_twist`, the five-point derivative). The
        central difference over one frame on each side averages the velocity over two periods;
        hand-held shake turns it within that time, so the streaks it predicts differ less from
        one frame to the next than the real ones, and the ratio came out ~8 % long (0.81 for
        0.75 on the synthetic room with its true poses; 0.75 with five points)."""
        if self._chain and not 0.0 < stamp - self._chain[-1][0] <= self.max_gap * period:
            self._chain.clear()  # frames dropped (or time went back): the neighbours no longer tell the motion
        self._chain.append((stamp, np.asarray(pose, np.float64), gray, points))
        if len(self._chain) < _CHAIN or self.done:
            return None
        a, b = self._chain[2], self._chain[3]
        if a[3] is None:
            return None
        stamps = np.array([c[0] for c in self._chain])
        poses = np.stack([c[1] for c in self._chain])
        # the chain holds no gap longer than max_gap periods: every neighbour counts
        motions = [neighbour_twist(stamps, poses, i, period, max_gap_s=np.inf) for i in (2, 3)]
        if any(m is None for m in motions):
            return None
        with self._lock:
            self._handed += 1
        return ExposurePair(ExposureView(a[2], a[1], motions[0]), ExposureView(b[2], b[1], motions[1]), a[3])

    def add(self, pair: ExposurePair, intrinsics: Intrinsics, handed: bool = True) -> bool:
        """Compare one pair (see :func:`commutation_curve`); True if it counted. ``handed``: the
        pair came from :meth:`push` (its place in ``max_pairs`` is released)."""
        got = commutation_curve(pair.a, pair.b, pair.points, intrinsics, self.ratios, min_streak_px=self.min_streak_px)
        with self._lock:
            if handed:
                self._handed = max(self._handed - 1, 0)
            if got is None or not np.isfinite(got[0]).all() or got[0].max() <= 0:
                self.skipped += 1
                return False
            curve = got[0] / got[0].max()
            weight = float(1.0 - curve.min())
            self.curve = self.curve + weight * curve
            self.weight += weight
            self.pairs += 1
            return True

    @property
    def value(self) -> float | None:
        """The estimated exposure ratio in ``[0, 1]`` (parabolic minimum of the summed curve), or
        None: before ``min_weight`` of pairs, or while the frames cannot tell -- the summed curve
        varies by less than ``min_depth`` of its maximum, or keeps falling to the longest
        candidate (more smearing always agrees better: noise and blur the motion does not explain,
        not an exposure). 0 when the curve at ratio 0 lies within ``zero_tolerance`` of its range
        above the minimum: the frames agree unsmeared about as well as at the best ratio."""
        with self._lock:
            if self.weight < self.min_weight:
                return None
            c, r = self.curve / self.weight, self.ratios
        i = int(np.argmin(c))
        top = float(c.max())
        if top - c[i] < self.min_depth * top or i == len(c) - 1 or c[-1] - c[i] < 0.1 * (top - c[i]):
            return None
        if c[0] - c[i] <= self.zero_tolerance * (top - c[i]):
            return 0.0  # no exposure agrees about as well as the best: a sharp camera
        best = r[i]
        if 0 < i < len(c) - 1:
            den = c[i - 1] - 2.0 * c[i] + c[i + 1]
            if den > 0:
                best = r[i] + 0.5 * (c[i - 1] - c[i + 1]) / den * (r[i + 1] - r[i])
        return float(np.clip(best, 0.0, 1.0))

    @property
    def depth(self) -> float:
        """How much the summed curve varies: ``1 - min / max`` (0 before any pair)."""
        with self._lock:
            c = self.curve.copy()
        return float(1.0 - c.min() / c.max()) if c.max() > 0 else 0.0

    @property
    def ratio(self) -> float:
        """:attr:`value` once known, else the prior."""
        v = self.value
        return self.prior if v is None else v

    def summary(self) -> dict[str, float | int | None]:
        """What was measured: the ratio (None: not (yet) told), the prior, pairs counted and
        skipped, and the summed curve's depth (see :attr:`value`)."""
        return {"measured": self.value, "prior": self.prior, "pairs": self.pairs, "skipped": self.skipped,
                "depth": round(self.depth, 4)}
