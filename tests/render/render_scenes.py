"""Shared scenes and helpers for the renderer tests (CPU; small enough for CI)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from posegs_ros.geometry import se3_exp


@dataclass
class Scene:
    """Inputs of :func:`posegs_ros.render.rasterize` (leaf tensors, grads enabled on demand)."""

    means: Tensor
    quats: Tensor
    scales: Tensor
    opacities: Tensor
    colors: Tensor
    viewmats: Tensor
    Ks: Tensor
    width: int
    height: int
    backgrounds: Tensor | None = None
    sh_degree: int | None = None
    extra: dict[str, object] = field(default_factory=dict)

    def leaves(self) -> list[Tensor]:
        out = [self.means, self.quats, self.scales, self.opacities, self.colors, self.viewmats]
        return out + ([self.backgrounds] if self.backgrounds is not None else [])

    def clone(self, dtype: torch.dtype | None = None, requires_grad: bool = True) -> Scene:
        def c(x: Tensor | None) -> Tensor | None:
            if x is None:
                return None
            y = x.detach().clone()
            if dtype is not None:
                y = y.to(dtype)
            return y

        s = Scene(
            c(self.means), c(self.quats), c(self.scales), c(self.opacities), c(self.colors),  # type: ignore[arg-type]
            c(self.viewmats), c(self.Ks), self.width, self.height, c(self.backgrounds),  # type: ignore[arg-type]
            self.sh_degree, dict(self.extra),
        )  # fmt: skip
        if requires_grad:
            for t in s.leaves():
                t.requires_grad_(True)
        return s

    def args(self) -> tuple[object, ...]:
        return (self.means, self.quats, self.scales, self.opacities, self.colors, self.viewmats, self.Ks,
                self.width, self.height)  # fmt: skip


def random_scene(
    seed: int,
    n: int = 400,
    width: int = 72,
    height: int = 56,
    n_cams: int = 2,
    focal: float = 60.0,
    sh_degree: int | None = None,
    backgrounds: bool = False,
    per_camera_colors: bool = False,
    hard_cases: bool = True,
) -> Scene:
    """Random Gaussians 1-5 m in front of C nearby cameras, plus (``hard_cases``) Gaussians
    behind the camera, partly off-screen, sub-pixel, huge, and a dense opaque cluster."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape: int) -> Tensor:
        return torch.rand(*shape, generator=g)

    z = 1.0 + 4.0 * rand(n)
    x = (rand(n) - 0.5) * 1.3 * width / focal * z
    y = (rand(n) - 0.5) * 1.3 * height / focal * z
    means = torch.stack([x, y, z], dim=-1)
    scales = 0.01 + 0.05 * rand(n, 3)
    opacities = 0.1 + 0.85 * rand(n)
    if hard_cases:
        k = n // 10
        means[:k, 2] = -0.5 - rand(k)  # behind the camera
        means[k : 2 * k, 0] = (width / focal) * means[k : 2 * k, 2] * (0.45 + 0.15 * rand(k))  # across the edge
        scales[2 * k : 3 * k] = 0.0005 + 0.001 * rand(k, 3)  # sub-pixel
        scales[3 * k : 3 * k + 3] = 0.8 + 0.4 * rand(3, 3)  # huge: most of the image
        means[3 * k : 3 * k + 3, 2] = 2.5
        opacities[3 * k : 3 * k + 3] = 0.2 + 0.2 * rand(3)
        c = slice(4 * k, 5 * k)  # a dense opaque cluster: pixels there stop early
        means[c] = torch.tensor([0.1, -0.05, 1.5]) + 0.01 * (rand(k, 3) - 0.5)
        scales[c] = 0.03 + 0.02 * rand(k, 3)
        opacities[c] = 0.9 + 0.09 * rand(k)
    quats = torch.randn(n, 4, generator=g)
    viewmats = []
    for i in range(n_cams):
        twist = 0.02 * (torch.rand(6, generator=g) - 0.5) * (1 if i else 0)
        viewmats.append(torch.linalg.inv(se3_exp(twist.double())).float())
    ks = torch.tensor([[focal, 0.0, width / 2.0], [0.0, focal, height / 2.0], [0.0, 0.0, 1.0]])
    n_cams = len(viewmats)
    if sh_degree is None:
        colors = rand(n_cams, n, 3) if per_camera_colors else rand(n, 3)
    else:
        k_bases = (sh_degree + 1) ** 2
        colors = 0.3 * torch.randn(n, k_bases, 3, generator=g)
        colors[:, 0] += 0.5 / 0.28209479177387814 * (rand(n, 3) - 0.5)
    bg = rand(n_cams, colors.shape[-1]) if backgrounds else None
    return Scene(means, quats, scales, opacities, colors, torch.stack(viewmats), ks.expand(n_cams, 3, 3).clone(),
                 width, height, bg, sh_degree)  # fmt: skip


def loss_weights(shape: torch.Size, seed: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """Fixed random weights so every output element gets a distinct gradient."""
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)
