"""launch_testing: ``reconstruct.launch.py bag:=<synthetic rosbag2>`` end to end.

The launch file starts reconstruct_node and, once it is ready, ``ros2 bag play --clock`` of a
synthetic blurred sequence (``posegs_ros.tools.synth``, sqlite3 storage so every ROS 2 distro
reads it); the test waits for TF and ``~/deblurred``, checks stamps, counts and the pose
against ground truth (loosely, scale-free), calls ``~/save_map`` and reads the PLY back.

Registered with ``add_launch_test`` in CMakeLists.txt (``colcon test``); under plain pytest it
is skipped where ROS 2 or the colcon-built package is missing.
"""

from __future__ import annotations

import math
import tempfile
import time
import unittest
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

pytest.importorskip("launch_testing", reason="ROS 2 launch_testing is not installed (source a ROS 2 setup.bash)")
pytest.importorskip("posegs_ros.msg", reason="posegs_ros is not built with colcon (no generated posegs_ros.msg)")

import launch  # noqa: E402
import launch_testing.actions  # noqa: E402
import launch_testing.asserts  # noqa: E402
import rclpy  # noqa: E402
import yaml  # noqa: E402
from ament_index_python.packages import get_package_share_directory  # noqa: E402
from launch.actions import IncludeLaunchDescription  # noqa: E402
from launch.launch_description_sources import PythonLaunchDescriptionSource  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from tf2_msgs.msg import TFMessage  # noqa: E402

from posegs_ros.scene.gaussians import read_ply  # noqa: E402
from posegs_ros.io import transform_to_matrix  # noqa: E402
from posegs_ros.msg import ReconstructionStatus  # noqa: E402
from posegs_ros.ros.graph_env import isolate_ros_graph  # noqa: E402
from posegs_ros.ros.params import nest_parameters  # noqa: E402
from posegs_ros.srv import SaveMap  # noqa: E402

isolate_ros_graph()  # before the launched processes inherit the environment

FRAMES = 10
WORKDIR = Path(tempfile.mkdtemp(prefix="posegs_launch_test_"))
CAMERA_FRAME = "camera_optical_frame"  # what posegs synth writes as the image frame_id
# cheap engine settings for a CPU test, plus a queue that keeps every frame of the short bag
TEST_PARAMETERS: dict[str, Any] = {
    "init.min_inliers": 80, "init.min_parallax_px": 4.0, "init.seed_points": 2500, "init.mapping_rounds": 2,
    "mapping.gaussian_iters": 10, "mapping.pose_iters": 3, "mapping.joint_iters": 3,
    "tracking.refine_steps": 2, "blur.subframes": 3,
    "ros.queue_size": 50, "ros.image_qos.reliability": "reliable", "ros.image_qos.depth": 50,
    "ros.status_period_s": 0.5,
}


def _inputs() -> Any:
    from posegs_ros.tools import synth

    sequence = synth.generate(synth.SynthConfig(frames=FRAMES, width=160, height=120, subframes=3, fps=10.0))
    synth.write(sequence, WORKDIR / "synth", storage="sqlite3")
    body = yaml.safe_dump(nest_parameters(TEST_PARAMETERS), default_flow_style=False)
    params = "/**:\n  ros__parameters:\n" + "".join(f"    {line}\n" for line in body.splitlines())
    (WORKDIR / "params.yaml").write_text(params, encoding="utf-8")
    return sequence


@pytest.mark.launch_test
def generate_test_description() -> tuple[launch.LaunchDescription, dict[str, Any]]:
    sequence = _inputs()
    launch_file = Path(get_package_share_directory("posegs_ros")) / "launch" / "reconstruct.launch.py"
    reconstruct = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(str(launch_file)),
        launch_arguments={
            "bag": str(WORKDIR / "synth" / "bag"),
            "rate": "1.0",
            "config": str(WORKDIR / "params.yaml"),
            "rviz": "false",
        }.items(),
    )
    return launch.LaunchDescription([reconstruct, launch_testing.actions.ReadyToTest()]), {"sequence": sequence}


def _stamp_ns(header: Any) -> int:
    return header.stamp.sec * 1_000_000_000 + header.stamp.nanosec


def _rotation_angle_deg(r: np.ndarray) -> float:
    return math.degrees(math.acos(max(-1.0, min(1.0, (np.trace(r) - 1.0) / 2.0))))


class TestReconstructLaunch(unittest.TestCase):
    @classmethod
    def setUpClass(cls) -> None:
        rclpy.init()
        cls.node = rclpy.create_node("posegs_launch_test_client")

    @classmethod
    def tearDownClass(cls) -> None:
        cls.node.destroy_node()
        rclpy.shutdown()

    def _spin_until(self, done: Callable[[], bool], timeout: float, what: str) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end and not done():
            rclpy.spin_once(self.node, timeout_sec=0.1)
        self.assertTrue(done(), f"timed out after {timeout} s waiting for {what}")

    def test_bag_replay_publishes_tf_deblurred_status_and_saves(self, sequence: Any) -> None:
        qos = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
        received: dict[str, list[Any]] = {"tf": [], "deblurred": [], "status": []}
        self.node.create_subscription(TFMessage, "/tf", received["tf"].append, QoSProfile(depth=100))
        self.node.create_subscription(Image, "/posegs_node/deblurred", received["deblurred"].append, qos)
        self.node.create_subscription(ReconstructionStatus, "/posegs_node/status", received["status"].append, qos)

        self._spin_until(
            lambda: bool(received["status"]) and received["status"][-1].frames_processed >= FRAMES,
            timeout=1500, what=f"{FRAMES} processed frames on ~/status",
        )
        status = received["status"][-1]
        self.assertEqual(status.frames_received, FRAMES)
        self.assertEqual((status.frames_dropped, status.frames_skipped), (0, 0))
        self.assertNotEqual(status.state_name, "initializing")
        self.assertGreater(status.num_gaussians, 0)

        camera_tf = [t for m in received["tf"] for t in m.transforms if t.child_frame_id == CAMERA_FRAME]
        self.assertTrue(camera_tf, "no TF map -> camera_optical_frame")
        self.assertTrue(all(t.header.frame_id == "map" for t in camera_tf))
        gt = {frame.stamp_ns: frame.pose for frame in sequence.frames}
        tf_stamps = [_stamp_ns(t.header) for t in camera_tf]
        self.assertTrue(set(tf_stamps) <= set(gt), "TF stamps must be the images' stamps")
        self._spin_until(lambda: len(received["deblurred"]) >= len(camera_tf), 60, "~/deblurred for every pose")
        deblurred = received["deblurred"]
        self.assertEqual([_stamp_ns(d.header) for d in deblurred[: len(tf_stamps)]], tf_stamps)
        self.assertTrue(all(d.encoding == "rgb8" and (d.width, d.height) == (160, 120) for d in deblurred))

        # pose vs ground truth, loosely and scale-free (monocular): relative rotation first -> last
        est = np.linalg.inv(transform_to_matrix(camera_tf[0].transform)) @ transform_to_matrix(camera_tf[-1].transform)
        true = np.linalg.inv(gt[tf_stamps[0]]) @ gt[tf_stamps[-1]]
        self.assertLess(_rotation_angle_deg(est[:3, :3].T @ true[:3, :3]), 5.0)

        client = self.node.create_client(SaveMap, "/posegs_node/save_map")
        self.assertTrue(client.wait_for_service(timeout_sec=30))
        target = WORKDIR / "map.ply"
        future = client.call_async(SaveMap.Request(path=str(target)))
        self._spin_until(future.done, 300, "~/save_map")
        response = future.result()
        self.assertTrue(response.success, response.message)
        self.assertEqual(read_ply(target)["means"].shape[0], response.num_gaussians)


@launch_testing.post_shutdown_test()
class TestShutdown(unittest.TestCase):
    def test_processes_exit_cleanly(self, proc_info: Any) -> None:
        launch_testing.asserts.assertExitCodes(proc_info, allowable_exit_codes=[0, -2, -15])
