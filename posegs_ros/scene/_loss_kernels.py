"""Numba kernels of the fused photometric loss (:mod:`posegs_ros.scene.loss`).

The loss and its gradient with respect to the prediction come out of one forward pass: the
Gaussian filtering (OpenCV) happens outside, these kernels do the per-pixel work between the
filters. Images ``[H, W, C]`` are walked row by row as ``[H, W * C]`` (pixel ``j``, channel
``k`` at ``j * C + k``), so the inner loops are unit-stride and branch-free and LLVM
vectorizes them; sums may be reassociated for that (``fastmath`` reassoc / contract only: no
assumptions about NaN or infinities, which the caller checks), so they are the same from run
to run on one machine. Serial and GIL-free.

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

SSIM_C1 = 0.01**2
SSIM_C2 = 0.03**2
_FAST = {"reassoc", "contract"}


@njit(cache=True, nogil=True, error_model="numpy", fastmath=_FAST)
def ssim_inputs(x: np.ndarray, y: np.ndarray, out: np.ndarray) -> None:  # pragma: no cover - numba
    """``out`` ``[5, H, W*C]`` = ``x, y, x^2, y^2, x y`` (``x``, ``y`` ``[H, W*C]``)."""
    h, n = x.shape
    for i in range(h):
        for t in range(n):
            a = x[i, t]
            b = y[i, t]
            out[0, i, t] = a
            out[1, i, t] = b
            out[2, i, t] = a * a
            out[3, i, t] = b * b
            out[4, i, t] = a * b


@njit(cache=True, nogil=True, error_model="numpy", fastmath=_FAST)
def ssim_terms(stats: np.ndarray, r: int, c: int, coef: np.ndarray) -> float:  # pragma: no cover - numba
    """Sum of the SSIM map over the valid region (``r`` pixels in from each border) of the
    filtered statistics ``stats`` ``[5, H, W*C]`` (``C`` channels); writes ``a, b, c`` there
    into ``coef`` ``[3, H, W*C]`` (its border is left as it is: zeros)."""
    _, h, n = stats.shape
    total = 0.0
    for i in range(r, h - r):
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
        total += row
    return total


@njit(cache=True, nogil=True, error_model="numpy", fastmath=_FAST)
def _sign(v: float) -> float:  # pragma: no cover - numba
    return (1.0 if v > 0 else 0.0) - (1.0 if v < 0 else 0.0)


@njit(cache=True, nogil=True, error_model="numpy", fastmath=_FAST)
def loss_terms(
    x: np.ndarray,
    y: np.ndarray,
    mask: np.ndarray,
    c: int,
    filtered: np.ndarray,
    ssim_scale: float,
    l1_weight: float,
    gradient_weight: float,
    grad: np.ndarray,
) -> tuple[float, float]:  # pragma: no cover - numba
    """Masked L1 of ``x - y`` and the masked L1 of its horizontal plus vertical differences
    (each a mean, as :func:`posegs_ros.scene.loss.photometric_loss_reference`) of images
    ``[H, W*C]``; writes the gradient of ``l1_weight L1 + gradient_weight diff + ssim_scale *
    sum SSIM`` with respect to ``x`` into ``grad`` ``[H, W*C]``, the SSIM part from the
    filtered ``a, b, c`` maps ``filtered`` ``[3, H, W*C]`` (unused when ``ssim_scale`` is 0).
    ``mask`` ``[H, W*C]`` is 0 / 1 (each pixel's value repeated over its channels)."""
    h, n = x.shape
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
    inv1 = 1.0 / max(sm, 1.0)
    invx = 1.0 / max(smx, 1.0)
    invy = 1.0 / max(smy, 1.0)
    res = np.empty((2, n), np.float32)  # residual of row i (and of row i + 1)
    sx_row = np.zeros(n + c, np.float64)  # signed, weighted horizontal terms of the row (t >= c)
    sy_prev = np.zeros(n, np.float64)  # signed, weighted vertical terms between rows i - 1 and i
    sy_next = np.zeros(n, np.float64)
    l1 = 0.0
    sx = 0.0
    sy = 0.0
    for t in range(n):
        res[0, t] = x[0, t] - y[0, t]
    for i in range(h):
        cur = i % 2
        nxt = 1 - cur
        row_l1 = 0.0
        for t in range(n):
            r = np.float64(res[cur, t])
            m = np.float64(mask[i, t])
            row_l1 += abs(r) * m
            g = l1_weight * m * inv1 * _sign(r)
            if ssim_scale != 0.0:
                g += ssim_scale * (filtered[0, i, t] + 2.0 * x[i, t] * filtered[1, i, t] + y[i, t] * filtered[2, i, t])
            grad[i, t] = g
        l1 += row_l1
        if i + 1 < h:
            for t in range(n):
                res[nxt, t] = x[i + 1, t] - y[i + 1, t]
        if gradient_weight > 0.0:
            row_x = 0.0
            for t in range(c, n):
                d = np.float64(res[cur, t]) - res[cur, t - c]
                wt = np.float64(mask[i, t]) * mask[i, t - c]
                row_x += abs(d) * wt
                sx_row[t] = gradient_weight * wt * invx * _sign(d)
            sx += row_x
            row_y = 0.0
            if i + 1 < h:
                for t in range(n):
                    d = np.float64(res[nxt, t]) - res[cur, t]
                    wt = np.float64(mask[i, t]) * mask[i + 1, t]
                    row_y += abs(d) * wt
                    sy_next[t] = gradient_weight * wt * invy * _sign(d)
            else:
                sy_next[:] = 0.0
            sy += row_y
            for t in range(n):  # pixel t gains where it is the later of a pair, loses where the earlier
                grad[i, t] += sx_row[t] - sx_row[t + c] + sy_prev[t] - sy_next[t]
            sy_prev, sy_next = sy_next, sy_prev
    return l1 * inv1, (sx * invx + sy * invy) if gradient_weight > 0.0 else 0.0
