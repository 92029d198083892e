"""The exposure blur model and the photometric loss.

A blurred frame is predicted as the mean of ``S`` sharp renders at sub-exposure poses
``T(s) = T @ exp(s * d)`` (offline also ``T @ exp(s * d + s^2 * b)``, a path that bends with
the camera's acceleration), ``s`` at the midpoints of ``S`` equal slices of ``[-1/2, 1/2]``;
moving objects add their own ``M_g(s) = M_g @ exp(s * e_g)`` per motion group.  The deblurred
output is the render at ``s = 0``; :mod:`posegs_ros.scene.loss` compares it with the frame.
Offline, the gradient through a blurred prediction may be filtered by the inverse attenuation of
its streak (:func:`precondition_streak`), so the detail the streak averages away converges as
fast as the rest.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..geometry import quat_to_rotmat, rotmat_to_quat, se3_exp, se3_inverse
from ..render import rasterize

__all__ = [
    "exposure_offsets",
    "blur_length_px",
    "subframes_for_blur",
    "exposure_subframes",
    "exposure_poses",
    "SceneTensors",
    "RenderSettings",
    "RenderOutput",
    "render_views",
    "render_exposure",
    "move_groups",
    "group_subset",
    "streak_offsets",
    "streak_filter",
    "tile_weights",
    "tile_centres",
    "precondition_streak",
]


SHARP_STREAK_PX = 0.1  # a blur streak shorter than this (pixels) renders as one sharp sub-frame


def exposure_offsets(subframes: int, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> Tensor:
    """Sub-exposure times ``s`` ``[S]``: the midpoints of ``S`` equal slices of the exposure
    ``[-1/2, 1/2]`` (``(i + 1/2) / S - 1/2``; ``[0]`` for ``S = 1``).

    The recorded frame is the exposure's time average, so each sub-frame stands for one slice:
    the sampled blur has the spread of the continuous streak (variance ``(1 - 1/S^2) L^2 / 12``
    for a streak of ``L`` pixels). Sampling the slice ends instead (``-1/2 .. 1/2`` inclusive)
    spreads it by ``(S + 1) / (S - 1)``: twice the variance at 3 sub-frames, which the fitted
    exposure twists then shrink to hide."""
    if subframes < 1:
        raise ValueError(f"subframes must be >= 1, got {subframes}")
    return (torch.arange(subframes, dtype=dtype, device=device) + 0.5) / subframes - 0.5


def blur_length_px(twist: np.ndarray, fx: float, width: int, height: int, depth: float) -> float:
    """Image path length (pixels) over the exposure of a typical scene point for the exposure
    twist ``twist`` ``[6]`` = (rho, phi) in the camera frame, scene points at ``depth``.

    Rotation about the optical axis and motion along it move points in proportion to their
    distance from the image centre: they count at half the half-diagonal.
    """
    d = np.asarray(twist, np.float64).reshape(6)
    if not np.isfinite(d).all():
        return 0.0
    z = max(float(depth), 1e-9)
    radius = 0.25 * float(np.hypot(width, height))
    rot = fx * float(np.hypot(d[3], d[4])) + radius * abs(float(d[5]))
    trans = fx * float(np.hypot(d[0], d[1])) / z + radius * abs(float(d[2])) / z
    return rot + trans


def subframes_for_blur(length_px: float, spacing_px: float, max_subframes: int) -> int:
    """Sub-frames that sample a streak of ``length_px`` pixels at most ``spacing_px`` apart.

    No streak to speak of (under :data:`SHARP_STREAK_PX`, a tenth of a pixel: a camera whose
    exposure time measured 0, or a frame that did not move): 1, the frame renders sharp (a sharp
    camera pays no sub-frames; its exposure twist gets no gradient and stays as seeded). Longer
    ones: odd (one at ``s = 0``), at least 3 (the exposure twist keeps a gradient), at most
    ``max_subframes`` (rounded down to odd)."""
    if spacing_px <= 0:
        raise ValueError(f"spacing_px must be > 0, got {spacing_px}")
    length = max(float(length_px), 0.0) if np.isfinite(length_px) else 0.0
    if length < SHARP_STREAK_PX:
        return 1
    top = max(3, max_subframes - (1 - max_subframes % 2))
    n = int(np.ceil(length / spacing_px)) + 1
    n += 1 - n % 2
    return int(min(max(n, 3), top))


def exposure_subframes(
    fixed: int, twists: list[np.ndarray], fx: float, width: int, height: int, depth: float, spacing_px: float,
    max_subframes: int,
) -> int:
    """``fixed`` when > 0, else :func:`subframes_for_blur` of the longest streak among the
    exposure twists ``twists`` (each ``[6]``: the camera's, and a moving object's)."""
    if fixed > 0:
        return int(fixed)
    length = max((blur_length_px(t, fx, width, height, depth) for t in twists), default=0.0)
    return subframes_for_blur(length, spacing_px, max_subframes)


def exposure_poses(pose: Tensor, twist: Tensor, offsets: Tensor, bend: Tensor | None = None) -> Tensor:
    """Sub-exposure poses ``[S, 4, 4]`` = ``pose @ exp(s * twist + s^2 * bend)`` for ``pose``
    ``[4, 4]``, ``twist`` ``[6]`` and ``bend`` ``[6]`` (None: a straight path, ``exp(s * twist)``)."""
    xi = offsets[:, None] * twist[None]
    if bend is not None:
        xi = xi + (offsets[:, None] ** 2) * bend.to(twist)[None]
    return pose[None] @ se3_exp(xi)


@dataclass
class SceneTensors:
    """Render-ready Gaussians (activated), see :meth:`GaussianMap.activated`."""

    means: Tensor  # [N, 3]
    quats: Tensor  # [N, 4]
    scales: Tensor  # [N, 3]
    opacities: Tensor  # [N]
    colors: Tensor  # [N, K, 3] SH coefficients
    group_ids: Tensor | None = None  # [N] long, 0 = static

    def __len__(self) -> int:
        return int(self.means.shape[0])


@dataclass
class RenderSettings:
    width: int
    height: int
    sh_degree: int = 0
    near_plane: float = 0.01
    far_plane: float = 1e3
    eps2d: float = 0.3
    background: float = 0.0
    backend: str = "auto"


@dataclass
class RenderOutput:
    rgb: Tensor  # [C, H, W, 3]
    depth: Tensor  # [C, H, W, 1] expected depth (only where alpha > 0)
    alpha: Tensor  # [C, H, W, 1]


def render_views(scene: SceneTensors, cam_to_world: Tensor, k: Tensor, settings: RenderSettings) -> RenderOutput:
    """Render ``C`` views of the same Gaussians in one rasterizer call.

    Args:
        cam_to_world: ``[C, 4, 4]`` camera poses (differentiable).
        k: ``[3, 3]`` intrinsics shared by the views.
    """
    c = cam_to_world.shape[0]
    viewmats = se3_inverse(cam_to_world).to(scene.means.dtype)
    # the rasterizer (gsplat's convention) puts pixel centres at +0.5; our intrinsics are
    # OpenCV's (top-left pixel centre at 0, 0)
    k = k.to(scene.means.dtype).clone()
    k[0, 2] += 0.5
    k[1, 2] += 0.5
    ks = k[None].expand(c, 3, 3)
    bg = torch.full((c, 3), settings.background, dtype=scene.means.dtype, device=scene.means.device)
    colors, alphas, _ = rasterize(
        scene.means,
        scene.quats,
        scene.scales,
        scene.opacities,
        scene.colors,
        viewmats,
        ks,
        settings.width,
        settings.height,
        near_plane=settings.near_plane,
        far_plane=settings.far_plane,
        eps2d=settings.eps2d,
        sh_degree=settings.sh_degree,
        backgrounds=bg,
        render_mode="RGB+ED",
        backend=settings.backend,
    )
    return RenderOutput(rgb=colors[..., :3], depth=colors[..., 3:4], alpha=alphas)


def move_groups(scene: SceneTensors, group_transforms: dict[int, Tensor]) -> SceneTensors:
    """The scene placed for one view: every dynamic group's Gaussians moved by its ``[4, 4]``
    object-to-map transform, Gaussians of groups without a transform hidden (opacity 0: the
    object is not known to be anywhere in that view).

    The result has ``group_ids=None`` (everything is in map coordinates), so placing it again
    or rendering it with :func:`render_exposure` without ``groups`` leaves it as it is.
    """
    if scene.group_ids is None:
        return scene
    dynamic = scene.group_ids > 0
    if not bool(dynamic.any()):
        return SceneTensors(scene.means, scene.quats, scene.scales, scene.opacities, scene.colors, None)
    means, quats, hidden = scene.means, scene.quats, dynamic
    for gid, m in group_transforms.items():
        sel = scene.group_ids == gid
        idx = torch.nonzero(sel).squeeze(1)
        if idx.numel() == 0:
            continue
        hidden = hidden & ~sel
        m = m.to(means.dtype)
        # only the group's rows are transformed (out of place, so gradients reach both parts)
        means = means.index_put((idx,), means[idx] @ m[:3, :3].T + m[:3, 3])
        quats = quats.index_put((idx,), rotmat_to_quat(m[:3, :3] @ quat_to_rotmat(quats[idx])))
    opacities = torch.where(hidden, torch.zeros_like(scene.opacities), scene.opacities) if bool(hidden.any()) else scene.opacities
    return SceneTensors(means, quats, scene.scales, opacities, scene.colors, None)


def group_subset(scene: SceneTensors, group: int) -> SceneTensors:
    """Only the Gaussians of ``group`` (still with their group ids)."""
    assert scene.group_ids is not None
    sel = scene.group_ids == group
    return SceneTensors(scene.means[sel], scene.quats[sel], scene.scales[sel], scene.opacities[sel],
                        scene.colors[sel], scene.group_ids[sel])


def render_exposure(
    scene: SceneTensors,
    pose: Tensor,
    twist: Tensor,
    k: Tensor,
    settings: RenderSettings,
    subframes: int,
    groups: dict[int, tuple[Tensor, Tensor]] | None = None,
    camera_from_static: bool = True,
    bend: Tensor | None = None,
) -> tuple[Tensor, RenderOutput]:
    """Predicted blurred observation ``[H, W, 3]`` and the sub-frame renders.

    Args:
        pose: ``[4, 4]`` mid-exposure camera-to-map pose.
        twist: ``[6]`` exposure twist ``d`` (camera motion over the exposure, body frame).
        bend: ``[6]`` second-order term of the camera's exposure path (:func:`exposure_poses`),
            None for a straight one.
        groups: motion group id -> (``M_g`` ``[4, 4]`` object-to-map at mid-exposure,
            exposure twist ``e_g`` ``[6]``); groups not listed are hidden (:func:`move_groups`).
            Without groups all views share one rasterizer call.
        camera_from_static: the camera pose and twist get gradients from the static Gaussians
            only: each group is also moved by ``C(s) inv(C(s))`` with the second factor
            detached (the identity in value), so its Gaussians move with the camera and their
            pixels inform the object's pose, not the camera's -- as camera tracking ignores
            moving objects.
    """
    offsets = exposure_offsets(subframes, pose.dtype, pose.device)
    cams = exposure_poses(pose, twist, offsets, bend)
    if not groups:
        out = render_views(move_groups(scene, {}), cams, k, settings)
    else:
        outs = []
        for i, s in enumerate(offsets):
            follow = cams[i] @ se3_inverse(cams[i].detach()) if camera_from_static and cams.requires_grad else None
            placed = {g: exposure_poses(m, e, s[None])[0] for g, (m, e) in groups.items()}
            if follow is not None:
                placed = {g: follow @ m for g, m in placed.items()}
            moved = move_groups(scene, placed)
            outs.append(render_views(moved, cams[i : i + 1], k, settings))
        out = RenderOutput(*(torch.cat([getattr(o, f) for o in outs], 0) for f in ("rgb", "depth", "alpha")))
    return out.rgb.mean(0), out


def streak_offsets(pose: Tensor, twist: Tensor, k: Tensor, offsets: Tensor, depth: np.ndarray, pixels: np.ndarray,
                   bend: Tensor | None = None) -> np.ndarray:
    """Image positions ``[P, S, 2]`` (pixels, relative to their mean over the sub-frames) of the
    scene points at ``pixels`` ``[P, 2]`` of the mid-exposure view and their ``depth`` ``[P]``, seen
    from the sub-exposure poses of :func:`exposure_poses`."""
    with torch.no_grad():
        cams = exposure_poses(pose.detach().double(), twist.detach().double(), offsets.double(),
                              None if bend is None else bend.detach().double())
        kd = k.detach().double()
        px = torch.as_tensor(np.asarray(pixels, np.float64))
        z = torch.as_tensor(np.broadcast_to(np.asarray(depth, np.float64), (len(px),)).copy())
        rays = torch.cat([px, torch.ones(len(px), 1, dtype=torch.float64)], 1) @ torch.linalg.inv(kd).T  # [P, 3]
        mid = pose.detach().double()
        world = (rays * z[:, None]) @ mid[:3, :3].T + mid[:3, 3]  # [P, 3]
        cam = torch.einsum("pj,sjk->psk", world, cams[:, :3, :3]) - torch.einsum("sj,sjk->sk", cams[:, :3, 3],
                                                                                 cams[:, :3, :3])[None]
        uv = (cam @ kd.T)[..., :2] / cam[..., 2:3]  # [P, S, 2]
    uv = uv.numpy()
    return uv - uv.mean(1, keepdims=True)


def streak_filter(streak: np.ndarray, height: int, width: int, eps: float) -> np.ndarray:
    """``(1 + eps) / (|H|^2 + eps)`` ``[height, width // 2 + 1]`` (float32) on ``rfft2``'s frequency
    grid, ``H`` the response of the mean of shifts by ``streak`` ``[S, 2]`` (pixels; each shift's
    phase is separable in x and y, so ``H`` is one ``[height, S] @ [S, width // 2 + 1]`` product)."""
    d = np.asarray(streak, np.float64)
    fy = np.fft.fftfreq(height) * (2 * np.pi)
    fx = np.fft.rfftfreq(width) * (2 * np.pi)
    ey = np.exp(-1j * d[:, 1:2] * fy[None])  # [S, height]
    ex = np.exp(-1j * d[:, 0:1] * fx[None])  # [S, W']
    h = np.einsum("sy,sx->yx", ey, ex, optimize=False) / len(d)
    return ((1.0 + eps) / (h.real**2 + h.imag**2 + eps)).astype(np.float32)


def tile_weights(height: int, width: int, grid: int) -> Tensor:
    """Partition of unity ``[grid * grid, height, width]`` over the image: bilinear hats centred on
    the ``grid x grid`` tile centres (flat beyond the outer centres)."""
    def hats(n: int) -> Tensor:  # [grid, n]
        if grid == 1:
            return torch.ones(1, n, dtype=torch.float64)
        centres = (torch.arange(grid, dtype=torch.float64) + 0.5) * n / grid
        x = (torch.arange(n, dtype=torch.float64) + 0.5).clamp(float(centres[0]), float(centres[-1]))
        return (1.0 - (x[None] - centres[:, None]).abs() / (n / grid)).clamp_min(0.0)

    wy, wx = hats(height), hats(width)
    return (wy[:, None, :, None] * wx[None, :, None, :]).reshape(grid * grid, height, width)


def tile_centres(height: int, width: int, grid: int) -> np.ndarray:
    """Pixel centres ``[grid * grid, 2]`` (x, y) of the tiles of :func:`tile_weights`, row-major."""
    c = (np.arange(grid) + 0.5) / grid
    ys, xs = np.meshgrid(c * height - 0.5, c * width - 0.5, indexing="ij")
    return np.stack([xs.ravel(), ys.ravel()], 1)


class _StreakPreconditioner(torch.autograd.Function):
    """Identity forward; backward filters the image gradient ``[H, W, C]`` by
    ``(1 + eps) / (|H(w)|^2 + eps)``, ``H`` the frequency response of each tile's streak
    ``[K, S, 2]``, with ``weights`` ``[K, H, W]`` blending the tiles' results."""

    PAD = 32  # reflected border (pixels) against the filter's wrap-around

    @staticmethod
    def forward(ctx, image: Tensor, streak: np.ndarray, eps: float, weights: Tensor) -> Tensor:  # type: ignore[override]
        ctx.streak, ctx.eps, ctx.weights = streak, eps, weights
        return image.view_as(image)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        # scipy's FFT on the calling thread: PyTorch's multi-threaded FFT spins against the
        # renderer's threads and other processes on a busy 2-core machine (20x slower there)
        import scipy.fft

        pad = _StreakPreconditioner.PAD
        h, w = grad.shape[:2]
        g = np.pad(grad.detach().cpu().numpy().astype(np.float32, copy=False).transpose(2, 0, 1),
                   ((0, 0), (pad, pad), (pad, pad)), mode="reflect")
        hp, wp = g.shape[-2:]
        spectrum = scipy.fft.rfft2(g)  # [C, hp, wp // 2 + 1]
        out = np.zeros((grad.shape[2], h, w), np.float32)
        for streak, weight in zip(ctx.streak, ctx.weights.numpy()):
            part = scipy.fft.irfft2(spectrum * streak_filter(streak, hp, wp, ctx.eps), s=(hp, wp))
            out += part[:, pad : pad + h, pad : pad + w] * weight
        return torch.from_numpy(np.ascontiguousarray(out.transpose(1, 2, 0))).to(grad), None, None, None


def precondition_streak(image: Tensor, streak: np.ndarray, eps: float, weights: Tensor) -> Tensor:
    """``image`` ``[H, W, C]`` unchanged, its gradient sharpened along each tile's streak ``[K, S, 2]``,
    blended by ``weights`` ``[K, H, W]`` (:func:`tile_weights`; :class:`_StreakPreconditioner`)."""
    return _StreakPreconditioner.apply(image, streak, eps, weights)
