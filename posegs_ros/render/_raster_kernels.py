"""Numba kernels: tile binning, front-to-back compositing and its analytic backward.

gsplat's per-pixel rules (alpha = min(0.999, o exp(-sigma)), skip sigma < 0 or alpha < 1/255,
stop a pixel when T would fall to 1e-4 or below), evaluated only where they can matter: a
Gaussian changes a pixel only where ``o exp(-sigma) >= 1/255``, i.e. inside the ellipse
``sigma <= log(255 o)``. So

- binning puts a Gaussian into the tiles that ellipse reaches (per band of tile rows, the
  exact x extent of the ellipse over that band), not its whole bounding box, and records for
  each (Gaussian, tile) the box of pixels its ellipse spans there; the projection supplies
  an upper bound of the tile count, so one listing pass suffices;
- within a tile, a Gaussian visits the rows of that box and covers each row with
  :data:`WINDOW`-pixel windows starting at the box's left edge. A window is one SIMD vector
  (every lane computes sigma, exp(-sigma) and gsplat's exact tests; lanes outside the ellipse
  fail the alpha test exactly as they would in gsplat): the per-pixel loops have no branches
  and a fixed trip count, and all per-pixel state of a tile lives in one buffer at fixed
  plane offsets, so LLVM vectorizes them without runtime alias checks (tile rows are padded,
  so a window never leaves its row). The kernels ask for 512-bit vectors, one window per
  instruction, where the CPU has AVX-512;
- ``exp(-sigma)`` is a float32 polynomial (relative error < 3e-7, the float32 rounding of
  its inputs), so it vectorizes without a vector maths library;
- the backward walks each tile back to front, recovering T by division as gsplat does, with
  each Gaussian's gradient sums kept per lane and added in a fixed tree order.

Tiles are :data:`TILE_W` x :data:`TILE_H` pixels (wider than gsplat's 16x16: fewer
intersections; the rendered result does not depend on the tiling).

Every kernel runs with the GIL released on all of the caller's threads at once, the
threads taking work items (tiles, element blocks, images, chunks) one at a time through an
atomic counter (:func:`~posegs_ros.render._kernel_support.claim`). Determinism: an item is
computed the same way whichever thread takes it and writes only its own outputs; tiles
run their Gaussians in a fixed order; per-intersection gradients go to their own slot (laid
out element by element) and are summed per Gaussian in tile order; per-tile background
partials are summed in tile order. Nothing depends on the thread count or on scheduling.

Pixel work is float32 like gsplat's kernels (binning geometry is float64). The kernels
composite exactly :data:`CHANNELS` colour channels; callers render wider features in groups
(as gsplat does with its channel chunks) and pad the last group with zeros.
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from posegs_ros.render._common import ALPHA_THRESHOLD, MAX_ALPHA, MIN_TRANSMITTANCE
from posegs_ros.render._kernel_support import claim, prefer_wide_vectors

TILE_W = 32
TILE_H = 16
WINDOW = 16  # pixels per vector loop (a row of a Gaussian's box is visited in such windows)
ROW_STRIDE = TILE_W + WINDOW  # tile rows are padded so that a window never leaves its row
PLANE = TILE_H * ROW_STRIDE  # floats per per-pixel plane of the tile state
# forward tile state planes: T, colour sums (4), last index; backward: T, rest, dL/dcolour (4),
# last index
# (unsigned offsets: numba then emits no negative-index wraparound code)
F_PLANES = 6
F_T, F_ACC0, F_ACC1, F_ACC2, F_ACC3, F_LAST = (np.uint64(i * PLANE) for i in range(F_PLANES))
B_PLANES = 7
B_T, B_REST, B_V0, B_V1, B_V2, B_V3, B_LAST = (np.uint64(i * PLANE) for i in range(B_PLANES))
N_SUMS = 10  # per-lane sums of the backward
CHANNELS = 4
# Widening of the visited ellipse beyond sigma <= log(o / threshold) so that rounding never
# drops a pixel that the exact per-pixel test accepts.
SIGMA_MARGIN = 1e-4
# Hot loops may fuse multiply-adds and use reciprocals; results stay deterministic.
_FAST = {"contract", "nsz", "arcp"}
# float32 constants of the per-pixel rules
_THR = np.float32(ALPHA_THRESHOLD)
_MAXA = np.float32(MAX_ALPHA)
_MINT = np.float32(MIN_TRANSMITTANCE)
_ZERO = np.float32(0.0)
_HALF = np.float32(0.5)
_ONE = np.float32(1.0)
_MIN_ALPHA_ED = np.float32(1e-10)  # gsplat's clamp of alpha under expected depth
_SH_C0 = np.float32(0.28209479177387814)  # degree-0 SH basis (posegs_ros.render.sh.SH_C0)
# exp(-s) = 2^-n 2^-f: s is clamped to [0, _EXP_CLAMP] (o exp(-8) < 1/255 for any o <= 1, so
# the clamp never changes a decision); 2^-f on [0, 1) by a degree-5 fit (relative error
# 2.7e-7 in float32 arithmetic).
_EXP_CLAMP = np.float32(8.0)
_LOG2E = np.float32(1.4426950408889634)
_E0 = np.float32(0.9999999403953552)
_E1 = np.float32(-0.6931425929069519)
_E2 = np.float32(0.2401745468378067)
_E3 = np.float32(-0.05528592690825462)
_E4 = np.float32(0.00919537153095007)
_E5 = np.float32(-0.0009413947118446231)
# fields of an ellipse's float64 geometry tuple (see _ellipse)
(
    E_MX, E_MY, E_A, E_B, E_C, E_SIGMA_MAX, E_DET, E_INV_A, E_HALF_H, E_HALF_W, E_REACH,
) = range(11)  # fmt: skip
# per-element float32 pixel parameters: mean x, mean y, conic a, b, c, opacity (+ padding)
R_MX, R_MY, R_A, R_B, R_C, R_OPAC = range(6)
N_RPARAMS = 8
# columns of the per-intersection gradient buffer (colours follow)
G_MX, G_MY, G_A, G_B, G_C, G_OPAC = range(6)
N_GRAD_FIXED = 6


@intrinsic
def _exp2_neg_int(typingctx, n):  # type: ignore[no-untyped-def]
    """float32 ``2 ** -n`` for an int32 ``n`` in 0 .. 126 (built from the exponent bits)."""
    if n != types.int32:
        return None

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        i32 = ir.IntType(32)
        exponent = builder.sub(ir.Constant(i32, 127), args[0])
        return builder.bitcast(builder.shl(exponent, ir.Constant(i32, 23)), ir.FloatType())

    return types.float32(types.int32), codegen


@njit(cache=True, error_model="numpy", fastmath=_FAST)
def _exp_neg(s):
    """``exp(-s)`` in float32 for ``0 <= s <= 8`` (the caller's value is clamped to that)."""
    s = min(max(s, _ZERO), _EXP_CLAMP)
    t = s * _LOG2E
    n = np.int32(t)  # t >= 0: truncation is floor
    f = t - np.float32(n)
    p = ((((_E5 * f + _E4) * f + _E3) * f + _E2) * f + _E1) * f + _E0
    return p * _exp2_neg_int(n)


@njit(cache=True, error_model="numpy")
def _ellipse(mx, my, a, b, c, sigma_max):
    """float64 geometry of the ellipse ``sigma <= sigma_max`` of conic (a, b, c) around (mx, my):
    (mx, my, a, b, c, sigma_max, det, 1 / a, half height, half width, reach), reach being
    ``my - y`` of its rightmost point."""
    det = a * c - b * b
    half_w = math.sqrt(2.0 * sigma_max * c / det)
    return (
        mx, my, a, b, c, sigma_max, det, 1.0 / a, math.sqrt(2.0 * sigma_max * a / det), half_w, b / c * half_w,
    )  # fmt: skip


@njit(cache=True, error_model="numpy")
def _pixel_rows(geo, y_first, n_rows):
    """Rows (relative to ``y_first``, clipped to ``0 .. n_rows - 1``) whose pixel centres the
    ellipse ``geo`` (see :func:`_ellipse`) may reach; empty when first > last."""
    lo = math.ceil(geo[E_MY] - geo[E_HALF_H] - 0.5) - y_first
    hi = math.floor(geo[E_MY] + geo[E_HALF_H] - 0.5) - y_first
    return max(0, int(lo)), min(n_rows - 1, int(hi))


@njit(cache=True, error_model="numpy")
def _chord_end(geo, dy, side):
    """Left (``side = -1``) or right (``+1``) pixel-centre x of the ellipse ``geo`` at
    vertical offset ``dy = my - py``; the full-extent bound if ``dy`` misses it (rounding)."""
    disc = 2.0 * geo[E_A] * geo[E_SIGMA_MAX] - geo[E_DET] * dy * dy
    if disc < 0.0:
        return geo[E_MX] + side * geo[E_HALF_W]
    return geo[E_MX] + (geo[E_B] * dy + side * math.sqrt(disc)) * geo[E_INV_A]


@njit(cache=True, error_model="numpy")
def _band_columns(geo, row_top, row_bottom, x_first, x_last):
    """Pixel columns in ``[x_first, x_last]`` the ellipse ``geo`` reaches within pixel rows
    ``[row_top, row_bottom]`` (absolute); empty when lo > hi."""
    # the left boundary of an ellipse is convex in y, the right one concave: their extremes
    # over a band are at the band-clamped y of the leftmost / rightmost points
    my = geo[E_MY]
    reach = geo[E_REACH]
    dy_top = my - (row_top + 0.5)
    dy_bottom = my - (row_bottom + 0.5)
    left = _chord_end(geo, min(dy_top, max(dy_bottom, -reach)), -1.0)
    right = _chord_end(geo, min(dy_top, max(dy_bottom, reach)), 1.0)
    return max(x_first, int(math.ceil(left - 0.5))), min(x_last, int(math.floor(right - 0.5)))


@njit(cache=True, error_model="numpy")
def _visit_tiles(geo, width, height, tiles_x, tile_base, out, boxes, pos, limit):
    """Count the tiles the ellipse ``geo`` reaches and write their global ids to
    ``out[pos:]`` and the tile-local pixel box it spans there to ``boxes[pos:]`` (packed
    ``r0 | r1 << 8 | c0 << 16 | c1 << 24``), at most ``limit`` of them. Row-major tile order."""
    r0, r1 = _pixel_rows(geo, 0, height)
    n = 0
    if r0 > r1:
        return 0
    for ty in range(r0 // TILE_H, r1 // TILE_H + 1):
        top = max(r0, ty * TILE_H)
        bottom = min(r1, ty * TILE_H + TILE_H - 1)
        lo, hi = _band_columns(geo, top, bottom, 0, width - 1)
        if lo > hi:
            continue
        for tx in range(lo // TILE_W, hi // TILE_W + 1):
            if n < limit:
                x0 = tx * TILE_W
                out[pos + n] = tile_base + ty * tiles_x + tx
                boxes[pos + n] = (
                    (top - ty * TILE_H)
                    | ((bottom - ty * TILE_H) << 8)
                    | ((max(lo, x0) - x0) << 16)
                    | ((min(hi, x0 + TILE_W - 1) - x0) << 24)
                )
            n += 1
    return n


@njit(cache=True, nogil=True, error_model="numpy")
def list_tiles(
    counter, n_items, block, means2d, conics, opacities, sigma_max, bounds, bound_offsets, image_ids, width, height,
    tiles_x, tiles_y, rparams, counts, elem_tiles, elem_boxes,
):  # fmt: skip
    """For each element (blocks taken through :func:`claim`): its float32 pixel parameters
    ``rparams`` [M, 8] and the tiles its ellipse ``sigma <= sigma_max[f]`` reaches, in
    row-major tile order: global ids into ``elem_tiles`` from ``bound_offsets[f]`` on (at
    most ``bounds[f]``, an upper bound; 0 for elements not drawn) and the pixel box it spans
    in each into ``elem_boxes``; ``counts`` [M] int64 gets how many."""
    per_image = tiles_x * tiles_y
    while True:
        start = claim(counter) * block
        if start >= n_items:
            break
        _list_range(
            start, min(n_items, start + block), means2d, conics, opacities, sigma_max, bounds, bound_offsets,
            image_ids, width, height, tiles_x, per_image, rparams, counts, elem_tiles, elem_boxes,
        )  # fmt: skip


@njit(cache=True, error_model="numpy")
def _list_range(
    start, stop, means2d, conics, opacities, sigma_max, bounds, bound_offsets, image_ids, width, height, tiles_x,
    per_image, rparams, counts, elem_tiles, elem_boxes,
):  # fmt: skip
    for f in range(start, stop):
        counts[f] = 0
        for k in range(N_RPARAMS):
            rparams[f, k] = 0.0
        a, b, c = float(conics[f, 0]), float(conics[f, 1]), float(conics[f, 2])
        if bounds[f] <= 0 or not (a > 0.0 and a * c - b * b > 0.0):
            continue
        rparams[f, R_MX] = means2d[f, 0]
        rparams[f, R_MY] = means2d[f, 1]
        rparams[f, R_A] = conics[f, 0]
        rparams[f, R_B] = conics[f, 1]
        rparams[f, R_C] = conics[f, 2]
        rparams[f, R_OPAC] = opacities[f]
        geo = _ellipse(float(means2d[f, 0]), float(means2d[f, 1]), a, b, c, float(sigma_max[f]))
        n = _visit_tiles(
            geo, width, height, tiles_x, image_ids[f] * per_image, elem_tiles, elem_boxes, bound_offsets[f], bounds[f]
        )
        if n > bounds[f]:
            raise AssertionError("tile bound exceeded")
        counts[f] = n


@njit(cache=True, error_model="numpy")
def _sort_keyed(items):
    """Sort uint64 ``items`` (key in the high 32 bits, index in the low 32 bits, so ties
    keep index order) by their keys: LSD radix sort, three 11-bit digits."""
    n = items.shape[0]
    spare = np.empty(n, np.uint64)
    counts = np.zeros((3, 2049), np.int64)
    for i in range(n):
        key = items[i] >> np.uint64(32)
        counts[0, (key & np.uint64(2047)) + np.uint64(1)] += 1
        counts[1, ((key >> np.uint64(11)) & np.uint64(2047)) + np.uint64(1)] += 1
        counts[2, (key >> np.uint64(22)) + np.uint64(1)] += 1
    src, dst = items, spare
    for digit in range(3):
        shift = np.uint64(32 + 11 * digit)
        cursor = counts[digit]
        for bucket in range(2048):
            cursor[bucket + 1] += cursor[bucket]
        for i in range(n):
            v = src[i]
            bucket = (v >> shift) & np.uint64(2047)
            dst[cursor[bucket]] = v
            cursor[bucket] += 1
        src, dst = dst, src
    return src


@njit(cache=True, nogil=True, error_model="numpy")
def sort_by_depth(counter, n_items, block, depths, counts, image_starts, sorted_elems, n_sorted):
    """Per image (taken through :func:`claim`): its drawn elements (``counts > 0``; elements of
    image ``i`` are ``image_starts[i] .. image_starts[i + 1] - 1``) sorted like gsplat, by
    the bits of the float32 depth with ties in element order, into
    ``sorted_elems[image_starts[i]:]``; ``n_sorted[i]`` gets how many."""
    depth_bits = depths.view(np.uint32)
    while True:
        first_img = claim(counter) * block
        if first_img >= n_items:
            break
        for img in range(first_img, min(n_items, first_img + block)):
            first, stop = image_starts[img], image_starts[img + 1]
            n_drawn = 0
            for f in range(first, stop):
                if counts[f] > 0:
                    n_drawn += 1
            items = np.empty(n_drawn, np.uint64)
            k = 0
            for f in range(first, stop):
                if counts[f] > 0:
                    items[k] = (np.uint64(depth_bits[f]) << np.uint64(32)) | np.uint64(f - first)
                    k += 1
            items = _sort_keyed(items)
            for k in range(n_drawn):
                sorted_elems[first + k] = first + np.int64(items[k] & np.uint64(0xFFFFFFFF))
            n_sorted[img] = n_drawn


@njit(cache=True, nogil=True, error_model="numpy")
def count_chunk_tiles(
    counter, n_items, block, chunks, sorted_elems, bound_offsets, counts, elem_tiles, tiles_per_image, chunk_counts
):  # fmt: skip
    """Intersections per tile of each chunk of depth-sorted elements: chunk ``k`` is image
    ``chunks[k, 0]``'s sorted elements ``chunks[k, 1] .. chunks[k, 2] - 1`` (indices into
    ``sorted_elems``); ``chunk_counts`` [n_chunks, tiles_per_image] (zeroed by the caller)."""
    while True:
        first_chunk = claim(counter) * block
        if first_chunk >= n_items:
            break
        for ch in range(first_chunk, min(n_items, first_chunk + block)):
            tile_first = chunks[ch, 0] * tiles_per_image
            for k in range(chunks[ch, 1], chunks[ch, 2]):
                f = sorted_elems[k]
                for i in range(bound_offsets[f], bound_offsets[f] + counts[f]):
                    chunk_counts[ch, elem_tiles[i] - tile_first] += 1


@njit(cache=True, nogil=True, error_model="numpy")
def scatter_chunks(
    counter, n_items, block, chunks, sorted_elems, bound_offsets, counts, elem_offsets, elem_tiles, elem_boxes,
    tiles_per_image, chunk_cursors, isect_elem, isect_box, isect_pos,
):  # fmt: skip
    """Write each chunk's intersections to their tiles' lists, front to back, from the
    chunk's first slot per tile ``chunk_cursors`` [n_chunks, tiles_per_image]: ``isect_elem``
    (element of each intersection), ``isect_box`` (its pixel box), ``isect_pos`` (its index
    in element order: ``elem_offsets[f] + k``)."""
    while True:
        first_chunk = claim(counter) * block
        if first_chunk >= n_items:
            break
        for ch in range(first_chunk, min(n_items, first_chunk + block)):
            tile_first = chunks[ch, 0] * tiles_per_image
            cursor = chunk_cursors[ch]
            for k in range(chunks[ch, 1], chunks[ch, 2]):
                f = sorted_elems[k]
                src = bound_offsets[f]
                pos = elem_offsets[f]
                for i in range(counts[f]):
                    t = elem_tiles[src + i] - tile_first
                    slot = cursor[t]
                    cursor[t] = slot + 1
                    isect_elem[slot] = f
                    isect_box[slot] = elem_boxes[src + i]
                    isect_pos[slot] = pos + i


@njit(cache=True, error_model="numpy")
def _tile_geometry(t, tiles_x, tiles_y, width, height):
    """Image, origin and size of global tile ``t``."""
    per_image = tiles_x * tiles_y
    img = t // per_image
    rest = t - img * per_image
    ty = rest // tiles_x
    tx = rest - ty * tiles_x
    x0, y0 = tx * TILE_W, ty * TILE_H
    return img, x0, y0, min(TILE_W, width - x0), min(TILE_H, height - y0)


@njit(cache=True, error_model="numpy")
def _unpack_box(box):
    """Tile-local rows r0..r1 and columns c0..c1 of a packed intersection box."""
    return box & 255, (box >> 8) & 255, (box >> 16) & 255, (box >> 24) & 255


@njit(cache=True, error_model="numpy")
def _init_forward_tile(buf, row_left, tile_w, tile_h):
    """Forward tile state: T = 1 inside the image, -1 (done) outside and in the padding;
    colour sums 0; last index -1."""
    for row in range(TILE_H):
        for col in range(ROW_STRIDE):
            x = np.uint64(row * ROW_STRIDE + col)
            buf[F_T + x] = _ONE if (row < tile_h and col < tile_w) else -_ONE
            buf[F_ACC0 + x] = _ZERO
            buf[F_ACC1 + x] = _ZERO
            buf[F_ACC2 + x] = _ZERO
            buf[F_ACC3 + x] = _ZERO
            buf[F_LAST + x] = -_ONE
        row_left[row] = tile_w if row < tile_h else 0


@njit(cache=True, error_model="numpy", fastmath=_FAST)
def _composite_pixel(buf, x, dx, half_a, lin, const, opac, k0, k1, k2, k3, fj):
    """gsplat's front-to-back step for one pixel (lane) of a window; True when it stops there."""
    sigma = (half_a * dx + lin) * dx + const
    g_alpha = opac * _exp_neg(sigma)
    t_here = buf[F_T + x]
    last_here = buf[F_LAST + x]
    hit = (sigma >= _ZERO) & (g_alpha >= _THR) & (t_here > _ZERO)
    alpha = min(g_alpha, _MAXA)
    t_next = t_here * (_ONE - alpha)
    stop = hit & (t_next <= _MINT)
    use = hit & (t_next > _MINT)
    t_kept = -t_here if stop else t_here
    buf[F_T + x] = t_next if use else t_kept
    weight = alpha * t_here if use else _ZERO
    buf[F_ACC0 + x] += weight * k0
    buf[F_ACC1 + x] += weight * k1
    buf[F_ACC2 + x] += weight * k2
    buf[F_ACC3 + x] += weight * k3
    buf[F_LAST + x] = fj if use else last_here
    return stop


@njit(cache=True, nogil=True, error_model="numpy", fastmath=_FAST)
def rasterize_forward(
    tiles, counter, tile_offsets, isect_elem, isect_box, rparams, colors, backgrounds, use_background,
    width, height, tiles_x, tiles_y,
    out_colors, ch0, n_ch, ed_k, out_alphas, out_transmittance, out_last,
):  # fmt: skip
    """Composite the tiles listed in ``tiles`` (global tile ids) front to back, taking them
    one at a time in list order through :func:`claim` on ``counter``.

    ``colors`` [M, 4], ``backgrounds`` [C, 4]. Writes the group's channels ``0 .. n_ch - 1``
    to channels ``ch0 ..`` of ``out_colors`` [C, H, W, D], ``out_alphas`` [C, H, W, 1], the
    final transmittance ``out_transmittance`` [C, H, W] and ``out_last`` [C, H, W] (index in
    the tile's list of the last Gaussian composited, -1 if none), the last two for the
    backward pass. Group channel ``ed_k`` (if >= 0) is an expected depth: divided by
    ``max(alpha, 1e-10)`` (gsplat's "ED").
    """
    # one buffer for all per-pixel state (planes at fixed offsets: the compiler can then
    # prove the vector loops free of aliasing). T is negated once the pixel is done
    # (gsplat's early stop) and -1 outside the image, so such lanes fail the T > 0 test.
    prefer_wide_vectors()
    buf = np.empty(F_PLANES * PLANE, np.float32)
    row_left = np.empty(TILE_H, np.int32)  # live pixels per row
    while True:
        item = claim(counter)
        if item >= tiles.shape[0]:
            break
        t = tiles[item]
        img, x0, y0, tile_w, tile_h = _tile_geometry(t, tiles_x, tiles_y, width, height)
        _init_forward_tile(buf, row_left, tile_w, tile_h)
        n_left = tile_w * tile_h
        start = tile_offsets[t]
        for j in range(tile_offsets[t + 1] - start):
            if n_left == 0:
                break
            f = isect_elem[start + j]
            r0, r1, c0, c1 = _unpack_box(isect_box[start + j])
            mx, my = rparams[f, R_MX], rparams[f, R_MY]
            half_a, b, half_c = _HALF * rparams[f, R_A], rparams[f, R_B], _HALF * rparams[f, R_C]
            opac = rparams[f, R_OPAC]
            k0, k1, k2, k3 = colors[f, 0], colors[f, 1], colors[f, 2], colors[f, 3]
            fj = np.float32(j)
            any_stop = False
            for row in range(r0, r1 + 1):
                if row_left[row] == 0:
                    continue
                dy = np.float32(my - np.float32(y0 + row + 0.5))
                lin = b * dy
                const = half_c * dy * dy
                for c in range(c0, c1 + 1, WINDOW):
                    base = np.uint64(row * ROW_STRIDE + c)
                    dx0 = np.float32(mx - np.float32(x0 + c + 0.5))
                    for k in range(WINDOW):
                        any_stop |= _composite_pixel(
                            buf, base + np.uint64(k), dx0 - np.float32(k), half_a, lin, const, opac, k0, k1, k2, k3, fj
                        )
            if any_stop:  # rare (once per pixel at most): recount the live pixels of its rows
                for row in range(r0, r1 + 1):
                    live = 0
                    for col in range(tile_w):
                        live += 1 if buf[F_T + np.uint64(row * ROW_STRIDE + col)] > _ZERO else 0
                    n_left -= row_left[row] - live
                    row_left[row] = live
        for row in range(tile_h):
            for col in range(tile_w):
                x = np.uint64(row * ROW_STRIDE + col)
                t_final = abs(buf[F_T + x])
                alpha = _ONE - t_final
                for k in range(n_ch):
                    value = buf[F_ACC0 + np.uint64(k * PLANE) + x]
                    if use_background:
                        value += t_final * backgrounds[img, k]
                    if k == ed_k:
                        value = value / max(alpha, _MIN_ALPHA_ED)
                    out_colors[img, y0 + row, x0 + col, ch0 + k] = value
                out_alphas[img, y0 + row, x0 + col, 0] = alpha
                out_transmittance[img, y0 + row, x0 + col] = t_final
                out_last[img, y0 + row, x0 + col] = np.int32(buf[F_LAST + x])


@njit(cache=True, nogil=True, error_model="numpy", fastmath=_FAST)
def rasterize_backward(
    tiles, counter, tile_offsets, isect_elem, isect_box, isect_pos, rparams, colors, backgrounds, use_background,
    width, height, tiles_x, tiles_y,
    transmittance, last_ids, v_colors, ch0, n_ch, ed_k, image, v_alphas,
    isect_grads, tile_v_backgrounds,
):  # fmt: skip
    """Back-to-front pass over the tiles in ``tiles`` (taken one at a time through
    :func:`claim` on ``counter``): gradient of every intersection into ``isect_grads`` (row
    ``isect_pos[slot]``, i.e. in element order).

    ``isect_grads`` [n_isect, 10] columns: d/d(mean x, mean y, conic a, b, c, opacity,
    4 colours). ``tile_v_backgrounds`` [n_tiles, 4] (zeroed by the caller) gets per-tile
    background gradients. ``v_colors`` [C, H, W, D] holds the group's ``n_ch`` channels from
    ``ch0`` on; ``v_alphas`` [C, H, W, 1] (pass zeros for all but one channel group: the
    alpha term must count once). With ``ed_k >= 0``, group channel ``ed_k`` is the expected
    depth ``D / max(alpha, 1e-10)`` whose forward values are ``image[..., ch0 + ed_k]``: its
    gradient is mapped to D and to alpha here (once: only one group holds it).
    """
    # per-pixel state planes: T (recovered back to front), rest, dL/dcolour (4), last index.
    # dL/dalpha of a Gaussian at a pixel is T_before (c . v) + rest / (1 - alpha), with
    # rest = T_final (dL/dalpha_out - background . v) - (colour composited behind it) . v
    prefer_wide_vectors()
    buf = np.empty(B_PLANES * PLANE, np.float32)
    row_last = np.empty(TILE_H, np.int32)  # largest last index per row
    # per-lane partial sums of one Gaussian: colours (4), v_sigma dx, v_sigma dy,
    # v_sigma dx dx, v_sigma dx dy, v_sigma dy dy, opacity
    lane_sums = np.empty(N_SUMS * WINDOW, np.float32)
    sums = np.empty(N_SUMS)
    n_cols = isect_grads.shape[1]
    while True:
        item = claim(counter)
        if item >= tiles.shape[0]:
            break
        t = tiles[item]
        img, x0, y0, tile_w, tile_h = _tile_geometry(t, tiles_x, tiles_y, width, height)
        last_max = -1
        for row in range(TILE_H):
            row_max = -1
            for col in range(ROW_STRIDE):
                x = np.uint64(row * ROW_STRIDE + col)
                if row < tile_h and col < tile_w:
                    t_final = transmittance[img, y0 + row, x0 + col]
                    li = last_ids[img, y0 + row, x0 + col]
                    v_alpha_out = v_alphas[img, y0 + row, x0 + col, 0]
                    alpha = _ONE - t_final
                    bg_dot = _ZERO
                    for k in range(CHANNELS):
                        vk = v_colors[img, y0 + row, x0 + col, ch0 + k] if k < n_ch else _ZERO
                        if k == ed_k:  # ED = D / max(alpha, 1e-10)
                            q = max(alpha, _MIN_ALPHA_ED)
                            if alpha >= _MIN_ALPHA_ED:
                                v_alpha_out -= vk * image[img, y0 + row, x0 + col, ch0 + k] / q
                            vk = vk / q
                        buf[B_V0 + np.uint64(k * PLANE) + x] = vk
                        if use_background:
                            bg_dot += backgrounds[img, k] * vk
                            tile_v_backgrounds[t, k] += vk * t_final
                    buf[B_REST + x] = t_final * (v_alpha_out - bg_dot)
                    buf[B_T + x] = t_final
                    buf[B_LAST + x] = np.float32(li)
                    row_max = max(row_max, li)
                else:
                    for k in range(CHANNELS):
                        buf[B_V0 + np.uint64(k * PLANE) + x] = _ZERO
                    buf[B_REST + x] = _ZERO
                    buf[B_T + x] = _ONE
                    buf[B_LAST + x] = -_ONE
            row_last[row] = row_max
            last_max = max(last_max, row_max)
        start = tile_offsets[t]
        for j in range(tile_offsets[t + 1] - start - 1, last_max, -1):  # never composited here
            pos = isect_pos[start + j]
            for k in range(n_cols):
                isect_grads[pos, k] = 0.0
        for j in range(last_max, -1, -1):
            f = isect_elem[start + j]
            r0, r1, c0, c1 = _unpack_box(isect_box[start + j])
            mx, my = rparams[f, R_MX], rparams[f, R_MY]
            a, b, c = rparams[f, R_A], rparams[f, R_B], rparams[f, R_C]
            half_a, half_c = _HALF * a, _HALF * c
            opac = rparams[f, R_OPAC]
            k0, k1, k2, k3 = colors[f, 0], colors[f, 1], colors[f, 2], colors[f, 3]
            fj = np.float32(j)
            lane_sums[:] = _ZERO
            for row in range(r0, r1 + 1):
                if row_last[row] < j:
                    continue
                dy = np.float32(my - np.float32(y0 + row + 0.5))
                lin = b * dy
                const = half_c * dy * dy
                for c_start in range(c0, c1 + 1, WINDOW):
                    base = np.uint64(row * ROW_STRIDE + c_start)
                    dx0 = np.float32(mx - np.float32(x0 + c_start + 0.5))
                    for k in range(WINDOW):
                        x = base + np.uint64(k)
                        dx = dx0 - np.float32(k)
                        sigma = (half_a * dx + lin) * dx + const
                        g = _exp_neg(sigma)
                        g_alpha = opac * g
                        hit = (sigma >= _ZERO) & (g_alpha >= _THR) & (fj <= buf[B_LAST + x])
                        alpha = min(g_alpha, _MAXA)
                        inv_keep = _ONE / (_ONE - alpha)
                        t_after = buf[B_T + x]
                        t_here = t_after * inv_keep  # T in front of this Gaussian
                        buf[B_T + x] = t_here if hit else t_after
                        weight = alpha * t_here
                        v0, v1, v2, v3 = buf[B_V0 + x], buf[B_V1 + x], buf[B_V2 + x], buf[B_V3 + x]
                        color_dot = k0 * v0 + k1 * v1 + k2 * v2 + k3 * v3
                        rest_here = buf[B_REST + x]
                        v_alpha = t_here * color_dot + rest_here * inv_keep
                        buf[B_REST + x] = rest_here - weight * color_dot if hit else rest_here
                        w_hit = weight if hit else _ZERO
                        unclamped = hit & (g_alpha <= _MAXA)
                        v_sigma = -g_alpha * v_alpha if unclamped else _ZERO
                        v_sigma_dx = v_sigma * dx
                        v_sigma_dy = v_sigma * dy
                        lane_sums[k] += w_hit * v0
                        lane_sums[WINDOW + k] += w_hit * v1
                        lane_sums[2 * WINDOW + k] += w_hit * v2
                        lane_sums[3 * WINDOW + k] += w_hit * v3
                        lane_sums[4 * WINDOW + k] += v_sigma_dx
                        lane_sums[5 * WINDOW + k] += v_sigma_dy
                        lane_sums[6 * WINDOW + k] += v_sigma_dx * dx
                        lane_sums[7 * WINDOW + k] += v_sigma_dx * dy
                        lane_sums[8 * WINDOW + k] += v_sigma_dy * dy
                        lane_sums[9 * WINDOW + k] += g * v_alpha if unclamped else _ZERO
            _sum_lanes(lane_sums, sums)
            pos = isect_pos[start + j]
            fa, fb, fc = float(a), float(b), float(c)
            isect_grads[pos, G_MX] = fa * sums[4] + fb * sums[5]
            isect_grads[pos, G_MY] = fb * sums[4] + fc * sums[5]
            isect_grads[pos, G_A] = 0.5 * sums[6]
            isect_grads[pos, G_B] = sums[7]
            isect_grads[pos, G_C] = 0.5 * sums[8]
            isect_grads[pos, G_OPAC] = sums[9]
            isect_grads[pos, N_GRAD_FIXED] = sums[0]
            isect_grads[pos, N_GRAD_FIXED + 1] = sums[1]
            isect_grads[pos, N_GRAD_FIXED + 2] = sums[2]
            isect_grads[pos, N_GRAD_FIXED + 3] = sums[3]


@njit(cache=True, error_model="numpy")
def _sum_lanes(lane_sums, sums):
    """``sums[i]`` = sum of the WINDOW lanes of ``lane_sums[i * WINDOW:]`` in a fixed tree order
    (halving, so the compiler can use vector adds)."""
    width = WINDOW // 2
    while width > 0:
        for i in range(N_SUMS):
            for k in range(width):
                lane_sums[i * WINDOW + k] += lane_sums[i * WINDOW + k + width]
        width //= 2
    for i in range(N_SUMS):
        sums[i] = lane_sums[i * WINDOW]


@njit(cache=True, nogil=True, error_model="numpy")
def element_features(counter, n_items, block, src, rows, sh0, depths, depth_channel, groups):
    """Feature channels of each element (blocks taken through :func:`claim`) into ``groups``
    [G, M, 4]: ``src[rows[f]]`` (``src`` [S, K]; ``max(C0 x + 1/2, 0)`` of it with ``sh0``,
    gsplat's degree-0 SH colour), then ``depths[f]`` with ``depth_channel``, zero padded."""
    n_src = src.shape[1] if rows.shape[0] > 0 else 0
    n_groups = groups.shape[0]
    while True:
        start = claim(counter) * block
        if start >= n_items:
            break
        for f in range(start, min(n_items, start + block)):
            for g in range(n_groups):
                for k in range(CHANNELS):
                    groups[g, f, k] = _ZERO
            for k in range(n_src):
                value = src[rows[f], k]
                if sh0:
                    value = max(value * _SH_C0 + _HALF, _ZERO)
                groups[k // CHANNELS, f, k % CHANNELS] = value
            if depth_channel:
                groups[n_src // CHANNELS, f, n_src % CHANNELS] = depths[f]


@njit(cache=True, nogil=True, error_model="numpy")
def sum_feature_rows(v_feats, n_channels, rows, src, sh0, out):
    """Colour gradients of the source rows: ``out[rows[f]] += v_feats[f, :n_channels]`` (``out``
    [S, K] float64, zeroed by the caller), through the derivative of ``max(C0 x + 1/2, 0)`` at
    ``x = src[rows[f]]`` with ``sh0``; added in element order (deterministic, serial: the
    same sums as ``np.bincount`` per channel)."""
    for f in range(rows.shape[0]):
        r = rows[f]
        for k in range(n_channels):
            v = v_feats[f, k]
            if sh0:
                v = v * _SH_C0 if src[r, k] * _SH_C0 + _HALF >= _ZERO else _ZERO
            out[r, k] += v


@njit(cache=True, nogil=True, error_model="numpy")
def gather_gradients(counter, n_items, block, elem_offsets, isect_grads, v_means2d, v_conics, v_opacities, v_colors):
    """Sum each element's intersection gradients (rows ``elem_offsets[f] ..
    elem_offsets[f + 1] - 1``, in tile order: deterministic).

    ``isect_grads`` [G, n_isect, 10] holds one buffer per channel group; geometry gradients
    add the groups in order, colour group ``g`` goes to ``v_colors[:, 4 g : 4 g + 4]``
    (``v_colors`` [M, 4 G]).
    """
    n_groups = isect_grads.shape[0]
    width = isect_grads.shape[2]
    total = np.empty(width)
    geometry = np.empty(N_GRAD_FIXED)
    while True:
        start = claim(counter) * block
        if start >= n_items:
            break
        _gather_range(start, min(n_items, start + block), elem_offsets, isect_grads, v_means2d, v_conics,
                      v_opacities, v_colors, total, geometry)  # fmt: skip


@njit(cache=True, error_model="numpy")
def _gather_range(start, stop, elem_offsets, isect_grads, v_means2d, v_conics, v_opacities, v_colors, total, geometry):
    for f in range(start, stop):
        _gather_one(f, elem_offsets, isect_grads, v_means2d, v_conics, v_opacities, v_colors, total, geometry)


@njit(cache=True, error_model="numpy", inline="always")
def _gather_one(f, elem_offsets, isect_grads, v_means2d, v_conics, v_opacities, v_colors, total, geometry):
    n_groups = isect_grads.shape[0]
    width = isect_grads.shape[2]
    geometry[:] = 0.0
    for grp in range(n_groups):
        total[:] = 0.0
        for i in range(elem_offsets[f], elem_offsets[f + 1]):
            for k in range(width):
                total[k] += isect_grads[grp, i, k]
        for k in range(N_GRAD_FIXED):
            geometry[k] += total[k]
        for k in range(CHANNELS):
            v_colors[f, CHANNELS * grp + k] = total[N_GRAD_FIXED + k]
    v_means2d[f, 0] = geometry[G_MX]
    v_means2d[f, 1] = geometry[G_MY]
    v_conics[f, 0] = geometry[G_A]
    v_conics[f, 1] = geometry[G_B]
    v_conics[f, 2] = geometry[G_C]
    v_opacities[f] = geometry[G_OPAC]
