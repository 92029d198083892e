"""The live deblurred output: the blur model in image space, and render + (frame - blur(render))."""

from __future__ import annotations

import numpy as np
import torch

from posegs_ros.scene.blur import RenderSettings, SceneTensors, render_exposure
from posegs_ros.scene.deblur import blur_image, exposure_warps, fuse_deblurred
from posegs_ros.tools.evaluate import psnr

from test_scene_blur import INTR, textured_wall  # tests/scene is on sys.path (rootdir-less test layout)

TWIST = np.array([0.06, -0.02, 0.0, 0.0, 0.03, 0.01])  # ~3 px of motion over the exposure


def rendered_wall(subframes: int = 9) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sharp render ``[H, W, 3]`` float, its depth and the renderer's own blurred frame of a textured wall.

    The Gaussians' depths are jittered: on an exactly flat wall overlapping splats would swap
    their blending order when the camera turns, which no image warp reproduces."""
    wall = textured_wall(32)
    means = wall.means * 1.4
    means[:, 2] += torch.rand(len(means), generator=torch.Generator().manual_seed(1)) * 0.15
    wall = SceneTensors(means, wall.quats, torch.full_like(wall.scales, 0.045), wall.opacities, wall.colors)
    settings = RenderSettings(INTR.width, INTR.height)
    blurred, views = render_exposure(wall, torch.eye(4, dtype=torch.float64), torch.from_numpy(TWIST),
                                     INTR.matrix(torch.float64), settings, subframes)
    mid = subframes // 2
    return (views.rgb[mid].numpy() * 255, views.depth[mid, ..., 0].numpy(), blurred.numpy() * 255)


def test_warps_move_pixels_along_the_exposure() -> None:
    depth = np.full((INTR.height, INTR.width), 2.0, np.float32)
    depth[:5] = np.nan  # unknown depth: those pixels stay put
    twist = np.array([0.04, 0.0, 0.0, 0.0, 0.0, 0.0])  # sideways translation only
    warps = exposure_warps(depth, INTR, twist, 3)
    shift = INTR.fx * 0.04 / 3.0 / 2.0  # pixels at s = +-1/3 (the outer slices' midpoints) for a wall 2 m away
    us = np.arange(INTR.width, dtype=np.float32)[None].repeat(INTR.height, 0)
    first, middle, last = (m[0] - us for m in warps)
    # at s = -1/3 the camera is left of its mid-exposure position: the wall appears shifted right,
    # so the blurred pixel q shows the mid-exposure image at q - shift
    assert np.allclose(middle, 0.0, atol=1e-5)
    assert np.allclose(first[5:], -shift, atol=1e-3) and np.allclose(last[5:], shift, atol=1e-3)
    assert np.allclose(first[:5], 0.0)


def test_image_blur_reproduces_the_renderers_blur() -> None:
    sharp, depth, blurred = rendered_wall()
    inner = (slice(8, -8), slice(8, -8))  # the wall's border moves out of view
    assert psnr(blur_image(sharp.astype(np.float32), exposure_warps(depth, INTR, TWIST, 9))[inner], blurred[inner]) > 40
    assert psnr(sharp[inner], blurred[inner]) < 35  # there is blur to reproduce


def test_fusion_is_the_render_where_the_map_explains_the_frame_and_never_much_worse_than_the_frame() -> None:
    sharp, depth, blurred = rendered_wall()
    frame = (blurred + 0.5).astype(np.uint8)
    truth = (sharp + 0.5).astype(np.uint8)
    inner = (slice(8, -8), slice(8, -8))
    # a map that explains the frame: the output is its sharp render
    fused = fuse_deblurred(truth, frame, depth, INTR, TWIST, 9)
    assert psnr(fused[inner], truth[inner]) > 38
    # a young map that lacks the fine detail: the frame's residual brings it back
    import cv2

    young = cv2.GaussianBlur(truth, (0, 0), 1.2)
    fused = fuse_deblurred(young, frame, depth, INTR, TWIST, 9)
    assert psnr(fused[inner], truth[inner]) > max(psnr(young[inner], truth[inner]), psnr(frame[inner], truth[inner])) + 0.5
    # an empty map: the frame as it is
    empty = np.full_like(depth, np.nan)
    assert np.array_equal(fuse_deblurred(young, frame, empty, INTR, TWIST, 9), frame)
