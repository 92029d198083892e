"""Numba kernels of the fused photometric loss (:mod:`posegs_ros.scene.loss`).

The loss and its gradient with respect to the prediction come out of one forward pass: the
Gaussian filtering (OpenCV) happens outside, these kernels do the per-pixel work between the
filters. Images ``[H, W, C]`` are walked row by row as ``[H, W * C]`` (pixel ``j``, channel
``k`` at ``j * C + k``), so the inner loops are unit-stride and branch-free and LLVM
vectorizes them; sums may be reassociated for that (``fastmath`` reassoc / contract only: no
assumptions about NaN or infinities, which the caller checks), so they are the same from run
to run on one machine. GIL-free; the per-pixel kernels take blocks of rows through an atomic
counter (:func:`~posegs_ros.render._kernel_support.claim`, run on the renderer's threads with
:func:`~posegs_ros.render._threads.run_blocks`) and keep one sum per row, which the caller adds in
row order: results do not depend on the thread count.

SSIM per pixel and channel from the filtered statistics ``mu_x, mu_y, E[x^2], E[y^2], E[xy]``:
``S = A1 A2 / (B1 B2)``, ``A1 = 2 mu_x mu_y + C1``, ``A2 = 2 s_xy + C2``, ``B1 = mu_x^2 + mu_y^2 + C1``,
``B2 = s_xx + s_yy + C2``. Its derivatives with respect to the filtered statistics of ``x``
(``b = dS/dE[x^2]``, ``c = dS/dE[xy]``, ``a = dS/dmu_x`` through all three) make the gradient of
the mean SSIM ``G * a + 2 x (G * b) + y (G * c)`` (``G *``: the symmetric Gaussian filter
applied to the zero-padded maps, the adjoint of keeping the valid region).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from posegs_ros.render._kernel_support import claim

SSIM_C1 = 0.01**2
SSIM_C2 = 0.03**2
_FAST = {"reassoc", "contract"}
ROW_BLOCK = 16  # image rows per work item


@njit(cache=True, nogil=True, error_model="numpy", fastmath=_FAST)
def ssim_inputs(counter, n_items, block, x, y, out):  # pragma: no cover - numba
    """``out`` ``[5, H, W*C]`` = ``x, y, x^2, y^2, x y`` (``x``, ``y`` ``[H, W*C]``), rows
    ``0 .. n_items - 1`` in blocks of ``block``."""
    n = x.shape[1]
    while True:
        start = claim(counter) * block
        if start >= n_items:
            break
        for i in range(start, min(n_items, start + block)):
            for t in range(n):
                a = x[i, t]
                b = y[i, t]
                out[0, i, t] = a
                out[1, i, t] = b
                out[2, i, t] = a * a
                out[3, i, t] = b * b
                out[4, i, t] = a * b


@njit(cache=True, nogil=True, error_model="numpy", fastmath=_FAST)
def ssim_terms(counter, n_items, block, stats, r, c, coef, row_sums):  # pragma: no cover - numba
    """SSIM map of the filtered statistics ``stats`` ``[5, H, W*C]`` (``C`` channels) over the
    valid region (``r`` pixels in from each border; row ``r + k`` is item ``k``): its sum over
    row ``i`` into ``row_sums[i]`` and ``a, b, c`` there into ``coef`` ``[3, H, W*C]`` (its
    border is left as it is: zeros)."""
    n = stats.shape[2]
    while True:
        start = claim(counter) * block
        if start >= n_items:
            break
        for i in range(r + start, r + min(n_items, start + block)):
            row = 0.0
            for t in range(r * c, n - r * c):
                mx = np.float64(stats[0, i, t])
                my = np.float64(stats[1, i, t])
                sxx = stats[2, i, t] - mx * mx
                syy = stats[3, i, t] - my * my
                sxy = stats[4, i, t] - mx * my
                a1 = 2.0 * mx * my + SSIM_C1
                a2 = 2.0 * sxy + SSIM_C2
                b1 = mx * mx + my * my + SSIM_C1
                b2 = sxx + syy + SSIM_C2
                inv = 1.0 / (b1 * b2)
                s = a1 * a2 * inv
                row += s
                d_sxx = -s / b2
                d_sxy = 2.0 * a1 * inv
                d_mx = 2.0 * my * a2 * inv - 2.0 * mx * s / b1
                coef[0, i, t] = d_mx - 2.0 * mx * d_sxx - my * d_sxy
                coef[1, i, t] = d_sxx
                coef[2, i, t] = d_sxy
            row_sums[i] = row


@njit(cache=True, nogil=True, error_model="numpy")
def ordered_sum(values):  # pragma: no cover - numba
    """``values[0] + values[1] + ...`` added one after the other (a fixed order)."""
    total = 0.0
    for v in values:
        total += v
    return total


@njit(cache=True, nogil=True, error_model="numpy", fastmath=_FAST)
def _sign(v: float) -> float:  # pragma: no cover - numba
    return (1.0 if v > 0 else 0.0) - (1.0 if v < 0 else 0.0)


@njit(cache=True, nogil=True, error_model="numpy", fastmath=_FAST)
def mask_sums(mask: np.ndarray, c: int) -> tuple[float, float, float]:  # pragma: no cover - numba
    """Pixels (times channels) of the 0 / 1 ``mask`` ``[H, W*C]``, and of its horizontal and
    vertical pairs (both pixels in it): the denominators of :func:`loss_rows`' means."""
    h, n = mask.shape
    sm = 0.0
    smx = 0.0
    smy = 0.0
    for i in range(h):
        for t in range(n):
            sm += mask[i, t]
        for t in range(c, n):
            smx += mask[i, t] * mask[i, t - c]
        if i + 1 < h:
            for t in range(n):
                smy += mask[i, t] * mask[i + 1, t]
    return sm, smx, smy


@njit(cache=True, nogil=True, error_model="numpy", fastmath=_FAST)
def loss_rows(
    counter, n_items, block, x, y, mask, c, filtered, ssim_scale, l1_weight, gradient_weight, inv1, invx, invy,
    grad, row_terms,
):  # pragma: no cover - numba  # fmt: skip
    """Rows of the masked L1 of ``x - y`` and of the masked L1 of its horizontal plus vertical
    differences (images ``[H, W*C]``, ``mask`` 0 / 1 with each pixel's value repeated over its
    channels; ``inv1``, ``invx``, ``invy``: 1 / the pair counts of :func:`mask_sums`): row ``i``'s
    sums into ``row_terms[i]`` (L1, horizontal, vertical pairs between rows ``i`` and ``i + 1``)
    and the gradient of ``l1_weight L1 + gradient_weight diff + ssim_scale * sum SSIM`` with
    respect to ``x`` into ``grad`` ``[H, W*C]``, the SSIM part from the filtered ``a, b, c`` maps
    ``filtered`` ``[3, H, W*C]`` (unused when ``ssim_scale`` is 0)."""
    h, n = x.shape
    res = np.empty((3, n), np.float32)  # residuals of three consecutive rows, row j in slot j % 3
    sx_row = np.zeros(n + c, np.float64)  # signed, weighted horizontal terms of the row (t >= c)
    sy_prev = np.zeros(n, np.float64)  # signed, weighted vertical terms between rows i - 1 and i
    sy_next = np.zeros(n, np.float64)  # ... between rows i and i + 1
    while True:
        start = claim(counter) * block
        if start >= n_items:
            break
        for i in range(start, min(n_items, start + block)):
            # a block's first row fills rows i - 1 .. i + 1; the next ones only row i + 1 (the
            # others and the vertical terms above them carry over from the row before)
            for j in range(i - 1 if i == start else i + 1, min(h, i + 2)):
                if j >= 0:
                    for t in range(n):
                        res[j % 3, t] = x[j, t] - y[j, t]
            cur = i % 3
            row_l1 = 0.0
            for t in range(n):
                r = np.float64(res[cur, t])
                m = np.float64(mask[i, t])
                row_l1 += abs(r) * m
                g = l1_weight * m * inv1 * _sign(r)
                if ssim_scale != 0.0:
                    g += ssim_scale * (filtered[0, i, t] + 2.0 * x[i, t] * filtered[1, i, t] + y[i, t] * filtered[2, i, t])
                grad[i, t] = g
            row_x = 0.0
            row_y = 0.0
            if gradient_weight > 0.0:
                for t in range(c, n):
                    d = np.float64(res[cur, t]) - res[cur, t - c]
                    wt = np.float64(mask[i, t]) * mask[i, t - c]
                    row_x += abs(d) * wt
                    sx_row[t] = gradient_weight * wt * invx * _sign(d)
                if i == 0:
                    sy_prev[:] = 0.0
                elif i == start:
                    prv = (i - 1) % 3
                    for t in range(n):
                        d = np.float64(res[cur, t]) - res[prv, t]
                        wt = np.float64(mask[i - 1, t]) * mask[i, t]
                        sy_prev[t] = gradient_weight * wt * invy * _sign(d)
                else:
                    sy_prev, sy_next = sy_next, sy_prev
                if i + 1 < h:
                    nxt = (i + 1) % 3
                    for t in range(n):
                        d = np.float64(res[nxt, t]) - res[cur, t]
                        wt = np.float64(mask[i, t]) * mask[i + 1, t]
                        row_y += abs(d) * wt
                        sy_next[t] = gradient_weight * wt * invy * _sign(d)
                else:
                    sy_next[:] = 0.0
                for t in range(n):  # pixel t gains where it is the later of a pair, loses where the earlier
                    grad[i, t] += sx_row[t] - sx_row[t + c] + sy_prev[t] - sy_next[t]
            row_terms[i, 0] = row_l1
            row_terms[i, 1] = row_x
            row_terms[i, 2] = row_y
