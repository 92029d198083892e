"""Dense flow: pre-smoothing against aliasing on fine texture, and its configuration."""

import cv2
import numpy as np
import pytest

from posegs_ros.config import PosegsConfig, apply_flat
from posegs_ros.tracking.flow import DenseFlow

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
