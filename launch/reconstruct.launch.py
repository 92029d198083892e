"""Launch posegs_ros's reconstruct_node on a live camera or a rosbag2, optionally with RViz.

Examples::

    ros2 launch posegs_ros reconstruct.launch.py image_topic:=/camera/color/image_raw
    ros2 launch posegs_ros reconstruct.launch.py bag:=/data/run1 rate:=0.5 rviz:=true
    ros2 launch posegs_ros reconstruct.launch.py image_topic:=/cam/image_raw compressed:=true

With ``bag:=PATH`` the bag is played with ``ros2 bag play --clock`` once the node reports it
is ready, and every node runs on the bag's clock (``use_sim_time``).
"""

from __future__ import annotations

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchContext, LaunchDescription
from launch.actions import DeclareLaunchArgument, ExecuteProcess, LogInfo, OpaqueFunction, RegisterEventHandler
from launch.event_handlers import OnProcessIO
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

PACKAGE = "posegs_ros"
NODE_NAME = "posegs_node"
READY_TEXT = b"reconstructing from"  # the node logs this once its subscriptions exist


def _flag(context: LaunchContext, name: str) -> bool:
    value = LaunchConfiguration(name).perform(context).strip().lower()
    if value not in ("true", "false", "1", "0", "yes", "no"):
        raise ValueError(f"launch argument {name}:={value!r} must be true or false")
    return value in ("true", "1", "yes")


def _camera_info_beside(image_topic: str) -> str:
    """``/cam/image_raw`` -> ``/cam/camera_info`` (the usual camera driver layout)."""
    base = image_topic.rstrip("/")
    if base.endswith("/compressed"):
        base = base[: -len("/compressed")]
    return f"{base.rsplit('/', 1)[0]}/camera_info" if "/" in base else "camera_info"


def _actions(context: LaunchContext) -> list:
    share = get_package_share_directory(PACKAGE)
    config = LaunchConfiguration("config").perform(context)
    preset = LaunchConfiguration("preset").perform(context)
    image_topic = LaunchConfiguration("image_topic").perform(context)
    camera_info_topic = LaunchConfiguration("camera_info_topic").perform(context) or _camera_info_beside(image_topic)
    namespace = LaunchConfiguration("namespace").perform(context)
    bag = LaunchConfiguration("bag").perform(context)
    rate = float(LaunchConfiguration("rate").perform(context))
    bag_delay = float(LaunchConfiguration("bag_delay").perform(context))
    compressed = _flag(context, "compressed")
    use_sim_time = bool(bag) or _flag(context, "use_sim_time")
    if rate <= 0:
        raise ValueError(f"launch argument rate:={rate} must be > 0")

    # no parameter file by default: the node's defaults are config/posegs.yaml's, and a file that
    # sets every parameter (as posegs.yaml does) would leave nothing for a preset to choose
    node_parameters: list = ([config] if config else []) + [{"use_sim_time": use_sim_time}]
    if preset:
        node_parameters.append({"preset": preset})
    if compressed:
        node_parameters.append({"ros.image_transport": "compressed"})
    image_base = image_topic[: -len("/compressed")] if image_topic.endswith("/compressed") else image_topic
    node = Node(
        package=PACKAGE,
        executable="reconstruct_node",
        name=NODE_NAME,
        namespace=namespace,
        output="screen",
        emulate_tty=True,
        parameters=node_parameters,
        remappings=[
            ("image", image_base),
            ("image/compressed", f"{image_base}/compressed"),
            ("camera_info", camera_info_topic),
        ],
        arguments=["--ros-args", "--log-level", LaunchConfiguration("log_level").perform(context)],
    )
    actions: list = [node]

    if bag:
        play = ["ros2", "bag", "play", bag, "--rate", repr(rate), "--clock"]
        if bag_delay > 0:
            play += ["--delay", repr(bag_delay)]
        player = ExecuteProcess(cmd=play, name="bag_play", output="screen")
        started = []

        def start_player_when_ready(event) -> list:  # noqa: ANN001 - launch's ProcessIO event
            if started or READY_TEXT not in event.text:
                return []
            started.append(True)
            return [LogInfo(msg=f"reconstruct_node is ready: playing {bag} at rate {rate}"), player]

        actions.append(
            RegisterEventHandler(
                OnProcessIO(target_action=node, on_stdout=start_player_when_ready, on_stderr=start_player_when_ready)
            )
        )

    if _flag(context, "rviz"):
        actions.append(
            Node(
                package="rviz2",
                executable="rviz2",
                name="rviz2",
                namespace=namespace,
                output="screen",
                arguments=["-d", os.path.join(share, "config", "posegs.rviz")],
                parameters=[{"use_sim_time": use_sim_time}],
            )
        )
    return actions


def generate_launch_description() -> LaunchDescription:
    """Arguments, then the node (and bag player / RViz when asked)."""
    arguments = [
        ("config", "", "ROS parameter file with the settings to change (config/posegs.yaml lists them all)"),
        ("preset", "", "speed / quality trade-off: fast | balanced | best (default: the node's, balanced)"),
        ("image_topic", "/camera/image_raw", "sensor_msgs/Image topic (with compressed:=true its /compressed)"),
        ("camera_info_topic", "", "sensor_msgs/CameraInfo topic (default: camera_info beside image_topic)"),
        ("namespace", "", "namespace of the node (and of RViz)"),
        ("bag", "", "rosbag2 to play with `ros2 bag play --clock` (sets use_sim_time)"),
        ("rate", "1.0", "playback rate of bag (CPU engines keep up better below 1)"),
        ("bag_delay", "1.0", "seconds between the node being ready and the bag starting (discovery)"),
        ("compressed", "false", "subscribe to sensor_msgs/CompressedImage on <image_topic>/compressed"),
        ("use_sim_time", "false", "use /clock (implied by bag)"),
        ("rviz", "false", "open RViz with config/posegs.rviz"),
        ("log_level", "info", "log level of the node"),
    ]
    return LaunchDescription(
        [DeclareLaunchArgument(name, default_value=default, description=text) for name, default, text in arguments]
        + [OpaqueFunction(function=_actions)]
    )
