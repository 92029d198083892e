"""The PyTorch twin of the CPU rasterizer: the same gsplat 1.5 maths, differentiated by autograd.

Slow but plain: projection is vectorized tensor code and compositing evaluates every
Gaussian-pixel pair of gsplat's tile lists (bounding-box binning) as dense per-tile tensors,
in chunks of tiles that are recomputed during the backward pass
(:func:`torch.utils.checkpoint.checkpoint`), so memory stays bounded at 100k Gaussians and
640x480. Runs in float32 or float64 on any device; the tests use it as the ground truth
for the fast path and check it against finite differences.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from posegs_ros.render._common import (
    ALPHA_THRESHOLD,
    MAX_ALPHA,
    MAX_EXTEND,
    MIN_TRANSMITTANCE,
    TILE_SIZE,
    Projection,
    render_with,
)

__all__ = ["project_reference", "rasterize_pixels_reference", "rasterize_reference"]

# Gaussian-pixel pairs evaluated per checkpointed chunk (bounds the peak memory).
PAIRS_PER_CHUNK = 1 << 21


def quat_scale_to_covar(quats: Tensor, scales: Tensor) -> Tensor:
    """World covariance ``R S S R^T`` ``[N, 3, 3]`` from wxyz ``quats`` (any norm) and ``scales``."""
    w, x, y, z = (quats / quats.norm(dim=-1, keepdim=True)).unbind(-1)
    rot = torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    ).reshape(-1, 3, 3)  # fmt: skip
    m = rot * scales.unsqueeze(-2)
    return m @ m.transpose(-1, -2)


def project_reference(
    means: Tensor,  # [N, 3]
    quats: Tensor,  # [N, 4]
    scales: Tensor,  # [N, 3]
    opacities: Tensor,  # [N]
    viewmats: Tensor,  # [C, 4, 4]
    Ks: Tensor,  # [C, 3, 3]
    width: int,
    height: int,
    eps2d: float = 0.3,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    radius_clip: float = 0.0,
) -> Projection:
    """EWA projection with gsplat 1.5's clamped Jacobian, blur, culling and opacity-aware radii.

    Culled entries have ``radii == 0`` and zero means2d/depths/conics (and no gradient).
    """
    rot, trans = viewmats[:, :3, :3], viewmats[:, :3, 3]
    means_c = torch.einsum("cij,nj->cni", rot, means) + trans.unsqueeze(1)  # [C, N, 3]
    covars_c = torch.einsum("cij,njk,clk->cnil", rot, quat_scale_to_covar(quats, scales), rot)
    x, y, z = means_c.unbind(-1)
    in_depth = (z >= near_plane) & (z <= far_plane)
    z = torch.where(in_depth, z, torch.ones_like(z))  # keep culled entries finite
    fx, fy = Ks[:, 0, 0, None], Ks[:, 1, 1, None]
    cx, cy = Ks[:, 0, 2, None], Ks[:, 1, 2, None]
    tan_fovx, tan_fovy = 0.5 * width / fx, 0.5 * height / fy
    lim_x_pos, lim_x_neg = (width - cx) / fx + 0.3 * tan_fovx, cx / fx + 0.3 * tan_fovx
    lim_y_pos, lim_y_neg = (height - cy) / fy + 0.3 * tan_fovy, cy / fy + 0.3 * tan_fovy
    tx = z * torch.minimum(torch.maximum(x / z, -lim_x_neg), lim_x_pos)
    ty = z * torch.minimum(torch.maximum(y / z, -lim_y_neg), lim_y_pos)
    zero = torch.zeros_like(z)
    jac = torch.stack([fx / z, zero, -fx * tx / (z * z), zero, fy / z, -fy * ty / (z * z)], dim=-1)
    jac = jac.reshape(*z.shape, 2, 3)
    cov2d = jac @ covars_c @ jac.transpose(-1, -2)  # [C, N, 2, 2]
    cov2d = cov2d + eps2d * torch.eye(2, dtype=cov2d.dtype, device=cov2d.device)
    means2d = torch.stack([fx * x / z + cx, fy * y / z + cy], dim=-1)
    c00, c01, c11 = cov2d[..., 0, 0], 0.5 * (cov2d[..., 0, 1] + cov2d[..., 1, 0]), cov2d[..., 1, 1]
    det = c00 * c11 - c01 * c01
    valid = in_depth & (det > 0)
    det = torch.where(valid, det, torch.ones_like(det))
    conics = torch.stack([c11 / det, -c01 / det, c00 / det], dim=-1)

    with torch.no_grad():
        opac = opacities.detach().unsqueeze(0).expand_as(z)
        valid = valid & (opac >= ALPHA_THRESHOLD)
        extend = torch.sqrt(2.0 * torch.log(opac.clamp_min(ALPHA_THRESHOLD) / ALPHA_THRESHOLD)).clamp_max(MAX_EXTEND)
        radius_x = torch.ceil(extend * torch.sqrt(c00.detach().clamp_min(0)))
        radius_y = torch.ceil(extend * torch.sqrt(c11.detach().clamp_min(0)))
        valid = valid & ((radius_x > radius_clip) | (radius_y > radius_clip))
        mx, my = means2d[..., 0].detach(), means2d[..., 1].detach()
        valid = valid & (mx + radius_x > 0) & (mx - radius_x < width) & (my + radius_y > 0) & (my - radius_y < height)
        radii = torch.stack([radius_x, radius_y], dim=-1).to(torch.int32) * valid.unsqueeze(-1)
    keep = valid.unsqueeze(-1)
    return Projection(
        radii=radii,
        means2d=torch.where(keep, means2d, torch.zeros_like(means2d)),
        depths=torch.where(valid, means_c[..., 2], torch.zeros_like(z)),
        conics=torch.where(keep, conics, torch.zeros_like(conics)),
    )


def _bin_by_bounding_box(
    means2d: Tensor, radii: Tensor, depths: Tensor, image_ids: Tensor, n_images: int, width: int, height: int
) -> tuple[Tensor, Tensor]:
    """gsplat's tile binning: (Gaussian ids sorted by (image, tile, depth), tile offsets [T+1])."""
    tiles_x, tiles_y = math.ceil(width / TILE_SIZE), math.ceil(height / TILE_SIZE)
    ids = torch.nonzero((radii > 0).all(dim=-1)).squeeze(-1)
    m, r = means2d[ids].detach() / TILE_SIZE, radii[ids].to(means2d.dtype) / TILE_SIZE
    lo = torch.floor(m - r).long()
    hi = torch.ceil(m + r).long()
    lo[:, 0].clamp_(0, tiles_x), hi[:, 0].clamp_(0, tiles_x)
    lo[:, 1].clamp_(0, tiles_y), hi[:, 1].clamp_(0, tiles_y)
    span = hi - lo
    counts = span[:, 0] * span[:, 1]
    elem = torch.repeat_interleave(torch.arange(len(ids), device=ids.device), counts)
    first = torch.cumsum(counts, 0) - counts
    k = torch.arange(len(elem), device=ids.device) - first[elem]
    tx = lo[elem, 0] + k % span[elem, 0]
    ty = lo[elem, 1] + k // span[elem, 0]
    tile = image_ids[ids][elem] * (tiles_x * tiles_y) + ty * tiles_x + tx
    # lexicographic (tile, depth, Gaussian index): stable sorts from the last key to the first
    order = torch.sort(depths[ids][elem], stable=True).indices
    order = order[torch.sort(tile[order], stable=True).indices]
    n_tiles = n_images * tiles_x * tiles_y
    offsets = torch.zeros(n_tiles + 1, dtype=torch.long, device=ids.device)
    offsets[1:] = torch.cumsum(torch.bincount(tile, minlength=n_tiles), 0)
    return ids[elem[order]], offsets


def _composite_tiles(
    means2d: Tensor,  # [M, 2]
    conics: Tensor,  # [M, 3]
    colors: Tensor,  # [M, D]
    opacities: Tensor,  # [M]
    gauss: Tensor,  # [B, L] Gaussian ids front to back, padded with 0
    present: Tensor,  # [B, L] bool, False on padding
    pixels: Tensor,  # [B, P, 2] pixel centres
) -> tuple[Tensor, Tensor]:
    """Front-to-back compositing of B tiles: (colours [B, P, D], final transmittance [B, P])."""
    mean = means2d[gauss]  # [B, L, 2]
    conic = conics[gauss]
    dx = mean[..., 0:1] - pixels[:, None, :, 0]  # [B, L, P]
    dy = mean[..., 1:2] - pixels[:, None, :, 1]
    a, b, c = (conic[..., i : i + 1] for i in range(3))
    sigma = 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy
    alpha = torch.clamp_max(opacities[gauss].unsqueeze(-1) * torch.exp(-sigma), MAX_ALPHA)
    hit = present.unsqueeze(-1) & (sigma >= 0) & (alpha >= ALPHA_THRESHOLD)
    alpha = torch.where(hit, alpha, torch.zeros_like(alpha))
    survive = torch.cumprod(1.0 - alpha, dim=1)  # transmittance after each Gaussian
    # gsplat stops a pixel (excluding that Gaussian) when T would fall to 1e-4 or below
    used = hit & (survive > MIN_TRANSMITTANCE)
    before = torch.cat([torch.ones_like(survive[:, :1]), survive[:, :-1]], dim=1)
    weights = torch.where(used, alpha * before, torch.zeros_like(alpha))
    final_t = torch.where(used, 1.0 - alpha, torch.ones_like(alpha)).prod(dim=1)  # [B, P]
    return torch.einsum("blp,bld->bpd", weights, colors[gauss]), final_t


def rasterize_pixels_reference(
    means2d: Tensor,  # [M, 2]
    conics: Tensor,  # [M, 3]
    colors: Tensor,  # [M, D]
    opacities: Tensor,  # [M]
    radii: Tensor,  # [M, 2] int32
    depths: Tensor,  # [M]
    image_ids: Tensor,  # [M] int64 image of each entry
    n_images: int,
    width: int,
    height: int,
    backgrounds: Tensor | None = None,  # [C, D]
) -> tuple[Tensor, Tensor, dict[str, Any]]:
    """Composite projected Gaussians into ``[C, H, W, D]`` colours and ``[C, H, W, 1]`` alphas."""
    d = colors.shape[-1]
    tiles_x, tiles_y = math.ceil(width / TILE_SIZE), math.ceil(height / TILE_SIZE)
    n_tiles = n_images * tiles_x * tiles_y
    n_pix = TILE_SIZE * TILE_SIZE
    flat_ids, offsets = _bin_by_bounding_box(means2d, radii, depths, image_ids, n_images, width, height)
    counts = offsets[1:] - offsets[:-1]
    local = torch.arange(n_pix, device=means2d.device)
    tile_pix = torch.stack([local % TILE_SIZE, local // TILE_SIZE], dim=-1).to(means2d.dtype) + 0.5

    tile_colors = means2d.new_zeros(n_tiles, n_pix, d)
    tile_t = means2d.new_ones(n_tiles, n_pix)
    busy = torch.nonzero(counts > 0).squeeze(-1)
    busy = busy[torch.argsort(counts[busy], stable=True)]  # similar list lengths share a chunk
    out_ids, out_colors, out_t = [], [], []
    start = 0
    while start < len(busy):
        stop = start + 1
        while stop < len(busy) and (stop - start + 1) * int(counts[busy[stop]]) * n_pix <= PAIRS_PER_CHUNK:
            stop += 1
        tiles = busy[start:stop]
        length = int(counts[tiles].max())
        slot = torch.arange(length, device=means2d.device)
        present = slot.unsqueeze(0) < counts[tiles].unsqueeze(1)
        gather = (offsets[tiles].unsqueeze(1) + slot).clamp_max(len(flat_ids) - 1)
        gauss = torch.where(present, flat_ids[gather], torch.zeros_like(gather))
        in_image = tiles % (tiles_x * tiles_y)
        origin = torch.stack([in_image % tiles_x, in_image // tiles_x], dim=-1).to(means2d.dtype) * TILE_SIZE
        pixels = origin.unsqueeze(1) + tile_pix  # [B, P, 2]
        args = (means2d, conics, colors, opacities, gauss, present, pixels)
        if torch.is_grad_enabled():
            chunk_colors, chunk_t = checkpoint(_composite_tiles, *args, use_reentrant=False)
        else:
            chunk_colors, chunk_t = _composite_tiles(*args)
        out_ids.append(tiles)
        out_colors.append(chunk_colors)
        out_t.append(chunk_t)
        start = stop
    if out_ids:
        ids = torch.cat(out_ids)
        tile_colors = tile_colors.index_copy(0, ids, torch.cat(out_colors))
        tile_t = tile_t.index_copy(0, ids, torch.cat(out_t))

    def to_image(x: Tensor) -> Tensor:  # [n_tiles, P, K] -> [C, H, W, K]
        k = x.shape[-1]
        x = x.reshape(n_images, tiles_y, tiles_x, TILE_SIZE, TILE_SIZE, k).permute(0, 1, 3, 2, 4, 5)
        return x.reshape(n_images, tiles_y * TILE_SIZE, tiles_x * TILE_SIZE, k)[:, :height, :width]

    render_colors = to_image(tile_colors)
    final_t = to_image(tile_t.unsqueeze(-1))
    if backgrounds is not None:
        render_colors = render_colors + final_t * backgrounds[:, None, None, :]
    meta = {
        "tile_size": TILE_SIZE,
        "tile_width": tiles_x,
        "tile_height": tiles_y,
        "flatten_ids": flat_ids,
        "isect_offsets": offsets[:-1].reshape(n_images, tiles_y, tiles_x),
    }
    return render_colors, 1.0 - final_t, meta


def rasterize_reference(
    means: Tensor,  # [N, 3]
    quats: Tensor,  # [N, 4]
    scales: Tensor,  # [N, 3]
    opacities: Tensor,  # [N]
    colors: Tensor,  # [N, D] | [C, N, D] | [N, K, 3] | [C, N, K, 3]
    viewmats: Tensor,  # [C, 4, 4]
    Ks: Tensor,  # [C, 3, 3]
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
    """``gsplat.rasterization`` semantics, pure PyTorch (see :func:`posegs_ros.render.rasterize`)."""
    return render_with(
        project_reference,
        rasterize_pixels_reference,
        means, quats, scales, opacities, colors, viewmats, Ks, width, height,
        near_plane, far_plane, radius_clip, eps2d, sh_degree, packed, backgrounds, render_mode,
    )  # fmt: skip
