"""reconstruct_node under a real ROS 2 (rclpy), in-process: parameters, bad input, a synthetic
sequence published from the test, TF + ~/deblurred + ~/status, ~/save_map and ~/reset.

Skipped where ROS 2 is not installed, or where posegs_ros was not built with colcon (its
generated msg/srv modules are needed). Discovery stays on loopback with a per-run domain id.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="ROS 2 is not installed (source a Humble/Jazzy setup.bash to run)")
pytest.importorskip("posegs_ros.msg", reason="posegs_ros is not built with colcon (no generated posegs_ros.msg)")

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from nav_msgs.msg import Path as PathMessage  # noqa: E402
from rclpy.executors import MultiThreadedExecutor  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import CameraInfo, CompressedImage, Image  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402
from tf2_msgs.msg import TFMessage  # noqa: E402

from posegs_ros.camera import Intrinsics  # noqa: E402
from posegs_ros.scene.gaussians import read_ply  # noqa: E402
from posegs_ros.io import (  # noqa: E402
    CameraModel,
    camera_info_message,
    rgb_to_compressed,
    rgb_to_image,
    transform_to_matrix,
)
from posegs_ros.msg import ReconstructionStatus  # noqa: E402
from posegs_ros.ros.graph_env import isolate_ros_graph  # noqa: E402
from posegs_ros.ros.node import ReconstructNode  # noqa: E402
from posegs_ros.ros.rclpy_messages import RclpyMessageFactory  # noqa: E402
from posegs_ros.srv import SaveMap  # noqa: E402

NAMESPACE = "/posegs_node_test"
FRAME_ID = "camera_optical_frame"
# cheap engine settings for a CPU test (fewer iterations and Gaussians, easier initialization)
FAST_ENGINE: dict[str, Any] = {
    "init.min_inliers": 80, "init.min_parallax_px": 4.0, "init.seed_points": 2500, "init.mapping_rounds": 2,
    "mapping.gaussian_iters": 10, "mapping.pose_iters": 3, "mapping.joint_iters": 3,
    "tracking.refine_steps": 2, "blur.subframes": 3,
}


class Collector:
    """Thread-safe message lists filled by subscriptions of the test's client node."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.messages: dict[str, list[Any]] = {}

    def callback(self, key: str) -> Callable[[Any], None]:
        def store(msg: Any) -> None:
            with self.lock:
                self.messages.setdefault(key, []).append(msg)

        return store

    def get(self, key: str) -> list[Any]:
        with self.lock:
            return list(self.messages.get(key, []))

    def wait(self, key: str, predicate: Callable[[list[Any]], bool], timeout: float) -> list[Any]:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            items = self.get(key)
            if predicate(items):
                return items
            time.sleep(0.05)
        items = self.get(key)
        assert predicate(items), f"timed out after {timeout} s waiting on {key} ({len(items)} messages)"
        return items


class Harness:
    """The node under test plus a client node, spun by one multi-threaded executor in a thread."""

    def __init__(self, overrides: dict[str, Any]) -> None:
        params = [Parameter(name, value=value) for name, value in overrides.items()]
        self.node = ReconstructNode(namespace=NAMESPACE, parameter_overrides=params)
        self.client = rclpy.create_node("posegs_test_client", namespace=NAMESPACE)
        self.collector = Collector()
        sensor = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
        latched = QoSProfile(
            depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL
        )
        self.images = self.client.create_publisher(Image, "image", sensor)
        self.camera_info = self.client.create_publisher(CameraInfo, "camera_info", sensor)
        subscriptions = [
            (Image, "posegs_node/deblurred", sensor, "deblurred"),
            (Image, "posegs_node/depth", sensor, "depth"),
            (ReconstructionStatus, "posegs_node/status", sensor, "status"),
            (TFMessage, "/tf", QoSProfile(depth=100), "tf"),
            (DiagnosticArray, "/diagnostics", sensor, "diagnostics"),
        ]
        for msg_type, topic, qos, key in subscriptions:
            self.client.create_subscription(msg_type, topic, self.collector.callback(key), qos)
        self.client.create_subscription(PathMessage, "posegs_node/path", self.collector.callback("path"), latched)
        self.save = self.client.create_client(SaveMap, "posegs_node/save_map")
        self.reset = self.client.create_client(Trigger, "posegs_node/reset")
        self.factory = RclpyMessageFactory()
        self.executor = MultiThreadedExecutor(num_threads=4)
        self.executor.add_node(self.node)
        self.executor.add_node(self.client)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()
        assert self.save.wait_for_service(timeout_sec=20) and self.reset.wait_for_service(timeout_sec=20)
        end = time.monotonic() + 20
        while self.images.get_subscription_count() == 0 and time.monotonic() < end:
            time.sleep(0.05)  # discovery

    def publish_frame(self, rgb: np.ndarray, stamp_ns: int, camera: CameraModel | None) -> None:
        if camera is not None:
            self.camera_info.publish(self.factory.build(camera_info_message(camera, stamp_ns, FRAME_ID)))
        self.images.publish(self.factory.build(rgb_to_image(rgb, stamp_ns, FRAME_ID)))

    def call(self, client: Any, request: Any, timeout: float = 120.0) -> Any:
        future = client.call_async(request)
        end = time.monotonic() + timeout
        while not future.done() and time.monotonic() < end:
            time.sleep(0.05)
        assert future.done(), "service call timed out"
        return future.result()

    def close(self) -> None:
        self.node.close()
        self.executor.shutdown(timeout_sec=5)
        self.node.destroy_node()
        self.client.destroy_node()
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def ros() -> Iterator[None]:
    isolate_ros_graph()
    rclpy.init()
    yield
    rclpy.try_shutdown()


@pytest.fixture
def harness(ros: None, request: pytest.FixtureRequest) -> Iterator[Harness]:
    overrides = {"ros.queue_size": 50, "ros.image_qos.reliability": "reliable", "ros.status_period_s": 0.2}
    overrides.update(getattr(request, "param", {}))
    h = Harness(overrides)
    yield h
    h.close()


def _counts(status: Any) -> dict[str, int]:
    return dict(zip(status.skip_reasons, [int(c) for c in status.skip_counts]))


def _rotation_angle(r: np.ndarray) -> float:
    return math.degrees(math.acos(max(-1.0, min(1.0, (np.trace(r) - 1.0) / 2.0))))


def test_every_parameter_is_declared_read_only_with_a_description(harness: Harness) -> None:
    from posegs_ros.ros.params import parameter_specs

    node = harness.node
    for spec in parameter_specs():
        assert node.has_parameter(spec.name), spec.name
    assert node.get_parameter("ros.queue_size").value == 50  # override applied
    assert node.get_parameter("tracking.gn_iterations").value == 8  # default
    described = node.describe_parameters(["blur.subframes"])[0]
    assert described.read_only and "renders" in described.description
    result = node.set_parameters([Parameter("blur.subframes", value=7)])[0]
    assert not result.successful


def test_sink_logs_at_every_level_from_one_node(harness: Harness) -> None:
    # rclpy refuses different severities from one call site; the worker logs all of them
    for level in ("info", "warning", "error", "debug", "info", "warning"):
        harness.node.sink.log(level, f"posegs test line at {level}")
    logging.getLogger("posegs_ros.pipeline").warning("engine warning through the ROS logger")
    logging.getLogger("posegs_ros.pipeline").info("engine info through the ROS logger")


def test_bad_input_is_counted_in_status_and_diagnostics(harness: Harness, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)
    harness.publish_frame(rgb, 1_000_000_000, None)  # before any camera_info: waits for it
    model = CameraModel.from_intrinsics(Intrinsics(80.0, 80.0, 40.0, 30.0, 80, 60))
    bad = harness.factory.build(rgb_to_image(rgb, 1_100_000_000, FRAME_ID))
    bad.encoding = "yuv422"
    harness.camera_info.publish(harness.factory.build(camera_info_message(model, 0, FRAME_ID)))
    time.sleep(0.5)
    harness.images.publish(bad)
    short = harness.factory.build(rgb_to_image(rgb, 1_200_000_000, FRAME_ID))
    short.data = short.data[:100]
    harness.images.publish(short)
    harness.publish_frame(rgb, 1_300_000_000, model)  # a good one
    status = harness.collector.wait(
        "status", lambda s: bool(s) and sum(_counts(s[-1]).values()) >= 2 and s[-1].frames_processed >= 2, 60
    )[-1]
    assert _counts(status) == {"unsupported_encoding": 1, "bad_image_data": 1}
    assert status.frames_received == 4 and status.frames_processed == 2
    diagnostics = harness.collector.wait("diagnostics", lambda d: bool(d), 10)
    assert any("reconstruction" in s.name for d in diagnostics for s in d.status)
    response = harness.call(harness.save, SaveMap.Request(path=str(tmp_path / "empty.ply")))
    assert not response.success and "empty" in response.message  # one frame: no map yet


@pytest.mark.parametrize("harness", [{"ros.image_transport": "compressed"}], indirect=True)
def test_compressed_transport(harness: Harness) -> None:
    publisher = harness.client.create_publisher(
        CompressedImage, "image/compressed", QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
    )
    end = time.monotonic() + 20
    while publisher.get_subscription_count() == 0 and time.monotonic() < end:
        time.sleep(0.05)
    model = CameraModel.from_intrinsics(Intrinsics(80.0, 80.0, 40.0, 30.0, 80, 60))
    harness.camera_info.publish(harness.factory.build(camera_info_message(model, 0, FRAME_ID)))
    rgb = np.random.default_rng(1).integers(0, 255, (60, 80, 3), dtype=np.uint8)
    for i, codec in enumerate(("jpeg", "png")):
        publisher.publish(harness.factory.build(rgb_to_compressed(rgb, 2_000_000_000 + i, FRAME_ID, codec)))
    status = harness.collector.wait("status", lambda s: bool(s) and s[-1].frames_processed == 2, 60)[-1]
    assert status.frames_skipped == 0 and status.frames_received == 2


@pytest.mark.parametrize("harness", [FAST_ENGINE], indirect=True)
def test_synthetic_sequence_tf_deblurred_save_and_reset(harness: Harness, tmp_path: Path) -> None:
    synth = pytest.importorskip("posegs_ros.tools.synth", reason="needs the synthetic sequence generator")
    seq = synth.generate(synth.SynthConfig(frames=10, width=160, height=120, subframes=3, fps=10.0))
    camera = CameraModel.from_intrinsics(seq.intrinsics)
    stamps = [frame.stamp_ns for frame in seq.frames]
    harness.camera_info.publish(harness.factory.build(camera_info_message(camera, stamps[0], FRAME_ID)))
    time.sleep(0.5)  # camera_info first: images and camera_info are separate topics, not ordered
    for frame in seq.frames:
        harness.publish_frame(frame.blurred, frame.stamp_ns, camera)
        time.sleep(0.05)
    status = harness.collector.wait("status", lambda s: bool(s) and s[-1].frames_processed == 10, 900)[-1]
    assert status.frames_dropped == 0 and status.frames_skipped == 0
    assert status.state_name != "initializing" and status.num_gaussians > 0 and status.num_keyframes >= 2
    # TF: map -> the image's frame, stamped with the input stamps
    transforms = [t for m in harness.collector.get("tf") for t in m.transforms if t.child_frame_id == FRAME_ID]
    assert transforms and all(t.header.frame_id == "map" for t in transforms)
    tf_stamps = [t.header.stamp.sec * 1_000_000_000 + t.header.stamp.nanosec for t in transforms]
    assert set(tf_stamps) <= set(stamps)
    # ~/deblurred: rgb8, input header, one per frame with a pose
    deblurred = harness.collector.wait("deblurred", lambda d: len(d) == len(transforms), 30)
    assert all(d.encoding == "rgb8" and d.header.frame_id == FRAME_ID for d in deblurred)
    assert [d.header.stamp.sec * 1_000_000_000 + d.header.stamp.nanosec for d in deblurred] == tf_stamps
    assert deblurred[-1].width == 160 and deblurred[-1].height == 120
    depth = harness.collector.wait("depth", lambda d: len(d) == len(transforms), 30)
    assert depth[-1].encoding == "32FC1"
    # the pose against ground truth, loosely and scale-free: relative rotation first -> last tracked frame
    first, last = transforms[0], transforms[-1]
    gt = {frame.stamp_ns: frame.pose for frame in seq.frames}
    est_rel = np.linalg.inv(transform_to_matrix(first.transform)) @ transform_to_matrix(last.transform)
    gt_rel = np.linalg.inv(gt[tf_stamps[0]]) @ gt[tf_stamps[-1]]
    assert _rotation_angle(est_rel[:3, :3].T @ gt_rel[:3, :3]) < 5.0
    # ~/save_map writes a PLY we can read back
    target = tmp_path / "maps" / "synthetic.ply"
    response = harness.call(harness.save, SaveMap.Request(path=str(target)))
    assert response.success, response.message
    assert response.path == str(target) and response.num_gaussians == status.num_gaussians
    assert read_ply(target)["means"].shape[0] == response.num_gaussians
    # ~/reset: back to waiting, counted
    response = harness.call(harness.reset, Trigger.Request())
    assert response.success
    status = harness.collector.wait("status", lambda s: bool(s) and s[-1].state_name == "waiting", 30)[-1]
    assert dict(zip(status.reset_reasons, status.reset_counts)) == {"service": 1}
    path = harness.collector.wait("path", lambda p: bool(p) and len(p[-1].poses) == 0, 30)
    assert path[-1].header.frame_id == "map"
