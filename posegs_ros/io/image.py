"""``sensor_msgs/Image`` and ``sensor_msgs/CompressedImage`` <-> numpy arrays.

Reading returns RGB ``[H, W, 3] uint8`` for every supported encoding; writing produces
:class:`~posegs_ros.io.messages.MessageData` for any backend's factory.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from .errors import ImageDataError, UnsupportedEncodingError
from .messages import MessageData, uint8_buffer
from .stamps import header_fields

__all__ = [
    "SUPPORTED_ENCODINGS",
    "image_to_rgb",
    "image_to_depth",
    "rgb_to_image",
    "depth_to_image",
    "mask_to_image",
    "compressed_to_rgb",
    "rgb_to_compressed",
]

IMAGE_TYPE = "sensor_msgs/msg/Image"
COMPRESSED_IMAGE_TYPE = "sensor_msgs/msg/CompressedImage"

# encoding -> (channels, bytes per channel)
_LAYOUTS: dict[str, tuple[int, int]] = {
    "rgb8": (3, 1),
    "bgr8": (3, 1),
    "mono8": (1, 1),
    "rgba8": (4, 1),
    "bgra8": (4, 1),
    "mono16": (1, 2),
}
SUPPORTED_ENCODINGS: tuple[str, ...] = tuple(_LAYOUTS)
_DEPTH_ENCODINGS = ("32FC1", "16UC1")


def _unsupported(encoding: str, supported: tuple[str, ...] = SUPPORTED_ENCODINGS) -> UnsupportedEncodingError:
    return UnsupportedEncodingError(
        f"image encoding {encoding!r} is not supported; supported: {', '.join(supported)}"
    )


def _pixel_rows(msg: Any, bytes_per_pixel: int) -> np.ndarray:
    """The image's pixel bytes ``[H, W * bytes_per_pixel] uint8`` with the ``step`` padding cut."""
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    data = uint8_buffer(msg.data)
    if height <= 0 or width <= 0:
        raise ImageDataError(f"image has no pixels: {width}x{height}")
    row_bytes = width * bytes_per_pixel
    if step < row_bytes:
        raise ImageDataError(
            f"step {step} is smaller than width {width} x {bytes_per_pixel} bytes per pixel = {row_bytes}"
        )
    if data.size != step * height:
        raise ImageDataError(
            f"data holds {data.size} bytes, expected step {step} x height {height} = {step * height}"
        )
    return data.reshape(height, step)[:, :row_bytes]


def _mono16_to_8bit(values: np.ndarray) -> np.ndarray:
    """Full-range 16-bit -> 8-bit, rounded: 0 -> 0, 65535 -> 255."""
    return ((values.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)


def image_to_rgb(msg: Any) -> np.ndarray:
    """RGB ``[H, W, 3] uint8`` of a ``sensor_msgs/Image`` (any backend), a new writable array.

    Encodings: rgb8, bgr8, mono8, rgba8, bgra8 (alpha dropped), mono16 (scaled to 8 bit,
    ``is_bigendian`` honoured).  Row padding (``step > width * bytes_per_pixel``) is removed.

    Raises:
        UnsupportedEncodingError: any other encoding.
        ImageDataError: ``len(data) != step * height`` or ``step`` too small for the width.
    """
    encoding = str(msg.encoding)
    if encoding not in _LAYOUTS:
        raise _unsupported(encoding)
    channels, depth = _LAYOUTS[encoding]
    rows = _pixel_rows(msg, channels * depth)
    height, width = rows.shape[0], int(msg.width)
    if encoding == "mono16":
        dtype = np.dtype(">u2") if int(msg.is_bigendian) else np.dtype("<u2")
        gray = _mono16_to_8bit(np.ascontiguousarray(rows).view(dtype).reshape(height, width))
        return np.repeat(gray[:, :, None], 3, axis=2)
    pixels = rows.reshape(height, width, channels)
    if encoding == "rgb8":
        return np.array(pixels, copy=True)  # own, writable memory: never a view of the message
    if encoding == "mono8":
        return np.repeat(pixels, 3, axis=2)
    if encoding == "rgba8":
        return np.ascontiguousarray(pixels[:, :, :3])
    return np.ascontiguousarray(pixels[:, :, 2::-1])  # bgr8, bgra8


def image_to_depth(msg: Any) -> np.ndarray:
    """Metric depth ``[H, W] float32`` of a 32FC1 (metres) or 16UC1 (millimetres) image.

    Unknown depth (REP-118: NaN / inf in 32FC1, 0 in 16UC1) becomes NaN.
    """
    encoding = str(msg.encoding)
    if encoding not in _DEPTH_ENCODINGS:
        raise _unsupported(encoding, _DEPTH_ENCODINGS)
    itemsize = 4 if encoding == "32FC1" else 2
    rows = np.ascontiguousarray(_pixel_rows(msg, itemsize))
    order = ">" if int(msg.is_bigendian) else "<"
    if encoding == "32FC1":
        depth = rows.view(np.dtype(order + "f4")).reshape(rows.shape[0], -1).astype(np.float32)
        depth[~np.isfinite(depth) | (depth <= 0)] = np.nan
        return depth
    raw = rows.view(np.dtype(order + "u2")).reshape(rows.shape[0], -1)
    depth = raw.astype(np.float32) / 1000.0
    depth[raw == 0] = np.nan
    return depth


def _check_array(array: np.ndarray, ndim: int, what: str) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim != ndim or array.shape[0] == 0 or array.shape[1] == 0:
        shape = "[H, W]" if ndim == 2 else "[H, W, C]"
        raise ImageDataError(f"{what} must be a non-empty array of shape {shape}, got {array.shape}")
    return array


def _image_message(
    pixels: np.ndarray, encoding: str, stamp_ns: int, frame_id: str, is_bigendian: bool, step: int | None
) -> MessageData:
    """Image fields of ``pixels`` ``[H, W, bytes_per_pixel] uint8`` already in ``encoding`` order."""
    height, width, bytes_per_pixel = pixels.shape
    row_bytes = width * bytes_per_pixel
    step = row_bytes if step is None else int(step)
    if step < row_bytes:
        raise ImageDataError(f"step {step} is smaller than the row size {row_bytes}")
    if step == row_bytes:
        data = np.ascontiguousarray(pixels).reshape(-1)
    else:
        padded = np.zeros((height, step), dtype=np.uint8)
        padded[:, :row_bytes] = pixels.reshape(height, row_bytes)
        data = padded.reshape(-1)
    return MessageData(
        IMAGE_TYPE,
        {
            "header": header_fields(stamp_ns, frame_id),
            "height": int(height),
            "width": int(width),
            "encoding": encoding,
            "is_bigendian": int(bool(is_bigendian)),
            "step": step,
            "data": data,
        },
    )


def rgb_to_image(
    rgb: np.ndarray,
    stamp_ns: int,
    frame_id: str,
    encoding: str = "rgb8",
    *,
    step: int | None = None,
    is_bigendian: bool = False,
) -> MessageData:
    """``sensor_msgs/Image`` fields of an RGB image ``[H, W, 3] uint8``.

    ``encoding`` is any of :data:`SUPPORTED_ENCODINGS` (default rgb8): colour is reordered,
    mono is the luma (ITU-R 601), alpha is 255, mono16 spans the full 16-bit range
    (``v * 257``) in the byte order ``is_bigendian`` asks for.  ``step`` > row size pads rows.
    """
    rgb = _check_array(rgb, 3, "rgb")
    if rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ImageDataError(f"rgb must be [H, W, 3] uint8, got {rgb.shape} {rgb.dtype}")
    if encoding not in _LAYOUTS:
        raise _unsupported(encoding)
    if encoding == "rgb8":
        pixels = rgb
    elif encoding == "bgr8":
        pixels = rgb[:, :, ::-1]
    elif encoding in ("rgba8", "bgra8"):
        color = rgb if encoding == "rgba8" else rgb[:, :, ::-1]
        pixels = np.concatenate([color, np.full(rgb.shape[:2] + (1,), 255, np.uint8)], axis=2)
    else:
        gray = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)
        if encoding == "mono8":
            pixels = gray[:, :, None]
        else:
            dtype = np.dtype(">u2") if is_bigendian else np.dtype("<u2")
            pixels = (gray.astype(np.uint16) * 257).astype(dtype).view(np.uint8).reshape(*gray.shape, 2)
    return _image_message(pixels, encoding, stamp_ns, frame_id, is_bigendian and encoding == "mono16", step)


def depth_to_image(depth: np.ndarray, stamp_ns: int, frame_id: str) -> MessageData:
    """``sensor_msgs/Image`` 32FC1 fields of a metric depth map ``[H, W]`` (REP-118).

    Values that are not finite or not positive are written as NaN (unknown depth).
    """
    depth = _check_array(depth, 2, "depth").astype(np.float32)
    depth = np.where(np.isfinite(depth) & (depth > 0), depth, np.float32(np.nan)).astype("<f4")
    pixels = depth.view(np.uint8).reshape(depth.shape[0], depth.shape[1], 4)
    return _image_message(pixels, "32FC1", stamp_ns, frame_id, False, None)


def mask_to_image(mask: np.ndarray, stamp_ns: int, frame_id: str) -> MessageData:
    """``sensor_msgs/Image`` mono8 fields of a mask ``[H, W]``: bool -> 0 / 255, uint8 as is."""
    mask = _check_array(mask, 2, "mask")
    if mask.dtype == np.bool_:
        pixels = np.where(mask, np.uint8(255), np.uint8(0))
    elif mask.dtype == np.uint8:
        pixels = mask
    else:
        raise ImageDataError(f"mask must be bool or uint8, got {mask.dtype}")
    return _image_message(pixels[:, :, None], "mono8", stamp_ns, frame_id, False, None)


# --- CompressedImage --------------------------------------------------------------------------

_COMPRESSED_CODECS = ("jpeg", "jpg", "png")


def _compressed_channel_order(fmt: str) -> str:
    """Channel order of the decoded payload from a ``format`` string.

    image_transport writes ``"<raw encoding>; <codec> compressed <encoding of payload>"``
    (e.g. ``"rgb8; jpeg compressed bgr8"``); a bare ``"jpeg"`` / ``"png"`` comes from
    encoders that follow OpenCV's BGR convention.  Returns ``"rgb"`` or ``"bgr"``.
    """
    _, _, payload = fmt.partition("compressed")
    payload = payload.strip().lower()
    return "rgb" if payload.startswith("rgb") else "bgr"


def compressed_to_rgb(msg: Any) -> np.ndarray:
    """RGB ``[H, W, 3] uint8`` of a ``sensor_msgs/CompressedImage`` holding JPEG or PNG.

    Grey payloads are replicated to three channels, 16-bit PNGs scaled to 8 bit, alpha dropped.

    Raises:
        UnsupportedEncodingError: a format other than jpeg / png (e.g. compressedDepth).
        ImageDataError: empty or corrupt payload.
    """
    fmt = str(msg.format)
    lowered = fmt.lower()
    if "compresseddepth" in lowered.replace(" ", "") or not any(c in lowered for c in _COMPRESSED_CODECS):
        raise UnsupportedEncodingError(
            f"compressed image format {fmt!r} is not supported; supported: jpeg, png "
            "(e.g. 'jpeg', 'png', 'rgb8; jpeg compressed bgr8')"
        )
    data = uint8_buffer(msg.data)
    if data.size == 0:
        raise ImageDataError(f"compressed image ({fmt!r}) has no data")
    decoded = cv2.imdecode(np.ascontiguousarray(data), cv2.IMREAD_UNCHANGED)
    if decoded is None or decoded.size == 0:
        raise ImageDataError(f"compressed image ({fmt!r}, {data.size} bytes) could not be decoded: corrupt data")
    if decoded.dtype == np.uint16:
        decoded = _mono16_to_8bit(decoded)
    elif decoded.dtype != np.uint8:
        raise ImageDataError(f"compressed image decodes to unsupported pixel type {decoded.dtype}")
    if decoded.ndim == 2 or decoded.shape[2] == 1:
        gray = decoded.reshape(decoded.shape[0], decoded.shape[1])
        return np.repeat(gray[:, :, None], 3, axis=2)
    color = decoded[:, :, :3]
    if _compressed_channel_order(fmt) == "bgr":
        color = color[:, :, ::-1]
    return np.ascontiguousarray(color)


def rgb_to_compressed(
    rgb: np.ndarray, stamp_ns: int, frame_id: str, codec: str = "jpeg", quality: int = 90
) -> MessageData:
    """``sensor_msgs/CompressedImage`` fields of an RGB image ``[H, W, 3] uint8``.

    Written the way image_transport's compressed publisher does: BGR payload, format
    ``"rgb8; jpeg compressed bgr8"`` / ``"rgb8; png compressed bgr8"``.
    """
    rgb = _check_array(rgb, 3, "rgb")
    if rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ImageDataError(f"rgb must be [H, W, 3] uint8, got {rgb.shape} {rgb.dtype}")
    if codec not in ("jpeg", "png"):
        raise UnsupportedEncodingError(f"codec {codec!r} is not supported; supported: jpeg, png")
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)] if codec == "jpeg" else [cv2.IMWRITE_PNG_COMPRESSION, 3]
    ok, encoded = cv2.imencode(".jpg" if codec == "jpeg" else ".png", bgr, params)
    if not ok:
        raise ImageDataError(f"OpenCV could not encode a {rgb.shape} image as {codec}")
    return MessageData(
        COMPRESSED_IMAGE_TYPE,
        {
            "header": header_fields(stamp_ns, frame_id),
            "format": f"rgb8; {codec} compressed bgr8",
            "data": encoded.reshape(-1),
        },
    )
