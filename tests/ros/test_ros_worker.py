"""The worker between callbacks and engine: queue policy, bad input, resets, services, outputs (ROS-free).

Messages in and out are real ``rosbags`` message objects; the engine is :class:`FakeEngine`
(deterministic poses, scripted failures) except in the last test, which runs the real
Reconstructor on a synthetic sequence.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
from ros_support import FakeClock, FakeEngine, Messages, RecordingSink, wait_until

from posegs_ros.camera import Intrinsics
from posegs_ros.scene.gaussians import read_ply
from posegs_ros.io import CameraModel, image_to_depth, image_to_rgb, pointcloud2_to_points, transform_to_matrix
from posegs_ros.ros.params import NodeSettings
from posegs_ros.ros.worker import DEFAULT_CAMERA_FRAME, ReconstructionWorker

ALL_OUTPUTS = ("deblurred", "depth", "dynamic_mask", "path", "map_cloud", "keyframes", "status")


def _worker(
    engine: FakeEngine, sink: RecordingSink, clock: FakeClock | None = None, **settings: Any
) -> ReconstructionWorker:
    defaults: dict[str, Any] = {"queue_size": 100, "map_cloud_period_s": 0.0}
    defaults.update(settings)
    return ReconstructionWorker(engine, NodeSettings(**defaults), sink, clock or time.monotonic)


def _drain(worker: ReconstructionWorker) -> None:
    while worker.step(timeout=0):
        pass


def _status(sink: RecordingSink) -> Any:
    return sink.last("status")


def _skips(sink: RecordingSink) -> dict[str, int]:
    status = _status(sink)
    return dict(zip(status.skip_reasons, status.skip_counts.tolist()))


def _resets(sink: RecordingSink) -> dict[str, int]:
    status = _status(sink)
    return dict(zip(status.reset_reasons, status.reset_counts.tolist()))


def test_frames_flow_to_tf_images_path_and_status(messages: Messages, sink_factory: Callable) -> None:
    engine, sink, clock = FakeEngine(init_frames=1, keyframe_every=2), sink_factory(ALL_OUTPUTS), FakeClock()
    worker = _worker(engine, sink, clock, map_cloud_period_s=0.5)
    worker.on_camera_info(messages.camera_info())
    for i in range(5):  # one at a time: the worker has time to render each before the next arrives
        worker.on_image(messages.image(i))
        _drain(worker)
    assert len(sink.published["map_cloud"]) == 1  # at most one per period (the clock stood still)
    clock.advance(0.6)
    assert not worker.step(timeout=0)  # idle step: the map changed since, so the cloud goes out now
    assert [f.index for f in engine.processed] == [0, 1, 2, 3, 4]
    assert engine.processed[0].stamp == pytest.approx(1.0) and engine.processed[0].image.shape == (60, 80, 3)
    # TF for the four frames with a pose, camera frame = the image's frame_id, stamp = the image's
    assert [t.child_frame_id for t in sink.transforms] == [messages.frame_id] * 4
    assert [t.header.stamp.nanosec for t in sink.transforms] == [100_000_000 * i for i in range(1, 5)]
    assert np.isclose(transform_to_matrix(sink.transforms[-1].transform)[0, 3], 0.05)
    # deblurred rgb8 and depth 32FC1 with the input header
    deblurred, depth = sink.published["deblurred"], sink.published["depth"]
    assert len(deblurred) == len(depth) == 4
    assert deblurred[-1].encoding == "rgb8" and deblurred[-1].header.frame_id == messages.frame_id
    assert deblurred[-1].header.stamp.nanosec == 400_000_000
    assert np.array_equal(image_to_rgb(deblurred[-1]), engine.processed[-1].image)
    assert depth[-1].encoding == "32FC1" and np.allclose(image_to_depth(depth[-1]), 2.0)
    # path grows, keyframe frustums on keyframes, the latest map cloud
    assert len(sink.last("path").poses) == 4
    assert len(sink.published["keyframes"]) == 2  # frames 1 and 3 are keyframes
    xyz, rgb = pointcloud2_to_points(sink.last("map_cloud"))
    assert xyz.shape == (20, 3) and rgb is not None and len(sink.published["map_cloud"]) == 2
    clock.advance(5.0)
    worker.step(timeout=0)
    assert len(sink.published["map_cloud"]) == 2  # unchanged map: not sent again
    status = _status(sink)
    assert (status.state_name, status.frames_received, status.frames_processed) == ("tracking", 5, 5)
    assert status.num_gaussians == 20 and status.num_keyframes == 2 and status.frame_index == 4
    assert status.frames_dropped == 0 and status.frames_skipped == 0
    assert status.time_total == pytest.approx(0.006)


def test_a_frame_is_not_rendered_while_a_newer_image_waits(messages: Messages, sink_factory: Callable) -> None:
    engine, sink = FakeEngine(init_frames=1), sink_factory(ALL_OUTPUTS)
    worker = _worker(engine, sink, queue_size=4)
    worker.on_camera_info(messages.camera_info())
    for i in range(4):  # images 1 and 2 are tracked with a newer image waiting: tracking first, no render
        worker.on_image(messages.image(i))
    _drain(worker)
    assert [t.header.stamp.nanosec for t in sink.transforms] == [100_000_000 * i for i in range(1, 4)]
    assert [m.header.stamp.nanosec for m in sink.published["deblurred"]] == [300_000_000]
    status = _status(sink)
    assert (status.renders, status.renders_skipped) == (1, 2)


def test_renders_are_skipped_without_subscribers(messages: Messages, sink_factory: Callable) -> None:
    engine, sink = FakeEngine(), sink_factory(())
    worker = _worker(engine, sink, map_cloud_period_s=0.1)
    worker.on_camera_info(messages.camera_info())
    for i in range(3):
        worker.on_image(messages.image(i))
    _drain(worker)
    assert len(sink.transforms) == 2  # TF always
    assert "deblurred" not in sink.published and "depth" not in sink.published and "map_cloud" not in sink.published
    assert "status" in sink.published


def test_full_queue_drops_the_oldest_images(messages: Messages, sink_factory: Callable) -> None:
    engine, sink = FakeEngine(), sink_factory()
    worker = _worker(engine, sink, queue_size=2)
    worker.on_camera_info(messages.camera_info())
    for i in range(6):
        worker.on_image(messages.image(i))
    _drain(worker)
    assert [f.index for f in engine.processed] == [4, 5]  # the newest survive
    status = _status(sink)
    assert status.frames_received == 6 and status.frames_dropped == 4 and status.frames_processed == 2
    assert sum("input queue full" in text for _, text in sink.logs) == 1  # throttled


def test_bad_input_is_counted_and_never_stops_the_worker(messages: Messages, sink_factory: Callable) -> None:
    engine, sink = FakeEngine(), sink_factory()
    worker = _worker(engine, sink)
    worker.on_image(messages.image(0))  # before any camera_info: waits for it
    worker.on_camera_info(messages.camera_info())
    bad_encoding = messages.image(1)
    bad_encoding.encoding = "yuv422"
    worker.on_image(bad_encoding)
    truncated = messages.image(2)
    truncated.data = truncated.data[:100]
    worker.on_image(truncated)
    worker.on_image(messages.image(3))
    worker.on_camera_info(messages.camera_info(CameraModel.from_intrinsics(Intrinsics(80, 80, 80, 60, 160, 120))))
    worker.on_image(messages.image(4))  # camera_info now says 160x120
    broken = messages.camera_info()
    broken.k = np.zeros(9)
    worker.on_camera_info(broken)
    worker.on_image(messages.image(5))
    worker.on_camera_info(messages.camera_info())
    worker.on_image(messages.image(6))
    _drain(worker)
    assert [f.index for f in engine.processed] == [0, 3, 6]
    assert _skips(sink) == {
        "unsupported_encoding": 1, "bad_image_data": 1, "camera_info_size_mismatch": 1, "bad_camera_info": 1,
    }
    assert _status(sink).frames_skipped == 4
    warnings = [text for level, text in sink.logs if level == "warning"]
    assert any("yuv422" in text for text in warnings) and any("data holds" in text for text in warnings)


def test_images_before_the_first_camera_info_wait_for_it(messages: Messages, sink_factory: Callable) -> None:
    engine, sink = FakeEngine(), sink_factory()
    worker = _worker(engine, sink, queue_size=2)
    for i in range(4):
        worker.on_image(messages.image(i))
    _drain(worker)
    assert engine.processed == [] and worker.snapshot().skips == {"no_camera_info": 2}  # only the newest 2 wait
    worker.on_camera_info(messages.camera_info())
    worker.on_image(messages.image(4))
    _drain(worker)
    assert [f.index for f in engine.processed] == [3, 4]  # image 2 was the oldest of 3 in a queue of 2
    status = _status(sink)
    assert status.frames_received == 5 and status.frames_dropped == 1 and status.frames_skipped == 2


def test_stamp_order_skips_and_bag_loop_resets(messages: Messages, sink_factory: Callable) -> None:
    engine, sink = FakeEngine(), sink_factory(("path",))
    worker = _worker(engine, sink, loop_reset_s=1.0)
    worker.on_camera_info(messages.camera_info())
    for i, stamp_s in enumerate([10.0, 10.1, 10.1, 10.05, 10.2, 3.0, 3.1]):
        worker.on_image(messages.image(i, stamp_ns=int(stamp_s * 1e9)))
    _drain(worker)
    assert [f.index for f in engine.processed] == [0, 1, 4, 5, 6]
    assert _skips(sink) == {"stamp_not_increasing": 2}
    assert _resets(sink) == {"time_jump_back": 1} and engine.resets == 1
    assert len(sink.last("path").poses) == 1  # path restarted with the new map (frame 6)
    assert any("jumped back by 7.200 s" in text for _, text in sink.logs)


def test_a_map_restart_replaces_the_path_with_the_new_poses(messages: Messages, sink_factory: Callable) -> None:
    engine, sink = FakeEngine(init_frames=0, restart_on={4}), sink_factory(("path",))
    worker = _worker(engine, sink)
    worker.on_camera_info(messages.camera_info())
    for i in range(6):
        worker.on_image(messages.image(i))
    _drain(worker)
    path = sink.last("path").poses
    assert len(path) == 6  # frames 0-3 once (their re-posed version), then 4 and 5
    assert [p.pose.position.y for p in path[:4]] == pytest.approx([0.002] * 4)
    assert _resets(sink) == {} and engine.resets == 0


def test_camera_change_resets_the_map(messages: Messages, sink_factory: Callable) -> None:
    engine, sink = FakeEngine(), sink_factory()
    worker = _worker(engine, sink)
    worker.on_camera_info(messages.camera_info())
    worker.on_image(messages.image(0))
    worker.on_image(messages.image(1))
    zoomed = CameraModel.from_intrinsics(Intrinsics(120, 120, 40, 30, 80, 60))
    worker.on_camera_info(messages.camera_info(zoomed))
    worker.on_image(messages.image(2))
    _drain(worker)
    assert [f.index for f in engine.processed] == [0, 1, 2] and engine.processed[2].intrinsics.fx == 120
    assert _resets(sink) == {"camera_changed": 1} and engine.resets == 1


def test_engine_failures_are_counted_then_reset(messages: Messages, sink_factory: Callable) -> None:
    engine, sink = FakeEngine(fail_on={2, 3, 4}, reject_on={6}, nan_on={8}), sink_factory()
    worker = _worker(engine, sink, reset_after_failures=3)
    worker.on_camera_info(messages.camera_info())
    for i in range(10):
        worker.on_image(messages.image(i))
    _drain(worker)
    assert _skips(sink) == {"engine_error": 3, "engine_rejected": 1, "non_finite_pose": 1}
    assert _resets(sink) == {"engine_failures": 1} and engine.resets == 1
    stamps = [t.header.stamp.nanosec for t in sink.transforms]
    assert 800_000_000 not in stamps  # nothing published for the NaN pose
    assert all(np.all(np.isfinite(transform_to_matrix(t.transform))) for t in sink.transforms)
    assert any(level == "error" and "RuntimeError" in text for level, text in sink.logs)
    assert _status(sink).frames_processed == 5  # 0, 1, 5, 7, 9


def test_dynamic_groups_reach_tf_status_and_mask(messages: Messages, sink_factory: Callable) -> None:
    engine, sink = FakeEngine(groups=True), sink_factory(("dynamic_mask",))
    worker = _worker(engine, sink, object_frame_prefix="obj_", camera_frame="cam", map_frame="world")
    worker.on_camera_info(messages.camera_info())
    for i in range(3):
        worker.on_image(messages.image(i))
    _drain(worker)
    frames = [(t.header.frame_id, t.child_frame_id) for t in sink.transforms]
    assert frames[-2:] == [("world", "cam"), ("world", "obj_1")]  # group 2 has a NaN pose: left out
    status = _status(sink)
    assert [g.child_frame_id for g in status.groups] == ["obj_1"] and status.header.frame_id == "world"
    mask = sink.last("dynamic_mask")
    assert mask.encoding == "mono8" and mask.header.frame_id == "cam"
    assert image_to_rgb(mask)[0, 0, 0] == 255 and image_to_rgb(mask)[-1, -1, 0] == 0


def test_images_without_frame_id_get_a_default_tf_frame(messages: Messages, sink_factory: Callable) -> None:
    engine, sink = FakeEngine(), sink_factory()
    worker = _worker(engine, sink)
    worker.on_camera_info(messages.camera_info())
    for i in range(2):
        msg = messages.image(i)
        msg.header.frame_id = ""
        worker.on_image(msg)
    _drain(worker)
    assert sink.transforms[-1].child_frame_id == DEFAULT_CAMERA_FRAME


def test_services_between_frames_in_the_running_thread(
    messages: Messages, sink_factory: Callable, tmp_path: Path
) -> None:
    engine, sink = FakeEngine(delay=0.05), sink_factory()
    worker = _worker(engine, sink, save_path=str(tmp_path / "configured.ply"))
    empty = worker.request_save()
    worker.start()
    try:
        result = empty.result(timeout=10)
        assert not result.success and "empty" in result.message  # nothing to save before initialization
        worker.on_camera_info(messages.camera_info())
        start = time.monotonic()
        for i in range(20):
            worker.on_image(messages.image(i))
        assert time.monotonic() - start < 0.5  # callbacks never wait for the engine (20 x 50 ms)
        assert wait_until(lambda: len(engine.processed) >= 3)
        saved = worker.request_save(str(tmp_path / "sub" / "map.ply")).result(timeout=10)
        assert saved.success and saved.num_gaussians == 20 and saved.path == str(tmp_path / "sub" / "map.ply")
        assert read_ply(saved.path)["means"].shape == (20, 3)
        default = worker.request_save("").result(timeout=10)
        assert default.success and Path(default.path) == tmp_path / "configured.ply"
        message = worker.request_reset().result(timeout=10)
        assert "reset" in message and engine.resets == 1
        assert wait_until(lambda: not len(worker.queue))
    finally:
        assert worker.stop(timeout=10)
    assert not worker.running
    late = worker.request_save()
    with pytest.raises(RuntimeError, match="stopped"):
        late.result(timeout=1)
    snap = worker.snapshot()
    assert snap.resets == {"service": 1} and snap.frames_received == 20
    assert snap.frames_processed + snap.frames_dropped == 20


def test_save_failure_is_reported(messages: Messages, sink_factory: Callable, tmp_path: Path) -> None:
    engine, sink = FakeEngine(), sink_factory()
    worker = _worker(engine, sink)
    worker.on_camera_info(messages.camera_info())
    for i in range(2):
        worker.on_image(messages.image(i))
    _drain(worker)
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    result = worker.save(str(blocker / "map.ply"))
    assert not result.success and "cannot write" in result.message


def test_snapshot_times_since_last_image(messages: Messages, sink_factory: Callable) -> None:
    clock = FakeClock()
    worker = _worker(FakeEngine(), sink_factory(), clock)
    assert worker.snapshot().seconds_since_image is None
    worker.on_image(messages.image(0))
    clock.advance(2.5)
    assert worker.snapshot().seconds_since_image == pytest.approx(2.5)


@pytest.mark.slow
def test_real_engine_on_a_synthetic_sequence(sink_factory: Callable, factory: Any) -> None:
    """The real Reconstructor behind the worker: initializes, tracks, publishes renders and a cloud."""
    synth = pytest.importorskip("posegs_ros.tools.synth", reason="needs the synthetic sequence generator")
    from posegs_ros.io import camera_info_message, rgb_to_image
    from posegs_ros.pipeline import Reconstructor
    from posegs_ros.ros.params import settings_from_parameters

    seq = synth.generate(synth.SynthConfig(frames=10, width=160, height=120, subframes=3, fps=10.0))
    config, settings = settings_from_parameters({**FAST_ENGINE, "ros.queue_size": 100, "ros.map_cloud_period_s": 0.01})
    sink = sink_factory(ALL_OUTPUTS)
    worker = ReconstructionWorker(Reconstructor(config), settings, sink)
    camera = CameraModel.from_intrinsics(seq.intrinsics)
    worker.on_camera_info(factory.build(camera_info_message(camera, 0, "cam")))
    for frame in seq.frames:
        worker.on_image(factory.build(rgb_to_image(frame.blurred, frame.stamp_ns, "cam")))
    _drain(worker)
    status = _status(sink)
    assert status.frames_processed == 10 and status.frames_skipped == 0, sink.logs
    assert status.state_name != "initializing" and status.num_gaussians > 0  # tracking quality: engine tests
    assert len(sink.transforms) >= 2 and "deblurred" in sink.published and "map_cloud" in sink.published
    assert image_to_rgb(sink.last("deblurred")).shape == (120, 160, 3)


# Cheap engine settings for tests (fewer iterations and Gaussians, easier initialization).
FAST_ENGINE: dict[str, Any] = {
    "init.min_inliers": 80,
    "init.min_parallax_px": 4.0,
    "init.seed_points": 2500,
    "init.mapping_rounds": 2,
    "mapping.gaussian_iters": 10,
    "mapping.pose_iters": 3,
    "mapping.joint_iters": 3,
    "tracking.refine_steps": 2,
    "blur.subframes": 3,
}


def test_the_engine_learns_the_camera_period_from_image_arrivals(messages: Messages, sink_factory: Callable) -> None:
    # a bag played at half rate: stamps 0.1 s apart, images arriving every 0.2 s; the engine is slow,
    # so most images wait in (or drop from) the queue -- arrivals still tell the camera's period
    engine, sink, clock = FakeEngine(), sink_factory(), FakeClock()
    worker = _worker(engine, sink, clock, queue_size=2)
    worker.on_camera_info(messages.camera_info())
    for i in range(8):
        worker.on_image(messages.image(i))
        clock.advance(0.2)
        if i % 3 == 0:
            _drain(worker)
    assert engine.arrival_period == pytest.approx(0.2)
