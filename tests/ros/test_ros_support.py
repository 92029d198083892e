"""Interface registration for rosbags and test-graph isolation (ROS-free)."""

from __future__ import annotations

import re

from ros_support import REPO

from posegs_ros.io.messages import default_typestore
from posegs_ros.ros.graph_env import isolate_ros_graph, isolated_graph_environment
from posegs_ros.ros.interfaces import interface_directory, register_interfaces

FIELD = re.compile(r"^(?P<type>[A-Za-z][\w/]*(\[\d*\])?)\s+(?P<name>[a-z][a-z0-9_]*|[A-Z][A-Z0-9_]*=\S+)$")


def test_msg_files_register_in_rosbags() -> None:
    found = interface_directory()  # the source tree's msg/, or share/posegs_ros/msg of a colcon install
    for path in (REPO / "msg").glob("*.msg"):
        assert (found / path.name).read_text() == path.read_text()
    store = default_typestore()
    names = register_interfaces(store)
    assert names == ["posegs_ros/msg/MotionGroup", "posegs_ros/msg/ReconstructionStatus"]
    status = store.types["posegs_ros/msg/ReconstructionStatus"]
    assert "groups" in status.__dataclass_fields__


def test_interface_files_are_valid_rosidl() -> None:
    """Field lines are ``type name`` with rosidl's naming rules; the service has request --- response."""
    files = sorted((REPO / "msg").glob("*.msg")) + sorted((REPO / "srv").glob("*.srv"))
    assert [f.name for f in files] == ["MotionGroup.msg", "ReconstructionStatus.msg", "SaveMap.srv"]
    for path in files:
        lines = [line.split("#", 1)[0].strip() for line in path.read_text().splitlines()]
        lines = [line for line in lines if line]
        if path.suffix == ".srv":
            assert lines.count("---") == 1
            lines.remove("---")
        for line in lines:
            match = FIELD.match(line)
            assert match, f"{path.name}: {line!r}"
            name = match["name"]
            assert "__" not in name and not name.endswith("_"), f"{path.name}: {name}"
    srv = (REPO / "srv" / "SaveMap.srv").read_text()
    request, response = srv.split("---")
    assert "string path" in request and "bool success" in response and "string message" in response


def test_isolated_graph_environment() -> None:
    assert isolated_graph_environment("humble", pid=250) == {"ROS_DOMAIN_ID": "51", "ROS_LOCALHOST_ONLY": "1"}
    assert isolated_graph_environment("jazzy", pid=99) == {
        "ROS_DOMAIN_ID": "100", "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"
    }
    env = {"ROS_DISTRO": "jazzy", "ROS_LOCALHOST_ONLY": "1"}
    applied = isolate_ros_graph(env)
    assert "ROS_LOCALHOST_ONLY" not in env and env["ROS_DOMAIN_ID"] == applied["ROS_DOMAIN_ID"]
    assert 1 <= int(env["ROS_DOMAIN_ID"]) <= 100
