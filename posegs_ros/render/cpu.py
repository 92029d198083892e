"""CPU fast path: numba kernels with analytic, deterministic backward passes.

Two autograd Functions, like gsplat: :class:`ProjectGaussians` (3D Gaussians and cameras to
2D means, depths, conics; packs the visible entries when asked) and :class:`RasterizePixels`
(2D Gaussians to pixels; gathers each entry's colour, opacity and depth itself). Keeping the
packing and gathering inside the Functions (numpy, fixed-order reductions in the backward)
leaves almost no PyTorch glue, which matters on small machines where every parallel PyTorch
op pays a thread wake-up. The kernels live in ``_project_kernels`` and ``_raster_kernels``
and are compiled by numba on first use (cached on disk).

All kernel arrays are float32 (computations in float64 scalars); float64 inputs are
accepted and rounded to float32 on the way in, results are returned in the input dtype.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx

from posegs_ros.render import _project_kernels as pk
from posegs_ros.render import _raster_kernels as rk
from posegs_ros.render._common import shade
from posegs_ros.render._threads import run_chunks, run_ranges
from posegs_ros.render.sh import SH_C0

__all__ = ["ProjectGaussians", "RasterizePixels", "TileBins", "bin_gaussians", "rasterize_cpu"]


def _np32(x: Tensor) -> np.ndarray:
    return np.ascontiguousarray(x.detach().to(torch.float32).cpu().numpy())


def _tensor(x: np.ndarray, like: Tensor) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(x)).to(like.device, like.dtype)


def _channel_groups(values: np.ndarray, n_groups: int) -> np.ndarray:
    """``values`` [..., D] as float32 [n_groups, ..., 4]: channels in groups of 4, zero padded."""
    d = values.shape[-1]
    out = np.zeros((n_groups, *values.shape[:-1], rk.CHANNELS), np.float32)
    for g in range(n_groups):
        k = min(rk.CHANNELS, d - rk.CHANNELS * g)
        out[g, ..., :k] = values[..., rk.CHANNELS * g : rk.CHANNELS * g + k]
    return out


def _sum_rows(values: np.ndarray, rows: np.ndarray, n_rows: int) -> np.ndarray:
    """``out[r] = sum of values[i] with rows[i] == r``, added in index order (deterministic)."""
    if values.ndim == 1:
        return np.bincount(rows, weights=values, minlength=n_rows)
    out = np.empty((n_rows, values.shape[1]), np.float64)
    for k in range(values.shape[1]):
        out[:, k] = np.bincount(rows, weights=values[:, k], minlength=n_rows)
    return out


class ProjectGaussians(torch.autograd.Function):
    """EWA projection (numba); gradients to means, quats, scales and viewmats.

    Returns radii (int32), means2d, depths, conics, camera_ids, gaussian_ids: dense
    ``[C, N, ...]`` (and empty id tensors) or, with ``packed``, only the visible entries
    ``[nnz, ...]`` with their int64 camera and Gaussian ids.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: FunctionCtx,
        means: Tensor,  # [N, 3]
        quats: Tensor,  # [N, 4]
        scales: Tensor,  # [N, 3]
        opacities: Tensor,  # [N] (radius only, no gradient through here)
        viewmats: Tensor,  # [C, 4, 4]
        Ks: Tensor,  # [C, 3, 3]
        width: int,
        height: int,
        eps2d: float,
        near_plane: float,
        far_plane: float,
        radius_clip: float,
        packed: bool,
    ) -> tuple[Tensor, ...]:
        n, c = means.shape[0], viewmats.shape[0]
        radii = np.empty((c, n, 2), np.int32)
        means2d = np.empty((c, n, 2), np.float32)
        depths = np.empty((c, n), np.float32)
        conics = np.empty((c, n, 3), np.float32)
        run_ranges(
            pk.project_forward, -(-n // pk.BLOCK), *(_np32(x) for x in (means, quats, scales, opacities, viewmats, Ks)),
            int(width), int(height), float(eps2d), float(near_plane), float(far_plane), float(radius_clip),
            radii, means2d, depths, conics, min_items=4,
        )  # fmt: skip
        ctx.save_for_backward(means, quats, scales, viewmats, Ks)
        ctx.size, ctx.radii, ctx.conics = (int(width), int(height)), radii, conics  # type: ignore[attr-defined]
        ids = np.empty((2, 0), np.int64)
        if packed:
            ids = np.stack(np.nonzero((radii > 0).all(axis=-1))).astype(np.int64)  # row-major, like gsplat
            radii, means2d, depths, conics = (x[ids[0], ids[1]] for x in (radii, means2d, depths, conics))
        ctx.packed_ids = ids if packed else None  # type: ignore[attr-defined]
        radii_t = torch.from_numpy(np.ascontiguousarray(radii)).to(means.device)
        camera_ids = torch.from_numpy(ids[0].copy()).to(means.device)
        gaussian_ids = torch.from_numpy(ids[1].copy()).to(means.device)
        ctx.mark_non_differentiable(radii_t, camera_ids, gaussian_ids)
        floats = (_tensor(x, means) for x in (means2d, depths, conics))
        return (radii_t, *floats, camera_ids, gaussian_ids)

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: Any, _v_radii: Tensor, v_means2d: Tensor, v_depths: Tensor, v_conics: Tensor, *_v_ids: Tensor
    ) -> tuple[Tensor | None, ...]:
        means, quats, scales, viewmats, Ks = (_np32(x) for x in ctx.saved_tensors)
        n, c = means.shape[0], viewmats.shape[0]
        grads = [_np32(v) for v in (v_means2d, v_depths, v_conics)]
        if ctx.packed_ids is not None:  # scatter the visible entries back to [C, N, ...]
            cam, gauss = ctx.packed_ids
            dense = [np.zeros((c, n, *g.shape[1:]), np.float32) for g in grads]
            for full, g in zip(dense, grads):
                full[cam, gauss] = g
            grads = dense
        v_means = np.zeros((n, 3), np.float32)
        v_quats = np.zeros((n, 4), np.float32)
        v_scales = np.zeros((n, 3), np.float32)
        want_viewmats = bool(ctx.needs_input_grad[4])
        n_blocks = -(-n // pk.BLOCK)
        block_view = np.zeros((n_blocks, c, 12), np.float64)
        run_ranges(
            pk.project_backward, n_blocks, means, quats, scales, viewmats, Ks, ctx.size[0], ctx.size[1],
            ctx.radii, ctx.conics, *grads, want_viewmats, v_means, v_quats, v_scales, block_view, min_items=4,
        )  # fmt: skip
        v_viewmats = np.zeros((c, 4, 4), np.float32)
        if want_viewmats:
            total = np.zeros((c, 12), np.float64)
            for blk in range(n_blocks):  # fixed order
                total += block_view[blk]
            v_viewmats[:, :3, :3] = total[:, :9].reshape(c, 3, 3)
            v_viewmats[:, :3, 3] = total[:, 9:]

        def out(x: np.ndarray, i: int) -> Tensor | None:
            return _tensor(x, v_means2d) if ctx.needs_input_grad[i] else None

        return (
            out(v_means, 0), out(v_quats, 1), out(v_scales, 2), None, out(v_viewmats, 4),
            None, None, None, None, None, None, None, None,
        )  # fmt: skip


@dataclass
class TileBins:
    """Which Gaussians each tile composites, front to back, and the reverse map."""

    params: np.ndarray  # [M, N_PARAMS] float64 per element (mean, conic, opacity, ellipse, ...)
    tile_offsets: np.ndarray  # [n_tiles + 1] int64, tiles of all images, row-major per image
    isect_elem: np.ndarray  # [n_isect] int32: element of each intersection, tile by tile
    elem_offsets: np.ndarray  # [M + 1] int64: intersections of element f in elem_isect[...]
    elem_isect: np.ndarray  # [n_isect] int64: slot in isect_elem of each of them
    n_images: int
    width: int
    height: int
    tiles_x: int
    tiles_y: int

    @property
    def n_isects(self) -> int:
        return int(self.isect_elem.shape[0])

    def tile_work(self) -> tuple[np.ndarray, np.ndarray]:
        """All tiles (each writes its pixels) and their cost estimate."""
        n_tiles = self.tile_offsets.shape[0] - 1
        return np.arange(n_tiles, dtype=np.int64), np.diff(self.tile_offsets) + 8


def bin_gaussians(
    means2d: np.ndarray,  # [M, 2] float32
    conics: np.ndarray,  # [M, 3] float32
    opacities: np.ndarray,  # [M] float32
    radii: np.ndarray,  # [M, 2] int32
    depths: np.ndarray,  # [M] float32
    image_ids: np.ndarray,  # [M] int64, non-decreasing
    n_images: int,
    width: int,
    height: int,
) -> TileBins:
    """Tile lists from the exact opacity-aware ellipses, each sorted by depth (stable)."""
    m = means2d.shape[0]
    tiles_x, tiles_y = math.ceil(width / rk.TILE_W), math.ceil(height / rk.TILE_H)
    params = np.empty((m, rk.N_PARAMS), np.float64)
    valid = np.empty(m, np.bool_)
    run_ranges(rk.prepare_params, m, means2d, conics, opacities, radii, params, valid)
    counts = np.empty(m, np.int64)
    run_ranges(rk.count_tiles, m, params, valid, width, height, tiles_x, counts)
    elem_offsets = np.zeros(m + 1, np.int64)
    np.cumsum(counts, out=elem_offsets[1:])
    n_isect = int(elem_offsets[-1])
    elem_tiles = np.empty(n_isect, np.int32)
    run_ranges(rk.list_tiles, m, params, valid, image_ids, width, height, tiles_x, tiles_y, elem_offsets, elem_tiles)
    image_starts = np.searchsorted(image_ids, np.arange(n_images + 1)).astype(np.int64)
    tile_offsets = np.empty(n_images * tiles_x * tiles_y + 1, np.int64)
    isect_elem = np.empty(n_isect, np.int32)
    elem_isect = np.empty(n_isect, np.int64)
    run_ranges(
        rk.sort_into_tiles, n_images, depths, valid, image_starts, elem_offsets, elem_tiles, tiles_x * tiles_y,
        tile_offsets, isect_elem, elem_isect, min_items=1,
    )  # fmt: skip
    return TileBins(
        params, tile_offsets, isect_elem, elem_offsets, elem_isect, n_images, width, height, tiles_x, tiles_y
    )


@dataclass
class ElementSources:
    """Where each projected entry (element) takes its colour and opacity from."""

    color_rows: np.ndarray | None  # [M] rows of the colour source, None without colours
    opacity_rows: np.ndarray  # [M] rows of the opacities [N]
    depth_channel: bool  # append the entry's depth as the last feature channel


class RasterizePixels(torch.autograd.Function):
    """Front-to-back compositing (numba).

    Features of element ``f`` are ``colors[color_rows[f]]`` followed, with
    ``depth_channel``, by ``depths[f]``; its opacity is ``opacities[opacity_rows[f]]``.
    Gradients go to means2d, conics, depths, colors, opacities and backgrounds.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: FunctionCtx,
        means2d: Tensor,  # [M, 2]
        conics: Tensor,  # [M, 3]
        depths: Tensor,  # [M]
        colors: Tensor | None,  # [S, D] colour source
        opacities: Tensor,  # [N]
        backgrounds: Tensor | None,  # [C, D] (colour channels only)
        bins: TileBins,
        sources: ElementSources,
    ) -> tuple[Tensor, Tensor]:
        c, h, w = bins.n_images, bins.height, bins.width
        m = means2d.shape[0]
        parts = []
        if colors is not None:
            assert sources.color_rows is not None
            parts.append(_np32(colors)[sources.color_rows])
        if sources.depth_channel:
            parts.append(_np32(depths)[:, None])
        feats = np.concatenate(parts, axis=1) if parts else np.zeros((m, 1), np.float32)
        d = feats.shape[1]
        n_groups = -(-d // rk.CHANNELS)
        groups = _channel_groups(feats, n_groups)  # [G, M, 4]
        use_bg = backgrounds is not None
        bg_full = np.zeros((c, d), np.float32)
        if backgrounds is not None:
            bg_full[:, : backgrounds.shape[1]] = _np32(backgrounds)
        bg = _channel_groups(bg_full, n_groups)
        out_colors = np.empty((n_groups, c, h, w, rk.CHANNELS), np.float32)
        out_alphas = np.empty((c, h, w, 1), np.float32)
        transmittance = np.empty((c, h, w), np.float64)
        last = np.empty((c, h, w), np.int32)
        tiles, costs = bins.tile_work()
        for g in range(n_groups):  # alphas, T and last come out the same for every group
            run_chunks(
                rk.rasterize_forward, tiles, costs, bins.tile_offsets, bins.isect_elem, bins.params, groups[g],
                bg[g], use_bg, w, h, bins.tiles_x, bins.tiles_y, out_colors[g], out_alphas, transmittance, last,
            )  # fmt: skip
        ctx.save_for_backward(opacities)
        ctx.groups, ctx.bg, ctx.d, ctx.use_bg = groups, bg, d, use_bg  # type: ignore[attr-defined]
        ctx.bins, ctx.sources = bins, sources  # type: ignore[attr-defined]
        ctx.n_colors = None if colors is None else colors.shape  # type: ignore[attr-defined]
        ctx.bg_channels = None if backgrounds is None else backgrounds.shape[1]  # type: ignore[attr-defined]
        ctx.transmittance, ctx.last = transmittance, last  # type: ignore[attr-defined]
        image = np.moveaxis(out_colors, 0, -2).reshape(c, h, w, -1)[..., :d]
        return _tensor(image, means2d), _tensor(out_alphas, means2d)

    @staticmethod
    def backward(ctx: Any, v_colors_img: Tensor, v_alphas_img: Tensor) -> tuple[Tensor | None, ...]:
        bins: TileBins = ctx.bins
        sources: ElementSources = ctx.sources
        (opacities,) = ctx.saved_tensors
        m, n_groups = bins.params.shape[0], ctx.groups.shape[0]
        v_img = _channel_groups(_np32(v_colors_img), n_groups)  # [G, C, H, W, 4]
        v_alphas = _np32(v_alphas_img)
        no_alpha_grad = np.zeros_like(v_alphas)
        isect_grads = np.empty((n_groups, bins.n_isects, rk.N_GRAD_FIXED + rk.CHANNELS), np.float32)
        tile_v_bg = np.zeros((n_groups, bins.tile_offsets.shape[0] - 1, rk.CHANNELS), np.float64)
        tiles, costs = bins.tile_work()
        for g in range(n_groups):  # the alpha term counts once
            run_chunks(
                rk.rasterize_backward, tiles, costs, bins.tile_offsets, bins.isect_elem, bins.params, ctx.groups[g],
                ctx.bg[g], ctx.use_bg, bins.width, bins.height, bins.tiles_x, bins.tiles_y, ctx.transmittance,
                ctx.last, v_img[g], v_alphas if g == 0 else no_alpha_grad, isect_grads[g], tile_v_bg[g],
            )  # fmt: skip
        v_means2d = np.empty((m, 2), np.float32)
        v_conics = np.empty((m, 3), np.float32)
        v_opac_elem = np.empty(m, np.float32)
        v_feats = np.empty((m, n_groups * rk.CHANNELS), np.float32)
        run_ranges(
            rk.gather_gradients, m, bins.elem_offsets, bins.elem_isect, isect_grads,
            v_means2d, v_conics, v_opac_elem, v_feats,
        )  # fmt: skip
        like = v_colors_img
        v_colors = v_depths = v_bg = None
        if ctx.n_colors is not None and ctx.needs_input_grad[3]:
            n_src, n_channels = ctx.n_colors
            v_colors = _tensor(_sum_rows(v_feats[:, :n_channels], sources.color_rows, n_src), like)
        if sources.depth_channel:
            v_depths = _tensor(v_feats[:, ctx.d - 1], like)
        v_opacities = _tensor(_sum_rows(v_opac_elem, sources.opacity_rows, opacities.shape[0]), like)
        if ctx.bg_channels is not None and ctx.needs_input_grad[5]:
            per_image = tile_v_bg.reshape(n_groups, bins.n_images, -1, rk.CHANNELS)
            total = np.zeros((n_groups, bins.n_images, rk.CHANNELS), np.float64)
            for i in range(per_image.shape[2]):  # fixed order
                total += per_image[:, :, i]
            v_bg = _tensor(np.moveaxis(total, 0, -2).reshape(bins.n_images, -1)[:, : ctx.bg_channels], like)
        return _tensor(v_means2d, like), _tensor(v_conics, like), v_depths, v_colors, v_opacities, v_bg, None, None


def _color_source(
    means: Tensor,
    colors: Tensor,
    viewmats: Tensor,
    radii: Tensor,
    camera_ids: np.ndarray,
    gaussian_ids: np.ndarray,
    n_gaussians: int,
    sh_degree: int | None,
) -> tuple[Tensor, np.ndarray]:
    """Colour source rows ``[S, D]`` and the row of each element (gsplat's colour rules)."""
    per_camera_rows = camera_ids * n_gaussians + gaussian_ids
    if sh_degree is None:
        if colors.dim() == 2:
            return colors, gaussian_ids
        return colors.reshape(-1, colors.shape[-1]), per_camera_rows
    if sh_degree == 0:  # view independent
        rgb = torch.clamp_min(SH_C0 * colors[..., 0, :] + 0.5, 0.0)
        return (rgb, gaussian_ids) if rgb.dim() == 2 else (rgb.reshape(-1, 3), per_camera_rows)
    c = viewmats.shape[0]
    visible = np.zeros((c, n_gaussians), np.bool_)
    visible[camera_ids, gaussian_ids] = (radii.cpu().numpy() > 0).all(axis=-1)
    rgb = shade(means, colors, viewmats, torch.from_numpy(visible).to(means.device), sh_degree)  # [C, N, 3]
    return rgb.reshape(-1, 3), per_camera_rows


def rasterize_cpu(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    colors: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    radius_clip: float = 0.0,
    eps2d: float = 0.3,
    sh_degree: int | None = None,
    packed: bool = True,
    backgrounds: Tensor | None = None,
    render_mode: str = "RGB",
) -> tuple[Tensor, Tensor, dict[str, Any]]:
    """``gsplat.rasterization`` semantics on the CPU (see :func:`posegs_ros.render.rasterize`)."""
    c, n = viewmats.shape[0], means.shape[0]
    radii, means2d, depths, conics, camera_ids, gaussian_ids = ProjectGaussians.apply(
        means, quats, scales, opacities, viewmats, Ks, width, height, eps2d, near_plane, far_plane, radius_clip, packed
    )
    if packed:
        cam_np, gauss_np = camera_ids.cpu().numpy(), gaussian_ids.cpu().numpy()
    else:
        cam_np = np.repeat(np.arange(c, dtype=np.int64), n)
        gauss_np = np.tile(np.arange(n, dtype=np.int64), c)
    with_rgb = render_mode in ("RGB", "RGB+D", "RGB+ED")
    color_src, color_rows = None, None
    if with_rgb:
        color_src, color_rows = _color_source(means, colors, viewmats, radii, cam_np, gauss_np, n, sh_degree)
    sources = ElementSources(color_rows, gauss_np, depth_channel=render_mode != "RGB")
    flat_m2d, flat_conics, flat_depths = means2d.reshape(-1, 2), conics.reshape(-1, 3), depths.reshape(-1)
    opac_np = _np32(opacities)
    bins = bin_gaussians(
        _np32(flat_m2d), _np32(flat_conics), np.ascontiguousarray(opac_np[gauss_np]),
        np.ascontiguousarray(radii.reshape(-1, 2).cpu().numpy()), _np32(flat_depths), cam_np, c, width, height,
    )  # fmt: skip
    render_colors, render_alphas = RasterizePixels.apply(
        flat_m2d, flat_conics, flat_depths, color_src, opacities, backgrounds if with_rgb else None, bins, sources
    )
    if render_mode in ("ED", "RGB+ED"):
        render_colors = torch.cat(
            [render_colors[..., :-1], render_colors[..., -1:] / render_alphas.clamp(min=1e-10)], dim=-1
        )
    meta: dict[str, Any] = {
        "batch_ids": torch.zeros_like(camera_ids) if packed else None,
        "camera_ids": camera_ids if packed else None,
        "gaussian_ids": gaussian_ids if packed else None,
        "radii": radii,
        "means2d": means2d,
        "depths": depths,
        "conics": conics,
        "opacities": opacities[gaussian_ids] if packed else opacities.unsqueeze(0).expand(c, n),
        "tile_shape": (rk.TILE_W, rk.TILE_H),
        "tile_width": bins.tiles_x,
        "tile_height": bins.tiles_y,
        "tiles_per_gauss": torch.from_numpy(np.diff(bins.elem_offsets).astype(np.int32)).reshape(radii.shape[:-1]),
        "flatten_ids": torch.from_numpy(bins.isect_elem),
        "isect_offsets": torch.from_numpy(bins.tile_offsets[:-1].astype(np.int32)).reshape(
            c, bins.tiles_y, bins.tiles_x
        ),
        "n_isects": bins.n_isects,
        "width": width,
        "height": height,
        "n_batches": 1,
        "n_cameras": c,
    }
    return render_colors, render_alphas, meta
