"""numba kernels of the robust pose solver (:func:`posegs_ros.tracking.pose_solver.solve_pose`).

One GIL-free call runs the whole Levenberg-damped, Huber-robust Gauss-Newton: residuals,
Jacobians, normal equations, damped steps and the SE(3) retraction. It follows
:func:`~posegs_ros.tracking.pose_solver.solve_pose_reference` (NumPy) step for step, so
the two agree to rounding (tests compare them); the kernel exists because tracking runs it
on every frame while mapping runs in another thread, and the NumPy version spends its time
in small array operations that each take the GIL.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

SMALL_ANGLE = 1e-4  # as posegs_ros.geometry._SMALL_ANGLE for float64
DAMPING_TRIES = 6


@njit(cache=True, nogil=True, error_model="numpy")
def se3_exp(xi: np.ndarray) -> np.ndarray:  # pragma: no cover - compiled
    """``[4, 4]`` group element of the twist ``xi = (rho, phi)`` ``[6]`` (as geometry.se3_exp)."""
    px, py, pz = xi[3], xi[4], xi[5]
    theta2 = px * px + py * py + pz * pz
    if theta2 < SMALL_ANGLE * SMALL_ANGLE:
        a = 1.0 - theta2 / 6.0 + theta2 * theta2 / 120.0
        b = 0.5 - theta2 / 24.0 + theta2 * theta2 / 720.0
        c = 1.0 / 6.0 - theta2 / 120.0 + theta2 * theta2 / 5040.0
    else:
        t = math.sqrt(theta2)
        s, co = math.sin(t), math.cos(t)
        a = s / t
        b = (1.0 - co) / theta2
        c = (t - s) / (theta2 * t)
    w = np.zeros((3, 3))
    w[0, 1], w[0, 2] = -pz, py
    w[1, 0], w[1, 2] = pz, -px
    w[2, 0], w[2, 1] = -py, px
    w2 = w @ w
    out = np.eye(4)
    for i in range(3):
        for j in range(3):
            eye = 1.0 if i == j else 0.0
            out[i, j] = eye + a * w[i, j] + b * w2[i, j]
    for i in range(3):
        acc = 0.0
        for j in range(3):
            eye = 1.0 if i == j else 0.0
            acc += (eye + b * w[i, j] + c * w2[i, j]) * xi[j]
        out[i, 3] = acc
    return out


@njit(cache=True, nogil=True, error_model="numpy")
def se3_log(pose: np.ndarray) -> np.ndarray:  # pragma: no cover - compiled
    """Twist ``[6]`` ``(rho, phi)`` of a rigid transform ``[4, 4]`` (as geometry.se3_log: Shepperd's
    quaternion, angle in [0, pi])."""
    r = pose
    m00, m11, m22 = r[0, 0], r[1, 1], r[2, 2]
    d21, d12, d02, d20, d10, d01 = r[2, 1], r[1, 2], r[0, 2], r[2, 0], r[1, 0], r[0, 1]
    cand = np.array([1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22])
    best = int(np.argmax(cand))
    root = math.sqrt(max(cand[best], 1e-12))
    if best == 0:
        q = np.array([root / 2, (d21 - d12) / (2 * root), (d02 - d20) / (2 * root), (d10 - d01) / (2 * root)])
    elif best == 1:
        q = np.array([(d21 - d12) / (2 * root), root / 2, (d01 + d10) / (2 * root), (d02 + d20) / (2 * root)])
    elif best == 2:
        q = np.array([(d02 - d20) / (2 * root), (d01 + d10) / (2 * root), root / 2, (d12 + d21) / (2 * root)])
    else:
        q = np.array([(d10 - d01) / (2 * root), (d02 + d20) / (2 * root), (d12 + d21) / (2 * root), root / 2])
    if q[0] < 0:
        q = -q
    q = q / max(math.sqrt(q[0] ** 2 + q[1] ** 2 + q[2] ** 2 + q[3] ** 2), 1e-12)
    w = min(max(q[0], 0.0), 1.0)
    n2 = q[1] ** 2 + q[2] ** 2 + q[3] ** 2
    if n2 < SMALL_ANGLE * SMALL_ANGLE:
        ws = max(w, 0.5)
        factor = 2.0 / ws * (1.0 - n2 / (3.0 * ws * ws))
    else:
        n = math.sqrt(n2)
        factor = 2.0 * math.atan2(n, w) / n
    phi = np.array([q[1] * factor, q[2] * factor, q[3] * factor])
    theta2 = phi[0] ** 2 + phi[1] ** 2 + phi[2] ** 2
    if theta2 < SMALL_ANGLE * SMALL_ANGLE:
        d = 1.0 / 12.0 + theta2 / 720.0
    else:
        t = math.sqrt(theta2)
        a = math.sin(t) / t
        b = (1.0 - math.cos(t)) / theta2
        d = (1.0 - a / (2.0 * max(b, 1e-12))) / theta2
    w_hat = np.zeros((3, 3))
    w_hat[0, 1], w_hat[0, 2] = -phi[2], phi[1]
    w_hat[1, 0], w_hat[1, 2] = phi[2], -phi[0]
    w_hat[2, 0], w_hat[2, 1] = -phi[1], phi[0]
    w2 = w_hat @ w_hat
    out = np.empty(6)
    for i in range(3):
        acc = 0.0
        for j in range(3):
            eye = 1.0 if i == j else 0.0
            acc += (eye - 0.5 * w_hat[i, j] + d * w2[i, j]) * r[j, 3]
        out[i] = acc
        out[3 + i] = phi[i]
    return out


@njit(cache=True, nogil=True, error_model="numpy")
def _bilinear(image: np.ndarray, u: float, v: float) -> float:  # pragma: no cover - compiled
    """As flow.bilinear_sample for one sample (clamped to the border)."""
    h, w = image.shape
    u = min(max(u, 0.0), w - 1.0)
    v = min(max(v, 0.0), h - 1.0)
    u0 = min(int(math.floor(u)), w - 2)
    v0 = min(int(math.floor(v)), h - 2)
    du, dv = u - u0, v - v0
    top = image[v0, u0] * (1 - du) + image[v0, u0 + 1] * du
    bottom = image[v0 + 1, u0] * (1 - du) + image[v0 + 1, u0 + 1] * du
    return top * (1 - dv) + bottom * dv


@njit(cache=True, nogil=True, error_model="numpy")
def _huber(r: float, k: float) -> float:  # pragma: no cover - compiled
    return 0.5 * r * r if r <= k else k * (r - 0.5 * k)


@njit(cache=True, nogil=True, error_model="numpy")
def _huber_weight(r: float, k: float) -> float:  # pragma: no cover - compiled
    a = abs(r)
    return 1.0 if a <= k else k / max(a, 1e-12)


@njit(cache=True, nogil=True, error_model="numpy")
def _project(pose: np.ndarray, p: np.ndarray, i: int, k: np.ndarray) -> tuple[float, float, float, float, float, float]:  # pragma: no cover
    """Camera point ``(x, y, z)`` of map point ``p[i]`` and its pixel ``(u, v)`` (z guarded as in project_points)."""
    dx, dy, dz = p[i, 0] - pose[0, 3], p[i, 1] - pose[1, 3], p[i, 2] - pose[2, 3]
    x = dx * pose[0, 0] + dy * pose[1, 0] + dz * pose[2, 0]
    y = dx * pose[0, 1] + dy * pose[1, 1] + dz * pose[2, 1]
    z = dx * pose[0, 2] + dy * pose[1, 2] + dz * pose[2, 2]
    zc = 1e-9 if abs(z) < 1e-9 else z
    return x, y, z, k[0, 0] * x / zc + k[0, 2], k[1, 1] * y / zc + k[1, 2], zc


@njit(cache=True, nogil=True, error_model="numpy")
def _jacobian(x: float, y: float, z: float, fx: float, fy: float, out: np.ndarray) -> None:  # pragma: no cover
    """d pixel / d delta ``[2, 6]`` under ``T @ exp(delta)`` (as pose_solver._point_jacobians)."""
    iz = 1.0 / z
    a0, a2 = fx * iz, -fx * x * iz * iz
    b1, b2 = fy * iz, -fy * y * iz * iz
    # j_proj [2, 3] @ j_point [3, 6], j_point = [-I, hat(x)] with the signs of _point_jacobians
    out[0, 0], out[0, 1], out[0, 2] = -a0, 0.0, -a2
    out[1, 0], out[1, 1], out[1, 2] = 0.0, -b1, -b2
    out[0, 3] = a2 * -y
    out[0, 4] = a0 * -z + a2 * x
    out[0, 5] = a0 * y
    out[1, 3] = b1 * z + b2 * -y
    out[1, 4] = b2 * x
    out[1, 5] = b1 * -x


@njit(cache=True, nogil=True, error_model="numpy")
def _geometric(pose: np.ndarray, points: np.ndarray, targets: np.ndarray, k: np.ndarray, near: float,
               rg: np.ndarray, valid: np.ndarray) -> None:  # pragma: no cover - compiled
    for i in range(points.shape[0]):
        _, _, z, u, v, _ = _project(pose, points, i, k)
        rg[i, 0] = u - targets[i, 0]
        rg[i, 1] = v - targets[i, 1]
        valid[i] = z > near


@njit(cache=True, nogil=True, error_model="numpy")
def _photometric(pose: np.ndarray, points: np.ndarray, reference: np.ndarray, image: np.ndarray, k: np.ndarray,
                 near: float, size: np.ndarray, rp: np.ndarray, vp: np.ndarray) -> None:  # pragma: no cover
    for i in range(points.shape[0]):
        _, _, z, u, v, _ = _project(pose, points, i, k)
        ok = z > near
        if size[0] > 0:
            ok = ok and u >= 0 and u <= size[0] - 1 and v >= 0 and v <= size[1] - 1
        vp[i] = ok
        rp[i] = _bilinear(image, u, v) - reference[i]


@njit(cache=True, nogil=True, error_model="numpy")
def _cost(rg: np.ndarray, valid: np.ndarray, rp: np.ndarray, vp: np.ndarray, huber: float, weight: float,
          sp: float) -> float:  # pragma: no cover - compiled
    c = 0.0
    for i in range(rg.shape[0]):
        if valid[i]:
            c += _huber(math.sqrt(rg[i, 0] ** 2 + rg[i, 1] ** 2), huber)
    p = 0.0
    for i in range(rp.shape[0]):
        if vp[i]:
            p += _huber(abs(rp[i]) / sp * huber, huber)
    return c + weight * p


@njit(cache=True, nogil=True, error_model="numpy")
def solve(points: np.ndarray, targets: np.ndarray, k: np.ndarray, pose_init: np.ndarray, huber: float,
          iterations: int, ppoints: np.ndarray, reference: np.ndarray, image: np.ndarray, grad_u: np.ndarray,
          grad_v: np.ndarray, weight: float, size: np.ndarray, near: float,
          ) -> tuple[np.ndarray, int, float, np.ndarray, np.ndarray]:  # pragma: no cover - compiled
    """The whole solve; ``ppoints`` ``[P, 3]`` empty = no photometric term; ``size`` ``[2]``
    ``(width, height)`` or ``(0, 0)``. Returns ``(pose, iterations, cost, rg [M, 2], valid [M])``."""
    m, n_p = points.shape[0], ppoints.shape[0]
    pose = pose_init.copy()
    rg = np.empty((m, 2))
    valid = np.empty(m, np.bool_)
    rp = np.empty(n_p)
    vp = np.empty(n_p, np.bool_)
    _geometric(pose, points, targets, k, near, rg, valid)
    _photometric(pose, ppoints, reference, image, k, near, size, rp, vp)
    sp = 1.0
    if n_p > 0:
        n_valid = 0
        for i in range(n_p):
            n_valid += vp[i]
        sp = 1e-3
        if n_valid > 0:
            absr = np.empty(n_valid)
            j = 0
            for i in range(n_p):
                if vp[i]:
                    absr[j] = abs(rp[i])
                    j += 1
            sp = max(1.4826 * np.median(absr), 1e-3)
    current = _cost(rg, valid, rp, vp, huber, weight, sp)
    damping = 1e-4
    fx, fy = k[0, 0], k[1, 1]
    jac = np.empty((2, 6))
    c_rg = np.empty((m, 2))
    c_valid = np.empty(m, np.bool_)
    c_rp = np.empty(n_p)
    c_vp = np.empty(n_p, np.bool_)
    it = 0
    for it in range(1, iterations + 1):
        h = np.zeros((6, 6))
        g = np.zeros(6)
        for i in range(m):
            if not valid[i]:
                continue
            x, y, z, _, _, _ = _project(pose, points, i, k)
            _jacobian(x, y, z, fx, fy, jac)
            r0, r1 = rg[i, 0], rg[i, 1]
            w = _huber_weight(math.sqrt(r0 * r0 + r1 * r1), huber)
            for a in range(6):
                ja0, ja1 = jac[0, a], jac[1, a]
                g[a] += w * (ja0 * r0 + ja1 * r1)
                for b in range(6):
                    h[a, b] += w * (ja0 * jac[0, b] + ja1 * jac[1, b])
        any_vp = False
        for i in range(n_p):
            if vp[i]:
                any_vp = True
                break
        if any_vp:
            s = huber / sp
            jp = np.empty(6)
            for i in range(n_p):
                if not vp[i]:
                    continue
                x, y, z, u, v, _ = _project(pose, ppoints, i, k)
                _jacobian(x, y, z, fx, fy, jac)
                gu = _bilinear(grad_u, u, v)
                gv = _bilinear(grad_v, u, v)
                rps = rp[i] * s
                wp = weight * _huber_weight(rps, huber)
                for a in range(6):
                    jp[a] = (gu * jac[0, a] + gv * jac[1, a]) * s
                for a in range(6):
                    g[a] += wp * jp[a] * rps
                    for b in range(6):
                        h[a, b] += wp * jp[a] * jp[b]
        # damped step (pose_solver.damped_step)
        accepted = False
        step = np.zeros(6)
        for _ in range(DAMPING_TRIES):
            lhs = h.copy()
            for a in range(6):
                lhs[a, a] += damping * (h[a, a] + 1e-9)
            step = -np.linalg.solve(lhs, g)
            candidate = pose @ se3_exp(step)
            _geometric(candidate, points, targets, k, near, c_rg, c_valid)
            _photometric(candidate, ppoints, reference, image, k, near, size, c_rp, c_vp)
            c = _cost(c_rg, c_valid, c_rp, c_vp, huber, weight, sp)
            if math.isfinite(c) and c <= current:
                pose = candidate
                rg[:], valid[:], rp[:], vp[:] = c_rg, c_valid, c_rp, c_vp
                current = c
                damping = max(damping * 0.3, 1e-7)
                accepted = True
                break
            damping *= 10.0
        if not accepted:
            break
        norm = 0.0
        for a in range(6):
            norm += step[a] * step[a]
        if math.sqrt(norm) < 1e-8:
            break
    return pose, it, current, rg, valid
