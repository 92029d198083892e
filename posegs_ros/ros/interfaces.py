"""This package's ``msg/`` definitions for ``rosbags`` (no ROS installation needed).

``rosidl`` generates the rclpy classes at ``colcon build``; offline tools and tests register the
same ``.msg`` files in a ``rosbags`` typestore instead, so they can build, serialize and read
``posegs_ros/msg/ReconstructionStatus`` messages (and bags holding them) without ROS.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["PACKAGE", "interface_directory", "register_interfaces"]

PACKAGE = "posegs_ros"


def interface_directory() -> Path:
    """The directory holding this package's ``msg/*.msg`` files.

    Looked up in the source tree (editable / pip installs from a checkout), then in the ament
    install share directory (``share/posegs_ros/msg``, where rosidl installs them).

    Raises:
        FileNotFoundError: neither exists.
    """
    here = Path(__file__).resolve()
    candidates = [here.parents[2] / "msg"]
    try:
        from ament_index_python.packages import PackageNotFoundError, get_package_share_directory

        try:
            candidates.append(Path(get_package_share_directory(PACKAGE)) / "msg")
        except PackageNotFoundError:
            pass
    except ImportError:
        pass
    # <prefix>/lib/pythonX.Y/site-packages/posegs_ros/ros/interfaces.py -> <prefix>/share/posegs_ros/msg
    if len(here.parents) > 5:
        candidates.append(here.parents[5] / "share" / PACKAGE / "msg")
    for candidate in candidates:
        if (candidate / "ReconstructionStatus.msg").is_file():
            return candidate
    raise FileNotFoundError(f"{PACKAGE} msg/ definitions not found; looked in: {', '.join(map(str, candidates))}")


def register_interfaces(typestore: Any, directory: str | Path | None = None) -> list[str]:
    """Register every ``msg/*.msg`` of this package in a ``rosbags`` typestore; returns the type names."""
    from rosbags.typesys import get_types_from_msg

    folder = Path(directory) if directory is not None else interface_directory()
    types: dict[str, Any] = {}
    for path in sorted(folder.glob("*.msg")):
        types.update(get_types_from_msg(path.read_text(encoding="utf-8"), f"{PACKAGE}/msg/{path.stem}"))
    typestore.register(types)
    return sorted(types)
