"""Header stamps <-> seconds / nanoseconds, and header field values.

Stamps are read duck-typed (``.sec``, ``.nanosec``: builtin_interfaces/Time of any backend).
Integer nanoseconds are exact; float seconds lose precision below ~0.1 us at epoch times.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "stamp_to_nanoseconds",
    "stamp_to_seconds",
    "seconds_to_nanoseconds",
    "nanoseconds_to_seconds",
    "time_fields",
    "header_fields",
]

_NS_PER_S = 1_000_000_000


def stamp_to_nanoseconds(stamp: Any) -> int:
    """Nanoseconds since the epoch of a ``builtin_interfaces/Time`` (``sec``, ``nanosec``)."""
    return int(stamp.sec) * _NS_PER_S + int(stamp.nanosec)


def stamp_to_seconds(stamp: Any) -> float:
    """Seconds (float) of a ``builtin_interfaces/Time``."""
    return stamp_to_nanoseconds(stamp) / _NS_PER_S


def seconds_to_nanoseconds(seconds: float) -> int:
    """Float seconds -> integer nanoseconds, rounded to the nearest nanosecond."""
    whole = int(seconds // 1)
    return whole * _NS_PER_S + int(round((seconds - whole) * _NS_PER_S))


def nanoseconds_to_seconds(nanoseconds: int) -> float:
    """Integer nanoseconds -> float seconds."""
    return int(nanoseconds) / _NS_PER_S


def time_fields(nanoseconds: int) -> dict[str, int]:
    """``builtin_interfaces/Time`` fields (``sec`` may be negative, ``nanosec`` in [0, 1e9))."""
    sec, nanosec = divmod(int(nanoseconds), _NS_PER_S)
    if not -(2**31) <= sec < 2**31:
        raise ValueError(f"stamp {nanoseconds} ns does not fit builtin_interfaces/Time (int32 seconds)")
    return {"sec": sec, "nanosec": nanosec}


def header_fields(stamp_ns: int, frame_id: str) -> dict[str, Any]:
    """``std_msgs/Header`` fields for a stamp in nanoseconds and a frame id."""
    return {"stamp": time_fields(stamp_ns), "frame_id": str(frame_id)}
