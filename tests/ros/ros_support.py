"""Helpers of the posegs_ros.ros tests (imported by conftest.py and the test modules).

ROS-free: messages are ``rosbags`` dataclasses of ROS 2 Humble's definitions plus this
package's ``msg/`` registered at run time, built from the same MessageData the node turns into
rclpy messages. :class:`FakeEngine` is a deterministic stand-in for the Reconstructor, used only
to exercise the worker's policies (drops, skips, resets, failures) fast and exactly.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Iterable

import cv2
import numpy as np
import torch

from posegs_ros.camera import Intrinsics
from posegs_ros.scene.gaussians import GaussianMap
from posegs_ros.io import CameraModel, MessageData, TypestoreMessageFactory, camera_info_message, rgb_to_image
from posegs_ros.pipeline import Frame, FrameError, FrameResult, StageTimings, TrackingState, TrajectoryPoint

REPO = Path(__file__).resolve().parents[2]


def textured_image(index: int, width: int = 80, height: int = 60) -> np.ndarray:
    """A deterministic smooth texture ``[H, W, 3]`` uint8 (upsampled noise), shifted by ``index`` pixels."""
    rng = np.random.default_rng(7)
    coarse = rng.integers(0, 256, size=((height + 8) // 4 + 1, (width + 64) // 4 + 1, 3), dtype=np.uint8)
    big = cv2.resize(coarse, (coarse.shape[1] * 4, coarse.shape[0] * 4), interpolation=cv2.INTER_CUBIC)
    return np.ascontiguousarray(big[4 : 4 + height, index % 64 : index % 64 + width])


class Messages:
    """Builds real (``rosbags``) Image / CameraInfo messages for the tests."""

    def __init__(self, factory: TypestoreMessageFactory, intrinsics: Intrinsics) -> None:
        self.factory = factory
        self.intrinsics = intrinsics
        self.camera = CameraModel.from_intrinsics(intrinsics)
        self.frame_id = "test_camera_optical_frame"

    def camera_info(self, model: CameraModel | None = None, stamp_ns: int = 0) -> Any:
        return self.factory.build(camera_info_message(model or self.camera, stamp_ns, self.frame_id))

    def image(self, index: int, stamp_ns: int | None = None, encoding: str = "rgb8", **fields: Any) -> Any:
        rgb = textured_image(index, self.intrinsics.width, self.intrinsics.height)
        data = rgb_to_image(rgb, stamp_ns if stamp_ns is not None else 1_000_000_000 + index * 100_000_000,
                            self.frame_id, encoding)
        data.fields.update(fields)
        return self.factory.build(data)


class RecordingSink:
    """An OutputSink that builds every message with the typestore (so fields are validated
    against the real definitions) and records them."""

    def __init__(self, factory: TypestoreMessageFactory, subscribed: set[str] | None = None) -> None:
        self.factory = factory
        self.subscribed = set(subscribed or ())
        self.published: dict[str, list[Any]] = {}
        self.transforms: list[Any] = []
        self.logs: list[tuple[str, str]] = []

    def publish(self, key: str, message: MessageData) -> None:
        self.published.setdefault(key, []).append(self.factory.build(message))

    def send_transforms(self, transforms: list[MessageData]) -> None:
        self.transforms.extend(self.factory.build(t) for t in transforms)

    def has_subscribers(self, key: str) -> bool:
        return key in self.subscribed

    def log(self, level: str, text: str) -> None:
        assert level in ("debug", "info", "warning", "error"), level
        self.logs.append((level, text))

    def last(self, key: str) -> Any:
        return self.published[key][-1]


class FakeClock:
    """A monotonic clock the test advances by hand."""

    def __init__(self, start: float = 100.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll ``predicate`` until true or ``timeout`` seconds passed."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


class FakeEngine:
    """Deterministic stand-in for :class:`posegs_ros.pipeline.Reconstructor` (worker policy tests).

    The first ``init_frames`` frames after a reset are INITIALIZING; then the camera moves 1 cm
    along x per frame, every ``keyframe_every``-th frame is a keyframe, and the map holds 20
    Gaussians. Frame indices in ``fail_on`` raise RuntimeError, ``reject_on`` FrameError,
    ``nan_on`` return a NaN pose. ``delay`` seconds of sleep simulate optimization.
    """

    def __init__(
        self,
        init_frames: int = 1,
        keyframe_every: int = 3,
        fail_on: Iterable[int] = (),
        reject_on: Iterable[int] = (),
        nan_on: Iterable[int] = (),
        delay: float = 0.0,
        groups: bool = False,
        restart_on: Iterable[int] = (),
    ) -> None:
        self.init_frames = init_frames
        self.restart_on = set(restart_on)  # frames where the map restarts (focal calibration): all re-posed
        self.keyframe_every = keyframe_every
        self.fail_on, self.reject_on, self.nan_on = set(fail_on), set(reject_on), set(nan_on)
        self.delay = delay
        self.groups = groups
        self.processed: list[Frame] = []
        self.arrival_period: float | None = None
        self.resets = 0
        self.reset_counters()
        self._since_reset = 0
        self._keyframes: list[np.ndarray] = []
        self.gmap = GaussianMap()

    def reset_counters(self) -> None:
        self.counters = SimpleNamespace(lost_frames=0, relocalizations=0, reinitializations=0)

    def process(self, frame: Frame) -> FrameResult:
        if self.delay:
            time.sleep(self.delay)
        self.processed.append(frame)
        if frame.index in self.fail_on:
            raise RuntimeError(f"simulated failure on frame {frame.index}")
        if frame.index in self.reject_on:
            raise FrameError(f"simulated rejection of frame {frame.index}")
        self._since_reset += 1
        n = self._since_reset
        initializing = n <= self.init_frames
        pose = np.eye(4)
        pose[0, 3] = 0.01 * n
        if frame.index in self.nan_on:
            pose[0, 0] = math.nan
        is_keyframe = not initializing and (n - self.init_frames - 1) % self.keyframe_every == 0
        if not initializing and len(self.gmap) == 0:
            rng = np.random.default_rng(0)
            means = torch.from_numpy(rng.uniform(-1, 1, (20, 3)).astype(np.float32)) + torch.tensor([0.0, 0.0, 3.0])
            self.gmap.add(means, torch.full((20, 3), 0.5), torch.full((20,), 0.05))
        if is_keyframe:
            self._keyframes.append(pose.copy())
        h, w = frame.image.shape[:2]
        image = frame.image.copy()
        group_poses = {}
        mask = None
        if self.groups and not initializing:
            obj = np.eye(4)
            obj[:3, 3] = [0.0, 0.1 * n, 2.0]
            group_poses = {1: obj, 2: np.full((4, 4), np.nan)}
            mask = np.zeros((h, w), bool)
            mask[: h // 2, : w // 2] = True
        render = None if initializing else (lambda: (image, np.full((h, w), 2.0, np.float32)))
        late, restarted = [], frame.index in self.restart_on
        if restarted:  # every earlier frame again, 2 mm further along y
            for i, earlier in enumerate(self.processed[:-1]):
                moved = np.eye(4)
                moved[:3, 3] = [0.01 * (i + 1), 0.002, 0.0]
                late.append(TrajectoryPoint(earlier.index, earlier.stamp, moved, TrackingState.TRACKING, False))
        return FrameResult(
            stamp=frame.stamp,
            index=frame.index,
            pose=pose,
            state=TrackingState.INITIALIZING if initializing else TrackingState.TRACKING,
            is_keyframe=is_keyframe,
            num_gaussians=len(self.gmap),
            num_keyframes=len(self._keyframes),
            timings=StageTimings(
                flow=0.001, tracking=0.002, mapping=0.003 if is_keyframe else 0.0, render=0.0, total=0.006
            ),
            inlier_ratio=0.0 if initializing else 0.9,
            group_poses=group_poses,
            dynamic_mask=mask,
            late=late,
            restarted=restarted,
            _render=render,
        )

    def reset(self) -> None:
        self.resets += 1
        self._since_reset = 0
        self._keyframes = []
        self.gmap = GaussianMap()
        self.reset_counters()

    def save_map(self, path: str | Path) -> Path:
        return self.gmap.save_ply(path)

    def map_cloud(self) -> tuple[np.ndarray, np.ndarray]:
        xyz = self.gmap.means.detach().numpy().astype(np.float32)
        return xyz, np.full((len(xyz), 3), 128, np.uint8)

    def keyframe_poses(self) -> list[np.ndarray]:
        return [p.copy() for p in self._keyframes]


def launch_arguments(path: Path = REPO / "launch" / "reconstruct.launch.py") -> dict[str, str]:
    """``{name: default}`` of the ``arguments = [(name, default, description), ...]`` list of a launch file."""
    import ast

    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "arguments" for t in node.targets):
            return {item.elts[0].value: item.elts[1].value for item in node.value.elts}
    raise AssertionError(f"no `arguments = [...]` list in {path}")
