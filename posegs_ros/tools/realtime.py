"""``posegs replay BAG --realtime [--rate R]``: a bag played into the node's own code on a wall clock.

A live camera does not wait for the engine.  This mode feeds the bag's camera_info and image
messages at their recorded times (divided by ``R``) into
:class:`~posegs_ros.ros.worker.ReconstructionWorker` -- the very object the ROS node runs, with a
concurrent engine (tracking in the worker's thread, mapping in its own, renders in a third) and
the node's bounded drop-oldest input queue -- and records what it publishes: the camera pose
sent on TF for each image, and each ``~/deblurred`` render.  Images that arrive while tracking
is busy are dropped and counted, as on the robot.  It then evaluates the published poses and
renders against the ground truth, so live behaviour is measurable without ROS.

Outputs (``DIR``, written atomically like ``posegs replay``): ``trajectory_online.tum`` (poses as
published on TF, frames posed after initialization included), ``trajectory.tum`` (every
published frame's latest estimate at the end: keyframe-relative poses follow mapping's
refinement), ``deblurred/NNNN.png`` (the renders as published, rendered from the map of that
moment), ``map.ply``, ``metrics.json`` (``realtime`` section: received / tracked / dropped /
posed frames, tracking latency median and p95, receipt-to-TF latency, renders, mapping
rounds, CPU use) and with ground truth ``eval.json`` + ``report/``.
"""

from __future__ import annotations

import logging
import resource
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from ..io import MessageData

log = logging.getLogger(__name__)

__all__ = ["RealtimeRecorder", "replay_realtime"]


def _namespace(value: Any) -> Any:
    """Message fields (nested dicts) as attribute objects, for the duck-typed converters."""
    if isinstance(value, dict):
        return SimpleNamespace(**{k: _namespace(v) for k, v in value.items()})
    if isinstance(value, list):
        return [_namespace(v) for v in value]
    return value


@dataclass
class RealtimeRecorder:
    """The worker's :class:`~posegs_ros.ros.worker.OutputSink` in real-time replay: keeps what a
    subscriber would have received (camera poses on TF, renders, status after each frame).

    Renders are written to ``render_dir`` as they are published (``NNNN.png``, ``NNNN`` = the
    image's index in the bag, found from its stamp in ``index_of_stamp``), scaled up to ``size``
    (the camera's width, height) when the engine works smaller (``max_image_width``)."""

    render_dir: Path | None
    index_of_stamp: dict[int, int]
    size: tuple[int, int] | None = None
    object_prefix: str = "posegs_object_"
    clock: Any = time.monotonic
    poses: dict[int, np.ndarray] = field(default_factory=dict)  # stamp ns -> [4, 4] first pose sent on TF
    sent_at: dict[int, float] = field(default_factory=dict)  # stamp ns -> clock when the pose was sent
    rendered: list[int] = field(default_factory=list)  # stamps ns of published renders
    latencies: list[float] = field(default_factory=list)  # status.tracking_latency of every processed frame
    processed: list[int] = field(default_factory=list)  # status.frame_index of every processed frame
    stages: dict[str, list[float]] = field(default_factory=dict)  # status.time_<stage> of every processed frame
    status: dict[str, Any] = field(default_factory=dict)  # the last status message's fields
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def publish(self, key: str, message: MessageData) -> None:
        if key == "status":
            with self._lock:
                if message.fields["frames_processed"] != self.status.get("frames_processed"):
                    self.latencies.append(float(message.fields["tracking_latency"]))
                    self.processed.append(int(message.fields["frame_index"]))
                    for stage in ("render", "flow", "tracking"):
                        self.stages.setdefault(stage, []).append(float(message.fields[f"time_{stage}"]))
                self.status = dict(message.fields)
        elif key == "deblurred" and self.render_dir is not None:
            from ..io import atomic_write_image, image_to_rgb, stamp_to_nanoseconds

            msg = _namespace(message.fields)
            stamp = stamp_to_nanoseconds(msg.header.stamp)
            index = self.index_of_stamp.get(stamp)
            if index is not None:
                rgb = image_to_rgb(msg)
                if self.size is not None and (rgb.shape[1], rgb.shape[0]) != self.size:
                    import cv2

                    rgb = cv2.resize(rgb, self.size, interpolation=cv2.INTER_LINEAR)
                atomic_write_image(self.render_dir / f"{index:04d}.png", rgb)
                with self._lock:
                    self.rendered.append(stamp)

    def send_transforms(self, transforms: list[MessageData]) -> None:
        from ..io import stamp_to_nanoseconds, transform_to_matrix

        now = self.clock()
        for data in transforms:
            msg = _namespace(data.fields)
            if msg.child_frame_id.startswith(self.object_prefix):
                continue
            stamp = stamp_to_nanoseconds(msg.header.stamp)
            with self._lock:
                if stamp not in self.poses:
                    self.poses[stamp] = transform_to_matrix(msg.transform)
                    self.sent_at[stamp] = now

    def has_subscribers(self, key: str) -> bool:
        return key == "deblurred" and self.render_dir is not None

    def log(self, level: str, text: str) -> None:
        log.log({"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}.get(level, logging.ERROR),
                text)


def replay_realtime(
    bag_path: Path,
    out: Path,
    cfg: Any,
    rate: float = 1.0,
    image_topic: str = "/camera/image_raw",
    camera_info_topic: str | None = None,
    max_frames: int | None = None,
    gt: Path | None = None,
    evaluate: bool = True,
    force: bool = False,
    queue_size: int = 2,
    render: bool = True,
    warm: bool = True,
) -> Any:
    """Play ``bag_path`` at ``rate`` x its recorded speed into the node's worker; write ``out``
    (see the module doc) and return a :class:`~posegs_ros.tools.replay.ReplayResult`."""
    from ..io import BagReader, atomic_write_json, default_camera_info_topic, stamp_to_nanoseconds, write_tum
    from ..io.files import json_safe
    from ..config import config_to_dict
    from ..pipeline import Reconstructor
    from ..ros.params import NodeSettings
    from ..ros.worker import ReconstructionWorker
    from ..warmup import warm_up
    from .replay import ReplayError, ReplayResult, _commit_out, _evaluate, _prepare_out, require_gt

    if not rate > 0:
        raise ReplayError(f"--rate must be > 0, got {rate}")
    require_gt(gt)
    with BagReader(bag_path) as bag:
        topics = bag.topics
        topic, compressed = image_topic, False
        if topic not in topics and f"{topic}/compressed" in topics:
            topic, compressed = f"{topic}/compressed", True
        if topic not in topics:
            raise ReplayError(f"no image topic {image_topic} in {bag_path}; topics: {', '.join(sorted(topics))}")
        compressed = compressed or topics[topic].endswith("CompressedImage")
        info_topic = camera_info_topic or default_camera_info_topic(image_topic)
        if info_topic not in topics:
            raise ReplayError(f"no camera_info topic {info_topic} in {bag_path}")
        total = bag.message_count(topic)
        limit = total if max_frames is None else min(total, max_frames)
        staging = _prepare_out(out, force)
        try:
            seconds_warm = warm_up(cfg) if warm else 0.0
            index_of_stamp: dict[int, int] = {}
            recorder = RealtimeRecorder(staging / "deblurred" if render else None, index_of_stamp)
            engine = Reconstructor(cfg, concurrent=True)
            worker = ReconstructionWorker(engine, NodeSettings(queue_size=queue_size), recorder)
            worker.start()
            fed: dict[int, float] = {}  # stamp ns -> clock when the image was handed to the worker
            usage0, machine0, start = resource.getrusage(resource.RUSAGE_SELF), cpu_times(), time.monotonic()
            first_ns: int | None = None
            late_feeds = 0
            images = 0
            for item in bag.messages([topic, info_topic]):
                if item.topic == topic and images >= limit:
                    break
                first_ns = item.timestamp_ns if first_ns is None else first_ns
                due = start + (item.timestamp_ns - first_ns) / 1e9 / rate
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)  # the camera's clock: nothing else to do until the next message
                elif delay < -0.005:
                    late_feeds += 1  # reading the bag fell behind the schedule (counted, not hidden)
                if item.topic == info_topic:
                    worker.on_camera_info(item.msg)
                    recorder.size = (int(item.msg.width), int(item.msg.height))
                    continue
                stamp = stamp_to_nanoseconds(item.msg.header.stamp)
                index_of_stamp[stamp] = images
                fed[stamp] = time.monotonic()
                worker.on_image(item.msg, compressed)
                images += 1
            feed_seconds = time.monotonic() - start
            worker.wait_idle(timeout=600.0)  # the last images tracked and rendered (mapping's backlog is reported)
            seconds = time.monotonic() - start
            usage1, machine1 = resource.getrusage(resource.RUSAGE_SELF), cpu_times()
            snapshot = worker.snapshot()
            stats = engine.stats()
            worker.stop()

            stamps = sorted(recorder.poses)
            write_tum(staging / "trajectory_online.tum", np.array(stamps) / 1e9,
                      np.array([recorder.poses[s] for s in stamps]).reshape(-1, 4, 4))
            latest = {p.index: p for p in engine.trajectory()}  # the worker numbers images as they arrive
            final = [(s, latest[index_of_stamp[s]]) for s in stamps if index_of_stamp.get(s) in latest]
            write_tum(staging / "trajectory.tum", np.array([s for s, _ in final]) / 1e9,
                      np.array([p.pose for _, p in final]).reshape(-1, 4, 4))
            if engine.num_gaussians:
                engine.save_map(staging / "map.ply")
            lat = np.array(recorder.latencies) * 1000.0
            to_tf = np.array([recorder.sent_at[s] - fed[s] for s in stamps if s in fed]) * 1000.0
            cpu = (usage1.ru_utime + usage1.ru_stime) - (usage0.ru_utime + usage0.ru_stime)
            realtime = {
                "rate": rate,
                "images": images,
                "frames_received": snapshot.frames_received,
                "frames_tracked": snapshot.frames_processed,
                "frames_dropped": snapshot.frames_dropped,
                "frames_skipped": snapshot.frames_skipped,
                "frames_posed": len(stamps),
                "posed_share": len(stamps) / max(images, 1),
                "tracking_latency_ms": _stats(lat),
                "receipt_to_tf_ms": _stats(to_tf),
                "stage_median_ms": {k: float(np.median(v)) * 1000.0 for k, v in recorder.stages.items() if v},
                "renders": len(recorder.rendered),
                "renders_skipped": snapshot.renders_skipped,
                "tracking_scale": engine.resolution.scale,  # at the end (live: adapted to keep up)
                "tracking_scale_changes": engine.resolution.changes,
                "passes_cut": stats.get("passes_cut", 0),  # frames whose extra tracking pass was left out to keep up
                "mapping_rounds": stats.get("mapping_rounds", 0),
                "mapping_steps": stats.get("mapping_steps", 0),
                "mapping_backlog_at_end": engine.mapping_backlog,
                "keyframes": engine.num_keyframes,
                "gaussians": engine.num_gaussians,
                "cpu_cores_used": cpu / max(seconds, 1e-9),
                "cpu_steal_share": steal_share(machine0, machine1),
                "seconds": seconds,
                "feed_seconds": feed_seconds,
                "late_feeds": late_feeds,
                "warm_up_seconds": seconds_warm,
            }
            metrics = {
                "bag": str(bag_path),
                "image_topic": topic,
                "config": config_to_dict(cfg),
                "realtime": realtime,
                "frames": [
                    {"index": i, "tracking_latency_ms": 1000.0 * lat_s}
                    for i, lat_s in zip(recorder.processed, recorder.latencies)
                ],
                "summary": {
                    "images_in_bag": total,
                    "frames_processed": snapshot.frames_processed,
                    "frames_with_pose": len(stamps),
                    "keyframes": engine.num_keyframes,
                    "gaussians": engine.num_gaussians,
                    "seconds": seconds,
                    "fps": snapshot.frames_processed / max(seconds, 1e-9),
                    "counters": stats,
                },
            }
            atomic_write_json(staging / "metrics.json", json_safe(metrics))
            evaluation = None
            if evaluate and stamps:
                evaluation = _evaluate(bag, staging, gt, topic, final)
            _commit_out(staging, out)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return ReplayResult(out, snapshot.frames_processed, seconds, metrics, evaluation)


def cpu_times() -> dict[str, float]:
    """Machine-wide CPU seconds by kind from ``/proc/stat`` (Linux; empty elsewhere): ``busy``,
    ``idle`` and ``steal`` (time the hypervisor gave this VM's CPUs to others)."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return {}
    ticks = [float(v) for v in fields] + [0.0] * 8
    hz = 100.0  # USER_HZ
    user, nice, system, idle, iowait, irq, softirq, steal = ticks[:8]
    return {"busy": (user + nice + system + irq + softirq) / hz, "idle": (idle + iowait) / hz, "steal": steal / hz}


def steal_share(before: dict[str, float], after: dict[str, float]) -> float | None:
    """Share of the machine's CPU time stolen by the hypervisor between two :func:`cpu_times`."""
    if not before or not after:
        return None
    delta = {k: after[k] - before[k] for k in before}
    total = sum(delta.values())
    return delta["steal"] / total if total > 0 else 0.0


def _stats(values: np.ndarray) -> dict[str, float]:
    if values.size == 0:
        return {"median": float("nan"), "p95": float("nan"), "mean": float("nan"), "max": float("nan")}
    return {"median": float(np.median(values)), "p95": float(np.percentile(values, 95)),
            "mean": float(values.mean()), "max": float(values.max())}
