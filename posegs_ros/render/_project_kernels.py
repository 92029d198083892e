"""Numba kernels: EWA projection of 3D Gaussians (gsplat 1.5 rules) and its analytic backward.

Scalars are float64 inside the kernels, arrays float32. Each kernel handles a range of
Gaussian blocks (a fixed block size, independent of the thread count) with the GIL
released, so callers run ranges on several threads; cameras are looped inside, so every sum
has a fixed order: per-Gaussian gradients add the cameras in order, per-camera (viewmat)
gradients are per-block partial sums that the caller adds in block order.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from posegs_ros.render._common import ALPHA_THRESHOLD, MAX_EXTEND

BLOCK = 256  # Gaussians per work item (fixed, so sums do not depend on the thread count)


@njit(cache=True)
def _rotation(q: np.ndarray, rot: np.ndarray) -> float:
    """Fill ``rot`` [3, 3] from the wxyz quaternion ``q`` (normalized here); return 1 / |q|."""
    w, x, y, z = float(q[0]), float(q[1]), float(q[2]), float(q[3])
    inv = 1.0 / math.sqrt(w * w + x * x + y * y + z * z)
    w, x, y, z = w * inv, x * inv, y * inv, z * inv
    rot[0, 0] = 1.0 - 2.0 * (y * y + z * z)
    rot[0, 1] = 2.0 * (x * y - w * z)
    rot[0, 2] = 2.0 * (x * z + w * y)
    rot[1, 0] = 2.0 * (x * y + w * z)
    rot[1, 1] = 1.0 - 2.0 * (x * x + z * z)
    rot[1, 2] = 2.0 * (y * z - w * x)
    rot[2, 0] = 2.0 * (x * z - w * y)
    rot[2, 1] = 2.0 * (y * z + w * x)
    rot[2, 2] = 1.0 - 2.0 * (x * x + y * y)
    return inv


@njit(cache=True)
def _world_covariance(rot: np.ndarray, s: np.ndarray, cov: np.ndarray) -> None:
    """``cov = R diag(s^2) R^T``."""
    for i in range(3):
        for j in range(3):
            acc = 0.0
            for k in range(3):
                sk = float(s[k])
                acc += rot[i, k] * sk * sk * rot[j, k]
            cov[i, j] = acc


@njit(cache=True)
def _camera_setup(viewmat: np.ndarray, K: np.ndarray, width: int, height: int, cam: np.ndarray) -> None:
    """Per camera constants: R (9), t (3), fx, fy, cx, cy, clamp limits x+, x-, y+, y-."""
    for i in range(3):
        for j in range(3):
            cam[3 * i + j] = viewmat[i, j]
        cam[9 + i] = viewmat[i, 3]
    fx, fy, cx, cy = float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2])
    cam[12], cam[13], cam[14], cam[15] = fx, fy, cx, cy
    tan_fovx = 0.5 * width / fx
    tan_fovy = 0.5 * height / fy
    cam[16] = (width - cx) / fx + 0.3 * tan_fovx
    cam[17] = cx / fx + 0.3 * tan_fovx
    cam[18] = (height - cy) / fy + 0.3 * tan_fovy
    cam[19] = cy / fy + 0.3 * tan_fovy


@njit(cache=True)
def _to_camera(
    cam: np.ndarray, m: np.ndarray, cov: np.ndarray, mc: np.ndarray, cov_c: np.ndarray, tmp: np.ndarray
) -> None:
    """Mean and covariance in the camera frame: ``R m + t`` and ``R cov R^T`` (``tmp`` scratch)."""
    for i in range(3):
        mc[i] = cam[3 * i] * m[0] + cam[3 * i + 1] * m[1] + cam[3 * i + 2] * m[2] + cam[9 + i]
    for i in range(3):
        for j in range(3):
            tmp[i, j] = cam[3 * i] * cov[0, j] + cam[3 * i + 1] * cov[1, j] + cam[3 * i + 2] * cov[2, j]
    for i in range(3):
        for j in range(3):
            cov_c[i, j] = tmp[i, 0] * cam[3 * j] + tmp[i, 1] * cam[3 * j + 1] + tmp[i, 2] * cam[3 * j + 2]


@njit(cache=True)
def _jacobian(cam: np.ndarray, mc: np.ndarray, jac: np.ndarray) -> None:
    """Perspective Jacobian [2, 3] with x/z, y/z clamped to gsplat's 1.3 x half-FoV limits."""
    x, y, z = mc[0], mc[1], mc[2]
    rz = 1.0 / z
    tx = z * min(cam[16], max(-cam[17], x * rz))
    ty = z * min(cam[18], max(-cam[19], y * rz))
    jac[0, 0] = cam[12] * rz
    jac[0, 1] = 0.0
    jac[0, 2] = -cam[12] * tx * rz * rz
    jac[1, 0] = 0.0
    jac[1, 1] = cam[13] * rz
    jac[1, 2] = -cam[13] * ty * rz * rz


@njit(cache=True, nogil=True)
def project_forward(
    block_start, block_stop, means, quats, scales, opacities, viewmats, Ks, width, height,
    eps2d, near_plane, far_plane, radius_clip,
    radii, means2d, depths, conics,
):  # fmt: skip
    """Fill radii [C, N, 2] int32, means2d [C, N, 2], depths [C, N], conics [C, N, 3] for the
    Gaussians of blocks ``block_start .. block_stop - 1``.

    Culled entries get radii 0 and zeros elsewhere.
    """
    n = means.shape[0]
    n_cams = viewmats.shape[0]
    cams = np.empty((n_cams, 20))
    for c in range(n_cams):
        _camera_setup(viewmats[c], Ks[c], width, height, cams[c])
    rot = np.empty((3, 3))
    cov = np.empty((3, 3))
    cov_c = np.empty((3, 3))
    mc = np.empty(3)
    jac = np.empty((2, 3))
    m = np.empty(3)
    tmp = np.empty((3, 3))
    for blk in range(block_start, block_stop):
        for g in range(blk * BLOCK, min(n, (blk + 1) * BLOCK)):
            _rotation(quats[g], rot)
            _world_covariance(rot, scales[g], cov)
            for i in range(3):
                m[i] = means[g, i]
            opac = float(opacities[g])
            extend = MAX_EXTEND
            if opac >= ALPHA_THRESHOLD:
                extend = min(MAX_EXTEND, math.sqrt(2.0 * math.log(opac / ALPHA_THRESHOLD)))
            for c in range(n_cams):
                cam = cams[c]
                radii[c, g, 0] = 0
                radii[c, g, 1] = 0
                means2d[c, g, 0] = 0.0
                means2d[c, g, 1] = 0.0
                depths[c, g] = 0.0
                conics[c, g, 0] = 0.0
                conics[c, g, 1] = 0.0
                conics[c, g, 2] = 0.0
                _to_camera(cam, m, cov, mc, cov_c, tmp)
                z = mc[2]
                if z < near_plane or z > far_plane:
                    continue
                _jacobian(cam, mc, jac)
                # cov2d = J cov_c J^T (J[0,1] = J[1,0] = 0)
                j00, j02, j11, j12 = jac[0, 0], jac[0, 2], jac[1, 1], jac[1, 2]
                a00 = j00 * (j00 * cov_c[0, 0] + j02 * cov_c[2, 0]) + j02 * (j00 * cov_c[0, 2] + j02 * cov_c[2, 2])
                a01 = j00 * (j11 * cov_c[0, 1] + j12 * cov_c[0, 2]) + j02 * (j11 * cov_c[2, 1] + j12 * cov_c[2, 2])
                a11 = j11 * (j11 * cov_c[1, 1] + j12 * cov_c[2, 1]) + j12 * (j11 * cov_c[1, 2] + j12 * cov_c[2, 2])
                a00 += eps2d
                a11 += eps2d
                det = a00 * a11 - a01 * a01
                if det <= 0.0:
                    continue
                if opac < ALPHA_THRESHOLD:
                    continue
                rx = math.ceil(extend * math.sqrt(a00))
                ry = math.ceil(extend * math.sqrt(a11))
                if rx <= radius_clip and ry <= radius_clip:
                    continue
                rz = 1.0 / z
                u = cam[12] * mc[0] * rz + cam[14]
                v = cam[13] * mc[1] * rz + cam[15]
                if u + rx <= 0.0 or u - rx >= width or v + ry <= 0.0 or v - ry >= height:
                    continue
                radii[c, g, 0] = np.int32(rx)
                radii[c, g, 1] = np.int32(ry)
                means2d[c, g, 0] = u
                means2d[c, g, 1] = v
                depths[c, g] = z
                conics[c, g, 0] = a11 / det
                conics[c, g, 1] = -a01 / det
                conics[c, g, 2] = a00 / det


@njit(cache=True)
def _quat_vjp(q: np.ndarray, inv_norm: float, g: np.ndarray, out: np.ndarray) -> None:
    """Gradient wrt the unnormalized wxyz quaternion ``q`` from ``g`` = dL/dR [3, 3]."""
    w, x, y, z = q[0] * inv_norm, q[1] * inv_norm, q[2] * inv_norm, q[3] * inv_norm
    vw = 2.0 * (x * (g[2, 1] - g[1, 2]) + y * (g[0, 2] - g[2, 0]) + z * (g[1, 0] - g[0, 1]))
    vx = 2.0 * (
        -2.0 * x * (g[1, 1] + g[2, 2]) + y * (g[1, 0] + g[0, 1]) + z * (g[2, 0] + g[0, 2]) + w * (g[2, 1] - g[1, 2])
    )
    vy = 2.0 * (
        x * (g[1, 0] + g[0, 1]) - 2.0 * y * (g[0, 0] + g[2, 2]) + z * (g[2, 1] + g[1, 2]) + w * (g[0, 2] - g[2, 0])
    )
    vz = 2.0 * (
        x * (g[2, 0] + g[0, 2]) + y * (g[2, 1] + g[1, 2]) - 2.0 * z * (g[0, 0] + g[1, 1]) + w * (g[1, 0] - g[0, 1])
    )
    dot = vw * w + vx * x + vy * y + vz * z
    out[0] += (vw - dot * w) * inv_norm
    out[1] += (vx - dot * x) * inv_norm
    out[2] += (vy - dot * y) * inv_norm
    out[3] += (vz - dot * z) * inv_norm


@njit(cache=True, nogil=True)
def project_backward(
    block_start, block_stop, means, quats, scales, viewmats, Ks, width, height, radii, conics,
    v_means2d, v_depths, v_conics, want_viewmats,
    v_means, v_quats, v_scales, block_view,
):  # fmt: skip
    """Gradients of the projection for blocks ``block_start .. block_stop - 1`` (entries with
    radii 0 get none).

    Writes v_means [N, 3], v_quats [N, 4], v_scales [N, 3] (zeroed by the caller) and, if
    ``want_viewmats``, each block's partial dL/d(viewmat rows 0..2) into ``block_view``
    [n_blocks, C, 12] (R row-major, then t).
    """
    n = means.shape[0]
    n_cams = viewmats.shape[0]
    cams = np.empty((n_cams, 20))
    for c in range(n_cams):
        _camera_setup(viewmats[c], Ks[c], width, height, cams[c])
    rot = np.empty((3, 3))
    cov = np.empty((3, 3))
    cov_c = np.empty((3, 3))
    mc = np.empty(3)
    m = np.empty(3)
    jac = np.empty((2, 3))
    v_cov_world = np.empty((3, 3))
    v_cov_c = np.empty((3, 3))
    tmp = np.empty((3, 3))
    v_rot_q = np.empty((3, 3))
    v_mq = np.empty((3, 3))
    qv = np.empty(4)
    for blk in range(block_start, block_stop):
        view_acc = block_view[blk]
        for g in range(blk * BLOCK, min(n, (blk + 1) * BLOCK)):
            inv_norm = _rotation(quats[g], rot)
            _world_covariance(rot, scales[g], cov)
            for i in range(3):
                m[i] = means[g, i]
            vm0 = vm1 = vm2 = 0.0
            for i in range(3):
                for j in range(3):
                    v_cov_world[i, j] = 0.0
            any_visible = False
            for c in range(n_cams):
                if radii[c, g, 0] <= 0 or radii[c, g, 1] <= 0:
                    continue
                any_visible = True
                cam = cams[c]
                _to_camera(cam, m, cov, mc, cov_c, tmp)
                _jacobian(cam, mc, jac)
                # d/d cov2d from d/d conic: -P G P with P = conic, G = [[va, vb/2], [vb/2, vc]]
                pa, pb, pc = float(conics[c, g, 0]), float(conics[c, g, 1]), float(conics[c, g, 2])
                ga, gb, gc = float(v_conics[c, g, 0]), 0.5 * float(v_conics[c, g, 1]), float(v_conics[c, g, 2])
                # G P
                gp00 = ga * pa + gb * pb
                gp01 = ga * pb + gb * pc
                gp10 = gb * pa + gc * pb
                gp11 = gb * pb + gc * pc
                w00 = -(pa * gp00 + pb * gp10)
                w01 = -(pa * gp01 + pb * gp11)
                w11 = -(pb * gp01 + pc * gp11)
                # (w is symmetric: w10 == w01)
                j00, j02, j11, j12 = jac[0, 0], jac[0, 2], jac[1, 1], jac[1, 2]
                # v_cov_c = J^T W J
                jt0 = (j00 * w00, j00 * w01)  # row 0 of J^T W
                jt1 = (j11 * w01, j11 * w11)  # row 1
                jt2 = (j02 * w00 + j12 * w01, j02 * w01 + j12 * w11)  # row 2
                v_cov_c[0, 0] = jt0[0] * j00
                v_cov_c[0, 1] = jt0[1] * j11
                v_cov_c[0, 2] = jt0[0] * j02 + jt0[1] * j12
                v_cov_c[1, 0] = jt1[0] * j00
                v_cov_c[1, 1] = jt1[1] * j11
                v_cov_c[1, 2] = jt1[0] * j02 + jt1[1] * j12
                v_cov_c[2, 0] = jt2[0] * j00
                v_cov_c[2, 1] = jt2[1] * j11
                v_cov_c[2, 2] = jt2[0] * j02 + jt2[1] * j12
                # dL/dJ = 2 W J cov_c (W, cov_c symmetric); only J00, J02, J11, J12 matter
                wj00, wj02 = w00 * j00, w00 * j02 + w01 * j12
                wj11, wj12 = w11 * j11, w01 * j02 + w11 * j12
                wj01 = w01 * j11
                wj10 = w01 * j00
                # row 0 of W J is (wj00, wj01, wj02); row 1 is (wj10, wj11, wj12)
                vj00 = 2.0 * (wj00 * cov_c[0, 0] + wj01 * cov_c[1, 0] + wj02 * cov_c[2, 0])
                vj02 = 2.0 * (wj00 * cov_c[0, 2] + wj01 * cov_c[1, 2] + wj02 * cov_c[2, 2])
                vj11 = 2.0 * (wj10 * cov_c[0, 1] + wj11 * cov_c[1, 1] + wj12 * cov_c[2, 1])
                vj12 = 2.0 * (wj10 * cov_c[0, 2] + wj11 * cov_c[1, 2] + wj12 * cov_c[2, 2])
                fx, fy = cam[12], cam[13]
                x, y, z = mc[0], mc[1], mc[2]
                rz = 1.0 / z
                rz2 = rz * rz
                rz3 = rz2 * rz
                tx = z * min(cam[16], max(-cam[17], x * rz))
                ty = z * min(cam[18], max(-cam[19], y * rz))
                vu, vv = float(v_means2d[c, g, 0]), float(v_means2d[c, g, 1])
                vmc0 = fx * rz * vu
                vmc1 = fy * rz * vv
                vmc2 = -(fx * x * vu + fy * y * vv) * rz2 + float(v_depths[c, g])
                if x * rz <= cam[16] and x * rz >= -cam[17]:
                    vmc0 += -fx * rz2 * vj02
                    vmc2 += 2.0 * fx * tx * rz3 * vj02
                else:
                    vmc2 += fx * tx * rz3 * vj02
                if y * rz <= cam[18] and y * rz >= -cam[19]:
                    vmc1 += -fy * rz2 * vj12
                    vmc2 += 2.0 * fy * ty * rz3 * vj12
                else:
                    vmc2 += fy * ty * rz3 * vj12
                vmc2 += -fx * rz2 * vj00 - fy * rz2 * vj11
                # mean_c = R m + t
                for i in range(3):
                    r0, r1, r2 = cam[i], cam[3 + i], cam[6 + i]  # column i of R
                    if i == 0:
                        vm0 += r0 * vmc0 + r1 * vmc1 + r2 * vmc2
                    elif i == 1:
                        vm1 += r0 * vmc0 + r1 * vmc1 + r2 * vmc2
                    else:
                        vm2 += r0 * vmc0 + r1 * vmc1 + r2 * vmc2
                # cov_c = R cov R^T: v_cov += R^T v_cov_c R ; v_R += 2 v_cov_c R cov
                for i in range(3):
                    for j in range(3):
                        tmp[i, j] = (
                            v_cov_c[i, 0] * cam[j] + v_cov_c[i, 1] * cam[3 + j] + v_cov_c[i, 2] * cam[6 + j]
                        )  # (v_cov_c R)[i, j]
                for i in range(3):
                    for j in range(3):
                        v_cov_world[i, j] += cam[i] * tmp[0, j] + cam[3 + i] * tmp[1, j] + cam[6 + i] * tmp[2, j]
                if want_viewmats:
                    vmc = (vmc0, vmc1, vmc2)
                    acc = view_acc[c]
                    for i in range(3):
                        for j in range(3):
                            acc[3 * i + j] += vmc[i] * m[j] + 2.0 * (
                                tmp[i, 0] * cov[0, j] + tmp[i, 1] * cov[1, j] + tmp[i, 2] * cov[2, j]
                            )
                        acc[9 + i] += vmc[i]
            if not any_visible:
                continue
            v_means[g, 0] = vm0
            v_means[g, 1] = vm1
            v_means[g, 2] = vm2
            # cov = M M^T with M = R_q S: v_M = 2 v_cov M; v_Rq = v_M S; v_s_k = sum_i R_q[i,k] v_M[i,k]
            for i in range(3):
                for k in range(3):
                    sk = float(scales[g, k])
                    acc = 0.0
                    for j in range(3):
                        acc += (v_cov_world[i, j] + v_cov_world[j, i]) * rot[j, k] * sk
                    v_mq[i, k] = acc
            for k in range(3):
                sk = float(scales[g, k])
                vs = 0.0
                for i in range(3):
                    v_rot_q[i, k] = v_mq[i, k] * sk
                    vs += rot[i, k] * v_mq[i, k]
                v_scales[g, k] = vs
            qv[:] = 0.0
            _quat_vjp(quats[g], inv_norm, v_rot_q, qv)
            for k in range(4):
                v_quats[g, k] = qv[k]
