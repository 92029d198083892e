"""The CPU rasterizer against gsplat on CUDA (runs only where CUDA and gsplat exist)."""

from __future__ import annotations

import pytest
import torch
from render_scenes import Scene, loss_weights, random_scene

from posegs_ros.render import rasterize


def _gsplat_unavailable() -> str | None:
    if not torch.cuda.is_available():
        return "needs CUDA (gsplat parity runs on a GPU machine)"
    try:
        import gsplat  # noqa: F401
    except ImportError:
        return "needs gsplat: pip install 'posegs_ros[cuda]'"
    return None


pytestmark = pytest.mark.skipif(_gsplat_unavailable() is not None, reason=_gsplat_unavailable() or "")

LEAF_NAMES = ("means", "quats", "scales", "opacities", "colors", "viewmats", "backgrounds")


def _render(scene: Scene, device: str, mode: str, packed: bool) -> list[torch.Tensor]:
    s = scene.clone()
    leaves = [t.detach().to(device).requires_grad_(True) for t in s.leaves()]
    means, quats, scales, opacities, colors, viewmats = leaves[:6]
    backgrounds = leaves[6] if len(leaves) > 6 else None
    out, alphas, meta = rasterize(
        means, quats, scales, opacities, colors, viewmats, s.Ks.to(device), s.width, s.height,
        backgrounds=backgrounds, sh_degree=s.sh_degree, render_mode=mode, packed=packed, backend="auto",
    )  # fmt: skip
    weights = loss_weights(out.shape, 1).to(device), loss_weights(alphas.shape, 2).to(device)
    loss = (out * weights[0]).sum() + (alphas * weights[1]).sum()
    grads = torch.autograd.grad(loss, leaves, allow_unused=True, materialize_grads=True)
    radii = meta["radii"]
    return [out.detach().cpu(), alphas.detach().cpu(), radii.cpu()] + [g.cpu() for g in grads]


@pytest.mark.parametrize("packed", [True, False])
@pytest.mark.parametrize(
    ("mode", "case"),
    [
        ("RGB", dict(seed=30)),
        ("RGB+ED", dict(seed=31, backgrounds=True, n_cams=3)),
        ("RGB+D", dict(seed=32, sh_degree=3)),
        ("D", dict(seed=33)),
    ],
)
def test_cpu_matches_gsplat(mode: str, case: dict, packed: bool) -> None:
    scene = random_scene(**case)
    cpu = _render(scene, "cpu", mode, packed)
    cuda = _render(scene, "cuda", mode, packed)
    names = ("colors", "alphas") + LEAF_NAMES
    assert cpu[2].shape == cuda[2].shape
    assert (cpu[2] - cuda[2]).abs().max() <= 1, "radii"
    for name, a, b in zip(names, cpu[:2] + cpu[3:], cuda[:2] + cuda[3:]):
        scale = float(b.abs().max()) if b.numel() else 0.0
        torch.testing.assert_close(a, b, rtol=2e-3, atol=5e-4 * scale + 1e-6, msg=lambda m, n=name: f"{n}: {m}")
