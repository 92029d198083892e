"""~/status and /diagnostics: real message classes, CDR round trip, diagnostic levels (ROS-free)."""

from __future__ import annotations

from typing import Any

import numpy as np
from ros_support import REPO

from posegs_ros.ros.status import STATE_CODES, DiagnosticLevel, DiagnosticsTracker, StatusSnapshot, status_message


def _snapshot(**changes: Any) -> StatusSnapshot:
    pose = np.eye(4)
    pose[:3, 3] = [0.5, 0.0, 2.0]
    base = dict(
        state="tracking", stamp_ns=1_700_000_000_500_000_000, frame_index=41, is_keyframe=True, num_keyframes=7,
        num_gaussians=12345, inlier_ratio=0.8,
        timings={"flow": 0.01, "tracking": 0.2, "mapping": 1.5, "render": 0.05, "total": 1.8},
        queue_latency=0.3, frames_received=50, frames_processed=42, frames_dropped=5,
        skips={"bad_image_data": 2, "no_camera_info": 1}, resets={"time_jump_back": 1},
        lost_frames=1, relocalizations=1, reinitializations=0,
        groups=[(1, pose), (2, np.full((4, 4), np.nan))], seconds_since_image=0.1, exposure_ratio=0.75, exposure_pairs=12,
    )
    base.update(changes)
    return StatusSnapshot(**base)


def test_status_message_round_trips_through_cdr(typestore: Any, factory: Any) -> None:
    msg = factory.build(status_message(_snapshot(), "map", "posegs_object_"))
    raw = typestore.serialize_cdr(msg, "posegs_ros/msg/ReconstructionStatus")
    back = typestore.deserialize_cdr(raw, "posegs_ros/msg/ReconstructionStatus")
    assert back.state == back.STATE_TRACKING == 2 and back.state_name == "tracking"
    assert back.header.frame_id == "map" and back.header.stamp.sec == 1_700_000_000
    assert (back.frame_index, back.num_keyframes, back.num_gaussians) == (41, 7, 12345)
    assert np.isclose(back.time_mapping, 1.5) and np.isclose(back.time_total, 1.8)
    assert np.isclose(back.queue_latency, 0.3)
    assert (back.frames_received, back.frames_processed, back.frames_dropped, back.frames_skipped) == (50, 42, 5, 3)
    assert list(back.skip_reasons) == ["bad_image_data", "no_camera_info"] and list(back.skip_counts) == [2, 1]
    assert list(back.reset_reasons) == ["time_jump_back"] and list(back.reset_counts) == [1]
    assert len(back.groups) == 1 and back.groups[0].id == 1 and back.groups[0].child_frame_id == "posegs_object_1"
    assert np.isclose(back.groups[0].pose.position.z, 2.0)


def test_state_codes_match_the_message_constants(typestore: Any) -> None:
    cls = typestore.types["posegs_ros/msg/ReconstructionStatus"]
    for name, code in STATE_CODES.items():
        assert getattr(cls, f"STATE_{name.upper()}") == code
    text = (REPO / "msg" / "ReconstructionStatus.msg").read_text()
    assert all(name in text for name in STATE_CODES)


def test_diagnostic_levels() -> None:
    tracker = DiagnosticsTracker("posegs_node: reconstruction", "/posegs_node", stale_after_s=5.0)
    level, text = tracker.assess(_snapshot(seconds_since_image=None, skips={}, resets={}))
    assert level == DiagnosticLevel.WARN and "waiting for images" in text
    assert tracker.assess(_snapshot(seconds_since_image=9.0, skips={}, resets={}))[0] == DiagnosticLevel.STALE
    level, text = tracker.assess(_snapshot(skips={"bad_image_data": 2}, resets={}))
    assert level == DiagnosticLevel.WARN and "bad_image_data x2" in text
    assert tracker.assess(_snapshot(skips={"bad_image_data": 2}, resets={}))[0] == DiagnosticLevel.OK  # nothing new
    level, text = tracker.assess(_snapshot(skips={"bad_image_data": 2, "engine_error": 1}, resets={}))
    assert level == DiagnosticLevel.ERROR and "engine_error x1" in text
    lost = _snapshot(state="lost", skips={"bad_image_data": 2, "engine_error": 1}, resets={})
    assert tracker.assess(lost)[0] == DiagnosticLevel.WARN
    level, text = tracker.assess(_snapshot(skips={"bad_image_data": 2, "engine_error": 1}, resets={"service": 1}))
    assert level == DiagnosticLevel.WARN and "reset" in text
    assert tracker.assess(_snapshot(skips={"bad_image_data": 2, "engine_error": 1}, resets={"service": 1})) == (
        DiagnosticLevel.OK, "tracking"
    )


def test_diagnostic_array_message(typestore: Any, factory: Any) -> None:
    tracker = DiagnosticsTracker("posegs_node: reconstruction", "/posegs_node", stale_after_s=5.0)
    msg = factory.build(tracker.message(_snapshot(last_problem="image 3 skipped"), now_ns=2_000_000_000))
    raw = typestore.serialize_cdr(msg, "diagnostic_msgs/msg/DiagnosticArray")
    back = typestore.deserialize_cdr(raw, "diagnostic_msgs/msg/DiagnosticArray")
    (status,) = back.status
    assert status.level == DiagnosticLevel.WARN  # new skips since the (fresh) tracker started
    assert status.name == "posegs_node: reconstruction" and status.hardware_id == "/posegs_node"
    values = {kv.key: kv.value for kv in status.values}
    assert values["frames dropped (queue full)"] == "5" and values["skipped: bad_image_data"] == "2"
    assert values["reset: time_jump_back"] == "1" and values["last problem"] == "image 3 skipped"
    assert values["exposure time / frame period"] == "0.75 (measured on 12 frame pairs)"
    assert back.header.stamp.sec == 2
