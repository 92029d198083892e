"""The node's ROS interface as data: topics, services and their QoS (ROS-free).

The node creates its subscriptions, publishers and services from these tables, the worker
publishes by :attr:`Endpoint.key`, and ``README.md`` (ROS 2 section) shows
:func:`markdown_interface_table` (a test keeps it equal), so the three cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "Endpoint",
    "SUBSCRIPTIONS",
    "PUBLICATIONS",
    "SERVICES",
    "OUTPUT_QOS",
    "TF_DESCRIPTION",
    "publication",
    "markdown_interface_table",
]


@dataclass(frozen=True)
class Endpoint:
    """One topic or service of the node."""

    key: str  # name the code uses (worker -> sink)
    name: str  # ROS name: relative (remappable), private (~/) or absolute
    msgtype: str  # ROS type, e.g. sensor_msgs/msg/Image
    qos: str  # subscriptions: the ros.* QoS parameter group; publications: a key of OUTPUT_QOS
    description: str


SUBSCRIPTIONS: tuple[Endpoint, ...] = (
    Endpoint("image", "image", "sensor_msgs/msg/Image", "image_qos",
             "input images (ros.image_transport: raw); rgb8, bgr8, mono8, rgba8, bgra8, mono16"),
    Endpoint("compressed_image", "image/compressed", "sensor_msgs/msg/CompressedImage", "image_qos",
             "input images (ros.image_transport: compressed); JPEG or PNG"),
    Endpoint("camera_info", "camera_info", "sensor_msgs/msg/CameraInfo", "camera_info_qos",
             "calibration: once (latched) or with every image; distortion is removed before the engine"),
)

PUBLICATIONS: tuple[Endpoint, ...] = (
    Endpoint("deblurred", "~/deblurred", "sensor_msgs/msg/Image", "images",
             "deblurred frame (rgb8) from the newest map at the frame's mid-exposure pose (blur.live_output), "
             "input stamp; rendered when no newer image waits"),
    Endpoint("depth", "~/depth", "sensor_msgs/msg/Image", "images",
             "rendered depth, 32FC1 in map units (REP-118), NaN where the map is empty"),
    Endpoint("dynamic_mask", "~/dynamic_mask", "sensor_msgs/msg/Image", "images",
             "mono8, 255 on moving objects (dynamic.enabled)"),
    Endpoint("path", "~/path", "nav_msgs/msg/Path", "latched",
             "camera poses (optical frame) in ros.map_frame, newest ros.path_max_poses"),
    Endpoint("map_cloud", "~/map_cloud", "sensor_msgs/msg/PointCloud2", "latched",
             "Gaussian centres, x y z + rgb, every ros.map_cloud_period_s at most"),
    Endpoint("keyframes", "~/keyframes", "visualization_msgs/msg/MarkerArray", "latched",
             "keyframe camera frustums (LINE_LIST; newest keyframe in orange)"),
    Endpoint("status", "~/status", "posegs_ros/msg/ReconstructionStatus", "status",
             "tracking state, counts, per-stage timings, dropped and skipped images, motion groups"),
    Endpoint("diagnostics", "/diagnostics", "diagnostic_msgs/msg/DiagnosticArray", "status",
             "one DiagnosticStatus for the reconstruction, every ros.status_period_s"),
)

SERVICES: tuple[Endpoint, ...] = (
    Endpoint("save_map", "~/save_map", "posegs_ros/srv/SaveMap", "",
             "write the map as a 3DGS PLY, atomically, to the request's path (empty = ros.save_path)"),
    Endpoint("reset", "~/reset", "std_srvs/srv/Trigger", "",
             "forget map and trajectory; the next images start a new initialization"),
)

# Output QoS: (reliability, durability, depth). Reliable publishers match both reliable and
# best-effort subscribers; transient_local lets a late RViz / `ros2 topic echo` see the latest.
OUTPUT_QOS: dict[str, tuple[str, str, int]] = {
    "images": ("reliable", "volatile", 5),
    "latched": ("reliable", "transient_local", 1),
    "status": ("reliable", "volatile", 10),
}

TF_DESCRIPTION = (
    "`/tf`: ros.map_frame -> camera optical frame (ros.camera_frame, default the image's frame_id) "
    "per processed image, and ros.map_frame -> <ros.object_frame_prefix><g> per moving object g"
)


def publication(key: str) -> Endpoint:
    """The publication with ``key``."""
    for endpoint in PUBLICATIONS:
        if endpoint.key == key:
            return endpoint
    raise KeyError(f"no publication {key!r}; known: {', '.join(e.key for e in PUBLICATIONS)}")


def markdown_interface_table() -> str:
    """Topics and services of the node as a Markdown table (``README.md``, ROS 2 section)."""
    rows = ["| direction | name | type | QoS | description |", "|---|---|---|---|---|"]
    for endpoint in SUBSCRIPTIONS:
        rows.append(
            f"| sub | `{endpoint.name}` | `{endpoint.msgtype}` | `ros.{endpoint.qos}.*` | {endpoint.description} |"
        )
    for endpoint in PUBLICATIONS:
        reliability, durability, depth = OUTPUT_QOS[endpoint.qos]
        rows.append(
            f"| pub | `{endpoint.name}` | `{endpoint.msgtype}` | {reliability}, {durability}, {depth} "
            f"| {endpoint.description} |"
        )
    rows.append(
        "| pub | `/tf` | `tf2_msgs/msg/TFMessage` | tf2_ros default | camera and moving-object poses (see TF tree) |"
    )
    for endpoint in SERVICES:
        rows.append(f"| srv | `{endpoint.name}` | `{endpoint.msgtype}` | services | {endpoint.description} |")
    return "\n".join(rows) + "\n"
