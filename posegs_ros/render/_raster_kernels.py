"""Numba kernels: tile binning, front-to-back compositing and its analytic backward.

gsplat's per-pixel rules (alpha = min(0.999, o exp(-sigma)), skip alpha < 1/255, stop a
pixel when T would fall to 1e-4 or below), evaluated only where they can matter: a Gaussian
changes a pixel only where ``o exp(-sigma) >= 1/255``, i.e. inside the ellipse
``sigma <= log(255 o)``. So

- binning puts a Gaussian into the tiles that ellipse reaches (per band of tile rows, the
  exact x extent of the ellipse over that band), not its whole bounding box;
- within a tile, a Gaussian visits only the box its ellipse spans there (about 1.25 pixels
  per pixel it actually touches) and applies gsplat's exact per-pixel tests;
- ``exp(-sigma)`` is not evaluated per pixel: sigma is quadratic, so along a row
  ``G(x + 1) = G(x) r(x)`` with ``r(x + 1) = r(x) exp(-a)``, and from row to row the row
  start and its ratio follow the same kind of recurrence (three exps per Gaussian and tile).
  Where that walk could leave floating-point range (extreme conics or very thin ellipses)
  the kernel falls back to one exp per pixel;
- the backward walks each tile back to front, recovering T by division as gsplat does.

Tiles are :data:`TILE_W` x :data:`TILE_H` pixels (wider than gsplat's 16x16: fewer row
restarts; the rendered result does not depend on the tiling).

Every kernel handles a range (or list) of work items with the GIL released; the caller runs
the pieces on several threads. Determinism: a tile is processed by one thread, in a fixed
order; per-intersection gradients go to their own slot and are summed per Gaussian in tile
order; per-tile background partials are summed in tile order. Nothing depends on the thread
count or on scheduling. Forward and backward evaluate exp(-sigma) with the same function.

Scalars are float64, arrays float32 (float64 for the saved transmittance). The kernels
composite exactly :data:`CHANNELS` colour channels; callers render wider features in groups
(as gsplat does with its channel chunks) and pad the last group with zeros.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from posegs_ros.render._common import ALPHA_THRESHOLD, MAX_ALPHA, MIN_TRANSMITTANCE

TILE_W = 32
TILE_H = 16
TILE_PIXELS = TILE_W * TILE_H
CHANNELS = 4
# Widening of the visited ellipse beyond sigma <= log(o / threshold) so that rounding never
# drops a pixel that the exact per-pixel test accepts.
_SIGMA_MARGIN = 1e-4
# The walk multiplies by exp(-a), exp(-b), exp(-c) and starts from a box corner: used only
# while those factors and exp(-sigma) over the box stay far inside float64's range.
_WALK_COEF_LIMIT = 30.0
_WALK_SIGMA_LIMIT = 600.0
# Hot loops may fuse multiply-adds and use reciprocals; results stay deterministic.
_FAST = {"contract", "nsz", "arcp"}
# per-element parameter columns
(
    P_MX, P_MY, P_A, P_B, P_C, P_OPAC, P_SIGMA_MAX, P_DET, P_INV_A,
    P_HALF_H, P_HALF_W, P_REACH, P_DECAY_X, P_DECAY_XY, P_DECAY_Y, P_WALK,
) = range(16)  # fmt: skip
N_PARAMS = 16
# columns of the per-intersection gradient buffer (colours follow)
G_MX, G_MY, G_A, G_B, G_C, G_OPAC = range(6)
N_GRAD_FIXED = 6


@njit(cache=True, nogil=True, error_model="numpy")
def prepare_params(start, stop, means2d, conics, opacities, radii, params, valid):
    """Per element float64 parameters ``params`` [M, 16] and ``valid`` [M] (drawn at all)."""
    for f in range(start, stop):
        a, b, c = float(conics[f, 0]), float(conics[f, 1]), float(conics[f, 2])
        opac = float(opacities[f])
        det = a * c - b * b
        ok = radii[f, 0] > 0 and radii[f, 1] > 0 and opac >= ALPHA_THRESHOLD and a > 0.0 and det > 0.0
        valid[f] = ok
        params[f, :] = 0.0
        if not ok:
            continue
        sigma_max = math.log(opac / ALPHA_THRESHOLD)
        sigma_max += _SIGMA_MARGIN * (1.0 + sigma_max)
        walk = a <= _WALK_COEF_LIMIT and abs(b) <= _WALK_COEF_LIMIT and c <= _WALK_COEF_LIMIT
        half_w = math.sqrt(2.0 * sigma_max * c / det)  # ellipse half extent in x
        params[f, P_MX] = means2d[f, 0]
        params[f, P_MY] = means2d[f, 1]
        params[f, P_A] = a
        params[f, P_B] = b
        params[f, P_C] = c
        params[f, P_OPAC] = opac
        params[f, P_SIGMA_MAX] = sigma_max
        params[f, P_DET] = det
        params[f, P_INV_A] = 1.0 / a
        params[f, P_HALF_H] = math.sqrt(2.0 * sigma_max * a / det)  # ... and in y
        params[f, P_HALF_W] = half_w
        params[f, P_REACH] = b / c * half_w  # my - y of the rightmost point
        params[f, P_DECAY_X] = math.exp(-a) if walk else 0.0
        params[f, P_DECAY_XY] = math.exp(-b) if walk else 0.0
        params[f, P_DECAY_Y] = math.exp(-c) if walk else 0.0
        params[f, P_WALK] = 1.0 if walk else 0.0


@njit(cache=True, error_model="numpy")
def _pixel_rows(params, f, y_first, n_rows):
    """Rows (relative to ``y_first``, clipped to ``0 .. n_rows - 1``) whose pixel centres the
    ellipse of element ``f`` may reach; empty when first > last."""
    lo = math.ceil(params[f, P_MY] - params[f, P_HALF_H] - 0.5) - y_first
    hi = math.floor(params[f, P_MY] + params[f, P_HALF_H] - 0.5) - y_first
    return max(0, int(lo)), min(n_rows - 1, int(hi))


@njit(cache=True, error_model="numpy")
def _chord_end(params, f, dy, side):
    """Left (``side = -1``) or right (``+1``) pixel-centre x of the ellipse of element ``f``
    at vertical offset ``dy = my - py``; the full-extent bound if ``dy`` misses it (rounding)."""
    disc = 2.0 * params[f, P_A] * params[f, P_SIGMA_MAX] - params[f, P_DET] * dy * dy
    if disc < 0.0:
        return params[f, P_MX] + side * params[f, P_HALF_W]
    return params[f, P_MX] + (params[f, P_B] * dy + side * math.sqrt(disc)) * params[f, P_INV_A]


@njit(cache=True, error_model="numpy")
def _band_columns(params, f, row_top, row_bottom, x_first, x_last):
    """Pixel columns in ``[x_first, x_last]`` the ellipse of element ``f`` reaches within
    pixel rows ``[row_top, row_bottom]`` (absolute); empty when lo > hi."""
    # the left boundary of an ellipse is convex in y, the right one concave: their extremes
    # over a band are at the band-clamped y of the leftmost / rightmost points
    my = params[f, P_MY]
    reach = params[f, P_REACH]
    dy_top = my - (row_top + 0.5)
    dy_bottom = my - (row_bottom + 0.5)
    left = _chord_end(params, f, min(dy_top, max(dy_bottom, -reach)), -1.0)
    right = _chord_end(params, f, min(dy_top, max(dy_bottom, reach)), 1.0)
    return max(x_first, int(math.ceil(left - 0.5))), min(x_last, int(math.floor(right - 0.5)))


@njit(cache=True, error_model="numpy")
def _visit_tiles(params, f, width, height, tiles_x, tile_base, out, pos):
    """Count the tiles the ellipse of element ``f`` reaches; also write their global ids to
    ``out[pos:]`` unless ``out`` is empty. Row-major tile order."""
    r0, r1 = _pixel_rows(params, f, 0, height)
    n = 0
    if r0 > r1:
        return 0
    for ty in range(r0 // TILE_H, r1 // TILE_H + 1):
        top = max(r0, ty * TILE_H)
        bottom = min(r1, ty * TILE_H + TILE_H - 1)
        lo, hi = _band_columns(params, f, top, bottom, 0, width - 1)
        if lo > hi:
            continue
        for tx in range(lo // TILE_W, hi // TILE_W + 1):
            if out.shape[0] > 0:
                out[pos + n] = tile_base + ty * tiles_x + tx
            n += 1
    return n


@njit(cache=True, nogil=True, error_model="numpy")
def count_tiles(start, stop, params, valid, width, height, tiles_x, counts):
    """Number of tiles each element touches, ``counts`` [M] int64."""
    no_out = np.empty(0, np.int32)
    for f in range(start, stop):
        counts[f] = _visit_tiles(params, f, width, height, tiles_x, 0, no_out, 0) if valid[f] else 0


@njit(cache=True, nogil=True, error_model="numpy")
def list_tiles(start, stop, params, valid, image_ids, width, height, tiles_x, tiles_y, elem_offsets, elem_tiles):
    """Global tile ids of each element, in row-major tile order: ``elem_tiles`` [n_isect] int32."""
    per_image = tiles_x * tiles_y
    for f in range(start, stop):
        if valid[f] and elem_offsets[f + 1] > elem_offsets[f]:
            _visit_tiles(params, f, width, height, tiles_x, image_ids[f] * per_image, elem_tiles, elem_offsets[f])


@njit(cache=True, error_model="numpy")
def _stable_order(keys):
    """Indices that sort uint32 ``keys`` ascending, ties in index order (LSD radix sort)."""
    n = keys.shape[0]
    order = np.arange(n)
    spare = np.empty(n, np.int64)
    counts = np.empty(2049, np.int64)
    for shift in (0, 11, 22):
        counts[:] = 0
        for i in range(n):
            counts[((keys[order[i]] >> shift) & 2047) + 1] += 1
        for bucket in range(2048):
            counts[bucket + 1] += counts[bucket]
        for i in range(n):
            bucket = (keys[order[i]] >> shift) & 2047
            spare[counts[bucket]] = order[i]
            counts[bucket] += 1
        order, spare = spare, order
    return order


@njit(cache=True, nogil=True, error_model="numpy")
def sort_into_tiles(
    image_start, image_stop, depths, valid, image_starts, elem_offsets, elem_tiles, tiles_per_image,
    tile_offsets, isect_elem, elem_isect,
):  # fmt: skip
    """Bucket intersections by tile, each tile's list sorted front to back.

    Elements of image ``i`` are ``image_starts[i] .. image_starts[i + 1] - 1``. Sorted like
    gsplat: by the bits of the float32 depth, ties in element order. Fills ``tile_offsets``
    [n_tiles + 1], ``isect_elem`` [n_isect] (element of each intersection, tile-sorted) and
    ``elem_isect`` [n_isect] (slot of each element's k-th intersection in that order).
    """
    depth_bits = depths.view(np.uint32)
    for img in range(image_start, image_stop):
        first, stop = image_starts[img], image_starts[img + 1]
        n_valid = 0
        for f in range(first, stop):
            if valid[f]:
                n_valid += 1
        ids = np.empty(n_valid, np.int64)
        keys = np.empty(n_valid, np.uint32)
        k = 0
        for f in range(first, stop):
            if valid[f]:
                ids[k] = f
                keys[k] = depth_bits[f]
                k += 1
        order = _stable_order(keys)
        tile_first = img * tiles_per_image
        counts = np.zeros(tiles_per_image, np.int64)
        for i in range(elem_offsets[first], elem_offsets[stop]):
            counts[elem_tiles[i] - tile_first] += 1
        cursor = np.empty(tiles_per_image, np.int64)
        running = elem_offsets[first]
        for t in range(tiles_per_image):
            tile_offsets[tile_first + t] = running
            cursor[t] = running
            running += counts[t]
        for k in range(n_valid):
            f = ids[order[k]]
            for i in range(elem_offsets[f], elem_offsets[f + 1]):
                t = elem_tiles[i] - tile_first
                slot = cursor[t]
                cursor[t] = slot + 1
                isect_elem[slot] = f
                elem_isect[i] = slot
    if image_stop == image_starts.shape[0] - 1:
        tile_offsets[image_stop * tiles_per_image] = elem_offsets[elem_offsets.shape[0] - 1]


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
def _sigma(params, f, dx, dy):
    return 0.5 * (params[f, P_A] * dx * dx + params[f, P_C] * dy * dy) + params[f, P_B] * dx * dy


@njit(cache=True, error_model="numpy", fastmath=_FAST)
def _fill_gauss(params, f, x0, y0, tile_w, tile_h, gauss):
    """``exp(-sigma)`` of element ``f`` over the box it visits in a tile.

    Returns the tile-local box ``(r0, r1, c0, c1)`` (empty if r0 > r1 or c0 > c1) and writes
    ``gauss[row * TILE_W + col]`` inside it: by the multiplicative walk where that is safe,
    else one exp per pixel.
    """
    r0, r1 = _pixel_rows(params, f, y0, tile_h)
    if r0 > r1:
        return r0, r1, 0, -1
    c0, c1 = _band_columns(params, f, y0 + r0, y0 + r1, x0, x0 + tile_w - 1)
    c0 -= x0
    c1 -= x0
    if c0 > c1:
        return r0, r1, c0, c1
    dx = params[f, P_MX] - (x0 + c0 + 0.5)
    dy = params[f, P_MY] - (y0 + r0 + 0.5)
    dx_far = dx - (c1 - c0)
    dy_far = dy - (r1 - r0)
    # sigma is convex: its largest value over the box is at a corner
    worst = max(
        max(_sigma(params, f, dx, dy), _sigma(params, f, dx_far, dy)),
        max(_sigma(params, f, dx, dy_far), _sigma(params, f, dx_far, dy_far)),
    )
    n = c1 - c0 + 1
    if params[f, P_WALK] != 0.0 and worst <= _WALK_SIGMA_LIMIT:
        a, b, c = params[f, P_A], params[f, P_B], params[f, P_C]
        decay_x, decay_xy, decay_y = params[f, P_DECAY_X], params[f, P_DECAY_XY], params[f, P_DECAY_Y]
        g_row = math.exp(-_sigma(params, f, dx, dy))
        rx_row = math.exp(a * dx + b * dy - 0.5 * a)  # g(x + 1) / g(x)
        ry = math.exp(b * dx + c * dy - 0.5 * c)  # g(y + 1) / g(y)
        decay_x2 = decay_x * decay_x
        decay_x4 = decay_x2 * decay_x2
        for row in range(r0, r1 + 1):
            # two interleaved chains (even / odd columns) halve the multiply latency:
            # g(k + 2) = g(k) r(k) r(k + 1), and r(k) r(k + 1) shrinks by exp(-4a) per step
            g_even, g_odd = g_row, g_row * rx_row
            step_even = rx_row * rx_row * decay_x
            step_odd = step_even * decay_x2
            base = row * TILE_W + c0
            for k in range(0, n - 1, 2):
                gauss[np.uint64(base + k)] = g_even
                gauss[np.uint64(base + k + 1)] = g_odd
                g_even *= step_even
                g_odd *= step_odd
                step_even *= decay_x4
                step_odd *= decay_x4
            if n % 2 == 1:
                gauss[np.uint64(base + n - 1)] = g_even
            g_row *= ry
            ry *= decay_y
            rx_row *= decay_xy
    else:
        for row in range(r0, r1 + 1):
            base = row * TILE_W + c0
            for k in range(n):
                gauss[np.uint64(base + k)] = math.exp(-_sigma(params, f, dx - k, dy - (row - r0)))
    return r0, r1, c0, c1


@njit(cache=True, nogil=True, error_model="numpy", fastmath=_FAST)
def rasterize_forward(
    tiles, tile_offsets, isect_elem, params, colors, backgrounds, use_background,
    width, height, tiles_x, tiles_y,
    out_colors, out_alphas, out_transmittance, out_last,
):  # fmt: skip
    """Composite the tiles listed in ``tiles`` (global tile ids) front to back.

    ``colors`` [M, 4], ``backgrounds`` [C, 4]. Writes ``out_colors`` [C, H, W, 4],
    ``out_alphas`` [C, H, W, 1], the final transmittance ``out_transmittance`` [C, H, W]
    (float64) and ``out_last`` [C, H, W] (index in the tile's list of the last Gaussian
    composited, -1 if none), the last two for the backward pass.
    """
    dp = CHANNELS
    gauss = np.empty(TILE_PIXELS)
    trans = np.empty(TILE_PIXELS)  # negated once the pixel is done (gsplat's early stop)
    accum = np.empty(TILE_PIXELS * dp)
    last = np.empty(TILE_PIXELS, np.int32)
    row_left = np.empty(TILE_H, np.int32)
    for t in tiles:
        img, x0, y0, tile_w, tile_h = _tile_geometry(t, tiles_x, tiles_y, width, height)
        trans[:] = 1.0
        accum[:] = 0.0
        last[:] = -1
        row_left[:] = tile_w
        n_left = tile_w * tile_h
        start = tile_offsets[t]
        for j in range(tile_offsets[t + 1] - start):
            if n_left == 0:
                break
            f = isect_elem[start + j]
            r0, r1, c0, c1 = _fill_gauss(params, f, x0, y0, tile_w, tile_h, gauss)
            if c0 > c1:
                continue
            opac = params[f, P_OPAC]
            k0, k1, k2, k3 = float(colors[f, 0]), float(colors[f, 1]), float(colors[f, 2]), float(colors[f, 3])
            for row in range(r0, r1 + 1):
                if row_left[row] == 0:
                    continue
                # unsigned indices: numba then skips negative-index wraparound code
                for x in range(row * TILE_W + c0, row * TILE_W + c1 + 1):
                    ux = np.uint64(x)
                    g_alpha = opac * gauss[ux]
                    t_here = trans[ux]
                    if t_here <= 0.0 or g_alpha < ALPHA_THRESHOLD:
                        continue
                    alpha = min(g_alpha, MAX_ALPHA)
                    t_next = t_here * (1.0 - alpha)
                    if t_next <= MIN_TRANSMITTANCE:
                        trans[ux] = -t_here
                        row_left[row] -= 1
                        n_left -= 1
                        continue
                    weight = alpha * t_here
                    base = np.uint64(x * dp)
                    accum[base] += weight * k0
                    accum[base + np.uint64(1)] += weight * k1
                    accum[base + np.uint64(2)] += weight * k2
                    accum[base + np.uint64(3)] += weight * k3
                    trans[ux] = t_next
                    last[ux] = j
        for row in range(tile_h):
            for col in range(tile_w):
                x = row * TILE_W + col
                t_final = abs(trans[x])
                for k in range(dp):
                    value = accum[x * dp + k]
                    if use_background:
                        value += t_final * backgrounds[img, k]
                    out_colors[img, y0 + row, x0 + col, k] = value
                out_alphas[img, y0 + row, x0 + col, 0] = 1.0 - t_final
                out_transmittance[img, y0 + row, x0 + col] = t_final
                out_last[img, y0 + row, x0 + col] = last[x]


@njit(cache=True, nogil=True, error_model="numpy", fastmath=_FAST)
def rasterize_backward(
    tiles, tile_offsets, isect_elem, params, colors, backgrounds, use_background,
    width, height, tiles_x, tiles_y,
    transmittance, last_ids, v_colors, v_alphas,
    isect_grads, tile_v_backgrounds,
):  # fmt: skip
    """Back-to-front pass over the tiles in ``tiles``: gradient of every intersection into
    ``isect_grads``.

    ``isect_grads`` [n_isect, 10] columns: d/d(mean x, mean y, conic a, b, c, opacity,
    4 colours). ``tile_v_backgrounds`` [n_tiles, 4] (zeroed by the caller) gets per-tile
    background gradients. ``v_colors`` [C, H, W, 4]; ``v_alphas`` [C, H, W, 1] (pass zeros
    for all but one channel group: the alpha term must count once).
    """
    dp = CHANNELS
    gauss = np.empty(TILE_PIXELS)
    trans = np.empty(TILE_PIXELS)
    last = np.empty(TILE_PIXELS, np.int32)
    v_out = np.empty(TILE_PIXELS * dp)
    # dL/dalpha of a Gaussian at a pixel is T_before (c . v) + rest / (1 - alpha), with
    # rest = T_final (dL/dalpha_out - background . v) - (colour composited behind it) . v
    rest = np.empty(TILE_PIXELS)
    row_last = np.empty(TILE_H, np.int32)
    for t in tiles:
        img, x0, y0, tile_w, tile_h = _tile_geometry(t, tiles_x, tiles_y, width, height)
        last[:] = -1
        v_out[:] = 0.0
        row_last[:] = -1
        last_max = -1
        for row in range(tile_h):
            for col in range(tile_w):
                x = row * TILE_W + col
                t_final = transmittance[img, y0 + row, x0 + col]
                trans[x] = t_final
                li = last_ids[img, y0 + row, x0 + col]
                last[x] = li
                row_last[row] = max(row_last[row], li)
                bg_dot = 0.0
                for k in range(dp):
                    vk = float(v_colors[img, y0 + row, x0 + col, k])
                    v_out[x * dp + k] = vk
                    if use_background:
                        bg_dot += backgrounds[img, k] * vk
                        tile_v_backgrounds[t, k] += vk * t_final
                rest[x] = t_final * (float(v_alphas[img, y0 + row, x0 + col, 0]) - bg_dot)
            last_max = max(last_max, row_last[row])
        start = tile_offsets[t]
        for j in range(last_max, -1, -1):
            f = isect_elem[start + j]
            slot = start + j
            r0, r1, c0, c1 = _fill_gauss(params, f, x0, y0, tile_w, tile_h, gauss)
            opac = params[f, P_OPAC]
            a, b, c = params[f, P_A], params[f, P_B], params[f, P_C]
            k0, k1, k2, k3 = float(colors[f, 0]), float(colors[f, 1]), float(colors[f, 2]), float(colors[f, 3])
            gc0 = gc1 = gc2 = gc3 = 0.0
            g_mx = g_my = g_a = g_b = g_c = g_opac = 0.0
            for row in range(r0, r1 + 1):
                if c0 > c1 or row_last[row] < j:
                    continue
                dy = params[f, P_MY] - (y0 + row + 0.5)
                dx = params[f, P_MX] - (x0 + c0 + 0.5) + 1.0
                for x in range(row * TILE_W + c0, row * TILE_W + c1 + 1):
                    ux = np.uint64(x)
                    dx -= 1.0
                    if j > last[ux]:
                        continue
                    g_here = gauss[ux]
                    g_alpha = opac * g_here
                    if g_alpha < ALPHA_THRESHOLD:
                        continue
                    alpha = min(g_alpha, MAX_ALPHA)
                    inv_keep = 1.0 / (1.0 - alpha)
                    t_here = trans[ux] * inv_keep  # T in front of this Gaussian
                    trans[ux] = t_here
                    weight = alpha * t_here
                    base = np.uint64(x * dp)
                    v0, v1 = v_out[base], v_out[base + np.uint64(1)]
                    v2, v3 = v_out[base + np.uint64(2)], v_out[base + np.uint64(3)]
                    gc0 += weight * v0
                    gc1 += weight * v1
                    gc2 += weight * v2
                    gc3 += weight * v3
                    color_dot = k0 * v0 + k1 * v1 + k2 * v2 + k3 * v3
                    rest_here = rest[ux]
                    v_alpha = t_here * color_dot + rest_here * inv_keep
                    rest[ux] = rest_here - weight * color_dot
                    if g_alpha <= MAX_ALPHA:
                        v_sigma = -g_alpha * v_alpha
                        g_a += 0.5 * v_sigma * dx * dx
                        g_b += v_sigma * dx * dy
                        g_c += 0.5 * v_sigma * dy * dy
                        g_mx += v_sigma * (a * dx + b * dy)
                        g_my += v_sigma * (b * dx + c * dy)
                        g_opac += g_here * v_alpha
            isect_grads[slot, G_MX] = g_mx
            isect_grads[slot, G_MY] = g_my
            isect_grads[slot, G_A] = g_a
            isect_grads[slot, G_B] = g_b
            isect_grads[slot, G_C] = g_c
            isect_grads[slot, G_OPAC] = g_opac
            isect_grads[slot, N_GRAD_FIXED] = gc0
            isect_grads[slot, N_GRAD_FIXED + 1] = gc1
            isect_grads[slot, N_GRAD_FIXED + 2] = gc2
            isect_grads[slot, N_GRAD_FIXED + 3] = gc3


@njit(cache=True, nogil=True, error_model="numpy")
def gather_gradients(start, stop, elem_offsets, elem_isect, isect_grads, v_means2d, v_conics, v_opacities, v_colors):
    """Sum each element's intersection gradients in tile order (deterministic).

    ``isect_grads`` [G, n_isect, 10] holds one buffer per channel group; geometry gradients
    add the groups in order, colour group ``g`` goes to ``v_colors[:, 4 g : 4 g + 4]``
    (``v_colors`` [M, 4 G]).
    """
    n_groups = isect_grads.shape[0]
    width = isect_grads.shape[2]
    total = np.empty(width)
    geometry = np.empty(N_GRAD_FIXED)
    for f in range(start, stop):
        geometry[:] = 0.0
        for grp in range(n_groups):
            total[:] = 0.0
            for i in range(elem_offsets[f], elem_offsets[f + 1]):
                slot = elem_isect[i]
                for k in range(width):
                    total[k] += isect_grads[grp, slot, k]
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
