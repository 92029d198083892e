"""The PyTorch reference rasterizer against finite differences (float64, tiny scenes)."""

from __future__ import annotations

import pytest
import torch

from posegs_ros.render import rasterize


def tiny_scene(sh_degree: int | None) -> tuple[torch.Tensor, ...]:
    """Three overlapping Gaussians well inside a 14x12 image, seen by two cameras.

    Moderate opacities and sizes keep pixels away from gsplat's non-differentiable
    thresholds (alpha 1/255 cut, 0.999 clamp, T 1e-4 stop) under small perturbations.
    """
    g = torch.Generator().manual_seed(11)
    means = torch.tensor([[0.05, 0.02, 2.0], [-0.1, 0.05, 2.4], [0.08, -0.06, 2.8]], dtype=torch.float64)
    quats = torch.randn(3, 4, generator=g, dtype=torch.float64)
    scales = torch.tensor([[0.12, 0.08, 0.1], [0.1, 0.15, 0.09], [0.2, 0.1, 0.12]], dtype=torch.float64)
    opacities = torch.tensor([0.55, 0.7, 0.45], dtype=torch.float64)
    if sh_degree is None:
        colors = torch.rand(3, 3, generator=g, dtype=torch.float64)
    else:
        colors = 0.3 * torch.randn(3, (sh_degree + 1) ** 2, 3, generator=g, dtype=torch.float64)
    viewmats = torch.eye(4, dtype=torch.float64).repeat(2, 1, 1)
    viewmats[1, :3, 3] = torch.tensor([0.03, -0.02, 0.05], dtype=torch.float64)
    c, s = torch.cos(torch.tensor(0.05)), torch.sin(torch.tensor(0.05))
    viewmats[1, 0, 0], viewmats[1, 0, 2], viewmats[1, 2, 0], viewmats[1, 2, 2] = c, s, -s, c
    ks = torch.tensor([[20.0, 0, 7.0], [0, 20.0, 6.0], [0, 0, 1]], dtype=torch.float64).repeat(2, 1, 1)
    backgrounds = torch.rand(2, 3, generator=g, dtype=torch.float64)
    return means, quats, scales, opacities, colors, viewmats, ks, backgrounds


@pytest.mark.parametrize(
    ("mode", "sh_degree"), [("RGB", None), ("RGB+ED", None), ("D", None), ("RGB+D", 1)], ids=str
)
def test_reference_gradients_match_finite_differences(mode: str, sh_degree: int | None) -> None:
    means, quats, scales, opacities, colors, viewmats, ks, backgrounds = tiny_scene(sh_degree)
    channels = (3 if "RGB" in mode else 0) + (1 if "D" in mode else 0)
    weights = torch.rand(2, 12, 14, channels, generator=torch.Generator().manual_seed(3), dtype=torch.float64)

    def loss(*leaves: torch.Tensor) -> torch.Tensor:
        means_, quats_, scales_, opacities_, colors_, viewmats_, backgrounds_ = leaves
        out, alphas, _ = rasterize(
            means_, quats_, scales_, opacities_, colors_, viewmats_, ks, 14, 12, backgrounds=backgrounds_,
            sh_degree=sh_degree, render_mode=mode, backend="reference",
        )  # fmt: skip
        return (out * weights).sum() + 0.3 * alphas.sum()

    leaves = [x.clone().requires_grad_(True) for x in (means, quats, scales, opacities, colors, viewmats, backgrounds)]
    assert torch.autograd.gradcheck(loss, leaves, eps=1e-6, atol=1e-6, rtol=1e-4)
