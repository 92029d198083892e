"""Backend-neutral ROS messages: field values here, message objects built by a per-backend factory.

Reading is duck-typed: every ``*_from_*`` / ``*_to_array`` function in :mod:`posegs_ros.io` only
reads attributes (``msg.header.stamp.sec``, ``msg.data``...), so it accepts ``rosbags`` message
dataclasses, rclpy messages, or anything shaped like them.

Writing differs per backend (``rosbags`` dataclasses take every field in the constructor and numpy
arrays for ``uint8[]``; rclpy messages are default-constructed and take ``array.array`` / bytes).
So the conversion functions return a :class:`MessageData`: the message type name plus a nested
``dict`` of field values:

- scalars are Python ``int`` / ``float`` / ``bool`` / ``str`` of the field's type,
- arrays and sequences of numbers are 1-D numpy arrays (``uint8`` for ``data`` fields,
  ``float64`` for ``k``/``d``/``r``/``p``),
- nested messages are nested ``dict``s, sequences of messages are ``list``s of ``dict``s,
- omitted fields take the message default (zero, empty).

A :class:`MessageFactory` turns that into a message object of one backend:

- :class:`TypestoreMessageFactory` builds ``rosbags`` messages (bags, tests, offline tools).
- :class:`AttributeMessageFactory` builds default-constructible, attribute-assigned messages:
  rclpy's.  The node uses ``AttributeMessageFactory(rosidl_runtime_py.utilities.get_message)``;
  nothing here imports rclpy.
"""

from __future__ import annotations

import array
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from .errors import MessageError

__all__ = [
    "MessageData",
    "MessageFactory",
    "TypestoreMessageFactory",
    "AttributeMessageFactory",
    "default_typestore",
    "uint8_buffer",
]

# ROS 2 base types -> numpy dtype (for arrays) and Python type (for scalars).
_BASE_DTYPES: dict[str, np.dtype] = {
    name: np.dtype(dt)
    for name, dt in {
        "bool": np.bool_, "byte": np.uint8, "octet": np.uint8, "char": np.uint8,
        "int8": np.int8, "uint8": np.uint8, "int16": np.int16, "uint16": np.uint16,
        "int32": np.int32, "uint32": np.uint32, "int64": np.int64, "uint64": np.uint64,
        "float32": np.float32, "float64": np.float64,
    }.items()
}


@dataclass(frozen=True)
class MessageData:
    """The field values of one message of type ``msgtype`` (e.g. ``sensor_msgs/msg/Image``)."""

    msgtype: str
    fields: dict[str, Any] = field(default_factory=dict)


class MessageFactory(Protocol):
    """Builds a backend's message object from :class:`MessageData`."""

    def build(self, data: MessageData) -> Any:
        """The message object of ``data.msgtype`` with ``data.fields`` filled in."""
        ...


def default_typestore() -> Any:
    """The ``rosbags`` typestore used for bags: ROS 2 Humble's message definitions.

    The message types this package writes (Image, CompressedImage, CameraInfo, PoseStamped,
    TransformStamped, PointCloud2) have identical definitions and RIHS01 hashes in Humble and
    Jazzy, so bags written with it read the same on both.
    """
    from rosbags.typesys import Stores, get_typestore

    return get_typestore(Stores.ROS2_HUMBLE)


class TypestoreMessageFactory:
    """Builds ``rosbags`` message dataclasses from :class:`MessageData` using a typestore."""

    def __init__(self, typestore: Any | None = None) -> None:
        self.typestore = typestore if typestore is not None else default_typestore()

    def build(self, data: MessageData) -> Any:
        return self._message(data.msgtype, data.fields)

    def _message(self, msgtype: str, fields: Mapping[str, Any]) -> Any:
        try:
            _, fielddefs = self.typestore.fielddefs[msgtype]
        except KeyError:
            raise MessageError(f"message type {msgtype!r} is not in the typestore") from None
        names = {name for name, _ in fielddefs}
        unknown = set(fields) - names
        if unknown:
            raise MessageError(f"{msgtype} has no field(s) {sorted(unknown)}; fields: {sorted(names)}")
        kwargs = {}
        for name, (nodetype, desc) in fielddefs:
            try:
                kwargs[name] = self._value(int(nodetype), desc, fields.get(name))
            except (TypeError, ValueError) as err:
                raise MessageError(f"{msgtype}.{name}: {err}") from err
        return self.typestore.types[msgtype](**kwargs)

    def _value(self, nodetype: int, desc: Any, value: Any) -> Any:
        # rosbags Nodetype: 1 BASE (typename, strlen), 2 NAME msgtype, 3 ARRAY, 4 SEQUENCE (sub, n)
        if nodetype == 1:
            return _base_scalar(desc[0], value)
        if nodetype == 2:
            return self._message(desc, value or {})
        (subtype, subdesc), length = desc
        if int(subtype) == 1 and subdesc[0] in _BASE_DTYPES:
            dtype = _BASE_DTYPES[subdesc[0]]
            if value is None:
                return np.zeros(length if nodetype == 3 else 0, dtype=dtype)
            out = np.ascontiguousarray(np.asarray(value, dtype=dtype).reshape(-1))
            if nodetype == 3 and out.size != length:
                raise ValueError(f"fixed array needs {length} values, got {out.size}")
            return out
        items = list(value or [])
        if nodetype == 3 and items and len(items) != length:
            raise ValueError(f"fixed array needs {length} values, got {len(items)}")
        if int(subtype) == 2:
            built = [self._message(subdesc, item) for item in items]
            if nodetype == 3 and not built:
                built = [self._message(subdesc, {}) for _ in range(length)]
            return built
        built = [_base_scalar(subdesc[0], item) for item in items]
        if nodetype == 3 and not built:
            built = [_base_scalar(subdesc[0], None) for _ in range(length)]
        return built


def _base_scalar(typename: str, value: Any) -> Any:
    """A Python scalar of ROS base type ``typename`` (``None`` -> the type's default)."""
    if typename in ("string", "wstring"):
        return "" if value is None else str(value)
    if typename == "bool":
        return bool(value) if value is not None else False
    if typename in ("float32", "float64"):
        return float(value) if value is not None else 0.0
    return int(value) if value is not None else 0


_SEQUENCE_OF_MESSAGES = re.compile(r"^sequence<([\w]+)/(?:msg/)?([\w]+)(?:, \d+)?>$|^([\w]+)/(?:msg/)?([\w]+)\[\d*\]$")


class AttributeMessageFactory:
    """Builds messages of APIs that default-construct and assign attributes (rclpy's).

    Args:
        get_class: message type name (``"sensor_msgs/msg/Image"``) -> message class; for rclpy
            ``rosidl_runtime_py.utilities.get_message``.

    Conversion per field, decided from the default value the constructed message holds:
    ``array.array`` fields (ROS sequences) get ``array.array(typecode, bytes)`` (fast path of
    rclpy's setters), numpy-array fields (ROS fixed arrays) get a numpy array of their dtype,
    nested messages are filled recursively, scalars are cast to the default's Python type.
    Sequences of messages use the class's ``get_fields_and_field_types()`` to find the element type.
    """

    def __init__(self, get_class: Callable[[str], type]) -> None:
        self.get_class = get_class

    def build(self, data: MessageData) -> Any:
        return self._fill(self.get_class(data.msgtype)(), data.fields, data.msgtype)

    def _fill(self, msg: Any, fields: Mapping[str, Any], msgtype: str) -> Any:
        for name, value in fields.items():
            if not hasattr(msg, name):
                raise MessageError(f"{msgtype} has no field {name!r}")
            current = getattr(msg, name)
            try:
                setattr(msg, name, self._convert(msg, name, current, value))
            except (TypeError, ValueError, AssertionError) as err:
                raise MessageError(f"{msgtype}.{name}: {err}") from err
        return msg

    def _convert(self, msg: Any, name: str, current: Any, value: Any) -> Any:
        if isinstance(value, Mapping):
            return self._fill(current, value, type(current).__name__)
        if isinstance(current, array.array):
            dtype = np.dtype(current.typecode)
            return array.array(current.typecode, np.ascontiguousarray(value, dtype=dtype).tobytes())
        if isinstance(current, np.ndarray):
            return np.asarray(value, dtype=current.dtype).reshape(current.shape)
        if isinstance(current, (bytes, bytearray)):
            return bytes(np.asarray(value, dtype=np.uint8).tobytes())
        if isinstance(current, list):
            items = list(value)
            if items and isinstance(items[0], Mapping):
                element = self.get_class(self._element_type(msg, name))
                return [self._fill(element(), item, element.__name__) for item in items]
            return items
        if isinstance(current, bool):
            return bool(value)
        if isinstance(current, (int, float, str)):
            return type(current)(value)
        return value

    @staticmethod
    def _element_type(msg: Any, name: str) -> str:
        types = type(msg).get_fields_and_field_types()
        match = _SEQUENCE_OF_MESSAGES.match(types[name])
        if match is None:
            raise MessageError(f"cannot tell the element type of {name!r} from {types[name]!r}")
        package, message = (match.group(1), match.group(2)) if match.group(1) else (match.group(3), match.group(4))
        return f"{package}/msg/{message}"


def uint8_buffer(data: Any) -> np.ndarray:
    """A read-only ``[N] uint8`` view of a message's ``data`` field, whatever the backend holds.

    Accepts numpy arrays (rosbags), ``array.array('B')`` and ``bytes`` (rclpy), or any
    sequence of ints.
    """
    if isinstance(data, np.ndarray):
        return data.reshape(-1).view(np.uint8) if data.dtype.itemsize == 1 else data.astype(np.uint8)
    try:
        return np.frombuffer(memoryview(data), dtype=np.uint8)
    except TypeError:
        return np.asarray(data, dtype=np.uint8).reshape(-1)
