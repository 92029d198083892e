"""Environment for ROS 2 tests that stay on this machine and off other test runs (ROS-free).

Loopback-only discovery (``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST`` on Iron and later,
``ROS_LOCALHOST_ONLY=1`` on Humble and older) and a ``ROS_DOMAIN_ID`` derived from the process
id, so parallel runs do not see each other's nodes. Must be applied before ``rclpy.init()``.
"""

from __future__ import annotations

import os
from typing import MutableMapping

__all__ = ["isolated_graph_environment", "isolate_ros_graph"]

_LEGACY_DISTROS = ("foxy", "galactic", "humble")  # before ROS_AUTOMATIC_DISCOVERY_RANGE


def isolated_graph_environment(distro: str | None = None, pid: int | None = None) -> dict[str, str]:
    """Variables isolating a test's ROS graph: loopback discovery and a domain id in 1..100."""
    distro = (distro if distro is not None else os.environ.get("ROS_DISTRO", "")).lower()
    pid = os.getpid() if pid is None else pid
    env = {"ROS_DOMAIN_ID": str(1 + pid % 100)}
    if distro in _LEGACY_DISTROS:
        env["ROS_LOCALHOST_ONLY"] = "1"
    else:
        env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    return env


def isolate_ros_graph(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Apply :func:`isolated_graph_environment` to ``environ`` (default ``os.environ``); returns it."""
    target = os.environ if environ is None else environ
    env = isolated_graph_environment(target.get("ROS_DISTRO"))
    if "ROS_AUTOMATIC_DISCOVERY_RANGE" in env:
        target.pop("ROS_LOCALHOST_ONLY", None)  # deprecated on Jazzy; would conflict
    target.update(env)
    return env
