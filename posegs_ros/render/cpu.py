"""CPU fast path: numba kernels with analytic, deterministic backward passes.

Two autograd Functions, like gsplat: :class:`ProjectGaussians` (3D Gaussians and cameras to
2D means, depths, conics; packs the visible entries when asked) and :class:`RasterizePixels`
(2D Gaussians to pixels; gathers each entry's colour, opacity and depth itself, applies
gsplat's degree-0 SH colour rule and the expected-depth division). Keeping the packing,
gathering and these per-element/per-pixel rules inside the Functions (numpy, fixed-order
reductions in the backward) leaves almost no PyTorch glue, which matters on small machines
where every parallel PyTorch op pays a thread wake-up (and, on a busy machine, can wait a
whole scheduler time slice for its second OpenMP thread). The kernels live in
``_project_kernels`` and ``_raster_kernels`` and are compiled by numba on first use
(cached on disk).

All kernel arrays are float32 (projection maths in float64 scalars, pixel maths in float32
like gsplat); float64 inputs are accepted and rounded to float32 on the way in, results are
returned in the input dtype.

Backward passes compute only what is asked for: with only the viewmats requiring grad (pose
tracking), the projection skips the per-Gaussian mean, quaternion and scale gradients and
the rasterizer the colour and opacity sums (the 2D gradients that the viewmats need stay).

:func:`record_phases` collects per-phase wall times (for ``posegs bench render``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx

from posegs_ros.render import _project_kernels as pk
from posegs_ros.render import _raster_kernels as rk
from posegs_ros.render._common import ALPHA_THRESHOLD, shade
from posegs_ros.render._raster_kernels import SIGMA_MARGIN
from posegs_ros.render._threads import run_blocks, run_shared

__all__ = ["ProjectGaussians", "RasterizePixels", "TileBins", "bin_gaussians", "rasterize_cpu", "record_phases"]

_ELEMENT_BLOCK = 1024  # elements per work item of the per-element kernels
_SORT_CHUNK = 4096  # depth-sorted elements per work item when bucketing intersections by tile
_phases: dict[str, float] | None = None


@contextmanager
def record_phases() -> Iterator[dict[str, float]]:
    """Within the block, add the wall time (s) of each renderer phase into the yielded dict."""
    global _phases
    previous, _phases = _phases, {}
    try:
        yield _phases
    finally:
        _phases = previous


def _tick() -> float:
    return time.perf_counter() if _phases is not None else 0.0


def _tock(name: str, start: float) -> None:
    if _phases is not None:
        _phases[name] = _phases.get(name, 0.0) + time.perf_counter() - start


def _np32(x: Tensor) -> np.ndarray:
    return np.ascontiguousarray(x.detach().to(torch.float32).cpu().numpy())


def _tensor(x: np.ndarray, like: Tensor) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(x)).to(like.device, like.dtype)


def _channel_groups(values: np.ndarray, n_groups: int) -> np.ndarray:
    """``values`` [..., D] as float32 [n_groups, ..., 4]: channels in groups of 4, zero padded."""
    d = values.shape[-1]
    if d == rk.CHANNELS and n_groups == 1:
        return np.ascontiguousarray(values, dtype=np.float32)[None]
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


def _pack_visible(
    radii: np.ndarray, means2d: np.ndarray, depths: np.ndarray, conics: np.ndarray, bounds: np.ndarray, n: int
) -> tuple[np.ndarray, ...]:
    """The visible entries (both radii > 0) of the flattened ``[C * N, ...]`` projection results,
    row-major like gsplat: packed radii, means2d, depths, conics, bounds ``[nnz, ...]``, their
    camera and Gaussian ids ``[2, nnz]`` and each entry's slot ``[C * N]`` (-1: not visible)."""
    total = radii.shape[0]
    n_blocks = -(-total // _ELEMENT_BLOCK)
    block_starts = np.zeros(n_blocks + 1, np.int64)
    run_blocks(pk.count_visible, total, _ELEMENT_BLOCK, radii, block_starts[1:])
    np.cumsum(block_starts, out=block_starts)
    nnz = int(block_starts[-1])
    packed = tuple(np.empty((nnz, *x.shape[1:]), x.dtype) for x in (radii, means2d, depths, conics, bounds))
    ids = np.empty((2, nnz), np.int64)
    elements = np.empty(total, np.int64)
    run_blocks(
        pk.pack_visible, total, _ELEMENT_BLOCK, max(n, 1), block_starts, radii, means2d, depths, conics, bounds,
        *packed, ids, elements,
    )  # fmt: skip
    return (*packed, ids, elements)


class ProjectGaussians(torch.autograd.Function):
    """EWA projection (numba); gradients to means, quats, scales and viewmats.

    Returns radii (int32), means2d, depths, conics, camera_ids, gaussian_ids: dense
    ``[C, N, ...]`` (and empty id tensors) or, with ``packed``, only the visible entries
    ``[nnz, ...]`` with their int64 camera and Gaussian ids. ``arrays`` (a dict) receives the
    same results as float32 numpy arrays, for the rasterizer.
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
        arrays: dict[str, np.ndarray],
    ) -> tuple[Tensor, ...]:
        n, c = means.shape[0], viewmats.shape[0]
        radii = np.empty((c, n, 2), np.int32)
        means2d = np.empty((c, n, 2), np.float32)
        depths = np.empty((c, n), np.float32)
        conics = np.empty((c, n, 3), np.float32)
        bounds = np.empty((c, n), np.int64)
        cams = pk.camera_constants(_np32(viewmats), _np32(Ks), int(width), int(height))
        arrs = [_np32(x) for x in (means, quats, scales, opacities)]
        run_blocks(
            pk.project_forward, n, pk.BLOCK, *arrs, cams, int(width), int(height), float(eps2d), float(near_plane),
            float(far_plane), float(radius_clip), radii, means2d, depths, conics, bounds,
        )  # fmt: skip
        ctx.arrays = arrs[:3]  # type: ignore[attr-defined]
        ctx.cams, ctx.radii, ctx.conics = cams, radii, conics  # type: ignore[attr-defined]
        ctx.view_like = torch.empty(0, dtype=viewmats.dtype, device=viewmats.device)  # type: ignore[attr-defined]
        ids = np.empty((2, 0), np.int64)
        radii, means2d, depths, conics, bounds = (
            x.reshape(c * n, *x.shape[2:]) for x in (radii, means2d, depths, conics, bounds)
        )
        if packed:
            radii, means2d, depths, conics, bounds, ids, elements = _pack_visible(
                radii, means2d, depths, conics, bounds, n
            )
        else:
            elements = np.arange(c * n, dtype=np.int64)
        ctx.elements = elements.reshape(c, n)  # type: ignore[attr-defined]
        arrays.update(radii=radii, means2d=means2d, depths=depths, conics=conics, bounds=bounds, ids=ids)
        shape = (-1,) if packed else (c, n)
        radii_t = torch.from_numpy(radii).reshape(*shape, 2).to(means.device)
        camera_ids = torch.from_numpy(ids[0].copy()).to(means.device)
        gaussian_ids = torch.from_numpy(ids[1].copy()).to(means.device)
        ctx.mark_non_differentiable(radii_t, camera_ids, gaussian_ids)
        m2d_t, depths_t, conics_t = (_tensor(x, means) for x in (means2d, depths, conics))
        return (
            radii_t, m2d_t.reshape(*shape, 2), depths_t.reshape(shape), conics_t.reshape(*shape, 3), camera_ids,
            gaussian_ids,
        )  # fmt: skip

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: Any, _v_radii: Tensor, v_means2d: Tensor, v_depths: Tensor, v_conics: Tensor, *_v_ids: Tensor
    ) -> tuple[Tensor | None, ...]:
        start = _tick()
        means, quats, scales = ctx.arrays
        cams = ctx.cams
        n, c = means.shape[0], cams.shape[0]
        grads = [_np32(v).reshape(-1, *shape) for v, shape in zip((v_means2d, v_depths, v_conics), ((2,), (), (3,)))]
        want_gaussians = any(ctx.needs_input_grad[:3])
        want_viewmats = bool(ctx.needs_input_grad[4])
        shape = (n, 3) if want_gaussians else (0, 3)
        v_means = np.zeros(shape, np.float32)
        v_quats = np.zeros((shape[0], 4), np.float32)
        v_scales = np.zeros(shape, np.float32)
        n_blocks = -(-n // pk.BLOCK)
        block_view = np.zeros((n_blocks, c, 12), np.float64)
        run_blocks(
            pk.project_backward, n, pk.BLOCK, means, quats, scales, cams, ctx.radii, ctx.conics, ctx.elements, *grads,
            want_gaussians, want_viewmats, v_means, v_quats, v_scales, block_view,
        )  # fmt: skip
        v_viewmats = None
        if want_viewmats:
            total = np.zeros((c, 12), np.float64)
            for blk in range(n_blocks):  # fixed order
                total += block_view[blk]
            v_view = np.zeros((c, 4, 4), np.float32)
            v_view[:, :3, :3] = total[:, :9].reshape(c, 3, 3)
            v_view[:, :3, 3] = total[:, 9:]
            v_viewmats = _tensor(v_view, ctx.view_like)

        def out(x: np.ndarray, i: int) -> Tensor | None:
            return _tensor(x, v_means2d) if ctx.needs_input_grad[i] else None

        result = (
            out(v_means, 0), out(v_quats, 1), out(v_scales, 2), None, v_viewmats,
            None, None, None, None, None, None, None, None, None,
        )  # fmt: skip
        _tock("project_bwd", start)
        return result


@dataclass
class TileBins:
    """Which Gaussians each tile composites, front to back, and where each one's pixels are."""

    rparams: np.ndarray  # [M, N_RPARAMS] float32 per element (mean, conic, opacity)
    tile_offsets: np.ndarray  # [n_tiles + 1] int64, tiles of all images, row-major per image
    isect_elem: np.ndarray  # [n_isect] int32: element of each intersection, tile by tile
    isect_box: np.ndarray  # [n_isect] int32: its packed tile-local pixel box
    isect_pos: np.ndarray  # [n_isect] int64: its index in element order
    elem_offsets: np.ndarray  # [M + 1] int64: intersections of element f in element order
    n_images: int
    width: int
    height: int
    tiles_x: int
    tiles_y: int

    @property
    def n_isects(self) -> int:
        return int(self.isect_elem.shape[0])

    def tile_order(self) -> np.ndarray:
        """All tiles (each writes its pixels), most intersections first (for load balance)."""
        return np.argsort(-np.diff(self.tile_offsets), kind="stable").astype(np.int64)


def bin_gaussians(
    means2d: np.ndarray,  # [M, 2] float32
    conics: np.ndarray,  # [M, 3] float32
    opacities: np.ndarray,  # [M] float32
    sigma_max: np.ndarray,  # [M] float64: the ellipse sigma <= sigma_max where o exp(-sigma) >= 1/255
    bounds: np.ndarray,  # [M] int64: tile bounds from the projection (0: not drawn)
    depths: np.ndarray,  # [M] float32
    image_ids: np.ndarray,  # [M] int64, non-decreasing
    n_images: int,
    width: int,
    height: int,
) -> TileBins:
    """Tile lists from the exact opacity-aware ellipses, each sorted by depth (stable)."""
    m = means2d.shape[0]
    tiles_x, tiles_y = math.ceil(width / rk.TILE_W), math.ceil(height / rk.TILE_H)
    rparams = np.empty((m, rk.N_RPARAMS), np.float32)
    bound_offsets = np.zeros(m + 1, np.int64)
    np.cumsum(bounds, out=bound_offsets[1:])
    elem_tiles = np.empty(int(bound_offsets[-1]), np.int32)
    elem_boxes = np.empty(int(bound_offsets[-1]), np.int32)
    counts = np.empty(m, np.int64)
    run_blocks(
        rk.list_tiles, m, _ELEMENT_BLOCK, means2d, conics, opacities, sigma_max, bounds, bound_offsets, image_ids,
        width, height, tiles_x, tiles_y, rparams, counts, elem_tiles, elem_boxes,
    )  # fmt: skip
    elem_offsets = np.zeros(m + 1, np.int64)
    np.cumsum(counts, out=elem_offsets[1:])
    n_isect = int(elem_offsets[-1])
    # sort each image's elements by depth, then bucket their intersections by tile in chunks
    # of the sorted order (counts per chunk and tile, prefix sums, scatter): every slot is
    # fixed by the order alone, whatever the chunking or the threads
    per_image = tiles_x * tiles_y
    image_starts = np.searchsorted(image_ids, np.arange(n_images + 1)).astype(np.int64)
    sorted_elems = np.empty(m, np.int64)
    n_sorted = np.empty(n_images, np.int64)
    run_blocks(rk.sort_by_depth, n_images, 1, depths, counts, image_starts, sorted_elems, n_sorted)
    chunks = [
        (img, image_starts[img] + lo, image_starts[img] + min(lo + _SORT_CHUNK, int(n_sorted[img])))
        for img in range(n_images)
        for lo in range(0, int(n_sorted[img]), _SORT_CHUNK)
    ]
    chunk_arr = np.array(chunks, np.int64).reshape(-1, 3)
    n_chunks = chunk_arr.shape[0]
    chunk_counts = np.zeros((n_chunks, per_image), np.int64)
    run_blocks(
        rk.count_chunk_tiles, n_chunks, 1, chunk_arr, sorted_elems, bound_offsets, counts, elem_tiles, per_image,
        chunk_counts,
    )  # fmt: skip
    tile_totals = np.zeros((n_images, per_image), np.int64)
    np.add.at(tile_totals, chunk_arr[:, 0], chunk_counts)
    tile_offsets = np.zeros(n_images * per_image + 1, np.int64)
    np.cumsum(tile_totals.reshape(-1), out=tile_offsets[1:])
    # first slot of chunk k in tile t: the tile's start plus the earlier chunks of its image
    chunk_cursors = np.cumsum(chunk_counts, axis=0) - chunk_counts
    if n_chunks:
        first_chunk = np.searchsorted(chunk_arr[:, 0], chunk_arr[:, 0])  # first chunk of each one's image
        chunk_cursors -= (np.cumsum(chunk_counts, axis=0) - chunk_counts)[first_chunk]
        chunk_cursors += tile_offsets[:-1].reshape(n_images, per_image)[chunk_arr[:, 0]]
    isect_elem = np.empty(n_isect, np.int32)
    isect_box = np.empty(n_isect, np.int32)
    isect_pos = np.empty(n_isect, np.int64)
    run_blocks(
        rk.scatter_chunks, n_chunks, 1, chunk_arr, sorted_elems, bound_offsets, counts, elem_offsets, elem_tiles,
        elem_boxes, per_image, chunk_cursors, isect_elem, isect_box, isect_pos,
    )  # fmt: skip
    return TileBins(
        rparams, tile_offsets, isect_elem, isect_box, isect_pos, elem_offsets, n_images, width, height, tiles_x,
        tiles_y,
    )  # fmt: skip


@dataclass
class ElementSources:
    """Where each projected entry (element) takes its colour and opacity from."""

    color_rows: np.ndarray | None  # [M] rows of the colour source, None without colours
    opacity_rows: np.ndarray  # [M] rows of the opacities [N]
    depth_channel: bool  # append the entry's depth as the last feature channel
    sh0: bool = False  # colour source rows are degree-0 SH coefficients: max(C0 x + 1/2, 0)
    expected_depth: bool = False  # divide the depth channel by max(alpha, 1e-10)


def _ed_channel(sources: ElementSources, d: int, group: int) -> int:
    """Index within channel group ``group`` of the expected-depth channel, -1 if not there."""
    k = d - 1 - rk.CHANNELS * group
    return k if sources.expected_depth and 0 <= k < rk.CHANNELS else -1


class RasterizePixels(torch.autograd.Function):
    """Front-to-back compositing (numba).

    Features of element ``f`` are ``colors[color_rows[f]]`` (through gsplat's degree-0 SH
    rule with ``sh0``) followed, with ``depth_channel``, by ``depths[f]``; its opacity is
    ``opacities[opacity_rows[f]]``. With ``expected_depth`` the depth channel is divided by
    the clamped alpha. Gradients go to means2d, conics, depths, colors, opacities and
    backgrounds.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: FunctionCtx,
        means2d: Tensor,  # [M, 2]
        conics: Tensor,  # [M, 3]
        depths: Tensor,  # [M]
        colors: Tensor | None,  # colour source, rows of colors.reshape(-1, D)
        opacities: Tensor,  # [N]
        backgrounds: Tensor | None,  # [C, D] (colour channels only)
        bins: TileBins,
        sources: ElementSources,
        depths_np: np.ndarray,  # [M] float32, the values of depths
    ) -> tuple[Tensor, Tensor]:
        start = _tick()
        c, h, w = bins.n_images, bins.height, bins.width
        m = means2d.shape[0]
        src, rows = np.zeros((0, 1), np.float32), np.zeros(0, np.int64)
        if colors is not None:
            assert sources.color_rows is not None
            src, rows = _np32(colors).reshape(-1, colors.shape[-1]), sources.color_rows
        d = max(1, (src.shape[1] if colors is not None else 0) + int(sources.depth_channel))
        n_groups = -(-d // rk.CHANNELS)
        groups = np.empty((n_groups, m, rk.CHANNELS), np.float32)
        run_blocks(
            rk.element_features, m, _ELEMENT_BLOCK, src, rows, sources.sh0, depths_np, sources.depth_channel, groups
        )
        use_bg = backgrounds is not None
        bg_full = np.zeros((c, d), np.float32)
        if backgrounds is not None:
            bg_full[:, : backgrounds.shape[1]] = _np32(backgrounds)
        bg = _channel_groups(bg_full, n_groups)
        image = np.empty((c, h, w, d), np.float32)
        out_alphas = np.empty((c, h, w, 1), np.float32)
        transmittance = np.empty((c, h, w), np.float32)
        last = np.empty((c, h, w), np.int32)
        tiles = bins.tile_order()
        for g in range(n_groups):  # alphas, T and last come out the same for every group
            run_shared(
                rk.rasterize_forward, tiles, bins.tile_offsets, bins.isect_elem, bins.isect_box, bins.rparams,
                groups[g], bg[g], use_bg, w, h, bins.tiles_x, bins.tiles_y, image, rk.CHANNELS * g,
                min(rk.CHANNELS, d - rk.CHANNELS * g), _ed_channel(sources, d, g), out_alphas, transmittance, last,
            )  # fmt: skip
        ctx.save_for_backward(opacities)
        ctx.src = src if sources.sh0 else None  # type: ignore[attr-defined]
        ctx.groups, ctx.bg, ctx.d, ctx.use_bg = groups, bg, d, use_bg  # type: ignore[attr-defined]
        ctx.bins, ctx.sources = bins, sources  # type: ignore[attr-defined]
        ctx.colors_shape = None if colors is None else colors.shape  # type: ignore[attr-defined]
        ctx.bg_channels = None if backgrounds is None else backgrounds.shape[1]  # type: ignore[attr-defined]
        ctx.transmittance, ctx.last = transmittance, last  # type: ignore[attr-defined]
        ctx.image = image  # type: ignore[attr-defined]
        result = _tensor(image, means2d), _tensor(out_alphas, means2d)
        _tock("raster_fwd", start)
        return result

    @staticmethod
    def backward(ctx: Any, v_colors_img: Tensor, v_alphas_img: Tensor) -> tuple[Tensor | None, ...]:
        start = _tick()
        bins: TileBins = ctx.bins
        sources: ElementSources = ctx.sources
        (opacities,) = ctx.saved_tensors
        m, n_groups, d = bins.rparams.shape[0], ctx.groups.shape[0], ctx.d
        v_img_np = _np32(v_colors_img)
        v_alphas = _np32(v_alphas_img)
        no_alpha_grad = np.zeros_like(v_alphas) if n_groups > 1 else v_alphas
        isect_grads = np.empty((n_groups, bins.n_isects, rk.N_GRAD_FIXED + rk.CHANNELS), np.float32)
        tile_v_bg = np.zeros((n_groups, bins.tile_offsets.shape[0] - 1, rk.CHANNELS), np.float64)
        tiles = bins.tile_order()
        for g in range(n_groups):  # the alpha term counts once
            run_shared(
                rk.rasterize_backward, tiles, bins.tile_offsets, bins.isect_elem, bins.isect_box, bins.isect_pos,
                bins.rparams, ctx.groups[g], ctx.bg[g], ctx.use_bg, bins.width, bins.height,
                bins.tiles_x, bins.tiles_y, ctx.transmittance, ctx.last, v_img_np, rk.CHANNELS * g,
                min(rk.CHANNELS, d - rk.CHANNELS * g), _ed_channel(sources, d, g), ctx.image,
                v_alphas if g == 0 else no_alpha_grad, isect_grads[g], tile_v_bg[g],
            )  # fmt: skip
        _tock("raster_bwd", start)
        start = _tick()
        v_means2d = np.empty((m, 2), np.float32)
        v_conics = np.empty((m, 3), np.float32)
        v_opac_elem = np.empty(m, np.float32)
        v_feats = np.empty((m, n_groups * rk.CHANNELS), np.float32)
        run_blocks(
            rk.gather_gradients, m, _ELEMENT_BLOCK, bins.elem_offsets, isect_grads, v_means2d, v_conics, v_opac_elem,
            v_feats,
        )  # fmt: skip
        like = v_colors_img
        v_colors = v_depths = v_bg = v_opacities = None
        if ctx.colors_shape is not None and ctx.needs_input_grad[3]:
            n_channels = ctx.colors_shape[-1]
            n_src = int(np.prod(ctx.colors_shape[:-1]))
            summed = np.zeros((n_src, n_channels), np.float64)
            src = ctx.src if sources.sh0 else np.zeros((1, n_channels), np.float32)
            rk.sum_feature_rows(v_feats, n_channels, sources.color_rows, src, sources.sh0, summed)
            v_colors = _tensor(summed.reshape(ctx.colors_shape), like)
        if sources.depth_channel:
            v_depths = _tensor(v_feats[:, d - 1], like)
        if ctx.needs_input_grad[4]:
            v_opacities = _tensor(_sum_rows(v_opac_elem, sources.opacity_rows, opacities.shape[0]), like)
        if ctx.bg_channels is not None and ctx.needs_input_grad[5]:
            per_image = tile_v_bg.reshape(n_groups, bins.n_images, -1, rk.CHANNELS)
            total = np.zeros((n_groups, bins.n_images, rk.CHANNELS), np.float64)
            for i in range(per_image.shape[2]):  # fixed order
                total += per_image[:, :, i]
            v_bg = _tensor(np.moveaxis(total, 0, -2).reshape(bins.n_images, -1)[:, : ctx.bg_channels], like)
        result = (_tensor(v_means2d, like), _tensor(v_conics, like), v_depths, v_colors, v_opacities, v_bg)
        _tock("gather", start)
        return (*result, None, None, None)


def _color_source(
    means: Tensor,
    colors: Tensor,
    viewmats: Tensor,
    radii: np.ndarray,
    camera_ids: np.ndarray,
    gaussian_ids: np.ndarray,
    n_gaussians: int,
    sh_degree: int | None,
) -> tuple[Tensor, np.ndarray, bool]:
    """Colour source (its rows are ``colors.reshape(-1, D)``), the row of each element and
    whether the rows are degree-0 SH coefficients (gsplat's colour rules)."""
    per_camera_rows = camera_ids * n_gaussians + gaussian_ids
    if sh_degree is None:
        return colors, (gaussian_ids if colors.dim() == 2 else per_camera_rows), False
    if sh_degree == 0:  # view independent: the DC coefficients, mapped in the rasterizer
        k = colors.shape[-2]
        return colors, (gaussian_ids if colors.dim() == 3 else per_camera_rows) * k, True
    c = viewmats.shape[0]
    visible = np.zeros((c, n_gaussians), np.bool_)
    visible[camera_ids, gaussian_ids] = (radii > 0).all(axis=-1)
    rgb = shade(means, colors, viewmats, torch.from_numpy(visible).to(means.device), sh_degree)  # [C, N, 3]
    return rgb, per_camera_rows, False


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
    start = _tick()
    c, n = viewmats.shape[0], means.shape[0]
    arrays: dict[str, np.ndarray] = {}
    radii, means2d, depths, conics, camera_ids, gaussian_ids = ProjectGaussians.apply(
        means, quats, scales, opacities, viewmats, Ks, width, height, eps2d, near_plane, far_plane, radius_clip,
        packed, arrays,
    )  # fmt: skip
    if packed:
        cam_np, gauss_np = arrays["ids"]
    else:
        cam_np = np.repeat(np.arange(c, dtype=np.int64), n)
        gauss_np = np.tile(np.arange(n, dtype=np.int64), c)
    with_rgb = render_mode in ("RGB", "RGB+D", "RGB+ED")
    color_src, color_rows, sh0 = None, None, False
    if with_rgb:
        color_src, color_rows, sh0 = _color_source(
            means, colors, viewmats, arrays["radii"], cam_np, gauss_np, n, sh_degree
        )
    sources = ElementSources(
        color_rows, gauss_np, depth_channel=render_mode != "RGB", sh0=sh0,
        expected_depth=render_mode in ("ED", "RGB+ED"),
    )  # fmt: skip
    _tock("project", start)
    start = _tick()
    opac_np = _np32(opacities)
    with np.errstate(divide="ignore", invalid="ignore"):  # culled below the threshold anyway
        sigma_max = np.log(opac_np.astype(np.float64) / ALPHA_THRESHOLD)
    sigma_max += SIGMA_MARGIN * (1.0 + sigma_max)
    bins = bin_gaussians(
        arrays["means2d"], arrays["conics"], np.take(opac_np, gauss_np), np.take(sigma_max, gauss_np),
        arrays["bounds"], arrays["depths"], cam_np, c, width, height,
    )  # fmt: skip
    _tock("bin", start)
    flat = (means2d, conics, depths) if packed else (means2d.reshape(-1, 2), conics.reshape(-1, 3), depths.reshape(-1))
    render_colors, render_alphas = RasterizePixels.apply(
        *flat, color_src, opacities, backgrounds if with_rgb else None, bins, sources, arrays["depths"]
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
