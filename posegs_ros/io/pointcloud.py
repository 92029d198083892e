"""Coloured points (e.g. Gaussian means) <-> ``sensor_msgs/PointCloud2``.

Layout written: ``x, y, z`` float32 then ``rgb`` float32 whose bits are ``0x00RRGGBB`` (the
packing RViz's "RGB8" colour transformer reads), 16 bytes per point, little-endian, one row,
dense (non-finite points are dropped).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import MessageError
from .messages import MessageData, uint8_buffer
from .stamps import header_fields

__all__ = ["points_to_pointcloud2", "pointcloud2_to_points"]

POINT_CLOUD2_TYPE = "sensor_msgs/msg/PointCloud2"
_FLOAT32 = 7  # sensor_msgs/PointField.FLOAT32
_POINT_DTYPE = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("rgb", "<u4")])


def _colors_uint8(colors: np.ndarray, n: int) -> np.ndarray:
    colors = np.asarray(colors)
    if colors.shape != (n, 3):
        raise MessageError(f"colours must be [N, 3] matching {n} points, got {colors.shape}")
    if colors.dtype == np.uint8:
        return colors
    return np.clip(np.round(colors.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)


def points_to_pointcloud2(points: np.ndarray, colors: np.ndarray, stamp_ns: int, frame_id: str) -> MessageData:
    """``sensor_msgs/PointCloud2`` fields of points ``[N, 3]`` with colours ``[N, 3]``.

    Colours are uint8 RGB or floats in [0, 1].  Points with a non-finite coordinate are dropped.
    """
    xyz = np.asarray(points, dtype=np.float64)
    if xyz.ndim != 2 or xyz.shape[1] != 3:
        raise MessageError(f"points must be [N, 3], got {xyz.shape}")
    rgb = _colors_uint8(colors, xyz.shape[0])
    keep = np.all(np.isfinite(xyz), axis=1)
    xyz, rgb = xyz[keep], rgb[keep].astype(np.uint32)
    cloud = np.empty(xyz.shape[0], dtype=_POINT_DTYPE)
    cloud["x"], cloud["y"], cloud["z"] = xyz[:, 0], xyz[:, 1], xyz[:, 2]
    cloud["rgb"] = (rgb[:, 0] << 16) | (rgb[:, 1] << 8) | rgb[:, 2]
    fields = [
        {"name": name, "offset": offset, "datatype": _FLOAT32, "count": 1}
        for name, offset in (("x", 0), ("y", 4), ("z", 8), ("rgb", 12))
    ]
    return MessageData(
        POINT_CLOUD2_TYPE,
        {
            "header": header_fields(stamp_ns, frame_id),
            "height": 1,
            "width": int(cloud.shape[0]),
            "fields": fields,
            "is_bigendian": False,
            "point_step": _POINT_DTYPE.itemsize,
            "row_step": _POINT_DTYPE.itemsize * int(cloud.shape[0]),
            "data": cloud.view(np.uint8).reshape(-1),
            "is_dense": True,
        },
    )


def pointcloud2_to_points(msg: Any) -> tuple[np.ndarray, np.ndarray | None]:
    """Points ``[N, 3] float64`` and colours ``[N, 3] uint8`` (or ``None``) of a PointCloud2.

    Reads float32 ``x, y, z`` and an optional packed ``rgb`` / ``rgba`` field at any offsets.
    """
    offsets = {str(f.name): (int(f.offset), int(f.datatype)) for f in msg.fields}
    for name in ("x", "y", "z"):
        if name not in offsets or offsets[name][1] != _FLOAT32:
            raise MessageError(f"PointCloud2 needs float32 x, y, z fields, has {sorted(offsets)}")
    order = ">" if bool(msg.is_bigendian) else "<"
    n = int(msg.width) * int(msg.height)
    step = int(msg.point_step)
    data = uint8_buffer(msg.data)
    if data.size < n * step:
        raise MessageError(f"PointCloud2 data holds {data.size} bytes, {n} points need {n * step}")
    rows = data[: n * step].reshape(n, step)

    def column(offset: int, dtype: str) -> np.ndarray:
        return np.ascontiguousarray(rows[:, offset : offset + 4]).view(order + dtype).reshape(n)

    xyz = np.stack([column(offsets[c][0], "f4") for c in "xyz"], axis=1).astype(np.float64)
    color_field = next((name for name in ("rgb", "rgba") if name in offsets), None)
    if color_field is None:
        return xyz, None
    packed = column(offsets[color_field][0], "u4")
    rgb = np.stack([(packed >> 16) & 255, (packed >> 8) & 255, packed & 255], axis=1).astype(np.uint8)
    return xyz, rgb
