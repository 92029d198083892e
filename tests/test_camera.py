"""Pinhole intrinsics: CameraInfo parsing, resizing, projection round trips."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from posegs_ros.camera import Intrinsics, project, unproject, unproject_depth


def test_from_camera_info_prefers_p_when_rectified() -> None:
    k = [500.0, 0, 320, 0, 505.0, 240, 0, 0, 1]
    p = [480.0, 0, 318, 0, 0, 482.0, 241, 0, 0, 0, 1, 0]
    assert Intrinsics.from_camera_info(k, p, 640, 480, rectified=False).fx == 500.0
    rect = Intrinsics.from_camera_info(k, p, 640, 480, rectified=True)
    assert (rect.fx, rect.fy, rect.cx, rect.cy) == (480.0, 482.0, 318.0, 241.0)
    # all-zero P falls back to K
    assert Intrinsics.from_camera_info(k, [0.0] * 12, 640, 480, rectified=True).fx == 500.0


def test_invalid_intrinsics_are_rejected() -> None:
    with pytest.raises(ValueError, match="positive"):
        Intrinsics(0.0, 1.0, 1.0, 1.0, 10, 10)
    with pytest.raises(ValueError, match="finite"):
        Intrinsics(float("nan"), 1.0, 1.0, 1.0, 10, 10)
    with pytest.raises(ValueError, match="9"):
        Intrinsics.from_matrix([1.0, 2.0], 10, 10)


def test_scaled_matches_pixel_centre_convention() -> None:
    cam = Intrinsics(500.0, 500.0, 319.5, 239.5, 640, 480)
    half = cam.scaled(320, 240)
    assert (half.fx, half.cx, half.cy) == (250.0, 159.5, 119.5)
    # a 3D point projects to corresponding pixel centres in both images
    x = torch.tensor([[0.3, -0.2, 2.0]])
    uv_full, _ = project(x, cam.matrix())
    uv_half, _ = project(x, half.matrix())
    assert torch.allclose((uv_full + 0.5) / 2 - 0.5, uv_half, atol=1e-5)


def test_project_unproject_round_trip() -> None:
    cam = Intrinsics(250.0, 260.0, 160.0, 120.0, 320, 240)
    k = cam.matrix(torch.float64)
    gen = torch.Generator().manual_seed(0)
    pts = torch.rand(100, 3, generator=gen, dtype=torch.float64) * torch.tensor([2.0, 2.0, 4.0], dtype=torch.float64) + torch.tensor([-1.0, -1.0, 0.5], dtype=torch.float64)
    uv, z = project(pts, k)
    assert torch.allclose(unproject(uv, z, k), pts, atol=1e-12)
    depth = torch.full((240, 320), 2.0, dtype=torch.float64)
    cloud = unproject_depth(depth, k)
    uv2, z2 = project(cloud.reshape(-1, 3), k)
    assert torch.allclose(uv2[0], torch.tensor([0.0, 0.0], dtype=torch.float64))
    assert torch.allclose(uv2[-1], torch.tensor([319.0, 239.0], dtype=torch.float64))
    assert np.allclose(cam.fov_degrees()[0], np.degrees(2 * np.arctan(160 / 250)))
