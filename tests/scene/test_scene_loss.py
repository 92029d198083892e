"""The photometric loss: L1, SSIM and the residual's differences; the fused CPU path against PyTorch's."""

from __future__ import annotations

import math

import pytest
import torch

from posegs_ros.render._threads import thread_budget
from posegs_ros.scene.loss import photometric_loss, photometric_loss_reference, ssim


def test_loss_and_ssim_basics() -> None:
    gen = torch.Generator().manual_seed(1)
    img = torch.rand(40, 50, 3, generator=gen)
    assert ssim(img, img).item() == pytest.approx(1.0, abs=1e-5)
    assert photometric_loss(img, img).item() == pytest.approx(0.0, abs=1e-5)
    noisy = (img + 0.1 * torch.randn(40, 50, 3, generator=gen)).clamp(0, 1)
    assert photometric_loss(noisy, img).item() > 0.05
    mask = torch.zeros(40, 50, dtype=torch.bool)
    mask[:20] = True
    half = img.clone()
    half[20:] = 0.0  # differences only outside the mask
    assert photometric_loss(half, img, ssim_weight=0.0, mask=mask).item() == pytest.approx(0.0, abs=1e-7)
    assert math.isfinite(photometric_loss(noisy, img, ssim_weight=0.0, mask=torch.zeros(40, 50, dtype=torch.bool)).item())


def test_the_gradient_term_sees_the_residuals_detail_and_not_its_offset() -> None:
    """``gradient_weight`` adds the L1 of the residual's finite differences: nothing for a constant
    offset (L1 alone), the exact mean absolute difference for a striped residual, masked like L1."""
    gen = torch.Generator().manual_seed(3)
    img = 0.2 + 0.6 * torch.rand(40, 50, 3, generator=gen)
    offset = img + 0.05
    assert photometric_loss(offset, img, 0.0, gradient_weight=2.0).item() == pytest.approx(0.05, abs=1e-6)
    stripes = img.clone()
    stripes[:, ::2] += 0.1  # residual alternates 0.1 / 0 along x: |dx| = 0.1 everywhere, dy = 0
    plain = photometric_loss(stripes, img, 0.0).item()
    assert plain == pytest.approx(0.05, abs=1e-6)
    assert photometric_loss(stripes, img, 0.0, gradient_weight=2.0).item() == pytest.approx(plain + 0.2, abs=1e-6)
    mask = torch.zeros(40, 50, dtype=torch.bool)
    mask[:, :20] = True
    outside = img.clone()
    outside[:, 21::2] += 0.3  # detail only where the mask (and its finite differences) does not reach
    assert photometric_loss(outside, img, 0.0, mask, gradient_weight=2.0).item() == pytest.approx(0.0, abs=1e-7)
    inside = img.clone()
    inside[:, 1:19:2] += 0.3
    assert photometric_loss(inside, img, 0.0, mask, gradient_weight=2.0).item() > 0.3


def test_the_gradient_term_fits_sharp_detail_through_streaks_sooner() -> None:
    """An image of 2 px blocks seen only through horizontal box streaks of 5-7 px (averages of
    shifted copies, as the sub-frames average): Adam from a flat grey start recovers the sharp image
    much closer after the same 60 steps with the gradient term than with L1 + SSIM alone."""
    gen = torch.Generator().manual_seed(5)
    sharp = 0.2 + 0.6 * torch.rand(24, 32, 3, generator=gen).repeat_interleave(2, 0).repeat_interleave(2, 1)

    def streak(x: torch.Tensor, length: int, shift: int) -> torch.Tensor:
        return torch.stack([torch.roll(x, s, 1) for s in range(shift - length // 2, shift + length // 2 + 1)]).mean(0)

    views = [(7, 0), (7, 1), (5, -1)]
    psnr = {}
    for mu in (0.0, 0.5):
        x = torch.full_like(sharp, 0.5).requires_grad_(True)
        opt = torch.optim.Adam([x], lr=0.02)
        for step in range(60):
            length, shift = views[step % 3]
            opt.zero_grad()
            photometric_loss(streak(x, length, shift), streak(sharp, length, shift), 0.2, None, mu).backward()
            opt.step()
        psnr[mu] = -10 * math.log10(float(((x.detach() - sharp) ** 2).mean()))
    assert psnr[0.5] > psnr[0.0] + 3.0, psnr


def test_ssim_equals_the_convolution_definition_with_its_gradient() -> None:
    """SSIM filters with OpenCV on CPU (custom backward): same values and gradients as PyTorch's convolutions."""
    import torch.nn.functional as F

    from posegs_ros.scene.loss import _gaussian_window

    def reference(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        x, y = a.permute(2, 0, 1)[None], b.permute(2, 0, 1)[None]
        g = _gaussian_window(11, 1.5, x.dtype, x.device)
        gh, gv = g.view(1, 1, 1, -1).expand(3, 1, 1, 11), g.view(1, 1, -1, 1).expand(3, 1, 11, 1)
        blur = lambda t: F.conv2d(F.conv2d(t, gh, groups=3), gv, groups=3)  # noqa: E731
        mx, my = blur(x), blur(y)
        sxx, syy, sxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
        c1, c2 = 0.01**2, 0.03**2
        return (((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))).mean()

    gen = torch.Generator().manual_seed(2)
    a = torch.rand(30, 41, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    b = torch.rand(30, 41, 3, generator=gen, dtype=torch.float64)
    fast, ref = ssim(a, b), reference(a, b)
    (g_fast,) = torch.autograd.grad(fast, a)
    (g_ref,) = torch.autograd.grad(ref, a)
    assert torch.allclose(fast, ref, atol=1e-14) and torch.allclose(g_fast, g_ref, atol=1e-14)
    assert torch.autograd.gradcheck(lambda x: ssim(x, b[:14, :15]), (a[:14, :15].detach().requires_grad_(),))


@pytest.mark.parametrize("shape", [(240, 320, 3), (31, 42, 3), (11, 13, 1)])
@pytest.mark.parametrize("ssim_weight, gradient_weight, masked", [
    (0.2, 0.5, False), (0.2, 0.5, True), (0.0, 0.0, True), (0.2, 0.0, False), (0.0, 1.0, True), (0.6, 0.0, True),
])
def test_the_fused_loss_equals_its_pytorch_definition_with_its_gradient(
    shape: tuple[int, int, int], ssim_weight: float, gradient_weight: float, masked: bool
) -> None:
    """CPU float32 images take the fused path: the loss and its gradient match the PyTorch
    formula (autograd through the same operations) to float32 rounding, masked or not."""
    gen = torch.Generator().manual_seed(sum(shape))
    target = torch.rand(*shape, generator=gen)
    pred = (target + 0.2 * torch.randn(*shape, generator=gen)).clamp(-0.1, 1.1)
    pred[: shape[0] // 3, : shape[1] // 3] = target[: shape[0] // 3, : shape[1] // 3]  # zero residual: sign 0
    mask = (torch.rand(shape[:2], generator=gen) > 0.3) if masked else None
    fused_in, ref_in = pred.clone().requires_grad_(True), pred.clone().requires_grad_(True)
    fused = photometric_loss(fused_in, target, ssim_weight, mask, gradient_weight)
    ref = photometric_loss_reference(ref_in, target, ssim_weight, mask, gradient_weight)
    (3.0 * fused).backward()
    (3.0 * ref).backward()
    assert fused.dtype == torch.float32 and fused.shape == ()
    assert fused.item() == pytest.approx(ref.item(), rel=1e-5, abs=1e-7)
    assert fused_in.grad is not None and ref_in.grad is not None
    scale = ref_in.grad.abs().max().item()
    assert (fused_in.grad - ref_in.grad).abs().max().item() <= 1e-5 * scale


def test_the_fused_loss_matches_finite_differences_in_float64() -> None:
    """The reference path (float64 here) passes gradcheck, so the fused path, equal to it in
    float32, differentiates the right function; a float64 prediction takes the reference path."""
    gen = torch.Generator().manual_seed(7)
    target = torch.rand(14, 15, 3, generator=gen, dtype=torch.float64)
    pred = (target + 0.3 * torch.randn(14, 15, 3, generator=gen, dtype=torch.float64)).requires_grad_(True)
    mask = torch.rand(14, 15, generator=gen) > 0.2
    assert torch.autograd.gradcheck(lambda x: photometric_loss(x, target, 0.2, mask, 0.5), (pred,))
    fused = photometric_loss(pred.detach().float(), target.float(), 0.2, mask, 0.5)
    assert fused.item() == pytest.approx(photometric_loss(pred, target, 0.2, mask, 0.5).item(), rel=1e-5)


def test_the_fused_loss_passes_non_finite_values_and_small_images_on() -> None:
    """A NaN in the prediction makes the loss NaN (the mapper skips such a step); images smaller
    than the SSIM window and targets that need a gradient take the PyTorch path."""
    target = torch.rand(40, 50, 3)
    pred = target.clone()
    pred[5, 7, 1] = float("nan")
    assert math.isnan(photometric_loss(pred, target, 0.2, None, 0.5).item())
    small = torch.rand(8, 9, 3, requires_grad=True)
    loss = photometric_loss(small, torch.rand(8, 9, 3), 0.0, None, 0.5)
    loss.backward()
    assert small.grad is not None and torch.isfinite(small.grad).all()
    learnt = torch.rand(40, 50, 3, requires_grad=True)
    photometric_loss(torch.rand(40, 50, 3), learnt, 0.2).backward()
    assert learnt.grad is not None and learnt.grad.abs().sum() > 0


@pytest.mark.parametrize("ssim_weight, gradient_weight, masked", [(0.2, 0.5, True), (0.2, 0.5, False), (0.0, 1.0, True)])
def test_the_fused_loss_does_not_depend_on_the_thread_count(ssim_weight: float, gradient_weight: float,
                                                            masked: bool) -> None:
    """Rows are split over the renderer's threads and their sums added in row order: one thread
    and two give the same loss and gradient, bit for bit (odd height: a short last block)."""
    gen = torch.Generator().manual_seed(11)
    target = torch.rand(75, 64, 3, generator=gen)
    pred = (target + 0.2 * torch.randn(75, 64, 3, generator=gen)).clamp(0.0, 1.0)
    mask = (torch.rand(75, 64, generator=gen) > 0.3) if masked else None
    results = []
    for threads in (1, 2):
        x = pred.clone().requires_grad_(True)
        with thread_budget(threads):
            loss = photometric_loss(x, target, ssim_weight, mask, gradient_weight)
        loss.backward()
        results.append((loss.item(), x.grad))
    assert results[0][0] == results[1][0]
    assert torch.equal(results[0][1], results[1][1])
