"""Differentiable 3D Gaussian Splatting rasterization with ``gsplat.rasterization``'s interface.

One entry point, :func:`rasterize`, three backends:

- ``"gsplat"``: gsplat 1.5 on CUDA (``pip install 'posegs_ros[cuda]'``);
- ``"cpu"``: this package's numba kernels with analytic, deterministic backward passes
  (compiled on first use and cached on disk; importing this module compiles nothing);
- ``"reference"``: the same maths in plain PyTorch autograd (slow; float32 or float64).

``"auto"`` picks gsplat for CUDA tensors and the CPU kernels otherwise.

Conventions are gsplat's: quaternions wxyz (any norm), linear scales, opacities in [0, 1],
world-to-camera ``viewmats``, pixel ``(i, j)`` has its centre at ``(j + 0.5, i + 0.5)`` in the
coordinates that ``Ks`` maps to (so with OpenCV intrinsics, whose top-left pixel centre is
(0, 0), pass ``cx + 0.5, cy + 0.5``).
"""

from __future__ import annotations

from typing import Any, Literal

from torch import Tensor

from posegs_ros.render._common import RENDER_MODES, check_inputs

__all__ = ["Backend", "RENDER_MODES", "rasterize", "resolve_backend"]

Backend = Literal["auto", "cpu", "reference", "gsplat"]


def resolve_backend(backend: str, device_is_cuda: bool) -> str:
    """The backend that ``backend`` means for tensors on a CUDA (or CPU) device."""
    if backend not in ("auto", "cpu", "reference", "gsplat"):
        raise ValueError(f"backend must be 'auto', 'cpu', 'reference' or 'gsplat', got {backend!r}")
    if backend == "auto":
        return "gsplat" if device_is_cuda else "cpu"
    if backend == "cpu" and device_is_cuda:
        raise ValueError("backend='cpu' needs CPU tensors; move them with .cpu() or use backend='auto'")
    return backend


def rasterize(
    means: Tensor,  # [N, 3]
    quats: Tensor,  # [N, 4] wxyz, need not be normalized
    scales: Tensor,  # [N, 3] linear
    opacities: Tensor,  # [N] in [0, 1]
    colors: Tensor,  # [N, D] | [C, N, D] | SH [N, K, 3] | [C, N, K, 3]
    viewmats: Tensor,  # [C, 4, 4] world-to-camera
    Ks: Tensor,  # [C, 3, 3]
    width: int,
    height: int,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    radius_clip: float = 0.0,
    eps2d: float = 0.3,
    sh_degree: int | None = None,
    packed: bool = True,
    backgrounds: Tensor | None = None,  # [C, D]
    render_mode: Literal["RGB", "D", "ED", "RGB+D", "RGB+ED"] = "RGB",
    backend: Backend = "auto",
) -> tuple[Tensor, Tensor, dict[str, Any]]:
    """Render N Gaussians into C cameras, as ``gsplat.rasterization`` (gsplat 1.5) does.

    Returns ``render_colors`` [C, H, W, X] (X = D for "RGB", 1 for "D"/"ED", D + 1 for
    "RGB+D"/"RGB+ED" with depth last; "D" is accumulated depth, "ED" that divided by alpha),
    ``render_alphas`` [C, H, W, 1] and ``meta`` with gsplat's projection results: with
    ``packed=True`` (gsplat's default) ``radii`` [nnz, 2] int32, ``means2d`` [nnz, 2],
    ``depths`` [nnz], ``conics`` [nnz, 3], ``opacities`` [nnz] plus ``camera_ids`` /
    ``gaussian_ids`` [nnz]; with ``packed=False`` the same as dense [C, N, ...] tensors.
    ``meta["means2d"]`` is part of the graph (``retain_grad()`` it for densification).

    Differentiable w.r.t. means, quats, scales, opacities, colors / SH coefficients,
    backgrounds and viewmats (not Ks).
    """
    check_inputs(
        means, quats, scales, opacities, colors, viewmats, Ks, width, height, sh_degree, backgrounds, render_mode
    )
    width, height = int(width), int(height)
    args = (
        means, quats, scales, opacities, colors, viewmats, Ks, width, height,
        near_plane, far_plane, radius_clip, eps2d, sh_degree, packed, backgrounds, render_mode,
    )  # fmt: skip
    chosen = resolve_backend(backend, means.is_cuda)
    if chosen == "gsplat":
        from posegs_ros.render._gsplat import rasterize_gsplat

        return rasterize_gsplat(*args)
    if chosen == "reference":
        from posegs_ros.render.reference import rasterize_reference

        return rasterize_reference(*args)
    from posegs_ros.render.cpu import rasterize_cpu

    return rasterize_cpu(*args)
