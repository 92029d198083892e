"""The worker thread between the node's callbacks and the engine (ROS-free).

Threads:

- executor threads call :meth:`ReconstructionWorker.on_image`, :meth:`~ReconstructionWorker.on_camera_info`
  (never block: they wrap the message and put it in a :class:`~posegs_ros.ros.queues.DropOldestQueue`),
  :meth:`~ReconstructionWorker.request_reset` / :meth:`~ReconstructionWorker.request_save`
  (queue a command, return a future) and :meth:`~ReconstructionWorker.snapshot`;
- the worker thread (:meth:`~ReconstructionWorker.start`) is the only one calling the engine's
  tracking: it runs pending commands between frames, converts and checks each image, calls
  ``engine.process`` (tracking only: with a concurrent engine, mapping runs in the engine's own
  thread, on the other core) and publishes TF and the path at once; then, if no newer image
  is waiting, it renders ``~/deblurred`` / ``~/depth`` from the newest map in the time left
  until the next image (a frame with a newer image waiting is not rendered, counted;
  ``ros.render_period_s`` limits the rate), so renders use the tracking core's slack and
  never take mapping's core or make tracking drop an image.

Nothing here imports rclpy: the node implements :class:`OutputSink` with rclpy publishers; the
tests implement it with ``rosbags`` message classes.
"""

from __future__ import annotations

import math
import os
import threading
import time
import traceback
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np

from ..camera import Intrinsics
from ..io import MessageData, depth_to_image, mask_to_image, points_to_pointcloud2, rgb_to_image
from ..pipeline import Frame, FrameError, FrameResult
from .ingest import ImageConverter, InputImage, SkipImage, StampGuard, StampVerdict
from .outputs import PathHistory, camera_transforms, is_finite_pose, keyframe_markers
from .params import NodeSettings
from .queues import DropOldestQueue, ThrottledCounter
from .status import StatusSnapshot, status_message

__all__ = ["DEFAULT_CAMERA_FRAME", "EngineLike", "OutputSink", "SaveResult", "ReconstructionWorker"]

DEFAULT_CAMERA_FRAME = "camera_optical_frame"  # TF child when images carry no frame_id
_STAGES = ("flow", "tracking", "mapping", "render", "total")  # StageTimings fields, in ~/status
_LATE_STAMPS = 256  # stamps kept for frames the engine may pose late (its initialization buffer and the
# frames re-tracked after a focal self-calibration restart, at most 2 x calibration.frames, are fewer)


class EngineLike(Protocol):
    """What the worker needs of :class:`posegs_ros.pipeline.Reconstructor`."""

    counters: Any
    arrival_period: float | None  # the camera's period from image arrivals (the worker sets it)

    def process(self, frame: Frame) -> FrameResult: ...

    def reset(self) -> None: ...

    def save_map(self, path: str | Path) -> Path: ...

    def map_cloud(self) -> tuple[np.ndarray, np.ndarray]: ...

    def keyframe_poses(self) -> list[np.ndarray]: ...

    @property
    def mapping_backlog(self) -> int: ...

    def stats(self) -> dict[str, float]: ...


class OutputSink(Protocol):
    """Where the worker's messages go (the node: rclpy publishers, a TF broadcaster, its logger)."""

    def publish(self, key: str, message: MessageData) -> None:
        """Publish on the publication ``key`` of :data:`posegs_ros.ros.topics.PUBLICATIONS`."""

    def send_transforms(self, transforms: list[MessageData]) -> None:
        """Broadcast ``geometry_msgs/TransformStamped`` messages on TF."""

    def has_subscribers(self, key: str) -> bool:
        """Whether anyone listens on publication ``key`` (renders are skipped otherwise)."""

    def log(self, level: str, text: str) -> None:
        """Log at ``debug`` / ``info`` / ``warning`` / ``error``."""


@dataclass(frozen=True)
class SaveResult:
    """Outcome of a map save (the SaveMap response)."""

    success: bool
    message: str
    path: str
    num_gaussians: int


@dataclass
class _Command:
    kind: str  # "reset" | "save"
    argument: str
    future: Future


class ReconstructionWorker:
    """Owns the engine; feeds it from a bounded queue in its own thread.

    Args:
        engine: the reconstructor (only this worker's thread calls it once started).
        settings: the node settings (``ros.*`` parameters).
        sink: where output messages and log lines go.
        clock: monotonic seconds (injectable for tests).
    """

    def __init__(
        self, engine: EngineLike, settings: NodeSettings, sink: OutputSink, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.sink = sink
        self._clock = clock
        self.queue: DropOldestQueue[InputImage] = DropOldestQueue(settings.queue_size)
        self.converter = ImageConverter()
        self.stamps = StampGuard(int(round(settings.loop_reset_s * 1e9)))
        self.path = PathHistory(settings.path_max_poses)
        self.skips = ThrottledCounter(settings.log_throttle_s, clock)
        self._drop_log = ThrottledCounter(settings.log_throttle_s, clock)
        self._lock = threading.Lock()  # guards the fields below shared with executor threads
        self._camera_info: Any | None = None
        self._awaiting_info: deque[InputImage] = deque()  # images received before any camera_info
        self._received = 0
        self._last_receipt: float | None = None
        self._arrival_steps: deque[float] = deque(maxlen=32)  # the last times between two images' receipt
        self._state = StatusSnapshot()
        self._resets: dict[str, int] = {}
        self._last_problem = ""
        self._commands: deque[_Command] = deque()
        # worker-thread state
        self._intrinsics: Intrinsics | None = None  # camera of the current map
        self._failures = 0
        self._cloud_dirty = False
        self._cloud_count = -1
        self._last_cloud = -math.inf
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._renders_done = 0  # frames rendered for ~/deblurred / ~/depth
        self._renders_skipped = 0  # tracked frames not rendered: a newer image was waiting (or rate limit)
        self._last_render = -math.inf
        self._latency_sum = 0.0
        self._stamps_ns: dict[int, int] = {}  # image index -> header stamp (ns) of recent frames, for late poses
        self._progress = threading.Condition()  # notified when a step finishes
        self._busy = 0  # images taken from the queue and not finished yet

    # ------------------------------------------------------------------ executor side
    def on_image(self, msg: Any, compressed: bool = False) -> None:
        """Enqueue an image message (never blocks; a full queue drops its oldest image).

        Images that arrive before the first camera_info (camera_info and image published
        together reach the node in either order) wait for it, at most ``ros.queue_size`` of them.
        """
        now = self._clock()
        evicted: InputImage | None = None
        with self._lock:
            index = self._received
            self._received += 1
            if self._last_receipt is not None and now > self._last_receipt:
                self._arrival_steps.append(now - self._last_receipt)
            self._last_receipt = now
            if len(self._arrival_steps) >= 4:  # images arrive at the camera's rate whatever the engine drops
                self.engine.arrival_period = float(np.median(self._arrival_steps))
            camera_info = self._camera_info
            item = InputImage(msg, compressed, camera_info, now, index)
            if camera_info is None:
                self._awaiting_info.append(item)
                if len(self._awaiting_info) > self.queue.maxsize:
                    evicted = self._awaiting_info.popleft()
        if camera_info is None:
            if evicted is not None:
                self._skip(
                    "no_camera_info",
                    f"image {evicted.index} skipped (no_camera_info): no camera_info received yet; "
                    f"the newest {self.queue.maxsize} images wait for one",
                )
            return
        self._enqueue(item)

    def _enqueue(self, item: InputImage) -> None:
        evicted = self.queue.put(item)
        if evicted is not None:
            line = self._drop_log.record(
                "dropped",
                f"input queue full (ros.queue_size={self.queue.maxsize}): dropped image {evicted.index}; "
                "the engine is slower than the image rate, only the newest images are processed",
            )
            if line:
                self.sink.log("info", line)

    def on_camera_info(self, msg: Any) -> None:
        """Remember the latest camera_info; images received from now on (and any waiting) use it."""
        with self._lock:
            self._camera_info = msg
            waiting, self._awaiting_info = list(self._awaiting_info), deque()
        for item in waiting:
            self._enqueue(replace(item, camera_info=msg))

    def request_reset(self) -> Future:
        """Reset the map between frames; the future's result is a message."""
        return self._command("reset", "")

    def request_save(self, path: str = "") -> Future:
        """Save the map between frames; the future's result is a :class:`SaveResult`."""
        return self._command("save", path)

    def snapshot(self) -> StatusSnapshot:
        """A copy of the current status (any thread)."""
        now = self._clock()
        with self._lock:
            snap = replace(
                self._state,
                timings=dict(self._state.timings),
                groups=list(self._state.groups),
                frames_received=self._received,
                frames_dropped=self.queue.dropped,
                renders=self._renders_done,
                renders_skipped=self._renders_skipped,
                skips=self.skips.counts(),
                resets=dict(self._resets),
                seconds_since_image=None if self._last_receipt is None else now - self._last_receipt,
                last_problem=self._last_problem,
            )
        return snap

    def _command(self, kind: str, argument: str) -> Future:
        future: Future = Future()
        if self._stop.is_set():
            future.set_exception(RuntimeError("the reconstruction worker has stopped"))
            return future
        with self._lock:
            self._commands.append(_Command(kind, argument, future))
        self.queue.wake()
        return future

    # ------------------------------------------------------------------ thread
    def start(self) -> None:
        """Start the worker thread."""
        if self._thread is not None:
            raise RuntimeError("worker already started")
        self._thread = threading.Thread(target=self._run, name="posegs_worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = 30.0) -> bool:
        """Stop the thread after the current frame; pending commands fail. True if it ended in time."""
        self._stop.set()
        self.queue.close()
        ended = True
        if self._thread is not None:
            self._thread.join(timeout)
            ended = not self._thread.is_alive()
        close = getattr(self.engine, "close", None)
        if ended and close is not None:
            close()  # the engine's mapping thread (its map stays readable for a save)
        with self._lock:
            pending, self._commands = list(self._commands), deque()
        for command in pending:
            if not command.future.done():
                command.future.set_exception(RuntimeError("the reconstruction worker has stopped"))
        return ended

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.step(timeout=0.1)
            except Exception as err:  # last resort: the thread must outlive any bug
                try:
                    self._problem("error", f"worker: unexpected {type(err).__name__}: {err}\n{traceback.format_exc()}")
                except Exception:  # not even logging works (shutting down): keep going, stop() ends us
                    time.sleep(0.1)

    def step(self, timeout: float | None = 0.0) -> bool:
        """Run pending commands, then process at most one queued image; True if one was taken.

        Called in a loop by the worker thread; tests call it directly (thread not started).
        """
        self._run_commands()
        self.queue.wait(timeout)
        with self._progress:  # taken and counted busy at once: wait_idle never sees it in neither place
            item = self.queue.get(0.0)
            self._busy += item is not None
        try:
            if item is not None:
                self._handle(item)
            self._run_commands()
            self._maybe_publish_cloud()
        finally:
            if item is not None:
                self._finished()
        return item is not None

    def _finished(self) -> None:
        with self._progress:
            self._busy -= 1
            self._progress.notify_all()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until every queued image is processed and published; True if so within
        ``timeout`` seconds (for offline drivers such as real-time replay)."""
        with self._progress:
            return self._progress.wait_for(lambda: self._busy == 0 and len(self.queue) == 0, timeout)

    # ------------------------------------------------------------------ commands
    def _run_commands(self) -> None:
        while True:
            with self._lock:
                if not self._commands:
                    return
                command = self._commands.popleft()
            if not command.future.set_running_or_notify_cancel():
                continue
            try:
                if command.kind == "reset":
                    self.reset("service", "map reset requested on ~/reset", level="info")
                    command.future.set_result("map and trajectory reset; the next images start a new initialization")
                else:
                    command.future.set_result(self.save(command.argument))
            except Exception as err:
                command.future.set_exception(err)

    def save(self, path: str = "") -> SaveResult:
        """Write the map as a 3DGS PLY (``path`` empty: ``ros.save_path``); only from the worker's thread
        or when it is not running."""
        target = Path(os.path.expanduser(path or self.settings.save_path)).absolute()
        try:
            count = int(len(self.engine.map_cloud()[0]))
        except Exception as err:
            return SaveResult(False, f"cannot read the map: {type(err).__name__}: {err}", str(target), 0)
        if count == 0:
            return SaveResult(False, "the map is empty (not initialized yet): nothing written", str(target), 0)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            written = Path(self.engine.save_map(target))
        except Exception as err:
            self._problem("error", f"saving the map to {target} failed: {type(err).__name__}: {err}")
            return SaveResult(False, f"cannot write {target}: {type(err).__name__}: {err}", str(target), count)
        self.sink.log("info", f"saved {count} Gaussians to {written}")
        return SaveResult(True, f"wrote {count} Gaussians to {written}", str(written), count)

    def reset(self, reason: str, text: str, level: str = "warning") -> None:
        """Reset engine, stamp order, path and markers; counted under ``reason``."""
        self.sink.log(level, text)
        try:
            self.engine.reset()
        except Exception as err:
            self._problem("error", f"engine reset failed: {type(err).__name__}: {err}")
        self.stamps.reset()
        self.path.clear()
        self._intrinsics = None
        self._failures = 0
        with self._lock:
            self._resets[reason] = self._resets.get(reason, 0) + 1
            self._state = replace(
                self._state, state="waiting", is_keyframe=False, num_keyframes=0, num_gaussians=0,
                inlier_ratio=0.0, lost_frames=0, relocalizations=0, reinitializations=0, groups=[],
            )
        stamp = self._state.stamp_ns
        self._emit("path", lambda: self.path.message(self.settings.map_frame))
        self._emit("keyframes", lambda: keyframe_markers([], None, stamp, self.settings.map_frame, 1.0))
        self._cloud_dirty = True
        self._publish_status()

    # ------------------------------------------------------------------ frames
    def _problem(self, level: str, text: str) -> None:
        with self._lock:
            self._last_problem = text.splitlines()[0]
        self.sink.log(level, text)

    def _skip(self, reason: str, detail: str, level: str = "warning") -> None:
        line = self.skips.record(reason, detail)
        with self._lock:
            self._last_problem = detail.splitlines()[0]
        if line:
            self.sink.log(level, line)

    def _failure(self) -> None:
        self._failures += 1
        limit = self.settings.reset_after_failures
        if limit > 0 and self._failures >= limit:
            self.reset("engine_failures", f"{self._failures} consecutive engine failures: resetting the map", "error")

    def _handle(self, item: InputImage) -> None:
        started = self._clock()
        try:
            image = self.converter.convert(item)
        except SkipImage as skip:
            self._skip(skip.reason, f"image {item.index} skipped ({skip.reason}): {skip.detail}")
            return
        verdict = self.stamps.check(image.stamp_ns)
        if verdict is StampVerdict.SKIP:
            previous = (self.stamps.last_ns or 0) / 1e9
            self._skip(
                "stamp_not_increasing",
                f"image {item.index} skipped: stamp {image.stamp_ns / 1e9:.6f} s is not after the previous "
                f"{previous:.6f} s",
            )
            return
        if verdict is StampVerdict.RESET:
            back = ((self.stamps.last_ns or 0) - image.stamp_ns) / 1e9
            self.reset("time_jump_back", f"image stamps jumped back by {back:.3f} s (bag loop?): resetting the map")
        elif self._intrinsics is not None and image.intrinsics != self._intrinsics:
            self.reset(
                "camera_changed", f"camera changed ({self._intrinsics} -> {image.intrinsics}): resetting the map"
            )
        frame = Frame(image=image.rgb, stamp=image.stamp_ns / 1e9, intrinsics=image.intrinsics, index=image.index)
        self.stamps.accept(image.stamp_ns)
        self._stamps_ns[image.index] = image.stamp_ns
        if len(self._stamps_ns) > _LATE_STAMPS:  # frames are posed late only early in a map: keep the newest
            del self._stamps_ns[next(iter(self._stamps_ns))]
        try:
            result = self.engine.process(frame)
        except FrameError as err:
            self._skip("engine_rejected", f"image {item.index} rejected by the engine: {err}")
            return
        except Exception as err:
            self._skip(
                "engine_error",
                f"image {item.index}: engine error {type(err).__name__}: {err}\n{traceback.format_exc()}",
                level="error",
            )
            self._failure()
            return
        self._intrinsics = image.intrinsics
        if result.has_pose and not is_finite_pose(result.pose):
            self._skip("non_finite_pose", f"image {item.index}: the engine returned a non-finite pose", "error")
            self._failure()
            return
        self._failures = 0
        self._publish_frame(result, image.frame_id, image.stamp_ns, image.intrinsics, started - item.received,
                            self._clock() - started)

    def _publish_frame(
        self, result: FrameResult, frame_id: str, stamp_ns: int, intrinsics: Intrinsics, queue_latency: float,
        latency: float,
    ) -> None:
        settings = self.settings
        camera_frame = settings.camera_frame or frame_id or DEFAULT_CAMERA_FRAME
        groups = [(int(g), np.array(p, dtype=np.float64)) for g, p in sorted(result.group_poses.items())]
        counters = getattr(self.engine, "counters", None)
        stats = self.engine.stats() if hasattr(self.engine, "stats") else {}
        self._latency_sum += latency
        processed = self._state.frames_processed + 1
        with self._lock:
            self._state = replace(
                self._state,
                state=str(getattr(result.state, "value", result.state)),
                stamp_ns=stamp_ns,
                frame_index=result.index,
                is_keyframe=bool(result.is_keyframe),
                num_keyframes=int(result.num_keyframes),
                num_gaussians=int(result.num_gaussians),
                inlier_ratio=float(result.inlier_ratio),
                timings={name: float(getattr(result.timings, name, 0.0)) for name in _STAGES},
                queue_latency=max(0.0, queue_latency),
                tracking_latency=latency,
                tracking_latency_mean=self._latency_sum / processed,
                mapping_backlog=int(getattr(self.engine, "mapping_backlog", 0)),
                map_version=int(stats.get("map_version", 0)),
                mapping_rounds=int(stats.get("mapping_rounds", 0)),
                frames_processed=processed,
                lost_frames=int(getattr(counters, "lost_frames", 0)),
                mismatch_frames=int(getattr(counters, "mismatch_frames", 0)),
                relocalizations=int(getattr(counters, "relocalizations", 0)),
                reinitializations=int(getattr(counters, "reinitializations", 0)),
                groups=groups,
                exposure_ratio=float(getattr(self.engine, "exposure_ratio", 0.0)),
                exposure_pairs=int(getattr(getattr(self.engine, "exposure", None), "pairs", 0)),
            )
        if getattr(result, "restarted", False):  # the map restarted (focal self-calibration): new poses for all
            self.path.clear()
        for late in result.late:  # frames buffered before initialization (or all, after a restart), posed now
            late_ns = self._stamps_ns.get(late.index, int(round(late.stamp * 1e9)))
            self._emit_pose(late.pose, {}, late_ns, camera_frame)
            self.path.append(late_ns, late.pose)
        if result.has_pose:
            self._emit_pose(result.pose, result.group_poses, stamp_ns, camera_frame)
            self.path.append(stamp_ns, result.pose)
            if self.sink.has_subscribers("path"):
                self._emit("path", lambda: self.path.message(settings.map_frame))
            self._publish_renders(result, stamp_ns, camera_frame)
            if result.dynamic_mask is not None and self.sink.has_subscribers("dynamic_mask"):
                mask = np.asarray(result.dynamic_mask)
                self._emit("dynamic_mask", lambda: mask_to_image(mask.astype(bool), stamp_ns, camera_frame))
            if result.is_keyframe:
                self._emit(
                    "keyframes",
                    lambda: keyframe_markers(
                        self.engine.keyframe_poses(), intrinsics, stamp_ns, settings.map_frame, settings.frustum_depth
                    ),
                )
        if result.is_keyframe or result.num_gaussians != self._cloud_count:
            self._cloud_dirty = True
        self._publish_status()

    def _emit_pose(self, pose: np.ndarray, group_poses: dict[int, np.ndarray], stamp_ns: int, camera_frame: str) -> None:
        settings = self.settings
        try:
            transforms = camera_transforms(
                pose, group_poses, stamp_ns, settings.map_frame, camera_frame, settings.object_frame_prefix,
            )
            self.sink.send_transforms(transforms)
        except Exception as err:
            self._skip("output_error", f"TF not sent: {type(err).__name__}: {err}")

    def _publish_renders(self, result: FrameResult, stamp_ns: int, camera_frame: str) -> None:
        """Render the frame from the newest map and publish what is subscribed -- unless a newer
        image waits (tracking it comes first) or ``ros.render_period_s`` has not passed."""
        if not (self.sink.has_subscribers("deblurred") or self.sink.has_subscribers("depth")):
            return
        now = self._clock()
        if len(self.queue) > 0 or now - self._last_render < self.settings.render_period_s:
            self._renders_skipped += 1
            return
        self._last_render = now
        if self.sink.has_subscribers("deblurred"):
            self._emit("deblurred", lambda: rgb_to_image(result.deblurred(), stamp_ns, camera_frame))
        if self.sink.has_subscribers("depth"):
            self._emit("depth", lambda: depth_to_image(result.depth(), stamp_ns, camera_frame))
        self._renders_done += 1

    def _emit(self, key: str, build: Callable[[], MessageData]) -> None:
        """Build and publish one message; failures are counted, never raised."""
        try:
            self.sink.publish(key, build())
        except Exception as err:
            if not self._stop.is_set():  # publishers go away at shutdown: not a problem worth a line
                self._skip("output_error", f"~/{key} not published: {type(err).__name__}: {err}")

    def _publish_status(self) -> None:
        self._emit(
            "status",
            lambda: status_message(self.snapshot(), self.settings.map_frame, self.settings.object_frame_prefix),
        )

    def _maybe_publish_cloud(self) -> None:
        period = self.settings.map_cloud_period_s
        now = self._clock()
        if period <= 0 or not self._cloud_dirty or now - self._last_cloud < period:
            return
        if not self.sink.has_subscribers("map_cloud"):
            return
        try:
            xyz, rgb = self.engine.map_cloud()
        except Exception as err:
            self._skip("output_error", f"~/map_cloud not published: {type(err).__name__}: {err}")
            self._last_cloud = now
            return
        self._cloud_dirty = False
        self._cloud_count = int(len(xyz))
        self._last_cloud = now
        stamp = self._state.stamp_ns
        self._emit("map_cloud", lambda: points_to_pointcloud2(xyz, rgb, stamp, self.settings.map_frame))
