"""gsplat on CUDA, imported only when a CUDA render is asked for."""

from __future__ import annotations

from typing import Any

from torch import Tensor


def import_gsplat() -> Any:
    """The ``gsplat`` module, or an ImportError that says how to get it."""
    try:
        import gsplat
    except ImportError as err:
        raise ImportError(
            "rendering CUDA tensors needs gsplat: pip install 'posegs_ros[cuda]' "
            "(or pass CPU tensors / backend='reference')"
        ) from err
    return gsplat


def rasterize_gsplat(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    colors: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    near_plane: float,
    far_plane: float,
    radius_clip: float,
    eps2d: float,
    sh_degree: int | None,
    packed: bool,
    backgrounds: Tensor | None,
    render_mode: str,
) -> tuple[Tensor, Tensor, dict[str, Any]]:
    """``gsplat.rasterization`` with the same arguments."""
    gsplat = import_gsplat()
    if not means.is_cuda:
        raise ValueError("backend='gsplat' needs CUDA tensors; use backend='cpu' or 'reference' on the CPU")
    return gsplat.rasterization(  # type: ignore[no-any-return]
        means, quats, scales, opacities, colors, viewmats, Ks, width, height,
        near_plane=near_plane, far_plane=far_plane, radius_clip=radius_clip, eps2d=eps2d,
        sh_degree=sh_degree, packed=packed, backgrounds=backgrounds, render_mode=render_mode,
    )  # fmt: skip
