"""Image + camera_info messages -> engine frames, with every refusal reason (ROS-free, real messages)."""

from __future__ import annotations

import numpy as np
import pytest
from ros_support import Messages, textured_image

from posegs_ros.camera import Intrinsics
from posegs_ros.io import CameraModel, rgb_to_compressed
from posegs_ros.ros.ingest import (
    RESET_REASONS,
    SKIP_REASONS,
    ImageConverter,
    InputImage,
    SkipImage,
    StampGuard,
    StampVerdict,
)


def _item(msg: object, camera_info: object, compressed: bool = False, index: int = 0) -> InputImage:
    return InputImage(msg, compressed, camera_info, 0.0, index)


def _skip_reason(converter: ImageConverter, item: InputImage) -> str:
    with pytest.raises(SkipImage) as info:
        converter.convert(item)
    assert info.value.reason in SKIP_REASONS and str(info.value)
    return info.value.reason


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "rgba8", "bgra8"])
def test_colour_encodings_become_the_same_rgb(messages: Messages, encoding: str) -> None:
    converter = ImageConverter()
    msg = messages.image(3, stamp_ns=1_500_000_123, encoding=encoding)
    out = converter.convert(_item(msg, messages.camera_info(), index=3))
    assert np.array_equal(out.rgb, textured_image(3))
    assert out.stamp_ns == 1_500_000_123 and out.frame_id == messages.frame_id and out.index == 3
    assert out.intrinsics == messages.intrinsics


@pytest.mark.parametrize("encoding", ["mono8", "mono16"])
def test_mono_encodings_give_grey_rgb(messages: Messages, encoding: str) -> None:
    out = ImageConverter().convert(_item(messages.image(0, encoding=encoding), messages.camera_info()))
    assert out.rgb.shape == (60, 80, 3) and np.array_equal(out.rgb[..., 0], out.rgb[..., 2])


def test_compressed_jpeg_and_png(messages: Messages) -> None:
    rgb = textured_image(1)
    for codec, tolerance in (("png", 0), ("jpeg", 40)):
        msg = messages.factory.build(rgb_to_compressed(rgb, 42, messages.frame_id, codec))
        out = ImageConverter().convert(_item(msg, messages.camera_info(), compressed=True))
        assert np.abs(out.rgb.astype(int) - rgb).mean() <= tolerance / 4
        assert out.stamp_ns == 42


def test_bad_inputs_have_reasons(messages: Messages) -> None:
    converter = ImageConverter()
    info = messages.camera_info()
    assert _skip_reason(converter, _item(messages.image(0), None)) == "no_camera_info"
    assert _skip_reason(converter, _item(_with(messages, encoding="yuv422"), info)) == "unsupported_encoding"
    assert _skip_reason(converter, _item(_with(messages, encoding="32FC1"), info)) == "unsupported_encoding"
    short = messages.image(0)
    short.data = short.data[:-7]  # data length != step * height
    assert _skip_reason(converter, _item(short, info)) == "bad_image_data"
    assert _skip_reason(converter, _item(_with(messages, step=10), info)) == "bad_image_data"  # step < row
    corrupt = messages.factory.build(rgb_to_compressed(textured_image(0), 1, "cam", "jpeg"))
    corrupt.data = corrupt.data[:20]
    assert _skip_reason(converter, _item(corrupt, info, compressed=True)) == "bad_image_data"
    depth_format = messages.factory.build(rgb_to_compressed(textured_image(0), 1, "cam", "png"))
    depth_format.format = "16UC1; compressedDepth"
    assert _skip_reason(converter, _item(depth_format, info, compressed=True)) == "unsupported_encoding"


def _with(messages: Messages, **fields: object) -> object:
    msg = messages.image(0)
    for name, value in fields.items():
        setattr(msg, name, value)
    return msg


def test_camera_info_problems(messages: Messages) -> None:
    converter = ImageConverter()
    uncalibrated = messages.camera_info()
    uncalibrated.k = np.zeros(9)
    assert _skip_reason(converter, _item(messages.image(0), uncalibrated)) == "bad_camera_info"
    unknown_model = messages.camera_info(CameraModel.from_intrinsics(messages.intrinsics, [0.1, 0, 0, 0, 0]))
    unknown_model.distortion_model = "kannala_brandt_9"
    assert _skip_reason(converter, _item(messages.image(0), unknown_model)) == "bad_camera_info"
    bigger = messages.camera_info(CameraModel.from_intrinsics(Intrinsics(80, 80, 80, 60, 160, 120)))
    assert _skip_reason(converter, _item(messages.image(0), bigger)) == "camera_info_size_mismatch"
    # the converter recovers as soon as a good camera_info arrives
    assert converter.convert(_item(messages.image(0), messages.camera_info())).rgb.shape == (60, 80, 3)


def test_distortion_is_removed_with_cached_maps(messages: Messages) -> None:
    model = CameraModel.from_intrinsics(messages.intrinsics, [-0.2, 0.05, 0.0, 0.0, 0.0])
    converter = ImageConverter()
    once = messages.camera_info(model)
    first = converter.convert(_item(messages.image(0), once))
    converter.convert(_item(messages.image(1), once))
    converter.convert(_item(messages.image(2), messages.camera_info(model)))  # same calibration, new message
    assert converter.undistorter.builds == 1
    assert not np.array_equal(first.rgb, textured_image(0))  # remapped
    assert first.intrinsics == messages.intrinsics  # P == K here


def test_stamp_guard_policy() -> None:
    guard = StampGuard(loop_reset_ns=1_000_000_000)
    assert guard.check(5_000_000_000) is StampVerdict.ACCEPT
    guard.accept(5_000_000_000)
    assert guard.check(5_000_000_001) is StampVerdict.ACCEPT
    assert guard.check(5_000_000_000) is StampVerdict.SKIP  # duplicate
    assert guard.check(4_500_000_000) is StampVerdict.SKIP  # out of order, small
    assert guard.check(4_000_000_000) is StampVerdict.RESET  # >= 1 s back: bag loop
    guard.reset()
    assert guard.check(1) is StampVerdict.ACCEPT
    zero = StampGuard(0)
    zero.accept(10)
    assert zero.check(10) is StampVerdict.SKIP and zero.check(9) is StampVerdict.RESET


def test_reason_catalogues_are_documented_identifiers() -> None:
    for name, text in {**SKIP_REASONS, **RESET_REASONS}.items():
        assert name.isidentifier() and name.islower() and text
    with pytest.raises(ValueError):
        SkipImage("not_a_reason", "x")
