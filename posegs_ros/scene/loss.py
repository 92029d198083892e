"""The photometric loss between a predicted (blurred) render and the recorded frame.

``(1 - lambda) L1 + lambda (1 - SSIM) + mu (|dx r| + |dy r|)``, ``r`` = prediction - frame: SSIM
over 11 px Gaussian windows (valid region), the last term the L1 of the residual's horizontal and
vertical pixel differences (the error's fine detail, which a blurred view's gradient attenuates).
On the CPU in float32 the loss and its gradient come out of one pass (:mod:`._loss_kernels`,
OpenCV for the filtering; both on the renderer's threads), a few times faster than PyTorch's
autograd over the same formula;
elsewhere :func:`photometric_loss_reference` computes it with PyTorch operations.
"""

from __future__ import annotations

import functools
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..render._threads import run_blocks, run_calls
from . import _loss_kernels as lk

__all__ = ["photometric_loss", "photometric_loss_reference", "ssim"]

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5


def _gaussian_window(size: int, sigma: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    x = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    g = torch.exp(-(x * x) / (2 * sigma * sigma))
    return g / g.sum()


@functools.cache
def _ssim_kernel() -> np.ndarray:
    """The SSIM window ``[SSIM_WINDOW]`` as float32 numpy (computed once: the fused loss runs every step)."""
    kernel = _gaussian_window(SSIM_WINDOW, SSIM_SIGMA, torch.float32, torch.device("cpu")).numpy()
    kernel.flags.writeable = False
    return kernel


class _ValidGaussianFilter(torch.autograd.Function):
    """Separable filter of ``[H, W, C]`` CPU images keeping the valid region ``[H-2r, W-2r, C]``
    (OpenCV's ``sepFilter2D``; several times faster than PyTorch's grouped convolutions on CPU).

    The kernel ``[2r+1]`` is symmetric, so the backward pass is the same filter applied to the
    zero-padded output gradient."""

    @staticmethod
    def forward(ctx: Any, image: Tensor, kernel: np.ndarray) -> Tensor:  # type: ignore[override]
        r = len(kernel) // 2
        arr = np.ascontiguousarray(image.detach().numpy())
        ctx.kernel, ctx.shape = kernel, arr.shape
        out = cv2.sepFilter2D(arr, -1, kernel, kernel, borderType=cv2.BORDER_REFLECT)
        return torch.from_numpy(np.ascontiguousarray(out.reshape(arr.shape)[r:-r, r:-r]))

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        kernel = ctx.kernel
        r = len(kernel) // 2
        padded = np.zeros(ctx.shape, dtype=kernel.dtype)
        padded[r:-r, r:-r] = grad.numpy()
        out = cv2.sepFilter2D(padded, -1, kernel, kernel, borderType=cv2.BORDER_CONSTANT)
        return torch.from_numpy(out.reshape(ctx.shape)), None


def _filter_valid(t: Tensor, window: int, sigma: float) -> Tensor:
    """Gaussian filter of ``[H, W, C]`` (valid region ``[H-w+1, W-w+1, C]``): OpenCV on CPU, conv2d elsewhere."""
    if t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64):
        kernel = _gaussian_window(window, sigma, t.dtype, t.device).numpy()
        return _ValidGaussianFilter.apply(t, kernel)
    ch = t.shape[-1]
    g = _gaussian_window(window, sigma, t.dtype, t.device)
    x = t.permute(2, 0, 1)[None]
    x = F.conv2d(x, g.view(1, 1, 1, -1).expand(ch, 1, 1, window), groups=ch)
    x = F.conv2d(x, g.view(1, 1, -1, 1).expand(ch, 1, window, 1), groups=ch)
    return x[0].permute(1, 2, 0)


def ssim(a: Tensor, b: Tensor, window: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> Tensor:
    """Mean structural similarity of images ``[H, W, C]`` in [0, 1] (Gaussian window, valid region).

    The five local statistics (means, second moments, cross moment) are filtered in one call.
    """
    ch = a.shape[-1]
    stats = _filter_valid(torch.cat([a, b, a * a, b * b, a * b], -1), window, sigma)
    mu_x, mu_y, xx, yy, xy = stats.split(ch, dim=-1)
    sxx = xx - mu_x * mu_x
    syy = yy - mu_y * mu_y
    sxy = xy - mu_x * mu_y
    c1, c2 = lk.SSIM_C1, lk.SSIM_C2
    num = (2 * mu_x * mu_y + c1) * (2 * sxy + c2)
    den = (mu_x * mu_x + mu_y * mu_y + c1) * (sxx + syy + c2)
    return (num / den).mean()


def _masked_mean(values: Tensor, weights: Tensor | None) -> Tensor:
    """Mean of ``values`` ``[H, W, C]`` over the pixels whose ``weights`` ``[H, W, 1]`` are 1 (all: ``None``)."""
    if weights is None:
        return values.mean()
    return (values * weights).sum() / (weights.sum() * values.shape[-1]).clamp_min(1.0)


def photometric_loss_reference(
    pred: Tensor, target: Tensor, ssim_weight: float = 0.2, mask: Tensor | None = None, gradient_weight: float = 0.0
) -> Tensor:
    """:func:`photometric_loss` written with PyTorch operations (any device and dtype; the
    definition the fused CPU path is tested against)."""
    res = pred - target
    m = None if mask is None else mask[..., None].to(res.dtype)
    l1 = _masked_mean(res.abs(), m)
    loss = l1
    if ssim_weight > 0:
        loss = (1 - ssim_weight) * l1 + ssim_weight * (1 - ssim(pred, target))
    if gradient_weight > 0:
        # a difference counts where both of its pixels are in the mask
        mx, my = (None, None) if m is None else (m[:, 1:] * m[:, :-1], m[1:] * m[:-1])
        g = _masked_mean((res[:, 1:] - res[:, :-1]).abs(), mx) + _masked_mean((res[1:] - res[:-1]).abs(), my)
        loss = loss + gradient_weight * g
    return loss


class _FusedPhotometricLoss(torch.autograd.Function):
    """:func:`photometric_loss` of CPU float32 images with its gradient computed in the forward pass."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, pred: Tensor, target: Tensor, mask: np.ndarray, ssim_weight: float, gradient_weight: float
    ) -> Tensor:
        h, w, c = pred.shape
        x = np.ascontiguousarray(pred.detach().numpy()).reshape(h, w * c)
        y = np.ascontiguousarray(target.detach().numpy()).reshape(h, w * c)
        grad = np.empty_like(x)
        filtered = np.zeros((3, 1, 1), np.float32)
        ssim_mean, ssim_scale = 0.0, 0.0
        if ssim_weight > 0:
            kernel = _ssim_kernel()
            r = SSIM_WINDOW // 2

            def smooth(planes: np.ndarray, border: int) -> np.ndarray:  # [P, H, W*C] -> the same, filtered
                out = np.empty_like(planes)
                run_calls([
                    functools.partial(cv2.sepFilter2D, p.reshape(h, w, c), -1, kernel, kernel, dst=o.reshape(h, w, c),
                                      borderType=border)
                    for p, o in zip(planes, out)
                ])
                return out

            stacked = np.empty((5, h, w * c), np.float32)
            run_blocks(lk.ssim_inputs, h, lk.ROW_BLOCK, x, y, stacked)
            coef = np.zeros((3, h, w * c), np.float32)
            rows = np.zeros(h)
            run_blocks(lk.ssim_terms, h - 2 * r, lk.ROW_BLOCK, smooth(stacked, cv2.BORDER_REFLECT), r, c, coef, rows)
            n_valid = (h - 2 * r) * (w - 2 * r) * c
            ssim_mean = lk.ordered_sum(rows[r : h - r]) / n_valid
            ssim_scale = -ssim_weight / n_valid
            filtered = smooth(coef, cv2.BORDER_CONSTANT)
        l1_weight = 1.0 - ssim_weight if ssim_weight > 0 else 1.0
        per_channel = np.ascontiguousarray(np.repeat(mask, c, axis=1))
        sm, smx, smy = lk.mask_sums(per_channel, c)
        inv1, invx, invy = 1.0 / max(sm, 1.0), 1.0 / max(smx, 1.0), 1.0 / max(smy, 1.0)
        terms = np.empty((h, 3))
        run_blocks(lk.loss_rows, h, lk.ROW_BLOCK, x, y, per_channel, c, filtered, ssim_scale, l1_weight,
                   gradient_weight, inv1, invx, invy, grad, terms)
        l1 = lk.ordered_sum(terms[:, 0]) * inv1
        diff = lk.ordered_sum(terms[:, 1]) * invx + lk.ordered_sum(terms[:, 2]) * invy if gradient_weight > 0 else 0.0
        loss = l1_weight * l1 + gradient_weight * diff
        if ssim_weight > 0:
            loss += ssim_weight * (1.0 - ssim_mean)
        grad = grad.reshape(h, w, c)
        ctx.grad = torch.from_numpy(grad)
        return torch.tensor(loss, dtype=pred.dtype)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor, None, None, None, None]:  # type: ignore[override]
        return grad_out * ctx.grad, None, None, None, None


def photometric_loss(
    pred: Tensor, target: Tensor, ssim_weight: float = 0.2, mask: Tensor | None = None, gradient_weight: float = 0.0
) -> Tensor:
    """``(1 - lambda) L1 + lambda (1 - SSIM) + mu L1(grad)`` for images ``[H, W, 3]``; ``mask`` ``[H, W]``
    limits both L1 terms. ``mu`` weighs the L1 of the horizontal and vertical finite differences of the
    residual (high frequencies of the error, which a blurred view's gradient attenuates).

    Differentiable in ``pred``; CPU float32 images with a target that needs no gradient take
    the fused path, anything else :func:`photometric_loss_reference`."""
    fused = (
        pred.device.type == "cpu" and pred.dtype == torch.float32 and target.dtype == torch.float32
        and not target.requires_grad and pred.dim() == 3 and pred.shape == target.shape
        and min(pred.shape[0], pred.shape[1]) >= SSIM_WINDOW
    )
    if not fused:
        return photometric_loss_reference(pred, target, ssim_weight, mask, gradient_weight)
    m = np.ones(pred.shape[:2], np.float32) if mask is None else mask.detach().cpu().numpy().astype(np.float32)
    return _FusedPhotometricLoss.apply(pred, target, m, float(ssim_weight), float(gradient_weight))
