"""Dense flow: pre-smoothing against aliasing on fine texture, the blur that matches two images, and its configuration."""

import cv2
import numpy as np
import pytest

from posegs_ros.config import PosegsConfig, apply_flat
from posegs_ros.tracking.flow import DenseFlow, image_sharpness, matching_blur_sigma

SHIFT = np.array([2.3, -1.2])  # pixels, sub-pixel on purpose


def fine_texture_pair(seed: int, detail_px: int, blur_px: int) -> tuple[np.ndarray, np.ndarray]:
    """A 320x240 grey image of random ``detail_px`` blocks and the same shifted by :data:`SHIFT`,
    then smeared horizontally over ``blur_px`` (a sharp render against a motion-blurred frame)."""
    rng = np.random.default_rng(seed)
    blocks = rng.uniform(0, 255, (240 // detail_px + 2, 320 // detail_px + 2)).astype(np.float32)
    sharp = cv2.resize(blocks, None, fx=detail_px, fy=detail_px, interpolation=cv2.INTER_NEAREST)[:240, :320]
    moved = cv2.warpAffine(sharp, np.float32([[1, 0, SHIFT[0]], [0, 1, SHIFT[1]]]), (320, 240),
                           flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    smeared = cv2.filter2D(moved, -1, np.full((1, blur_px), 1.0 / blur_px, np.float32))
    return sharp.astype(np.uint8), np.clip(smeared + 0.5, 0, 255).astype(np.uint8)


def median_error(flow: DenseFlow, source: np.ndarray, destination: np.ndarray) -> float:
    f = flow(source, destination)[20:-20, 20:-20]  # away from the borders
    return float(np.median(np.linalg.norm(f - SHIFT, axis=2)))


@pytest.mark.parametrize("detail_px,blur_px", [(1, 5), (2, 5), (3, 9)])
def test_presmoothing_keeps_fine_texture_from_aliasing_the_flow(detail_px: int, blur_px: int) -> None:
    raw, smoothed = DenseFlow("dis", "balanced"), DenseFlow("dis", "balanced", presmooth=1.0)
    errors_raw, errors_smoothed = [], []
    for seed in range(2):
        a, b = fine_texture_pair(seed, detail_px, blur_px)
        errors_raw.append(median_error(raw, a, b))
        errors_smoothed.append(median_error(smoothed, a, b))
    assert np.mean(errors_smoothed) < 0.6 * np.mean(errors_raw)
    assert max(errors_smoothed) < 0.2


def test_presmoothing_follows_the_image_scale_and_the_config() -> None:
    cfg = apply_flat(PosegsConfig(), {"tracking.flow_presmooth_px": 1.5})
    assert DenseFlow.from_config(cfg.tracking).sigma == 1.5
    assert DenseFlow.from_config(cfg.tracking, image_scale=0.5).sigma == 0.75  # same blur of the scene
    assert DenseFlow.from_config(PosegsConfig().tracking).sigma == 0.0  # off by default
    with pytest.raises(ValueError, match="presmooth"):
        DenseFlow(presmooth=-1.0)


def test_presmoothing_keeps_a_coarse_shift_accurate() -> None:
    """Smoothing is for detail: on coarse texture the smoothed flow still finds the shift."""
    a, b = fine_texture_pair(0, 12, 1)
    assert median_error(DenseFlow("dis", "balanced", presmooth=1.0), a, b) < 0.15


@pytest.mark.parametrize("sigma", [0.7, 1.5, 2.5])
def test_the_matching_blur_of_a_gaussian_blurred_copy_is_its_sigma(sigma: float) -> None:
    sharp, _ = fine_texture_pair(0, 3, 1)
    blurred = np.clip(cv2.GaussianBlur(sharp.astype(np.float32), (0, 0), sigma) + 0.5, 0, 255).astype(np.uint8)
    assert matching_blur_sigma(sharp, blurred) == pytest.approx(sigma, abs=0.15)
    assert matching_blur_sigma(blurred, sharp) == 0.0  # the "blurred" one is the sharper: nothing to match
    assert matching_blur_sigma(sharp, sharp) == 0.0


def test_the_matching_blur_grows_with_the_motion_streak_and_keeps_to_the_mask() -> None:
    sigmas = [matching_blur_sigma(*fine_texture_pair(1, 2, streak)) for streak in (1, 3, 7, 13)]
    # streak 1: only the bilinear resampling of the sub-pixel shift softens the copy
    assert sigmas[0] < 0.6 and sigmas[-1] > 1.2 and all(b > a for a, b in zip(sigmas, sigmas[1:])), sigmas
    sharp, smeared = fine_texture_pair(1, 2, 13)
    half = np.zeros(sharp.shape, bool)
    half[:, :160] = True
    smeared[:, :160] = sharp[:, :160]  # the smear only where the mask is not
    assert matching_blur_sigma(sharp, smeared, half) < 0.2 < matching_blur_sigma(sharp, smeared, ~half)
    assert matching_blur_sigma(sharp, smeared, np.zeros_like(half)) == 0.0


def test_image_sharpness_ignores_gain_and_counts_only_the_mask() -> None:
    sharp, smeared = fine_texture_pair(2, 2, 9)
    assert image_sharpness(sharp) > 2 * image_sharpness(smeared)
    assert image_sharpness((sharp // 2).astype(np.uint8)) == pytest.approx(image_sharpness(sharp), rel=0.05)
    mixed = sharp.copy()
    mixed[:, 160:] = smeared[:, 160:]
    left = np.zeros(sharp.shape, bool)
    left[:, :150] = True
    assert image_sharpness(mixed, left) == pytest.approx(image_sharpness(sharp, left), rel=1e-6)
    assert image_sharpness(mixed, np.zeros_like(left)) == 0.0


def test_smoothing_by_the_matching_blur_keeps_the_flow_of_a_smeared_frame_accurate() -> None:
    """What tracking.flow_blur_match does: a sharp render against a frame smeared over 9-13 px."""
    flow = DenseFlow("dis", "balanced")
    for seed, streak in ((0, 9), (1, 13)):
        a, b = fine_texture_pair(seed, 2, streak)
        sigma = 1.5 * matching_blur_sigma(a, b)
        assert median_error(DenseFlow("dis", "balanced", presmooth=sigma), a, b) < 0.5 * median_error(flow, a, b)
        f = flow(a, b, sigma)[20:-20, 20:-20]  # the per-call sigma does what the configured one does
        assert float(np.median(np.linalg.norm(f - SHIFT, axis=2))) == median_error(
            DenseFlow("dis", "balanced", presmooth=sigma), a, b)
