"""``~/status`` and ``/diagnostics`` from a snapshot of the worker's state (ROS-free)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..io import MessageData, header_fields, pose_fields
from .outputs import is_finite_pose

__all__ = [
    "STATE_CODES",
    "STATUS_TYPE",
    "DIAGNOSTIC_ARRAY_TYPE",
    "StatusSnapshot",
    "status_message",
    "DiagnosticLevel",
    "DiagnosticsTracker",
]

STATUS_TYPE = "posegs_ros/msg/ReconstructionStatus"
DIAGNOSTIC_ARRAY_TYPE = "diagnostic_msgs/msg/DiagnosticArray"

# state name -> ReconstructionStatus.STATE_* constant
STATE_CODES: dict[str, int] = {"waiting": 0, "initializing": 1, "tracking": 2, "lost": 3, "relocalized": 4}

# skip reasons that mean the engine itself misbehaved (diagnostics ERROR)
_ENGINE_FAULTS = ("engine_error", "non_finite_pose")


@dataclass
class StatusSnapshot:
    """A consistent copy of what the worker knows, taken under its lock."""

    state: str = "waiting"
    stamp_ns: int = 0  # stamp of the last processed image
    frame_index: int = 0
    is_keyframe: bool = False
    num_keyframes: int = 0
    num_gaussians: int = 0
    inlier_ratio: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)  # flow, tracking, mapping, render, total
    queue_latency: float = 0.0
    tracking_latency: float = 0.0  # seconds engine.process took for the last frame (tracking only when concurrent)
    tracking_latency_mean: float = 0.0  # mean over the frames processed since the start
    mapping_backlog: int = 0  # keyframes waiting for the mapping thread
    map_version: int = 0  # version of the newest map snapshot (grows with every mapping step)
    mapping_rounds: int = 0  # window rounds mapping completed on the current map
    renders: int = 0  # ~/deblurred, ~/depth renders published
    renders_skipped: int = 0  # tracked frames not rendered: a newer image was waiting (or the rate limit)
    frames_received: int = 0
    frames_processed: int = 0
    frames_dropped: int = 0
    skips: dict[str, int] = field(default_factory=dict)
    resets: dict[str, int] = field(default_factory=dict)
    lost_frames: int = 0
    mismatch_frames: int = 0  # tracked, the map's depth off there: keyframes unless mapping is behind
    relocalizations: int = 0
    reinitializations: int = 0
    groups: list[tuple[int, np.ndarray]] = field(default_factory=list)  # (group id, object-to-map pose)
    exposure_ratio: float = 0.0  # exposure time / frame period the blur model uses
    exposure_pairs: int = 0  # frame pairs that measured it (0: the configured guess)
    seconds_since_image: float | None = None  # None: no image received yet
    last_problem: str = ""  # the most recent warning text

    @property
    def frames_skipped(self) -> int:
        return sum(self.skips.values())


def _u32(value: int) -> int:
    return int(min(max(int(value), 0), 2**32 - 1))


def status_message(snapshot: StatusSnapshot, map_frame: str, object_prefix: str) -> MessageData:
    """``posegs_ros/ReconstructionStatus`` fields of a snapshot."""
    timings = snapshot.timings
    groups = [
        {"id": _u32(group), "child_frame_id": f"{object_prefix}{group}", "pose": pose_fields(pose)}
        for group, pose in snapshot.groups
        if is_finite_pose(pose)
    ]
    return MessageData(
        STATUS_TYPE,
        {
            "header": header_fields(snapshot.stamp_ns, map_frame),
            "state": STATE_CODES.get(snapshot.state, 0),
            "state_name": snapshot.state,
            "frame_index": _u32(snapshot.frame_index),
            "is_keyframe": bool(snapshot.is_keyframe),
            "num_keyframes": _u32(snapshot.num_keyframes),
            "num_gaussians": _u32(snapshot.num_gaussians),
            "inlier_ratio": float(snapshot.inlier_ratio),
            "time_flow": float(timings.get("flow", 0.0)),
            "time_tracking": float(timings.get("tracking", 0.0)),
            "time_mapping": float(timings.get("mapping", 0.0)),
            "time_render": float(timings.get("render", 0.0)),
            "time_total": float(timings.get("total", 0.0)),
            "queue_latency": float(snapshot.queue_latency),
            "tracking_latency": float(snapshot.tracking_latency),
            "tracking_latency_mean": float(snapshot.tracking_latency_mean),
            "mapping_backlog": _u32(snapshot.mapping_backlog),
            "map_version": _u32(snapshot.map_version),
            "mapping_rounds": _u32(snapshot.mapping_rounds),
            "renders": _u32(snapshot.renders),
            "renders_skipped": _u32(snapshot.renders_skipped),
            "frames_received": _u32(snapshot.frames_received),
            "frames_processed": _u32(snapshot.frames_processed),
            "frames_dropped": _u32(snapshot.frames_dropped),
            "frames_skipped": _u32(snapshot.frames_skipped),
            "skip_reasons": list(snapshot.skips),
            "skip_counts": np.array([_u32(v) for v in snapshot.skips.values()], dtype=np.uint32),
            "reset_reasons": list(snapshot.resets),
            "reset_counts": np.array([_u32(v) for v in snapshot.resets.values()], dtype=np.uint32),
            "lost_frames": _u32(snapshot.lost_frames),
            "relocalizations": _u32(snapshot.relocalizations),
            "reinitializations": _u32(snapshot.reinitializations),
            "groups": groups,
        },
    )


class DiagnosticLevel:
    """diagnostic_msgs/DiagnosticStatus levels."""

    OK = 0
    WARN = 1
    ERROR = 2
    STALE = 3


class DiagnosticsTracker:
    """Builds ``/diagnostics`` messages; the level reflects what happened since the previous one.

    - STALE: no image for ``stale_after_s`` (or none yet: WARN "waiting for images");
    - ERROR: the engine raised or returned non-finite poses since the last message;
    - WARN: tracking lost, images skipped, or the map was reset since the last message;
    - OK otherwise (dropping images because the input is faster than the engine is normal).
    """

    def __init__(self, name: str, hardware_id: str, stale_after_s: float) -> None:
        self.name = name
        self.hardware_id = hardware_id
        self.stale_after_s = float(stale_after_s)
        self._previous_skips: dict[str, int] = {}
        self._previous_resets = 0

    def assess(self, snapshot: StatusSnapshot) -> tuple[int, str]:
        """``(level, message)`` for ``snapshot`` (and remember its counters for next time)."""
        new_skips = {
            reason: count - self._previous_skips.get(reason, 0)
            for reason, count in snapshot.skips.items()
            if count > self._previous_skips.get(reason, 0)
        }
        resets = sum(snapshot.resets.values())
        new_resets = resets - self._previous_resets
        self._previous_skips = dict(snapshot.skips)
        self._previous_resets = resets
        if snapshot.seconds_since_image is None:
            return DiagnosticLevel.WARN, "waiting for images (check the image / camera_info topics and QoS)"
        if snapshot.seconds_since_image > self.stale_after_s:
            return DiagnosticLevel.STALE, f"no image for {snapshot.seconds_since_image:.1f} s"
        skipped = ", ".join(f"{reason} x{count}" for reason, count in new_skips.items())
        if any(reason in new_skips for reason in _ENGINE_FAULTS):
            return DiagnosticLevel.ERROR, f"engine failures: {skipped}"
        if snapshot.state == "lost":
            return DiagnosticLevel.WARN, "tracking lost"
        if new_skips:
            return DiagnosticLevel.WARN, f"images skipped: {skipped}"
        if new_resets > 0:
            return DiagnosticLevel.WARN, f"map reset ({', '.join(snapshot.resets)})"
        return DiagnosticLevel.OK, snapshot.state

    def message(self, snapshot: StatusSnapshot, now_ns: int) -> MessageData:
        """``diagnostic_msgs/DiagnosticArray`` with one status for the reconstruction."""
        level, text = self.assess(snapshot)
        values: list[tuple[str, Any]] = [
            ("state", snapshot.state),
            ("frames received", snapshot.frames_received),
            ("frames processed", snapshot.frames_processed),
            ("frames dropped (queue full)", snapshot.frames_dropped),
            ("frames skipped", snapshot.frames_skipped),
            ("keyframes", snapshot.num_keyframes),
            ("gaussians", snapshot.num_gaussians),
            ("last frame total time [s]", f"{snapshot.timings.get('total', 0.0):.3f}"),
            ("queue latency [s]", f"{snapshot.queue_latency:.3f}"),
            ("lost frames", snapshot.lost_frames),
            ("map mismatch frames", snapshot.mismatch_frames),
            ("relocalizations", snapshot.relocalizations),
            ("reinitializations", snapshot.reinitializations),
            ("motion groups", len(snapshot.groups)),
            ("exposure time / frame period", f"{snapshot.exposure_ratio:.2f} ("
             + (f"measured on {snapshot.exposure_pairs} frame pairs)" if snapshot.exposure_pairs else "configured guess)")),
        ]
        values += [(f"skipped: {reason}", count) for reason, count in snapshot.skips.items()]
        values += [(f"reset: {reason}", count) for reason, count in snapshot.resets.items()]
        if snapshot.last_problem:
            values.append(("last problem", snapshot.last_problem))
        status = {
            "level": level,
            "name": self.name,
            "message": text,
            "hardware_id": self.hardware_id,
            "values": [{"key": key, "value": str(value)} for key, value in values],
        }
        return MessageData(DIAGNOSTIC_ARRAY_TYPE, {"header": header_fields(now_ns, ""), "status": [status]})
