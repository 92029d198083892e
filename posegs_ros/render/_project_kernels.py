"""Numba kernels: EWA projection of 3D Gaussians (gsplat 1.5 rules) and its analytic backward.

Scalars are float64 inside the kernels (plain local variables, so they live in registers),
arrays float32. Each kernel handles a range of Gaussian blocks (a fixed block size,
independent of the thread count) with the GIL released, so callers run ranges on several
threads; cameras are looped inside, so every sum has a fixed order: per-Gaussian gradients
add the cameras in order, per-camera (viewmat) gradients are per-block partial sums that the
caller adds in block order.

The 2D covariance is ``A S A^T + eps2d I`` with ``A = J R_cam`` (the 2x3 product of gsplat's
clamped perspective Jacobian and the camera rotation) and ``S`` the world covariance, which
is gsplat's ``J (R_cam S R_cam^T) J^T`` regrouped.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from posegs_ros.render._common import ALPHA_THRESHOLD, MAX_EXTEND
from posegs_ros.render._kernel_support import claim
from posegs_ros.render._raster_kernels import SIGMA_MARGIN, TILE_H, TILE_W

BLOCK = 256  # Gaussians per work item (fixed, so sums do not depend on the thread count)
# per-camera constants: R (9, row-major), t (3), fx, fy, cx, cy, clamp limits x+, x-, y+, y-
N_CAM = 20
# multiply-adds may fuse (deterministic: the same code runs whatever the thread count)
_FAST = {"contract"}


@njit(cache=True, error_model="numpy")
def camera_constants(viewmats, Ks, width, height):
    """``[C, N_CAM]`` float64 per-camera constants."""
    n_cams = viewmats.shape[0]
    cams = np.empty((n_cams, N_CAM))
    for c in range(n_cams):
        for i in range(3):
            for j in range(3):
                cams[c, 3 * i + j] = viewmats[c, i, j]
            cams[c, 9 + i] = viewmats[c, i, 3]
        fx, fy, cx, cy = float(Ks[c, 0, 0]), float(Ks[c, 1, 1]), float(Ks[c, 0, 2]), float(Ks[c, 1, 2])
        cams[c, 12], cams[c, 13], cams[c, 14], cams[c, 15] = fx, fy, cx, cy
        tan_fovx = 0.5 * width / fx
        tan_fovy = 0.5 * height / fy
        cams[c, 16] = (width - cx) / fx + 0.3 * tan_fovx
        cams[c, 17] = cx / fx + 0.3 * tan_fovx
        cams[c, 18] = (height - cy) / fy + 0.3 * tan_fovy
        cams[c, 19] = cy / fy + 0.3 * tan_fovy
    return cams


@njit(cache=True, error_model="numpy", fastmath=_FAST)
def _rotation(qw, qx, qy, qz):
    """Rotation (row-major 9-tuple) of the wxyz quaternion (normalized here) and 1 / |q|."""
    inv = 1.0 / math.sqrt(qw * qw + qx * qx + qy * qy + qz * qz)
    w, x, y, z = qw * inv, qx * inv, qy * inv, qz * inv
    return (
        1.0 - 2.0 * (y * y + z * z), 2.0 * (x * y - w * z), 2.0 * (x * z + w * y),
        2.0 * (x * y + w * z), 1.0 - 2.0 * (x * x + z * z), 2.0 * (y * z - w * x),
        2.0 * (x * z - w * y), 2.0 * (y * z + w * x), 1.0 - 2.0 * (x * x + y * y),
    ), inv  # fmt: skip


@njit(cache=True, error_model="numpy", fastmath=_FAST)
def _covariance(rot, s0, s1, s2):
    """World covariance ``R diag(s)^2 R^T`` as (S00, S01, S02, S11, S12, S22)."""
    m00, m01, m02 = rot[0] * s0, rot[1] * s1, rot[2] * s2
    m10, m11, m12 = rot[3] * s0, rot[4] * s1, rot[5] * s2
    m20, m21, m22 = rot[6] * s0, rot[7] * s1, rot[8] * s2
    return (
        m00 * m00 + m01 * m01 + m02 * m02,
        m00 * m10 + m01 * m11 + m02 * m12,
        m00 * m20 + m01 * m21 + m02 * m22,
        m10 * m10 + m11 * m11 + m12 * m12,
        m10 * m20 + m11 * m21 + m12 * m22,
        m20 * m20 + m21 * m21 + m22 * m22,
    )


@njit(cache=True, error_model="numpy", fastmath=_FAST)
def _camera_point(cams, c, m0, m1, m2):
    """Camera-frame mean ``R m + t``."""
    x = cams[c, 0] * m0 + cams[c, 1] * m1 + cams[c, 2] * m2 + cams[c, 9]
    y = cams[c, 3] * m0 + cams[c, 4] * m1 + cams[c, 5] * m2 + cams[c, 10]
    z = cams[c, 6] * m0 + cams[c, 7] * m1 + cams[c, 8] * m2 + cams[c, 11]
    return x, y, z


@njit(cache=True, error_model="numpy", fastmath=_FAST)
def _jacobian_rows(cams, c, x, y, z):
    """``A = J R_cam`` (rows a0, a1) with gsplat's clamped perspective Jacobian J, plus J's
    entries (j00, j02, j11, j12) and the clamped tx, ty."""
    rz = 1.0 / z
    tx = z * min(cams[c, 16], max(-cams[c, 17], x * rz))
    ty = z * min(cams[c, 18], max(-cams[c, 19], y * rz))
    j00 = cams[c, 12] * rz
    j02 = -cams[c, 12] * tx * rz * rz
    j11 = cams[c, 13] * rz
    j12 = -cams[c, 13] * ty * rz * rz
    a0 = (j00 * cams[c, 0] + j02 * cams[c, 6], j00 * cams[c, 1] + j02 * cams[c, 7], j00 * cams[c, 2] + j02 * cams[c, 8])
    a1 = (j11 * cams[c, 3] + j12 * cams[c, 6], j11 * cams[c, 4] + j12 * cams[c, 7], j11 * cams[c, 5] + j12 * cams[c, 8])
    return a0, a1, j00, j02, j11, j12, tx, ty


@njit(cache=True, error_model="numpy", fastmath=_FAST)
def _sym_times(cov, a):
    """``S a`` for the symmetric S = (S00, S01, S02, S11, S12, S22)."""
    return (
        cov[0] * a[0] + cov[1] * a[1] + cov[2] * a[2],
        cov[1] * a[0] + cov[3] * a[1] + cov[4] * a[2],
        cov[2] * a[0] + cov[4] * a[1] + cov[5] * a[2],
    )


@njit(cache=True, nogil=True, error_model="numpy", fastmath=_FAST)
def project_forward(
    counter, n_items, block, means, quats, scales, opacities, cams, width, height,
    eps2d, near_plane, far_plane, radius_clip,
    radii, means2d, depths, conics, tile_bounds,
):  # fmt: skip
    """Fill radii [C, N, 2] int32, means2d [C, N, 2], depths [C, N], conics [C, N, 3] and
    ``tile_bounds`` [C, N] int64 (an upper bound of the rasterizer's tiles that the entry's
    opacity-aware ellipse reaches: those of its bounding box widened by a pixel) for the
    Gaussians ``0 .. n_items - 1``, taken in blocks of :data:`BLOCK` through :func:`claim`
    (``cams`` from :func:`camera_constants`).

    Culled entries get radii 0 and zeros elsewhere.
    """
    n = means.shape[0]
    n_cams = cams.shape[0]
    while True:
        blk = claim(counter)
        if blk * BLOCK >= n:
            break
        for g in range(blk * BLOCK, min(n, (blk + 1) * BLOCK)):
            rot, _ = _rotation(float(quats[g, 0]), float(quats[g, 1]), float(quats[g, 2]), float(quats[g, 3]))
            cov = _covariance(rot, float(scales[g, 0]), float(scales[g, 1]), float(scales[g, 2]))
            m0, m1, m2 = float(means[g, 0]), float(means[g, 1]), float(means[g, 2])
            opac = float(opacities[g])
            extend = MAX_EXTEND
            sigma_max = 0.0
            if opac >= ALPHA_THRESHOLD:
                sigma_max = math.log(opac / ALPHA_THRESHOLD)
                extend = min(MAX_EXTEND, math.sqrt(2.0 * sigma_max))
                sigma_max += SIGMA_MARGIN * (1.0 + sigma_max)
            for c in range(n_cams):
                tile_bounds[c, g] = 0
                radii[c, g, 0] = 0
                radii[c, g, 1] = 0
                means2d[c, g, 0] = 0.0
                means2d[c, g, 1] = 0.0
                depths[c, g] = 0.0
                conics[c, g, 0] = 0.0
                conics[c, g, 1] = 0.0
                conics[c, g, 2] = 0.0
                x, y, z = _camera_point(cams, c, m0, m1, m2)
                if z < near_plane or z > far_plane or opac < ALPHA_THRESHOLD:
                    continue
                a0, a1, _, _, _, _, _, _ = _jacobian_rows(cams, c, x, y, z)
                u = _sym_times(cov, a0)
                c00 = a0[0] * u[0] + a0[1] * u[1] + a0[2] * u[2] + eps2d
                c01 = a1[0] * u[0] + a1[1] * u[1] + a1[2] * u[2]
                v = _sym_times(cov, a1)
                c11 = a1[0] * v[0] + a1[1] * v[1] + a1[2] * v[2] + eps2d
                det = c00 * c11 - c01 * c01
                if det <= 0.0:
                    continue
                rx = math.ceil(extend * math.sqrt(c00))
                ry = math.ceil(extend * math.sqrt(c11))
                if rx <= radius_clip and ry <= radius_clip:
                    continue
                rz = 1.0 / z
                px = cams[c, 12] * x * rz + cams[c, 14]
                py = cams[c, 13] * y * rz + cams[c, 15]
                if px + rx <= 0.0 or px - rx >= width or py + ry <= 0.0 or py - ry >= height:
                    continue
                radii[c, g, 0] = np.int32(rx)
                radii[c, g, 1] = np.int32(ry)
                means2d[c, g, 0] = px
                means2d[c, g, 1] = py
                depths[c, g] = z
                conics[c, g, 0] = c11 / det
                conics[c, g, 1] = -c01 / det
                conics[c, g, 2] = c00 / det
                half_w = math.sqrt(2.0 * sigma_max * c00) + 1.0
                half_h = math.sqrt(2.0 * sigma_max * c11) + 1.0
                x_lo = max(0, int(math.ceil(px - half_w - 0.5)))
                x_hi = min(width - 1, int(math.floor(px + half_w - 0.5)))
                y_lo = max(0, int(math.ceil(py - half_h - 0.5)))
                y_hi = min(height - 1, int(math.floor(py + half_h - 0.5)))
                if x_lo <= x_hi and y_lo <= y_hi:
                    tile_bounds[c, g] = (y_hi // TILE_H - y_lo // TILE_H + 1) * (x_hi // TILE_W - x_lo // TILE_W + 1)


@njit(cache=True, error_model="numpy", fastmath=_FAST)
def _quat_vjp(qw, qx, qy, qz, inv_norm, g):
    """Gradient wrt the unnormalized wxyz quaternion from ``g`` = dL/dR (row-major 9-tuple)."""
    w, x, y, z = qw * inv_norm, qx * inv_norm, qy * inv_norm, qz * inv_norm
    g00, g01, g02, g10, g11, g12, g20, g21, g22 = g
    vw = 2.0 * (x * (g21 - g12) + y * (g02 - g20) + z * (g10 - g01))
    vx = 2.0 * (-2.0 * x * (g11 + g22) + y * (g10 + g01) + z * (g20 + g02) + w * (g21 - g12))
    vy = 2.0 * (x * (g10 + g01) - 2.0 * y * (g00 + g22) + z * (g21 + g12) + w * (g02 - g20))
    vz = 2.0 * (x * (g20 + g02) + y * (g21 + g12) - 2.0 * z * (g00 + g11) + w * (g10 - g01))
    dot = vw * w + vx * x + vy * y + vz * z
    return (vw - dot * w) * inv_norm, (vx - dot * x) * inv_norm, (vy - dot * y) * inv_norm, (vz - dot * z) * inv_norm


@njit(cache=True, nogil=True, error_model="numpy", fastmath=_FAST)
def project_backward(
    counter, n_items, block, means, quats, scales, cams, radii, conics, elements,
    v_means2d, v_depths, v_conics, want_gaussians, want_viewmats,
    v_means, v_quats, v_scales, block_view,
):  # fmt: skip
    """Gradients of the projection for Gaussians ``0 .. n_items - 1``, taken in blocks of
    :data:`BLOCK` through :func:`claim` (entries with radii 0 get none). The incoming
    gradients are per element: entry (c, g) is element ``elements[c, g]`` of ``v_means2d``
    [M, 2], ``v_depths`` [M], ``v_conics`` [M, 3] (-1: not an element).

    With ``want_gaussians``, writes v_means [N, 3], v_quats [N, 4], v_scales [N, 3] (zeroed by
    the caller); with ``want_viewmats``, each block's partial dL/d(viewmat rows 0..2) into
    ``block_view`` [n_blocks, C, 12] (R row-major, then t).
    """
    n = means.shape[0]
    n_cams = cams.shape[0]
    while True:
        blk = claim(counter)
        if blk * BLOCK >= n:
            break
        for g in range(blk * BLOCK, min(n, (blk + 1) * BLOCK)):
            qw, qx, qy, qz = float(quats[g, 0]), float(quats[g, 1]), float(quats[g, 2]), float(quats[g, 3])
            s0, s1, s2 = float(scales[g, 0]), float(scales[g, 1]), float(scales[g, 2])
            rot, inv_norm = _rotation(qw, qx, qy, qz)
            cov = _covariance(rot, s0, s1, s2)
            m0, m1, m2 = float(means[g, 0]), float(means[g, 1]), float(means[g, 2])
            vm0 = vm1 = vm2 = 0.0
            vs00 = vs01 = vs02 = vs11 = vs12 = vs22 = 0.0  # dL/dS (symmetric)
            any_visible = False
            for c in range(n_cams):
                e = elements[c, g]
                if radii[c, g, 0] <= 0 or radii[c, g, 1] <= 0 or e < 0:
                    continue
                any_visible = True
                x, y, z = _camera_point(cams, c, m0, m1, m2)
                a0, a1, j00, j02, j11, j12, tx, ty = _jacobian_rows(cams, c, x, y, z)
                # dL/dcov2d = -P G P with P = conic, G = [[va, vb/2], [vb/2, vc]]
                pa, pb, pc = float(conics[c, g, 0]), float(conics[c, g, 1]), float(conics[c, g, 2])
                ga, gb, gc = float(v_conics[e, 0]), 0.5 * float(v_conics[e, 1]), float(v_conics[e, 2])
                gp00 = ga * pa + gb * pb
                gp01 = ga * pb + gb * pc
                gp10 = gb * pa + gc * pb
                gp11 = gb * pb + gc * pc
                w00 = -(pa * gp00 + pb * gp10)
                w01 = -(pa * gp01 + pb * gp11)
                w11 = -(pb * gp01 + pc * gp11)
                # cov2d = A S A^T: dL/dA = 2 W A S, dL/dS = A^T W A
                u = _sym_times(cov, a0)
                v = _sym_times(cov, a1)
                va0 = (
                    2.0 * (w00 * u[0] + w01 * v[0]), 2.0 * (w00 * u[1] + w01 * v[1]), 2.0 * (w00 * u[2] + w01 * v[2])
                )  # fmt: skip
                va1 = (
                    2.0 * (w01 * u[0] + w11 * v[0]), 2.0 * (w01 * u[1] + w11 * v[1]), 2.0 * (w01 * u[2] + w11 * v[2])
                )  # fmt: skip
                # A = J R: dL/dJ (its four entries) and dL/dR through the covariance
                vj00 = va0[0] * cams[c, 0] + va0[1] * cams[c, 1] + va0[2] * cams[c, 2]
                vj02 = va0[0] * cams[c, 6] + va0[1] * cams[c, 7] + va0[2] * cams[c, 8]
                vj11 = va1[0] * cams[c, 3] + va1[1] * cams[c, 4] + va1[2] * cams[c, 5]
                vj12 = va1[0] * cams[c, 6] + va1[1] * cams[c, 7] + va1[2] * cams[c, 8]
                fx, fy = cams[c, 12], cams[c, 13]
                rz = 1.0 / z
                rz2 = rz * rz
                rz3 = rz2 * rz
                vu, vv = float(v_means2d[e, 0]), float(v_means2d[e, 1])
                vmc0 = fx * rz * vu
                vmc1 = fy * rz * vv
                vmc2 = -(fx * x * vu + fy * y * vv) * rz2 + float(v_depths[e])
                if x * rz <= cams[c, 16] and x * rz >= -cams[c, 17]:
                    vmc0 += -fx * rz2 * vj02
                    vmc2 += 2.0 * fx * tx * rz3 * vj02
                else:
                    vmc2 += fx * tx * rz3 * vj02
                if y * rz <= cams[c, 18] and y * rz >= -cams[c, 19]:
                    vmc1 += -fy * rz2 * vj12
                    vmc2 += 2.0 * fy * ty * rz3 * vj12
                else:
                    vmc2 += fy * ty * rz3 * vj12
                vmc2 += -fx * rz2 * vj00 - fy * rz2 * vj11
                if want_gaussians:
                    # mean_c = R m + t
                    vm0 += cams[c, 0] * vmc0 + cams[c, 3] * vmc1 + cams[c, 6] * vmc2
                    vm1 += cams[c, 1] * vmc0 + cams[c, 4] * vmc1 + cams[c, 7] * vmc2
                    vm2 += cams[c, 2] * vmc0 + cams[c, 5] * vmc1 + cams[c, 8] * vmc2
                    # dL/dS += A^T W A
                    wa0 = (w00 * a0[0] + w01 * a1[0], w00 * a0[1] + w01 * a1[1], w00 * a0[2] + w01 * a1[2])
                    wa1 = (w01 * a0[0] + w11 * a1[0], w01 * a0[1] + w11 * a1[1], w01 * a0[2] + w11 * a1[2])
                    vs00 += a0[0] * wa0[0] + a1[0] * wa1[0]
                    vs01 += a0[0] * wa0[1] + a1[0] * wa1[1]
                    vs02 += a0[0] * wa0[2] + a1[0] * wa1[2]
                    vs11 += a0[1] * wa0[1] + a1[1] * wa1[1]
                    vs12 += a0[1] * wa0[2] + a1[1] * wa1[2]
                    vs22 += a0[2] * wa0[2] + a1[2] * wa1[2]
                if want_viewmats:
                    # dL/dR = vmc m^T + J^T dL/dA (rows: j00 va0, j11 va1, j02 va0 + j12 va1)
                    acc = block_view[blk, c]
                    acc[0] += vmc0 * m0 + j00 * va0[0]
                    acc[1] += vmc0 * m1 + j00 * va0[1]
                    acc[2] += vmc0 * m2 + j00 * va0[2]
                    acc[3] += vmc1 * m0 + j11 * va1[0]
                    acc[4] += vmc1 * m1 + j11 * va1[1]
                    acc[5] += vmc1 * m2 + j11 * va1[2]
                    acc[6] += vmc2 * m0 + j02 * va0[0] + j12 * va1[0]
                    acc[7] += vmc2 * m1 + j02 * va0[1] + j12 * va1[1]
                    acc[8] += vmc2 * m2 + j02 * va0[2] + j12 * va1[2]
                    acc[9] += vmc0
                    acc[10] += vmc1
                    acc[11] += vmc2
            if not (any_visible and want_gaussians):
                continue
            v_means[g, 0] = vm0
            v_means[g, 1] = vm1
            v_means[g, 2] = vm2
            # S = M M^T with M = R_q diag(s): dL/dM = 2 dL/dS M, dL/dR_q = dL/dM diag(s),
            # dL/ds_k = sum_i R_q[i, k] dL/dM[i, k]
            vs = (vs00, vs01, vs02, vs11, vs12, vs22)
            r = rot
            c0 = _sym_times(vs, (r[0] * s0, r[3] * s0, r[6] * s0))  # column k of dL/dS M
            c1 = _sym_times(vs, (r[1] * s1, r[4] * s1, r[7] * s1))
            c2 = _sym_times(vs, (r[2] * s2, r[5] * s2, r[8] * s2))
            v_scales[g, 0] = 2.0 * (r[0] * c0[0] + r[3] * c0[1] + r[6] * c0[2])
            v_scales[g, 1] = 2.0 * (r[1] * c1[0] + r[4] * c1[1] + r[7] * c1[2])
            v_scales[g, 2] = 2.0 * (r[2] * c2[0] + r[5] * c2[1] + r[8] * c2[2])
            t0, t1, t2 = 2.0 * s0, 2.0 * s1, 2.0 * s2
            v_rot = (
                c0[0] * t0, c1[0] * t1, c2[0] * t2,
                c0[1] * t0, c1[1] * t1, c2[1] * t2,
                c0[2] * t0, c1[2] * t1, c2[2] * t2,
            )  # fmt: skip
            gw, gx, gy, gz = _quat_vjp(qw, qx, qy, qz, inv_norm, v_rot)
            v_quats[g, 0] = gw
            v_quats[g, 1] = gx
            v_quats[g, 2] = gy
            v_quats[g, 3] = gz


@njit(cache=True, nogil=True, error_model="numpy")
def count_visible(counter, n_items, block, radii, block_counts):
    """Entries with both radii > 0 in each block of ``block`` of the ``n_items`` flattened
    ``[C * N]`` entries (``radii`` [C * N, 2]), into ``block_counts`` [n_blocks]."""
    while True:
        b = claim(counter)
        start = b * block
        if start >= n_items:
            break
        k = 0
        for i in range(start, min(n_items, start + block)):
            if radii[i, 0] > 0 and radii[i, 1] > 0:
                k += 1
        block_counts[b] = k


@njit(cache=True, nogil=True, error_model="numpy")
def pack_visible(
    counter, n_items, block, n, block_starts, radii, means2d, depths, conics, bounds,
    p_radii, p_means2d, p_depths, p_conics, p_bounds, ids, elements,
):  # fmt: skip
    """gsplat's packing: the visible entries (both radii > 0) of the flattened ``[C * N]``
    projection results, in row-major order (block ``b``'s from slot ``block_starts[b]`` on),
    into the ``p_*`` arrays; ``ids`` [2, nnz] gets each one's camera and Gaussian, ``elements``
    [C * N] each entry's slot (-1: not visible)."""
    while True:
        b = claim(counter)
        start = b * block
        if start >= n_items:
            break
        k = block_starts[b]
        cam = start // n
        cam_end = (cam + 1) * n  # first entry of the next camera
        for i in range(start, min(n_items, start + block)):
            while i >= cam_end:
                cam += 1
                cam_end += n
            if radii[i, 0] > 0 and radii[i, 1] > 0:
                p_radii[k, 0] = radii[i, 0]
                p_radii[k, 1] = radii[i, 1]
                p_means2d[k, 0] = means2d[i, 0]
                p_means2d[k, 1] = means2d[i, 1]
                p_depths[k] = depths[i]
                p_conics[k, 0] = conics[i, 0]
                p_conics[k, 1] = conics[i, 1]
                p_conics[k, 2] = conics[i, 2]
                p_bounds[k] = bounds[i]
                ids[0, k] = cam
                ids[1, k] = i - cam * n
                elements[i] = k
                k += 1
            else:
                elements[i] = -1
