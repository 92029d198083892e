"""Real spherical harmonics up to degree 3 with the 3DGS constants and basis order.

The basis order and signs are those of the original 3DGS code (and gsplat): for a unit
direction ``(x, y, z)`` band 1 is ``(-C1 y, C1 z, -C1 x)``.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["SH_C0", "sh_bases", "spherical_harmonics"]

SH_C0 = 0.28209479177387814
SH_C1 = 0.4886025119029199
SH_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
SH_C3 = (
    -0.5900435899266435,
    2.890611442640554,
    -0.4570457994644658,
    0.3731763325901154,
    -0.4570457994644658,
    1.445305721320277,
    -0.5900435899266435,
)


def sh_bases(degree: int, dirs: Tensor) -> Tensor:
    """SH basis values ``[..., (degree + 1)^2]`` at unit directions ``dirs`` ``[..., 3]``."""
    if not 0 <= degree <= 3:
        raise ValueError(f"SH degree must be in 0..3, got {degree}")
    out = [torch.full_like(dirs[..., 0], SH_C0)]
    if degree >= 1:
        x, y, z = dirs.unbind(-1)
        out += [-SH_C1 * y, SH_C1 * z, -SH_C1 * x]
        if degree >= 2:
            xx, yy, zz = x * x, y * y, z * z
            xy, yz, xz = x * y, y * z, x * z
            out += [
                SH_C2[0] * xy,
                SH_C2[1] * yz,
                SH_C2[2] * (2.0 * zz - xx - yy),
                SH_C2[3] * xz,
                SH_C2[4] * (xx - yy),
            ]
            if degree >= 3:
                out += [
                    SH_C3[0] * y * (3.0 * xx - yy),
                    SH_C3[1] * xy * z,
                    SH_C3[2] * y * (4.0 * zz - xx - yy),
                    SH_C3[3] * z * (2.0 * zz - 3.0 * xx - 3.0 * yy),
                    SH_C3[4] * x * (4.0 * zz - xx - yy),
                    SH_C3[5] * z * (xx - yy),
                    SH_C3[6] * x * (xx - 3.0 * yy),
                ]
    return torch.stack(out, dim=-1)


def spherical_harmonics(
    degree: int,
    dirs: Tensor,  # [..., 3] (need not be normalized; broadcastable against coeffs[..., 0, :])
    coeffs: Tensor,  # [..., K, 3], K >= (degree + 1)^2
    masks: Tensor | None = None,  # [...] bool: entries outside get colour 0 and no gradient
) -> Tensor:
    """Evaluate SH colours ``[..., 3]`` (no offset or clamp; see gsplat's ``+0.5, max 0``)."""
    n_bases = (degree + 1) ** 2
    if coeffs.shape[-2] < n_bases:
        raise ValueError(f"degree {degree} needs {n_bases} SH coefficients, got {coeffs.shape[-2]}")
    coeffs = coeffs[..., :n_bases, :]
    if degree == 0:
        rgb = SH_C0 * coeffs[..., 0, :]
    else:
        if masks is not None:
            # keep culled entries (e.g. a Gaussian at the camera centre) away from 0/0
            dirs = torch.where(masks.unsqueeze(-1), dirs, torch.ones_like(dirs))
        unit = dirs / dirs.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        rgb = (sh_bases(degree, unit).unsqueeze(-1) * coeffs).sum(dim=-2)
    if masks is not None:
        rgb = torch.where(masks.unsqueeze(-1), rgb, torch.zeros_like(rgb))
    return rgb
