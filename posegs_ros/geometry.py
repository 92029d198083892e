"""SO(3) / SE(3) / Sim(3) maths in torch, on any device and dtype.

Conventions
-----------
- Rotation matrices ``[..., 3, 3]``; rigid transforms ``[..., 4, 4]`` homogeneous.
- Quaternions are ``wxyz`` (the 3DGS / gsplat convention), ``[..., 4]``.
- A twist ``xi = (rho, phi)`` is ``[..., 6]``: translational part first, rotational second.
  ``se3_exp(xi)`` is the group element whose rotation is ``so3_exp(phi)``.
- Small corrections are applied on the right: ``T <- T @ se3_exp(delta)`` (see
  :func:`se3_retract`), i.e. in the body (camera) frame, as the blur model
  ``T(s) = T @ exp(s * d)`` of DESIGN.md.

Every function is differentiable and numerically stable near rotation angle 0 (Taylor
expansions) and near pi (the logarithm goes through a sign-consistent quaternion).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "hat",
    "vee",
    "so3_exp",
    "so3_log",
    "se3_exp",
    "se3_log",
    "se3_inverse",
    "se3_compose",
    "se3_retract",
    "se3_from_rt",
    "quat_to_rotmat",
    "rotmat_to_quat",
    "quat_normalize",
    "umeyama",
    "Sim3",
    "transform_points",
]

_SMALL_ANGLE = 1e-4


def _small(dtype: torch.dtype) -> float:
    """Angle below which Taylor expansions replace the closed forms."""
    return 1e-2 if dtype in (torch.float16, torch.bfloat16, torch.float32) else _SMALL_ANGLE


def hat(w: Tensor) -> Tensor:
    """Skew-symmetric matrix of ``w`` ``[..., 3]`` -> ``[..., 3, 3]`` (``hat(a) @ b = a x b``)."""
    zero = torch.zeros_like(w[..., 0])
    wx, wy, wz = w.unbind(-1)
    return torch.stack(
        [
            torch.stack([zero, -wz, wy], dim=-1),
            torch.stack([wz, zero, -wx], dim=-1),
            torch.stack([-wy, wx, zero], dim=-1),
        ],
        dim=-2,
    )


def vee(m: Tensor) -> Tensor:
    """Inverse of :func:`hat` on the skew part: ``[..., 3, 3]`` -> ``[..., 3]``."""
    return 0.5 * torch.stack(
        [m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] - m[..., 0, 1]],
        dim=-1,
    )


def _so3_coefficients(theta2: Tensor, small: float) -> tuple[Tensor, Tensor, Tensor]:
    """A = sin t / t, B = (1 - cos t) / t^2, C = (t - sin t) / t^3 for ``theta2 = t^2``.

    Uses Taylor expansions where ``t`` is small and a guarded closed form elsewhere, so both
    the values and their gradients are finite everywhere.
    """
    is_small = theta2 < small * small
    safe2 = torch.where(is_small, torch.ones_like(theta2), theta2)
    t = torch.sqrt(safe2)
    s, c = torch.sin(t), torch.cos(t)
    a_big = s / t
    b_big = (1.0 - c) / safe2
    c_big = (t - s) / (safe2 * t)
    a_small = 1.0 - theta2 / 6.0 + theta2 * theta2 / 120.0
    b_small = 0.5 - theta2 / 24.0 + theta2 * theta2 / 720.0
    c_small = 1.0 / 6.0 - theta2 / 120.0 + theta2 * theta2 / 5040.0
    return (
        torch.where(is_small, a_small, a_big),
        torch.where(is_small, b_small, b_big),
        torch.where(is_small, c_small, c_big),
    )


def so3_exp(phi: Tensor) -> Tensor:
    """Rotation matrix of the rotation vector ``phi`` ``[..., 3]`` -> ``[..., 3, 3]`` (Rodrigues)."""
    theta2 = (phi * phi).sum(-1)
    a, b, _ = _so3_coefficients(theta2, _small(phi.dtype))
    w = hat(phi)
    eye = torch.eye(3, dtype=phi.dtype, device=phi.device).expand(w.shape)
    return eye + a[..., None, None] * w + b[..., None, None] * (w @ w)


def quat_normalize(q: Tensor, eps: float = 1e-12) -> Tensor:
    """Unit quaternion ``[..., 4]`` (``wxyz``); zero input stays finite."""
    return q / q.norm(dim=-1, keepdim=True).clamp_min(eps)


def quat_to_rotmat(q: Tensor) -> Tensor:
    """Rotation matrix of a (not necessarily normalized) ``wxyz`` quaternion ``[..., 4]``."""
    w, x, y, z = quat_normalize(q).unbind(-1)
    return torch.stack(
        [
            torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
            torch.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
            torch.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
        ],
        dim=-2,
    )


def rotmat_to_quat(r: Tensor) -> Tensor:
    """Unit ``wxyz`` quaternion with ``w >= 0`` of rotation matrices ``[..., 3, 3]`` -> ``[..., 4]``.

    Shepperd's method: of the four algebraically equivalent formulas, each element uses the
    one with the largest denominator, which keeps it accurate for every rotation angle.
    """
    m00, m11, m22 = r[..., 0, 0], r[..., 1, 1], r[..., 2, 2]
    trace = m00 + m11 + m22
    d21, d12 = r[..., 2, 1], r[..., 1, 2]
    d02, d20 = r[..., 0, 2], r[..., 2, 0]
    d10, d01 = r[..., 1, 0], r[..., 0, 1]
    # 4 * (w^2, x^2, y^2, z^2)
    cand = torch.stack(
        [1 + trace, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22], dim=-1
    )
    best = cand.argmax(dim=-1)
    root = torch.sqrt(cand.clamp_min(1e-12))  # 2 * |component|
    q_w = torch.stack([root[..., 0] / 2, (d21 - d12) / (2 * root[..., 0]),
                       (d02 - d20) / (2 * root[..., 0]), (d10 - d01) / (2 * root[..., 0])], -1)
    q_x = torch.stack([(d21 - d12) / (2 * root[..., 1]), root[..., 1] / 2,
                       (d01 + d10) / (2 * root[..., 1]), (d02 + d20) / (2 * root[..., 1])], -1)
    q_y = torch.stack([(d02 - d20) / (2 * root[..., 2]), (d01 + d10) / (2 * root[..., 2]),
                       root[..., 2] / 2, (d12 + d21) / (2 * root[..., 2])], -1)
    q_z = torch.stack([(d10 - d01) / (2 * root[..., 3]), (d02 + d20) / (2 * root[..., 3]),
                       (d12 + d21) / (2 * root[..., 3]), root[..., 3] / 2], -1)
    options = torch.stack([q_w, q_x, q_y, q_z], dim=-2)  # [..., 4 formulas, 4 components]
    q = torch.gather(options, -2, best[..., None, None].expand(*best.shape, 1, 4)).squeeze(-2)
    q = torch.where(q[..., :1] < 0, -q, q)
    return quat_normalize(q)


def so3_log(r: Tensor) -> Tensor:
    """Rotation vector ``[..., 3]`` of rotation matrices ``[..., 3, 3]``; angle in ``[0, pi]``."""
    q = rotmat_to_quat(r)
    w = q[..., 0].clamp(0.0, 1.0)
    v = q[..., 1:]
    n2 = (v * v).sum(-1)
    small = _small(r.dtype)
    is_small = n2 < small * small
    n = torch.sqrt(torch.where(is_small, torch.ones_like(n2), n2))
    # angle = 2 atan2(n, w); phi = v * angle / n.  For small n: 2/w * (1 - n^2 / (3 w^2)).
    factor_big = 2.0 * torch.atan2(n, w) / n
    w_safe = w.clamp_min(0.5)  # small n means w close to 1
    factor_small = 2.0 / w_safe * (1.0 - n2 / (3.0 * w_safe * w_safe))
    factor = torch.where(is_small, factor_small, factor_big)
    return v * factor[..., None]


def se3_from_rt(r: Tensor, t: Tensor) -> Tensor:
    """Homogeneous ``[..., 4, 4]`` from rotation ``[..., 3, 3]`` and translation ``[..., 3]``."""
    top = torch.cat([r, t[..., :, None]], dim=-1)
    bottom = torch.zeros_like(top[..., :1, :])
    bottom[..., 0, 3] = 1.0
    return torch.cat([top, bottom], dim=-2)


def se3_exp(xi: Tensor) -> Tensor:
    """Group element ``[..., 4, 4]`` of the twist ``xi = (rho, phi)`` ``[..., 6]``."""
    rho, phi = xi[..., :3], xi[..., 3:]
    theta2 = (phi * phi).sum(-1)
    a, b, c = _so3_coefficients(theta2, _small(xi.dtype))
    w = hat(phi)
    w2 = w @ w
    eye = torch.eye(3, dtype=xi.dtype, device=xi.device).expand(w.shape)
    rot = eye + a[..., None, None] * w + b[..., None, None] * w2
    v = eye + b[..., None, None] * w + c[..., None, None] * w2
    return se3_from_rt(rot, (v @ rho[..., None])[..., 0])


def se3_log(t: Tensor) -> Tensor:
    """Twist ``[..., 6]`` (``rho, phi``) of rigid transforms ``[..., 4, 4]``."""
    phi = so3_log(t[..., :3, :3])
    theta2 = (phi * phi).sum(-1)
    a, b, _ = _so3_coefficients(theta2, _small(t.dtype))
    small = _small(t.dtype)
    is_small = theta2 < small * small
    safe2 = torch.where(is_small, torch.ones_like(theta2), theta2)
    # V^-1 = I - W/2 + D W^2,  D = (1 - A / (2B)) / theta^2
    d_big = (1.0 - a / (2.0 * b.clamp_min(1e-12))) / safe2
    d_small = 1.0 / 12.0 + theta2 / 720.0
    d = torch.where(is_small, d_small, d_big)
    w = hat(phi)
    eye = torch.eye(3, dtype=t.dtype, device=t.device).expand(w.shape)
    v_inv = eye - 0.5 * w + d[..., None, None] * (w @ w)
    rho = (v_inv @ t[..., :3, 3:4])[..., 0]
    return torch.cat([rho, phi], dim=-1)


def se3_inverse(t: Tensor) -> Tensor:
    """Inverse of rigid transforms ``[..., 4, 4]`` (uses the rotation's transpose)."""
    r_t = t[..., :3, :3].transpose(-1, -2)
    return se3_from_rt(r_t, -(r_t @ t[..., :3, 3:4])[..., 0])


def se3_compose(a: Tensor, b: Tensor) -> Tensor:
    """``a @ b`` for rigid transforms ``[..., 4, 4]``, re-orthonormalization left to callers."""
    return a @ b


def se3_retract(t: Tensor, delta: Tensor) -> Tensor:
    """Apply a small body-frame correction: ``t @ se3_exp(delta)``; ``[...,4,4]``, ``[...,6]``."""
    return t @ se3_exp(delta)


def transform_points(t: Tensor, x: Tensor) -> Tensor:
    """Apply ``t`` ``[4, 4]`` (or ``[..., 4, 4]`` broadcastable) to points ``x`` ``[..., N, 3]``."""
    return x @ t[..., :3, :3].transpose(-1, -2) + t[..., None, :3, 3]


class Sim3:
    """A similarity transform ``x -> scale * rotation @ x + translation``."""

    def __init__(self, scale: Tensor, rotation: Tensor, translation: Tensor) -> None:
        self.scale = scale  # []
        self.rotation = rotation  # [3, 3]
        self.translation = translation  # [3]

    def apply(self, x: Tensor) -> Tensor:
        """Transform points ``[N, 3]``."""
        return self.scale * x @ self.rotation.T + self.translation

    def apply_to_poses(self, poses: Tensor) -> Tensor:
        """Transform camera-to-world poses ``[N, 4, 4]``: rotate and move the cameras."""
        out = poses.clone()
        out[:, :3, :3] = self.rotation @ poses[:, :3, :3]
        out[:, :3, 3] = self.apply(poses[:, :3, 3])
        return out

    def matrix(self) -> Tensor:
        """``[4, 4]`` homogeneous matrix with ``scale * rotation`` in the upper-left block."""
        return se3_from_rt(self.scale * self.rotation, self.translation)


def umeyama(src: Tensor, dst: Tensor, with_scale: bool = True) -> Sim3:
    """Least-squares similarity (or rigid, ``with_scale=False``) aligning ``src`` to ``dst``.

    Minimizes ``sum |dst_i - (s R src_i + t)|^2`` over ``s, R, t`` (Umeyama 1991).

    Args:
        src: ``[N, 3]`` points, ``N >= 3`` not collinear for a unique rotation.
        dst: ``[N, 3]`` corresponding points.
    """
    if src.shape != dst.shape or src.ndim != 2 or src.shape[-1] != 3:
        raise ValueError(f"umeyama needs two [N, 3] tensors, got {tuple(src.shape)} and {tuple(dst.shape)}")
    if src.shape[0] < 3:
        raise ValueError(f"umeyama needs at least 3 point pairs, got {src.shape[0]}")
    mu_s, mu_d = src.mean(0), dst.mean(0)
    xs, xd = src - mu_s, dst - mu_d
    cov = xd.T @ xs / src.shape[0]
    u, sing, vt = torch.linalg.svd(cov)
    sign = torch.ones(3, dtype=src.dtype, device=src.device)
    if torch.det(u) * torch.det(vt) < 0:
        sign[2] = -1.0
    rot = u @ torch.diag(sign) @ vt
    if with_scale:
        var_s = (xs * xs).sum() / src.shape[0]
        scale = (sing * sign).sum() / var_s.clamp_min(torch.finfo(src.dtype).tiny)
    else:
        scale = torch.ones((), dtype=src.dtype, device=src.device)
    trans = mu_d - scale * rot @ mu_s
    return Sim3(scale, rot, trans)
