"""The reconstruction engine's front door: ``Reconstructor.process(frame) -> FrameResult``.

This module never imports ROS: the node (``posegs_ros.ros``) and ``posegs replay`` both feed
:class:`Frame` objects built by :mod:`posegs_ros.io` and read :class:`FrameResult` back.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .camera import Intrinsics
from .config import PosegsConfig

__all__ = ["Frame", "FrameResult", "TrackingState", "StageTimings", "Reconstructor"]


class TrackingState(str, enum.Enum):
    """What the engine knows about the camera for a frame."""

    INITIALIZING = "initializing"  # waiting for two frames with enough parallax
    TRACKING = "tracking"
    LOST = "lost"  # tracking failed; pose is the prediction, recovery under way
    RELOCALIZED = "relocalized"  # recovered against a window keyframe


@dataclass
class Frame:
    """One undistorted camera image handed to the engine."""

    image: np.ndarray  # [H, W, 3] uint8 RGB
    stamp: float  # seconds (the image header stamp)
    intrinsics: Intrinsics  # of ``image`` (pinhole, undistorted)
    index: int = 0  # position of the frame in its stream (bag index), for outputs


@dataclass
class StageTimings:
    """Wall-clock seconds spent per stage on one frame."""

    flow: float = 0.0
    tracking: float = 0.0
    mapping: float = 0.0
    render: float = 0.0
    total: float = 0.0


@dataclass
class FrameResult:
    """What the engine says about one processed frame."""

    stamp: float
    index: int
    pose: np.ndarray  # [4, 4] float64 mid-exposure camera-to-map (optical frame)
    state: TrackingState
    is_keyframe: bool
    num_gaussians: int
    num_keyframes: int
    timings: StageTimings = field(default_factory=StageTimings)
    exposure_twist: np.ndarray = field(default_factory=lambda: np.zeros(6))  # [6] se(3)
    inlier_ratio: float = 0.0
    group_poses: dict[int, np.ndarray] = field(default_factory=dict)  # group id -> [4, 4] object-to-map
    dynamic_mask: np.ndarray | None = None  # [H, W] bool, True on moving objects
    _render: Callable[[], tuple[np.ndarray, np.ndarray]] | None = field(default=None, repr=False)
    _cache: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)

    def _rendered(self) -> tuple[np.ndarray, np.ndarray]:
        if self._cache is None:
            if self._render is None:
                raise RuntimeError("this FrameResult carries no renderer (map was empty)")
            self._cache = self._render()
        return self._cache

    def deblurred(self) -> np.ndarray:
        """Sharp render at the mid-exposure pose, ``[H, W, 3]`` uint8 RGB (computed lazily)."""
        return self._rendered()[0]

    def depth(self) -> np.ndarray:
        """Rendered expected depth at the mid-exposure pose, ``[H, W]`` float32 (NaN = no map)."""
        return self._rendered()[1]


class Reconstructor:
    """Online monocular pose + 3DGS reconstruction (implemented in the engine issue)."""

    def __init__(self, config: PosegsConfig | None = None) -> None:
        self.config = config or PosegsConfig()

    def process(self, frame: Frame) -> FrameResult:
        """Track ``frame``, update the map if it becomes a keyframe, return the result."""
        raise NotImplementedError

    def reset(self) -> None:
        """Forget the map and the trajectory; the next frame starts a new initialization."""
        raise NotImplementedError

    def save_map(self, path: str | Path) -> Path:
        """Write the map as a standard 3DGS PLY, atomically."""
        raise NotImplementedError
