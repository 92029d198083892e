"""What the backends share: gsplat 1.5's constants, argument checks, colour/depth assembly.

:func:`render_with` is gsplat's ``rasterization`` flow (projection, spherical harmonics,
render modes, backgrounds, packing, expected depth) around a projection and a pixel
rasterizer; the PyTorch reference plugs its two steps into it. The CPU fast path follows
the same rules with less PyTorch glue (see :mod:`posegs_ros.render.cpu`) and shares
:func:`shade` and the constants.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np
import torch
from torch import Tensor

from posegs_ros.render.sh import spherical_harmonics

RenderMode = Literal["RGB", "D", "ED", "RGB+D", "RGB+ED"]
RENDER_MODES: tuple[str, ...] = ("RGB", "D", "ED", "RGB+D", "RGB+ED")

# gsplat compares in float32; these are the float32 values of its constants, kept as Python
# floats so float64 code makes the same decisions as gsplat's float32 kernels.
ALPHA_THRESHOLD = float(np.float32(1.0 / 255.0))  # skip a Gaussian at a pixel below this alpha
MAX_ALPHA = float(np.float32(0.999))  # alpha is clamped to this
MIN_TRANSMITTANCE = float(np.float32(1e-4))  # a pixel stops when T would drop to this or below
MAX_EXTEND = float(np.float32(3.33))  # cap of the opacity-aware radius, in standard deviations
TILE_SIZE = 16  # gsplat's tile (the reference bins like gsplat)


@dataclass(frozen=True)
class Projection:
    """Per camera-Gaussian projection results, dense ``[C, N, ...]`` like gsplat's unpacked mode."""

    radii: Tensor  # [C, N, 2] int32, 0 where culled
    means2d: Tensor  # [C, N, 2]
    depths: Tensor  # [C, N]
    conics: Tensor  # [C, N, 3] inverse 2D covariance (a, b, c): sigma = a dx^2/2 + b dx dy + c dy^2/2


class ProjectFn(Protocol):
    def __call__(
        self,
        means: Tensor,
        quats: Tensor,
        scales: Tensor,
        opacities: Tensor,
        viewmats: Tensor,
        Ks: Tensor,
        width: int,
        height: int,
        eps2d: float,
        near_plane: float,
        far_plane: float,
        radius_clip: float,
    ) -> Projection: ...


class RasterizeFn(Protocol):
    def __call__(
        self,
        means2d: Tensor,  # [M, 2]
        conics: Tensor,  # [M, 3]
        colors: Tensor,  # [M, D]
        opacities: Tensor,  # [M]
        radii: Tensor,  # [M, 2] int32
        depths: Tensor,  # [M]
        image_ids: Tensor,  # [M] int64
        n_images: int,
        width: int,
        height: int,
        backgrounds: Tensor | None,  # [C, D]
    ) -> tuple[Tensor, Tensor, dict[str, Any]]: ...


def check_inputs(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    colors: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    sh_degree: int | None,
    backgrounds: Tensor | None,
    render_mode: str,
) -> None:
    """Raise ``ValueError`` with a readable message when shapes or options are wrong."""
    if means.dim() != 2 or means.shape[-1] != 3:
        raise ValueError(f"means must be [N, 3], got {tuple(means.shape)}")
    n = means.shape[0]
    if quats.shape != (n, 4):
        raise ValueError(f"quats must be [N, 4] = [{n}, 4], got {tuple(quats.shape)}")
    if scales.shape != (n, 3):
        raise ValueError(f"scales must be [N, 3] = [{n}, 3], got {tuple(scales.shape)}")
    if opacities.shape != (n,):
        raise ValueError(f"opacities must be [N] = [{n}], got {tuple(opacities.shape)}")
    if viewmats.dim() != 3 or viewmats.shape[1:] != (4, 4):
        raise ValueError(f"viewmats must be [C, 4, 4], got {tuple(viewmats.shape)}")
    c = viewmats.shape[0]
    if Ks.shape != (c, 3, 3):
        raise ValueError(f"Ks must be [C, 3, 3] = [{c}, 3, 3], got {tuple(Ks.shape)}")
    if int(width) <= 0 or int(height) <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    if render_mode not in RENDER_MODES:
        raise ValueError(f"render_mode must be one of {RENDER_MODES}, got {render_mode!r}")
    if sh_degree is None:
        if not (colors.dim() == 2 and colors.shape[0] == n) and not (
            colors.dim() == 3 and colors.shape[:2] == (c, n)
        ):
            raise ValueError(f"colors must be [N, D] or [C, N, D] (N={n}, C={c}), got {tuple(colors.shape)}")
    else:
        if not 0 <= sh_degree <= 3:
            raise ValueError(f"sh_degree must be in 0..3, got {sh_degree}")
        ok = (colors.dim() == 3 and colors.shape[0] == n) or (colors.dim() == 4 and colors.shape[:2] == (c, n))
        if not ok or colors.shape[-1] != 3:
            raise ValueError(
                f"SH colors must be [N, K, 3] or [C, N, K, 3] (N={n}, C={c}), got {tuple(colors.shape)}"
            )
        if (sh_degree + 1) ** 2 > colors.shape[-2]:
            raise ValueError(f"sh_degree={sh_degree} needs K >= {(sh_degree + 1) ** 2} bases, got {colors.shape[-2]}")
    if backgrounds is not None:
        d = colors.shape[-1]
        if backgrounds.shape != (c, d):
            raise ValueError(f"backgrounds must be [C, D] = [{c}, {d}], got {tuple(backgrounds.shape)}")


def shade(
    means: Tensor,  # [N, 3]
    colors: Tensor,  # [N, D] | [C, N, D] | [N, K, 3] | [C, N, K, 3]
    viewmats: Tensor,  # [C, 4, 4]
    visible: Tensor,  # [C, N] bool
    sh_degree: int | None,
) -> Tensor:
    """Per camera colours ``[C, N, D]`` (broadcast view when view independent).

    With ``sh_degree`` set, evaluates SH towards the camera centre like gsplat
    (``dirs = means - inverse(viewmats)[:3, 3]``) and applies its ``max(sh + 0.5, 0)``.
    """
    c, n = visible.shape
    if sh_degree is None:
        return colors if colors.dim() == 3 else colors.unsqueeze(0).expand(c, n, colors.shape[-1])
    if sh_degree == 0:  # view independent: no directions needed
        rgb = torch.clamp_min(spherical_harmonics(0, means, colors) + 0.5, 0.0)
        return rgb if rgb.dim() == 3 else rgb.unsqueeze(0).expand(c, n, 3)
    coeffs = colors if colors.dim() == 4 else colors.unsqueeze(0).expand(c, *colors.shape)
    campos = torch.inverse(viewmats)[:, :3, 3]  # [C, 3]
    dirs = means.unsqueeze(0) - campos.unsqueeze(1)  # [C, N, 3]
    rgb = spherical_harmonics(sh_degree, dirs, coeffs, masks=visible)
    return torch.clamp_min(rgb + 0.5, 0.0)


def render_with(
    project: ProjectFn,
    rasterize_pixels: RasterizeFn,
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    colors: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    near_plane: float,
    far_plane: float,
    radius_clip: float,
    eps2d: float,
    sh_degree: int | None,
    packed: bool,
    backgrounds: Tensor | None,
    render_mode: str,
) -> tuple[Tensor, Tensor, dict[str, Any]]:
    """gsplat's ``rasterization`` flow around a backend's projection and pixel rasterizer."""
    c, n = viewmats.shape[0], means.shape[0]
    proj = project(
        means, quats, scales, opacities, viewmats, Ks, width, height, eps2d, near_plane, far_plane, radius_clip
    )
    visible = (proj.radii > 0).all(dim=-1)  # [C, N]
    rgb = None
    if render_mode in ("RGB", "RGB+D", "RGB+ED"):
        rgb = shade(means, colors, viewmats, visible, sh_degree)  # [C, N, D]
    opac_cn = opacities.unsqueeze(0).expand(c, n)

    meta: dict[str, Any] = {}
    if packed:
        camera_ids, gaussian_ids = torch.nonzero(visible, as_tuple=True)  # row-major, like gsplat
        radii = proj.radii[camera_ids, gaussian_ids]
        means2d = proj.means2d[camera_ids, gaussian_ids]
        depths = proj.depths[camera_ids, gaussian_ids]
        conics = proj.conics[camera_ids, gaussian_ids]
        opac = opacities[gaussian_ids]
        feats = None if rgb is None else rgb[camera_ids, gaussian_ids]
        image_ids = camera_ids
        meta.update(batch_ids=torch.zeros_like(camera_ids), camera_ids=camera_ids, gaussian_ids=gaussian_ids)
    else:
        radii, means2d, depths, conics, opac, feats = proj.radii, proj.means2d, proj.depths, proj.conics, opac_cn, rgb
        image_ids = torch.arange(c, device=means.device).repeat_interleave(n)
        meta.update(batch_ids=None, camera_ids=None, gaussian_ids=None)
    meta.update(radii=radii, means2d=means2d, depths=depths, conics=conics, opacities=opac)

    bg = backgrounds
    if render_mode in ("RGB+D", "RGB+ED"):
        assert feats is not None
        feats = torch.cat([feats, depths.unsqueeze(-1)], dim=-1)
        if bg is not None:
            bg = torch.cat([bg, bg.new_zeros(c, 1)], dim=-1)
    elif render_mode in ("D", "ED"):
        feats = depths.unsqueeze(-1)
        if bg is not None:
            bg = bg.new_zeros(c, 1)
    assert feats is not None
    d = feats.shape[-1]
    render_colors, render_alphas, raster_meta = rasterize_pixels(
        means2d.reshape(-1, 2),
        conics.reshape(-1, 3),
        feats.reshape(-1, d),
        opac.reshape(-1),
        radii.reshape(-1, 2),
        depths.detach().reshape(-1),
        image_ids,
        c,
        width,
        height,
        bg,
    )
    meta.update(raster_meta)
    meta.update(width=width, height=height, n_batches=1, n_cameras=c)
    if render_mode in ("ED", "RGB+ED"):
        render_colors = torch.cat(
            [render_colors[..., :-1], render_colors[..., -1:] / render_alphas.clamp(min=1e-10)], dim=-1
        )
    return render_colors, render_alphas, meta

