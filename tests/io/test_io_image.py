"""Image / CompressedImage conversions: every encoding both ways, padding, endianness, errors."""

from __future__ import annotations

import array
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from posegs_ros.io import (
    SUPPORTED_ENCODINGS,
    ImageDataError,
    MessageData,
    TypestoreMessageFactory,
    UnsupportedEncodingError,
    compressed_to_rgb,
    depth_to_image,
    image_to_depth,
    image_to_rgb,
    mask_to_image,
    rgb_to_compressed,
    rgb_to_image,
)

STAMP = 1_700_000_000_123_456_789


def _rgb(h: int = 12, w: int = 17, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _msg(data: MessageData) -> SimpleNamespace:
    """A duck-typed message (attribute access) from MessageData fields."""
    return SimpleNamespace(**data.fields)


def _gray3(rgb: np.ndarray) -> np.ndarray:
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    return np.repeat(gray[:, :, None], 3, axis=2)


@pytest.mark.parametrize("encoding", SUPPORTED_ENCODINGS)
@pytest.mark.parametrize("pad", [0, 5])
def test_every_encoding_round_trips_with_and_without_step_padding(encoding: str, pad: int) -> None:
    rgb = _rgb()
    bytes_per_pixel = {"rgb8": 3, "bgr8": 3, "mono8": 1, "rgba8": 4, "bgra8": 4, "mono16": 2}[encoding]
    data = rgb_to_image(rgb, STAMP, "cam", encoding, step=rgb.shape[1] * bytes_per_pixel + pad)
    fields = data.fields
    assert fields["encoding"] == encoding
    assert fields["step"] == rgb.shape[1] * bytes_per_pixel + pad
    assert fields["data"].size == fields["step"] * fields["height"]
    back = image_to_rgb(_msg(data))
    expected = _gray3(rgb) if encoding.startswith("mono") else rgb
    np.testing.assert_array_equal(back, expected)


def test_colour_encodings_store_the_channels_in_their_order() -> None:
    rgb = np.array([[[10, 20, 30]]], dtype=np.uint8)
    assert rgb_to_image(rgb, 0, "c", "bgr8").fields["data"].tolist() == [30, 20, 10]
    assert rgb_to_image(rgb, 0, "c", "rgba8").fields["data"].tolist() == [10, 20, 30, 255]
    assert rgb_to_image(rgb, 0, "c", "bgra8").fields["data"].tolist() == [30, 20, 10, 255]


def test_mono16_honours_endianness_and_scales_to_8_bit() -> None:
    values = np.array([[0, 4096, 32896, 65535]], dtype=np.uint16)  # -> 0, 16, 128, 255
    for big in (False, True):
        raw = values.astype(">u2" if big else "<u2").view(np.uint8).reshape(-1)
        msg = SimpleNamespace(height=1, width=4, encoding="mono16", is_bigendian=int(big), step=8, data=raw)
        np.testing.assert_array_equal(image_to_rgb(msg)[0, :, 0], [0, 16, 128, 255])
    # the same bytes read with the wrong byte order give different values: the flag matters
    raw = values.astype(">u2").view(np.uint8).reshape(-1)
    wrong = SimpleNamespace(height=1, width=4, encoding="mono16", is_bigendian=0, step=8, data=raw)
    assert image_to_rgb(wrong)[0, 1, 0] == 0  # 0x0010 instead of 0x1000
    # writing big-endian mono16 and reading it back
    rgb = _rgb(4, 6)
    data = rgb_to_image(rgb, 0, "c", "mono16", is_bigendian=True)
    assert data.fields["is_bigendian"] == 1
    np.testing.assert_array_equal(image_to_rgb(_msg(data)), _gray3(rgb))


def test_unsupported_encoding_names_it_and_the_supported_ones() -> None:
    msg = SimpleNamespace(height=2, width=2, encoding="yuv422", is_bigendian=0, step=4, data=np.zeros(8, np.uint8))
    with pytest.raises(UnsupportedEncodingError, match="yuv422") as err:
        image_to_rgb(msg)
    for name in SUPPORTED_ENCODINGS:
        assert name in str(err.value)
    with pytest.raises(UnsupportedEncodingError):
        rgb_to_image(_rgb(), 0, "c", "32FC1")


def test_truncated_data_and_small_step_raise_image_data_error() -> None:
    good = rgb_to_image(_rgb(4, 5), 0, "c").fields
    truncated = SimpleNamespace(**{**good, "data": good["data"][:-1]})
    with pytest.raises(ImageDataError, match="expected step"):
        image_to_rgb(truncated)
    small_step = SimpleNamespace(**{**good, "step": 14})
    with pytest.raises(ImageDataError, match="smaller than width"):
        image_to_rgb(small_step)
    with pytest.raises(ImageDataError, match="no pixels"):
        image_to_rgb(SimpleNamespace(**{**good, "height": 0, "data": np.zeros(0, np.uint8)}))


def test_rclpy_style_data_containers_are_read() -> None:
    rgb = _rgb(3, 4)
    fields = rgb_to_image(rgb, 0, "c").fields
    for container in (bytes(fields["data"]), array.array("B", fields["data"].tobytes()), list(fields["data"])):
        msg = SimpleNamespace(**{**fields, "data": container})
        np.testing.assert_array_equal(image_to_rgb(msg), rgb)


def test_rosbags_messages_round_trip_through_the_factory() -> None:
    factory = TypestoreMessageFactory()
    rgb = _rgb(5, 7)
    msg = factory.build(rgb_to_image(rgb, STAMP, "camera_optical_frame", "bgr8"))
    assert type(msg).__msgtype__ == "sensor_msgs/msg/Image"
    assert msg.header.stamp.sec == STAMP // 10**9 and msg.header.stamp.nanosec == STAMP % 10**9
    np.testing.assert_array_equal(image_to_rgb(msg), rgb)
    raw = factory.typestore.serialize_cdr(msg, "sensor_msgs/msg/Image")
    again = factory.typestore.deserialize_cdr(raw, "sensor_msgs/msg/Image")
    np.testing.assert_array_equal(image_to_rgb(again), rgb)


def test_depth_32fc1_round_trip_marks_unknown_as_nan() -> None:
    depth = np.array([[1.5, 0.0, np.inf], [-1.0, 2.25, np.nan]], dtype=np.float32)
    data = depth_to_image(depth, 0, "c")
    assert data.fields["encoding"] == "32FC1" and data.fields["step"] == 12
    back = image_to_depth(_msg(data))
    np.testing.assert_array_equal(np.isnan(back), [[False, True, True], [True, False, True]])
    assert back[0, 0] == 1.5 and back[1, 1] == 2.25


def test_depth_16uc1_is_millimetres() -> None:
    raw = np.array([[0, 1500]], dtype="<u2").view(np.uint8).reshape(-1)
    msg = SimpleNamespace(height=1, width=2, encoding="16UC1", is_bigendian=0, step=4, data=raw)
    back = image_to_depth(msg)
    assert np.isnan(back[0, 0]) and back[0, 1] == pytest.approx(1.5)


def test_masks_become_mono8() -> None:
    mask = np.array([[True, False], [False, True]])
    data = mask_to_image(mask, 0, "c")
    assert data.fields["encoding"] == "mono8"
    assert data.fields["data"].tolist() == [255, 0, 0, 255]
    labels = np.array([[0, 3]], dtype=np.uint8)
    assert mask_to_image(labels, 0, "c").fields["data"].tolist() == [0, 3]
    with pytest.raises(ImageDataError):
        mask_to_image(np.zeros((2, 2), np.float32), 0, "c")


def test_compressed_png_is_lossless_and_jpeg_close() -> None:
    rgb = cv2.GaussianBlur(_rgb(32, 40), (7, 7), 2.0)  # smooth: JPEG-friendly
    png = rgb_to_compressed(rgb, 0, "c", "png")
    assert png.fields["format"] == "rgb8; png compressed bgr8"
    np.testing.assert_array_equal(compressed_to_rgb(_msg(png)), rgb)
    jpeg = rgb_to_compressed(rgb, 0, "c", "jpeg", quality=95)
    decoded = compressed_to_rgb(_msg(jpeg))
    assert decoded.shape == rgb.shape
    assert np.abs(decoded.astype(int) - rgb.astype(int)).mean() < 3.0


@pytest.mark.parametrize(
    ("fmt", "payload_order"),
    [("jpeg", "bgr"), ("png", "bgr"), ("rgb8; jpeg compressed bgr8", "bgr"), ("bgr8; png compressed rgb8", "rgb")],
)
def test_compressed_format_strings_decide_the_channel_order(fmt: str, payload_order: str) -> None:
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[..., 0] = 200  # pure red
    payload = rgb[:, :, ::-1] if payload_order == "bgr" else rgb
    ok, encoded = cv2.imencode(".png", np.ascontiguousarray(payload))
    assert ok
    decoded = compressed_to_rgb(SimpleNamespace(format=fmt, data=encoded.reshape(-1)))
    np.testing.assert_array_equal(decoded, rgb)


def test_compressed_grey_and_16_bit_png_decode_to_rgb() -> None:
    gray = np.arange(64, dtype=np.uint8).reshape(8, 8)
    ok, encoded = cv2.imencode(".png", gray)
    decoded = compressed_to_rgb(SimpleNamespace(format="mono8; png compressed mono8", data=encoded.reshape(-1)))
    np.testing.assert_array_equal(decoded, np.repeat(gray[:, :, None], 3, axis=2))
    ok, encoded16 = cv2.imencode(".png", (gray.astype(np.uint16) * 257))
    decoded16 = compressed_to_rgb(SimpleNamespace(format="mono16; png compressed mono16", data=encoded16.reshape(-1)))
    np.testing.assert_array_equal(decoded16[:, :, 0], gray)


def test_corrupt_or_unsupported_compressed_images_raise() -> None:
    jpeg = rgb_to_compressed(_rgb(16, 16), 0, "c").fields
    with pytest.raises(ImageDataError, match="corrupt"):
        compressed_to_rgb(SimpleNamespace(format="jpeg", data=np.frombuffer(b"not an image at all", np.uint8)))
    with pytest.raises(ImageDataError, match="corrupt"):
        compressed_to_rgb(SimpleNamespace(format="jpeg", data=jpeg["data"][:20]))
    with pytest.raises(ImageDataError, match="no data"):
        compressed_to_rgb(SimpleNamespace(format="png", data=np.zeros(0, np.uint8)))
    with pytest.raises(UnsupportedEncodingError, match="compressedDepth"):
        compressed_to_rgb(SimpleNamespace(format="16UC1; compressedDepth png", data=jpeg["data"]))
    with pytest.raises(UnsupportedEncodingError, match="theora"):
        compressed_to_rgb(SimpleNamespace(format="theora", data=jpeg["data"]))
