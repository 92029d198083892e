"""CameraInfo parsing and undistortion: distorted grids come back straight, maps are cached."""

from __future__ import annotations

from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from posegs_ros.camera import Intrinsics
from posegs_ros.io import (
    CameraInfoError,
    CameraModel,
    TypestoreMessageFactory,
    Undistorter,
    camera_info_message,
    camera_model_from_msg,
)

W, H = 160, 120
K = np.array([[150.0, 0.0, 79.5], [0.0, 150.0, 59.5], [0.0, 0.0, 1.0]])
DISTORTIONS = {
    "plumb_bob": [-0.28, 0.09, 0.001, -0.0007, 0.0],
    "rational_polynomial": [-0.25, 0.05, 0.0005, 0.0, 0.0, 0.05, 0.01, 0.0],
    "equidistant": [0.08, -0.02, 0.004, -0.001],
}


def _info(model: str = "plumb_bob", d: list[float] | None = None, k: np.ndarray = K, p: np.ndarray | None = None,
          width: int = W, height: int = H) -> SimpleNamespace:
    p = np.concatenate([k, np.zeros((3, 1))], axis=1) if p is None else p
    return SimpleNamespace(width=width, height=height, distortion_model=model,
                           d=list(DISTORTIONS.get(model, [])) if d is None else d,
                           k=k.reshape(-1), r=np.eye(3).reshape(-1), p=np.asarray(p).reshape(-1))


def _grid(width: int = W, height: int = H) -> np.ndarray:
    """Anti-aliased white grid lines every 20 px on black, RGB uint8."""
    image = np.zeros((height, width), np.float32)
    image[5::20, :] = 1.0
    image[:, 5::20] = 1.0
    image = cv2.GaussianBlur(image, (7, 7), 1.2)
    return np.repeat((image / image.max() * 255).astype(np.uint8)[:, :, None], 3, axis=2)


def _distort(ideal: np.ndarray, model: str) -> np.ndarray:
    """What a lens with ``model`` distortion records of a scene whose pinhole image is ``ideal``."""
    d = np.array(DISTORTIONS[model])
    v, u = np.mgrid[0:H, 0:W].astype(np.float64)
    pts = np.stack([u.ravel(), v.ravel()], axis=1)[:, None, :]
    if model == "equidistant":
        ideal_pts = cv2.fisheye.undistortPoints(pts, K, d, P=K)
    else:
        ideal_pts = cv2.undistortPoints(pts, K, d, P=K)
    maps = ideal_pts.reshape(H, W, 2).astype(np.float32)
    return cv2.remap(ideal, maps[..., 0], maps[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)


def _line_rows(image: np.ndarray, row: int, columns: list[int]) -> np.ndarray:
    """Intensity-centroid row of the horizontal line near ``row`` in each column."""
    window = image[row - 8 : row + 9, :, 0].astype(np.float64)
    offsets = np.arange(row - 8, row + 9)[:, None]
    return np.array([(window[:, c] * offsets[:, 0]).sum() / window[:, c].sum() for c in columns])


@pytest.mark.parametrize("model", list(DISTORTIONS))
def test_undistortion_straightens_a_distorted_grid(model: str) -> None:
    ideal = _grid()
    distorted = _distort(ideal, model)
    undistorted, intrinsics = Undistorter()(distorted, _info(model))
    assert undistorted.shape == ideal.shape
    assert (intrinsics.fx, intrinsics.fy, intrinsics.cx, intrinsics.cy) == (150.0, 150.0, 79.5, 59.5)
    columns = [c for c in range(12, 148) if abs((c - 5 + 10) % 20 - 10) > 5]  # away from vertical lines
    bent = _line_rows(distorted, 105, columns)
    straight = _line_rows(undistorted, 105, columns)
    assert np.ptp(bent) > 1.5  # the lens really bends the line
    assert np.ptp(straight) < 0.35
    assert abs(straight.mean() - 105.0) < 0.3
    centre = (slice(20, 100), slice(25, 135))
    error_after = float(np.abs(undistorted[centre].astype(int) - ideal[centre].astype(int)).mean())
    error_before = float(np.abs(distorted[centre].astype(int) - ideal[centre].astype(int)).mean())
    assert error_after < 0.3 * error_before


def test_maps_are_built_once_per_camera_info() -> None:
    undistorter = Undistorter()
    image = _grid()
    info = _info("plumb_bob")
    for _ in range(3):
        undistorter(image, info)
    assert undistorter.builds == 1
    undistorter(image, _info("plumb_bob", d=[-0.1, 0.0, 0.0, 0.0, 0.0]))
    assert undistorter.builds == 2
    undistorter(image, _info("plumb_bob", d=[-0.1, 0.0, 0.0, 0.0, 0.0]))
    assert undistorter.builds == 2


def test_zero_distortion_is_the_identity() -> None:
    image = _grid()
    p = np.array([[140.0, 0, 80, 0], [0, 141.0, 60, 0], [0, 0, 1, 0]])
    for info in (_info("plumb_bob", d=[0.0] * 5, p=p), _info("", d=[])):
        out, intrinsics = Undistorter()(image, info)
        assert out is image
        assert intrinsics.fx == 150.0  # K describes the unmodified image


def test_target_camera_is_p() -> None:
    p = np.array([[120.0, 0, 80.0, 0], [0, 121.0, 60.0, 0], [0, 0, 1, 0]])
    _, intrinsics = Undistorter()(_grid(), _info("plumb_bob", p=p))
    assert (intrinsics.fx, intrinsics.fy, intrinsics.cx, intrinsics.cy) == (120.0, 121.0, 80.0, 60.0)


def test_invalid_camera_infos_raise_camera_info_error() -> None:
    with pytest.raises(CameraInfoError, match="K"):
        camera_model_from_msg(_info(k=np.zeros((3, 3))))
    with pytest.raises(CameraInfoError, match="fisheye_custom"):
        camera_model_from_msg(_info("fisheye_custom", d=[0.1, 0.0, 0.0, 0.0]))
    with pytest.raises(CameraInfoError, match="needs 8"):
        camera_model_from_msg(_info("rational_polynomial", d=[0.1, 0.0, 0.0, 0.0, 0.0]))
    with pytest.raises(CameraInfoError, match="size"):
        camera_model_from_msg(_info(width=0, height=0))
    with pytest.raises(CameraInfoError, match="non-finite"):
        camera_model_from_msg(_info(d=[float("nan"), 0, 0, 0, 0]))
    with pytest.raises(CameraInfoError, match="camera_info says 160x120"):
        Undistorter()(np.zeros((60, 80, 3), np.uint8), _info())


def test_unknown_model_without_coefficients_means_no_distortion() -> None:
    model = camera_model_from_msg(_info("none", d=[]))
    assert not model.has_distortion


def test_plumb_bob_with_padded_coefficients_is_accepted() -> None:
    model = camera_model_from_msg(_info("plumb_bob", d=[-0.2, 0.05, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]))
    assert model.d.tolist() == [-0.2, 0.05, 0.0, 0.0, 0.0]
    four = camera_model_from_msg(_info("plumb_bob", d=[-0.2, 0.05, 0.0, 0.001]))
    assert four.d.size == 5


def test_camera_info_message_round_trips_through_rosbags() -> None:
    intrinsics = Intrinsics(300.0, 301.0, 159.0, 119.0, 320, 240)
    model = CameraModel.from_intrinsics(intrinsics, [0.1, -0.2, 0.0, 0.0, 0.05])
    msg = TypestoreMessageFactory().build(camera_info_message(model, 42, "cam"))
    parsed = camera_model_from_msg(msg)
    np.testing.assert_array_equal(parsed.k, intrinsics.numpy())
    np.testing.assert_array_equal(parsed.d, [0.1, -0.2, 0.0, 0.0, 0.05])
    assert parsed.distortion_model == "plumb_bob" and (parsed.width, parsed.height) == (320, 240)
    assert parsed.intrinsics(rectified=True) == intrinsics
