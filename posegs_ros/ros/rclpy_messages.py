"""rclpy side of message construction and QoS (imports rclpy: only the node uses this module).

:class:`RclpyMessageFactory` turns the backend-neutral :class:`~posegs_ros.io.MessageData` of
:mod:`posegs_ros.io` / :mod:`posegs_ros.ros.outputs` into rclpy message objects;
:func:`qos_profile` maps the ``ros.*_qos`` parameters onto an rclpy ``QoSProfile``.
"""

from __future__ import annotations

import functools
import importlib
from typing import Any

from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

from ..io import AttributeMessageFactory, MessageData

__all__ = ["RclpyMessageFactory", "message_class", "qos_profile"]

_RELIABILITY = {"best_effort": ReliabilityPolicy.BEST_EFFORT, "reliable": ReliabilityPolicy.RELIABLE}
_DURABILITY = {"volatile": DurabilityPolicy.VOLATILE, "transient_local": DurabilityPolicy.TRANSIENT_LOCAL}


@functools.lru_cache(maxsize=None)
def message_class(msgtype: str) -> type:
    """The rclpy class of ``pkg/msg/Name`` (or ``pkg/srv/Name``), imported once per type."""
    try:
        package, kind, name = msgtype.split("/")
        return getattr(importlib.import_module(f"{package}.{kind}"), name)
    except (ValueError, ImportError, AttributeError) as err:
        raise ValueError(f"no ROS interface {msgtype!r} importable: {err}") from err


class RclpyMessageFactory:
    """Builds rclpy messages from :class:`~posegs_ros.io.MessageData`."""

    def __init__(self) -> None:
        self._factory = AttributeMessageFactory(message_class)

    def build(self, data: MessageData) -> Any:
        return self._factory.build(data)


def qos_profile(reliability: str, durability: str, depth: int) -> QoSProfile:
    """Keep-last ``depth`` QoS with the named reliability (best_effort | reliable) and
    durability (volatile | transient_local)."""
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=int(depth),
        reliability=_RELIABILITY[reliability],
        durability=_DURABILITY[durability],
    )
