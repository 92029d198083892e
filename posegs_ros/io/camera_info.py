"""``sensor_msgs/CameraInfo`` -> camera model, and lens-distortion removal with cached OpenCV maps.

The engine sees undistorted pinhole images only.  :class:`Undistorter` removes ``D`` the way
image_proc's rectify node does (``initUndistortRectifyMap(K, D, R, P)``), building the remap
tables once per camera_info and reusing them until the camera_info changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from .errors import CameraInfoError
from .messages import MessageData
from .stamps import header_fields

if TYPE_CHECKING:  # posegs_ros.camera imports torch: only load it when intrinsics are asked for
    from ..camera import Intrinsics

__all__ = [
    "DISTORTION_MODELS",
    "CameraModel",
    "camera_model_from_msg",
    "camera_info_message",
    "Undistorter",
]

CAMERA_INFO_TYPE = "sensor_msgs/msg/CameraInfo"

# distortion model -> number of D coefficients OpenCV uses for it
DISTORTION_MODELS: dict[str, int] = {"plumb_bob": 5, "rational_polynomial": 8, "equidistant": 4}


@dataclass(frozen=True, eq=False)
class CameraModel:
    """What a camera_info says about the raw image: size, ``K``, ``D``, ``R``, ``P``."""

    width: int
    height: int
    k: np.ndarray  # [3, 3] float64 camera matrix of the raw (distorted) image
    d: np.ndarray  # [N] float64 distortion coefficients (N = 0 when undistorted)
    distortion_model: str
    r: np.ndarray  # [3, 3] float64 rectification rotation (identity for monocular)
    p: np.ndarray  # [3, 4] float64 projection matrix of the rectified image

    @property
    def has_distortion(self) -> bool:
        """True if any distortion coefficient is non-zero."""
        return bool(np.any(self.d != 0.0))

    def intrinsics(self, rectified: bool) -> Intrinsics:
        """Pinhole intrinsics of the raw image (``rectified=False``: K) or of the undistorted one (P)."""
        from ..camera import Intrinsics

        return Intrinsics.from_camera_info(self.k.reshape(-1), self.p.reshape(-1), self.width, self.height, rectified)

    def key(self) -> tuple:
        """A hashable value that changes whenever any calibration field changes."""
        return (
            self.width, self.height, self.distortion_model,
            self.k.tobytes(), self.d.tobytes(), self.r.tobytes(), self.p.tobytes(),
        )

    @classmethod
    def from_intrinsics(
        cls, intrinsics: Intrinsics, d: np.ndarray | list[float] | None = None, distortion_model: str = "plumb_bob"
    ) -> CameraModel:
        """A camera model with ``K = P = intrinsics``, ``R = I`` and optional distortion ``d``."""
        k = intrinsics.numpy()
        p = np.concatenate([k, np.zeros((3, 1))], axis=1)
        coeffs = np.zeros(DISTORTION_MODELS.get(distortion_model, 5)) if d is None else np.asarray(d, np.float64)
        return cls(intrinsics.width, intrinsics.height, k, coeffs.reshape(-1), distortion_model, np.eye(3), p)


def _matrix(values: Any, rows: int, cols: int, name: str) -> np.ndarray:
    try:
        m = np.asarray(values, dtype=np.float64).reshape(rows, cols)
    except ValueError:
        raise CameraInfoError(f"camera_info {name} must hold {rows * cols} numbers") from None
    if not np.all(np.isfinite(m)):
        raise CameraInfoError(f"camera_info {name} holds non-finite values: {m.reshape(-1).tolist()}")
    return m


def camera_model_from_msg(msg: Any) -> CameraModel:
    """Validated :class:`CameraModel` of a ``sensor_msgs/CameraInfo`` (any backend).

    An empty or all-zero ``D`` means no distortion whatever ``distortion_model`` says; otherwise
    the model must be one of :data:`DISTORTION_MODELS` with enough coefficients.  An all-zero
    ``R`` (hand-written camera_info) is read as identity.

    Raises:
        CameraInfoError: non-positive size, invalid ``K`` (zeros, non-finite, ``K[2,2] != 1``),
            unknown distortion model or too few coefficients.
    """
    width, height = int(msg.width), int(msg.height)
    if width <= 0 or height <= 0:
        raise CameraInfoError(f"camera_info has no image size ({width}x{height}): is the camera calibrated?")
    k = _matrix(msg.k, 3, 3, "K")
    if k[0, 0] <= 0 or k[1, 1] <= 0 or abs(k[2, 2] - 1.0) > 1e-9:
        raise CameraInfoError(
            f"camera_info K is not a valid camera matrix (fx={k[0, 0]}, fy={k[1, 1]}, K[2,2]={k[2, 2]}): "
            "is the camera calibrated?"
        )
    r = _matrix(msg.r, 3, 3, "R")
    if not np.any(r):
        r = np.eye(3)
    p = _matrix(msg.p, 3, 4, "P")
    d = np.asarray(msg.d, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(d)):
        raise CameraInfoError(f"camera_info D holds non-finite values: {d.tolist()}")
    model = str(msg.distortion_model)
    if np.any(d != 0.0):
        if model not in DISTORTION_MODELS:
            raise CameraInfoError(
                f"distortion model {model!r} is not supported; supported: {', '.join(DISTORTION_MODELS)}"
            )
        needed = DISTORTION_MODELS[model]
        minimum = 4 if model == "plumb_bob" else needed
        if d.size < minimum:
            raise CameraInfoError(f"{model} needs {needed} distortion coefficients, camera_info D has {d.size}")
        if np.any(d[needed:] != 0.0):
            raise CameraInfoError(
                f"{model} uses {needed} distortion coefficients, D has {d.size} with non-zero extras: {d.tolist()}"
            )
        d = np.pad(d[:needed], (0, max(0, needed - d.size)))
    return CameraModel(width, height, k, d, model, r, p)


def camera_info_message(model: CameraModel, stamp_ns: int, frame_id: str) -> MessageData:
    """``sensor_msgs/CameraInfo`` fields of a camera model."""
    return MessageData(
        CAMERA_INFO_TYPE,
        {
            "header": header_fields(stamp_ns, frame_id),
            "height": int(model.height),
            "width": int(model.width),
            "distortion_model": model.distortion_model,
            "d": np.asarray(model.d, np.float64).reshape(-1),
            "k": np.asarray(model.k, np.float64).reshape(9),
            "r": np.asarray(model.r, np.float64).reshape(9),
            "p": np.asarray(model.p, np.float64).reshape(12),
        },
    )


class Undistorter:
    """Removes lens distortion; remap tables are cached until the camera_info changes.

    ``plumb_bob`` and ``rational_polynomial`` use ``cv2.initUndistortRectifyMap``,
    ``equidistant`` uses ``cv2.fisheye.initUndistortRectifyMap``; the target camera is ``P``
    (``K`` when ``P`` is all zeros), as in image_proc.  Without distortion the image is
    returned unchanged (no remap) with the intrinsics of ``K``.
    """

    def __init__(self, interpolation: int = cv2.INTER_LINEAR) -> None:
        self.interpolation = interpolation
        self._key: tuple | None = None
        self._maps: tuple[np.ndarray, np.ndarray] | None = None
        self.builds = 0  # how many times maps were built (for tests and diagnostics)

    def __call__(self, image: np.ndarray, camera_info: Any) -> tuple[np.ndarray, Intrinsics]:
        """Undistorted ``image`` ``[H, W, C]`` and the pinhole :class:`Intrinsics` it has.

        ``camera_info`` is a :class:`CameraModel` or a CameraInfo message of any backend.

        Raises:
            CameraInfoError: invalid camera_info or image size different from the camera_info's.
        """
        model = camera_info if isinstance(camera_info, CameraModel) else camera_model_from_msg(camera_info)
        height, width = image.shape[:2]
        if (width, height) != (model.width, model.height):
            raise CameraInfoError(
                f"image is {width}x{height} but camera_info says {model.width}x{model.height} "
                "(binning / ROI are not supported)"
            )
        if not model.has_distortion:
            return image, model.intrinsics(rectified=False)
        map1, map2 = self._maps_for(model)
        out = cv2.remap(image, map1, map2, self.interpolation, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        return out, model.intrinsics(rectified=True)

    def _maps_for(self, model: CameraModel) -> tuple[np.ndarray, np.ndarray]:
        key = model.key()
        if key != self._key or self._maps is None:
            self._maps = self._build_maps(model)
            self._key = key
            self.builds += 1
        return self._maps

    @staticmethod
    def _build_maps(model: CameraModel) -> tuple[np.ndarray, np.ndarray]:
        new_k = model.p[:, :3] if np.any(model.p[:, :3]) else model.k
        size = (model.width, model.height)
        if model.distortion_model == "equidistant":
            return cv2.fisheye.initUndistortRectifyMap(model.k, model.d[:4], model.r, new_k, size, cv2.CV_16SC2)
        return cv2.initUndistortRectifyMap(model.k, model.d, model.r, new_k, size, cv2.CV_16SC2)
