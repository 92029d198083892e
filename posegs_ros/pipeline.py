"""The reconstruction engine's front door: ``Reconstructor.process(frame) -> FrameResult``.

This module never imports ROS: the node (``posegs_ros.ros``) and ``posegs replay`` both feed
:class:`Frame` objects built by :mod:`posegs_ros.io` and read :class:`FrameResult` back.

Flow of one frame (DESIGN.md, "The method in one page"):

- before a map exists, frames are buffered until two of them have enough parallax for a
  two-view initialization (:mod:`posegs_ros.tracking.initialization`); buffered frames are then
  tracked against the new map, so they get poses too (in :meth:`Reconstructor.trajectory`);
- afterwards each frame is tracked (:mod:`posegs_ros.tracking.tracker`) against the newest map
  snapshot (:mod:`posegs_ros.scene.snapshot`); a frame that becomes a keyframe is handed to the
  mapping back end (:mod:`posegs_ros.mapping.backend`), which runs the window rounds -- inline,
  before :meth:`Reconstructor.process` returns (offline, reproducible), or in its own thread
  (``concurrent=True``: the node and real-time replay; tracking returns at once);
- tracking failures try to relocalize against the window keyframes, then re-initialize; after
  a gap longer than ``tracking.max_gap_s`` the motion is not extrapolated.
"""

from __future__ import annotations

import bisect
import enum
import logging
import math
import os
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable

import cv2
import numpy as np
import torch

from .camera import Intrinsics
from .config import ConfigError, PosegsConfig
from .dynamic.motion_groups import MotionGroups, exclusion_margin, track_group
from .mapping.backend import MappingBackend
from .mapping.mapper import MappingStats, scene_tensors
from .render._threads import set_thread_budget
from .scene.blur import RenderSettings, SceneTensors, exposure_subframes, move_groups, render_views
from .scene.deblur import fuse_deblurred
from .scene.gaussians import sh0_to_rgb, write_ply
from .scene.keyframes import Keyframe, KeyframeDecision, decide_keyframe, scale_twists
from .scene.snapshot import MapEdit, MapSnapshot, MapStore
from .tracking.exposure import ExposureRatioEstimator, exposure_gray, visible_points
from .tracking.calibration import FocalEstimate, estimate_focal_scale, track_points
from .tracking.flow import DenseFlow
from .tracking.initialization import TwoViewResult, grid_samples, image_sharpness, sharp_enough, try_two_view
from .tracking.tracker import (
    Tracker, TrackingResolution, TrackingResult, initial_twist, interpolate_pose, neighbour_path, predict_constant_velocity,
    twist_units,
)

__all__ = ["Frame", "FrameError", "FrameResult", "TrackingState", "StageTimings", "Reconstructor", "TrajectoryPoint"]

log = logging.getLogger(__name__)

# offline, carrying a motion group into frames around its detection: a track whose visible area is more than this
# multiple of the previous frame's is taken for one that slid onto other content (the walk tries another prediction)
CARRY_MAX_GROWTH = 1.25


class FrameError(ValueError):
    """A frame the engine cannot take (wrong shape / dtype, bad stamp, changed camera)."""


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
class TrajectoryPoint:
    """The latest estimate of one frame's pose."""

    index: int
    stamp: float
    pose: np.ndarray  # [4, 4] camera-to-map
    state: TrackingState
    is_keyframe: bool
    group_poses: dict[int, np.ndarray] = field(default_factory=dict)  # group -> [4, 4] M_g at this frame
    dynamic_mask: np.ndarray | None = None  # [H, W] bool, moving objects detected in this frame
    exposure: np.ndarray = field(default_factory=lambda: np.zeros(2))  # [2] affine exposure (log gain, bias)
    map_index: int = 0  # the map this pose is in: 0, then +1 per re-initialization (own origin and scale)


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
    late: list[TrajectoryPoint] = field(default_factory=list)  # earlier frames posed since the last result
    restarted: bool = False  # the map restarted (focal calibration): ``late`` replaces every earlier pose
    _render: Callable[[], tuple[np.ndarray, np.ndarray]] | None = field(default=None, repr=False)
    _cache: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)

    @property
    def has_pose(self) -> bool:
        """False while initializing (the pose is a placeholder then)."""
        return self.state is not TrackingState.INITIALIZING

    def _rendered(self) -> tuple[np.ndarray, np.ndarray]:
        if self._cache is None:
            if self._render is None:
                raise RuntimeError("no map yet: nothing to render for this frame")
            self._cache = self._render()
        return self._cache

    def deblurred(self) -> np.ndarray:
        """The deblurred frame ``[H, W, 3]`` uint8 RGB from the newest map at the mid-exposure pose,
        rendered on first call: its sharp render, or (``blur.live_output: fused``) the render plus
        what the map does not explain of this frame (:func:`posegs_ros.scene.deblur.fuse_deblurred`)."""
        return self._rendered()[0]

    def depth(self) -> np.ndarray:
        """Rendered expected depth at the mid-exposure pose, ``[H, W]`` float32 (NaN where no map)."""
        return self._rendered()[1]


@dataclass
class _FrameRecord:
    index: int
    stamp: float
    state: TrackingState
    online_pose: np.ndarray  # [4, 4] as returned by process()
    reference: int | None = None  # keyframe id the pose is stored relative to
    relative: np.ndarray | None = None  # [4, 4] inv(keyframe pose) @ pose
    absolute: np.ndarray | None = None  # [4, 4] frozen pose (after a re-initialization)
    is_keyframe: bool = False
    twist: np.ndarray = field(default_factory=lambda: np.zeros(6))
    exposure: np.ndarray = field(default_factory=lambda: np.zeros(2))  # [2] affine exposure (log gain, bias)
    map_index: int = 0  # which map the pose is in (a re-initialization starts the next)
    image: np.ndarray | None = field(default=None, repr=False)  # [H, W, 3] uint8, kept for finalize()
    group_poses: dict[int, np.ndarray] = field(default_factory=dict)  # group -> [4, 4] M_g at this frame
    group_twists: dict[int, np.ndarray] = field(default_factory=dict)  # group -> [6]
    dynamic_mask: np.ndarray | None = field(default=None, repr=False)  # [H, W] bool


@dataclass
class EngineCounters:
    frames: int = 0
    keyframes: int = 0
    lost_frames: int = 0
    mismatch_frames: int = 0  # tracked with the flow consistent but the map's depth off (keyframes unless mapping is behind)
    relocalizations: int = 0
    reinitializations: int = 0
    rejected_frames: int = 0
    unposed_frames: int = 0  # waited too long for initialization (beyond init.backfill_frames)
    recovered_frames: int = 0  # lost online, posed by finalize() against the final map
    final_tracked_frames: int = 0  # beyond mapping.final_max_views: tracked by finalize() against the refined map
    groups_spawned: int = 0
    groups_merged: int = 0
    passes_cut: int = 0  # live camera: frames whose extra tracking pass was left out to keep up (tracking.frame_budget)
    focal_restarts: int = 0  # the map restarted with a self-calibrated focal length (calibration.focal = auto)
    blurred_init_frames: int = 0  # not tried as an initialization frame: motion-blurred (init.sharpness_ratio)


def camera_period(steps: Iterable[float]) -> float | None:
    """A live camera's frame period (s) from the stamp differences ``steps`` of the frames that
    reached the engine: the shortest one (frames dropped before the engine lengthen the others)
    that is at least half their median (a stray, nearly equal stamp does not shrink it); None if
    there are none."""
    arr = np.asarray(list(steps), dtype=float)
    if arr.size == 0:
        return None
    return float(arr[arr >= 0.5 * np.median(arr)].min())


STEP_OVERHEAD_SUBFRAMES = 0.5  # a mapping step's cost beyond its sub-frame renders, in renders (~15 + 30 S ms)


def final_steps_for_cost(steps: int, subframes: list[int], budget_subframes: int) -> int:
    """The final refinement's step count: ``steps`` counted at ``budget_subframes`` sub-frames a
    step, for views that render ``subframes`` (one per view) -- more steps for the same cost where
    they render fewer (never fewer steps; ``budget_subframes`` 0 or no views: ``steps``)."""
    if budget_subframes <= 0 or not subframes:
        return steps
    mean = float(np.mean(subframes))
    scale = (STEP_OVERHEAD_SUBFRAMES + budget_subframes) / (STEP_OVERHEAD_SUBFRAMES + mean)
    return int(round(steps * max(scale, 1.0)))


def _neighbours(order: list[int], index: int) -> list[int]:
    """Positions in the ascending ``order`` of the entries just before and just after ``index``
    (one at either end, none when ``order`` is empty)."""
    k = bisect.bisect_left(order, index)
    return [j for j in (k - 1, k) if 0 <= j < len(order)]


def _pose_at(stamp: float, near: list[tuple[float, np.ndarray]]) -> np.ndarray:
    """Pose ``[4, 4]`` at ``stamp`` from one or two ``(stamp, pose [4, 4])`` neighbours:
    interpolated in time between two (constant twist), the only one's otherwise."""
    if len(near) == 1:
        return near[0][1]
    (sa, pa), (sb, pb) = near
    return interpolate_pose(pa, pb, (stamp - sa) / max(sb - sa, 1e-9))


class Reconstructor:
    """Online monocular pose + 3DGS reconstruction with an exposure-blur model.

    Args:
        config: the configuration (defaults if omitted).
        keep_frames: remember every frame's image so :meth:`finalize` can refine over all of
            them (offline replay); a live node leaves it off and memory stays bounded.
        concurrent: run mapping in its own thread (the node, ``posegs replay --realtime``):
            :meth:`process` then only tracks and returns at once, keyframes are mapped behind
            it. Otherwise the mapping work a frame triggers runs inside :meth:`process`, in a
            fixed order (reproducible offline replay). Call :meth:`close` when done.
    """

    def __init__(self, config: PosegsConfig | None = None, keep_frames: bool = False, concurrent: bool = False) -> None:
        self.config = config or PosegsConfig()
        if self.config.blur.live_output not in ("fused", "render"):
            raise ConfigError(f"blur.live_output must be fused or render, got {self.config.blur.live_output!r}")
        self.keep_frames = keep_frames
        self.concurrent = concurrent
        cores = self.config.threads if self.config.threads > 0 else (os.cpu_count() or 1)
        # concurrent: one core tracks, the others map (renderer and torch threads per thread)
        self._tracking_threads = 1 if concurrent else None
        self._mapping_threads = max(cores - 1, 1)
        if self.config.threads > 0 and not concurrent:
            torch.set_num_threads(self.config.threads)
        if concurrent:
            cv2.setNumThreads(1)  # OpenCV's pool would spin on the cores the two engine threads use
        self._thread_setup = threading.local()
        self.device = torch.device(self.config.render.device)
        self.flow = DenseFlow.from_config(self.config.tracking)
        self.tracker = Tracker(self.config, self.flow)
        self.store = MapStore()
        self.backend: MappingBackend | None = None
        self.counters = EngineCounters()
        self._records: list[_FrameRecord] = []
        # a live camera's frame period (s) measured from image arrivals by whoever receives them
        # (the node's worker; a bag played at a changed rate has stamps that do not tell it)
        self.arrival_period: float | None = None
        t = self.config.tracking
        adaptive = concurrent and t.refine_steps == 0  # the blur-aware refinement needs full resolution
        self.resolution = TrackingResolution(t.render_scale, t.live_min_scale if adaptive else t.render_scale)
        self._calibration_thread: threading.Thread | None = None  # concurrent: the latest focal estimate's
        b = self.config.blur
        # the camera's exposure time / frame period, measured from consecutive frames' blur (kept across maps)
        self.exposure = ExposureRatioEstimator(b.exposure_ratio, max_pairs=b.exposure_pairs)
        self._exposure_ratio = b.exposure_ratio  # the ratio the exposure twists so far were made with
        self.reset()

    # ------------------------------------------------------------------ state
    def reset(self) -> None:
        """Forget the map and the trajectory; the next frame starts a new initialization
        (a mapping round in flight is stopped first)."""
        self._new_map()
        self._records = []
        self._focal_scale = 1.0  # focal length used / camera_info's (focal self-calibration)
        self.calibration: dict | None = None  # what the focal self-calibration found and did (None: not yet)
        # the frames as given since the reset, until the focal self-calibration has decided
        self._calibration_frames: list[Frame] | None = [] if self.config.calibration.focal == "auto" else None
        self._calibration_job: Future | None = None  # concurrent: the estimate running in its own thread
        self._map_index = 0  # maps started so far - 1 (re-initializations)
        self._retired: dict[int, MapSnapshot] = {}  # earlier maps' last snapshots, by map index
        self.counters = EngineCounters()
        self._last_stamp: float | None = None

    def close(self) -> None:
        """Stop the mapping thread (concurrent mode) and wait for a focal estimate in flight; the
        map stays readable."""
        if self.backend is not None:
            self.backend.stop()
        if self._calibration_thread is not None:
            self._calibration_thread.join()

    def __enter__(self) -> Reconstructor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _new_map(self) -> None:
        cfg = self.config
        if self.backend is not None:
            self.backend.stop()
        self.store.clear()
        self.backend = MappingBackend(cfg, self.store, concurrent=self.concurrent, threads=self._mapping_threads)
        self.initialized = False
        self._init_buffer: list[tuple[Frame, int]] = []  # (frame, record index)
        self._preinit: deque[tuple[Frame, int]] = deque()  # frames that left the buffer, posed after initialization
        self._sharpness: dict[int, float] = {}  # record index -> image_sharpness of frames waiting to initialize
        self._recent_sharpness: deque[float] = deque(maxlen=cfg.init.sharpness_window)
        self._history: list[_FrameRecord] = []  # the last tracked frames (constant-velocity prediction)
        self._lost_run = 0
        self._intrinsics: Intrinsics | None = None  # the map's camera (after focal calibration)
        self._input_intrinsics: Intrinsics | None = None  # the camera as the frames give it (working size)
        self._scene_scale = 1.0
        self._keyframe_stamps: list[float] = []  # of every keyframe handed to mapping, by id
        self._pending_poses: dict[int, np.ndarray] = {}  # keyframe id -> [4, 4] until a snapshot has it
        self._stamp_steps: deque[float] = deque(maxlen=64)  # the last stamp differences
        self._stamp_period: float | None = None  # camera_period of them: exposure time, live frame budget
        self._late_poses: deque[tuple[int, np.ndarray, np.ndarray, bool]] = deque()  # (record, pose, twist, lost)
        self.motion = MotionGroups(cfg, self.flow) if cfg.dynamic.enabled else None
        self.exposure.restart_chain()

    @property
    def num_gaussians(self) -> int:
        snap = self.store.latest()
        return snap.num_gaussians if snap is not None else 0

    @property
    def num_keyframes(self) -> int:
        return len(self._keyframe_stamps)

    @property
    def mapping_backlog(self) -> int:
        """Keyframes handed to mapping that it has not integrated yet."""
        return self.backend.backlog if self.backend is not None else 0

    @property
    def exposure_ratio(self) -> float:
        """Exposure time / frame period the exposure twists are made with (measured, or ``blur.exposure_ratio``)."""
        return self._exposure_ratio

    def stats(self) -> dict[str, float]:
        """Tracking counters and the mapping back end's counters, one flat dict."""
        snap = self.store.latest()
        out: dict[str, float] = dict(vars(self.counters))
        out.update({f"mapping_{k}": v for k, v in (snap.stats if snap is not None else {}).items()})
        out["map_version"] = snap.version if snap is not None else 0
        return out

    def _enter_thread(self) -> None:
        """Concurrent mode: the tracking thread's renderer / torch thread budget, set once per thread."""
        if self._tracking_threads is None or getattr(self._thread_setup, "done", False):
            return
        set_thread_budget(self._tracking_threads)
        torch.set_num_threads(self._tracking_threads)
        self._thread_setup.done = True

    # ------------------------------------------------------------- frontend
    def process(self, frame: Frame) -> FrameResult:
        """Track ``frame`` and return its pose; a keyframe goes to mapping (inline: mapped
        before this returns; concurrent: queued for the mapping thread).

        Once ``calibration.frames`` frames are posed (``calibration.focal = auto``) this call also
        estimates the focal length; when the map restarts with it, the frames so far are tracked
        again (``restarted`` set) and their new poses come back in ``late`` -- of this result, or of
        a later one for frames that wait for the new map's initialization.

        Raises:
            FrameError: the frame is malformed, its stamp does not increase, or its camera
                differs from the map's (callers reset or skip; the map is untouched).
        """
        self._validate(frame)
        frame = self._working_frame(frame)
        self._enter_thread()
        result = self._process(frame)
        if self._calibration_frames is not None:
            self._calibration_frames.append(frame)
            restarted = self._calibrate_focal()
            if restarted is not None:
                result = restarted
        return result

    def working_intrinsics(self, intrinsics: Intrinsics) -> Intrinsics:
        """The camera of frames given with ``intrinsics`` once scaled down to ``max_image_width``
        (the size the engine works at; before the focal self-calibration)."""
        width = self.config.max_image_width
        if width <= 0 or intrinsics.width <= width:
            return intrinsics
        return intrinsics.scaled(width, max(1, round(intrinsics.height * width / intrinsics.width)))

    def _working_frame(self, frame: Frame) -> Frame:
        """``frame`` at the working size (:meth:`working_intrinsics`; area filter), else as it is."""
        intrinsics = self.working_intrinsics(frame.intrinsics)
        if intrinsics == frame.intrinsics:
            return frame
        image = cv2.resize(frame.image, (intrinsics.width, intrinsics.height), interpolation=cv2.INTER_AREA)
        return replace(frame, image=image, intrinsics=intrinsics)

    def calibrated(self, intrinsics: Intrinsics) -> Intrinsics:
        """The camera the map uses for frames given with ``intrinsics`` (focal self-calibration applied)."""
        if self._focal_scale == 1.0:
            return intrinsics
        return replace(intrinsics, fx=intrinsics.fx * self._focal_scale, fy=intrinsics.fy * self._focal_scale)

    def _process(self, frame: Frame) -> FrameResult:
        """:meth:`process` after validation, for a frame with the camera as given."""
        if self._input_intrinsics is None:
            self._input_intrinsics = frame.intrinsics
        frame = replace(frame, intrinsics=self.calibrated(frame.intrinsics))
        t_start = time.perf_counter()
        late = self._take_late_poses()
        self.counters.frames += 1
        if self._last_stamp is not None:
            dt = frame.stamp - self._last_stamp
            self._stamp_steps.append(dt)
            self._stamp_period = camera_period(self._stamp_steps)
        self._last_stamp = frame.stamp
        if not self.initialized:
            result = self._initialize_step(frame)
            if self.initialized:  # the first keyframe (the map's origin) got its pose with this frame
                first_keyframe = self._history[0]
                late.insert(0, next(i for i, rec in enumerate(self._records) if rec is first_keyframe))
        else:
            deadline = self._deadline(t_start)
            result = self._track_step(frame, deadline)
            if deadline is not None:
                self.resolution.update(time.perf_counter() - t_start, deadline - t_start)
        late += self._take_late_poses()
        result.timings.total = time.perf_counter() - t_start
        result.late = [self._point(self._records[i], self.store.latest(), online=True) for i in late]
        return result

    def _calibrate_focal(self) -> FrameResult | None:
        """Focal self-calibration (:mod:`posegs_ros.tracking.calibration`) once enough frames are
        posed; restarts the map when the estimate is adopted and returns the newest frame's result.

        Inline the estimate runs here; concurrently (live camera) in a thread of its own, so
        tracking goes on meanwhile, and the decision is taken with the first frame after it is done."""
        cfg = self.config.calibration
        frames = self._calibration_frames
        assert frames is not None
        job = self._calibration_job
        if job is not None:  # concurrent: the estimate is under way
            if not job.done():
                return None
            self._calibration_job = None
            outcome, estimate = job.result()
            return self._decide_focal(frames, outcome, estimate)
        by_index = {rec.index: rec for rec in self._records}
        posed = [i for i, f in enumerate(frames)
                 if (rec := by_index.get(f.index)) is not None and rec.state is TrackingState.TRACKING]
        if len(posed) < cfg.frames and len(frames) < 2 * cfg.frames and self._map_index == 0:
            return None
        given = frames[0].intrinsics
        outcome: dict = {"focal": "auto", "given_fx": given.fx, "given_fy": given.fy, "frames": len(frames),
                         "posed_frames": len(posed), "adopted": False}
        if self._map_index != 0:
            outcome["reason"] = "the map re-initialized before enough frames were posed"
        elif len(posed) < cfg.frames:
            outcome["reason"] = f"only {len(posed)} of {len(frames)} frames tracked"
        if "reason" in outcome:
            return self._decide_focal(frames, outcome, None)
        poses = np.full((len(frames), 4, 4), np.nan)
        for i in posed:
            poses[i] = by_index[frames[i].index].online_pose
        grays = [cv2.cvtColor(f.image, cv2.COLOR_RGB2GRAY) for f in frames]
        views, k = posed[:: cfg.view_step], given.numpy()

        def estimate() -> tuple[dict, FocalEstimate | None]:
            t0 = time.perf_counter()
            found = None
            try:
                found = estimate_focal_scale(track_points(grays), poses, k, views, max_points=cfg.max_points)
            except (ValueError, np.linalg.LinAlgError, cv2.error) as err:  # camera_info is kept, the map goes on
                log.warning("focal self-calibration failed: %s", err)
                outcome["reason"] = f"the adjustment failed: {err}"
            outcome["seconds"] = time.perf_counter() - t0
            return outcome, found

        if not self.concurrent:
            return self._decide_focal(frames, *estimate())
        job: Future = Future()

        def run() -> None:
            try:
                job.set_result(estimate())
            except BaseException as err:  # anything else reaches the tracking thread with the next frame
                job.set_exception(err)

        self._calibration_job = job
        self._calibration_thread = threading.Thread(target=run, name="posegs-calibration", daemon=True)
        self._calibration_thread.start()
        return None

    def _decide_focal(self, frames: list[Frame], outcome: dict, estimate: FocalEstimate | None) -> FrameResult | None:
        """Adopt the focal ``estimate`` or keep camera_info (``outcome`` says why); restarts the map
        with ``frames`` (all since the reset) when adopted."""
        cfg = self.config.calibration
        self._calibration_frames = None  # decided, whatever the outcome
        if "reason" not in outcome:
            if estimate is None:
                outcome["reason"] = "too few point tracks or views"
            else:
                change = abs(estimate.scale - 1.0)
                outcome["estimate"] = estimate.as_dict()
                if not estimate.sigma <= cfg.max_sigma:
                    outcome["reason"] = f"not well determined (sigma {estimate.sigma:.3f} > {cfg.max_sigma})"
                elif change > cfg.max_change:
                    outcome["reason"] = f"change {100 * change:.1f} % beyond calibration.max_change"
                elif change < cfg.min_change:
                    outcome["reason"] = f"within {100 * cfg.min_change:.0f} % of camera_info"
                else:
                    outcome.update(adopted=True, reason=f"focal {100 * (estimate.scale - 1):+.1f} % off camera_info")
        outcome.setdefault("seconds", 0.0)
        scale = outcome["estimate"]["scale"] if outcome["adopted"] else 1.0
        outcome.update(fx=outcome["given_fx"] * scale, fy=outcome["given_fy"] * scale)
        log.info("focal self-calibration: %s: fx %.1f -> %.1f px (%s)", "adopted" if outcome["adopted"] else "kept",
                 outcome["given_fx"], outcome["fx"], outcome["reason"])
        if not outcome["adopted"]:
            self.calibration = outcome
            return None
        return self._restart(frames, scale, outcome)

    def _restart(self, frames: list[Frame], focal_scale: float, calibration: dict) -> FrameResult:
        """Start the map again with the focal scaled by ``focal_scale`` and track ``frames`` (the
        frames since the reset, newest last) again; returns the newest one's result with the
        earlier frames posed so far in ``late`` (the rest follow once the new map initializes)."""
        self.reset()
        self._focal_scale, self.calibration, self._calibration_frames = focal_scale, calibration, None
        self.counters.focal_restarts += 1
        for frame in frames[:-1]:
            self._process(frame)
        result = self._process(frames[-1])
        snap = self.store.latest()
        result.late = [self._point(rec, snap, online=True) for rec in self._records[:-1]
                       if rec.state is not TrackingState.INITIALIZING]
        result.restarted = True
        return result

    def _validate(self, frame: Frame) -> None:
        img = frame.image
        if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            shape = getattr(img, "shape", None)
            raise FrameError(f"frame image must be an [H, W, 3] uint8 RGB array, got {shape} {getattr(img, 'dtype', type(img))}")
        h, w = img.shape[:2]
        if (frame.intrinsics.width, frame.intrinsics.height) != (w, h):
            raise FrameError(
                f"intrinsics are for {frame.intrinsics.width}x{frame.intrinsics.height} but the image is {w}x{h}"
            )
        if not math.isfinite(frame.stamp):
            raise FrameError(f"frame stamp must be finite, got {frame.stamp}")
        if self._last_stamp is not None and frame.stamp <= self._last_stamp:
            raise FrameError(f"frame stamp {frame.stamp:.6f} s does not increase (previous {self._last_stamp:.6f} s)")
        if self._input_intrinsics is not None and self.working_intrinsics(frame.intrinsics) != self._input_intrinsics:
            raise FrameError(
                f"camera changed from {self._input_intrinsics} to {self.working_intrinsics(frame.intrinsics)}; reset() to "
                "start a new map"
            )

    def _image_tensor(self, frame: Frame) -> torch.Tensor:
        return torch.from_numpy(frame.image).to(self.device, torch.float32) / 255.0

    def _result(self, frame: Frame, record: _FrameRecord, timings: StageTimings, inlier_ratio: float = 0.0) -> FrameResult:
        pose = record.online_pose.copy()
        render = None
        groups = {g: m.copy() for g, m in record.group_poses.items()}
        if self.initialized and record.state is not TrackingState.INITIALIZING:
            intr, image, twist, exposure = frame.intrinsics, frame.image, record.twist.copy(), record.exposure.copy()

            def render() -> tuple[np.ndarray, np.ndarray]:  # deferred: the newest map, when asked
                rgb, depth = self._render_map(pose, intr, groups, exposure)
                if self.config.blur.live_output == "fused":
                    rgb = fuse_deblurred(rgb, image, depth, intr, twist, self._live_subframes(twist, intr))
                return rgb, depth

        return FrameResult(
            stamp=frame.stamp,
            index=frame.index,
            pose=pose,
            state=record.state,
            is_keyframe=record.is_keyframe,
            num_gaussians=self.num_gaussians,
            num_keyframes=self.num_keyframes,
            timings=timings,
            exposure_twist=record.twist.copy(),
            inlier_ratio=inlier_ratio,
            group_poses=groups,
            dynamic_mask=record.dynamic_mask,
            _render=render,
        )

    # --------------------------------------------------------- initializing
    def _initialize_step(self, frame: Frame) -> FrameResult:
        timings = StageTimings()
        record = _FrameRecord(frame.index, frame.stamp, TrackingState.INITIALIZING, np.eye(4), map_index=self._map_index)
        record.image = frame.image if self.keep_frames else None
        self._records.append(record)
        self._init_buffer.append((frame, len(self._records) - 1))
        sharpness = self._frame_sharpness(frame, len(self._records) - 1)
        if len(self._init_buffer) < 2:
            return self._result(frame, record, timings)
        ic = self.config.init
        first, first_rec = self._init_buffer[0]
        if len(self._init_buffer) <= ic.sharpness_window and ic.sharpness_ratio * sharpness > self._sharpness[first_rec]:
            # soon after a motion-blurred first frame, a clearly sharper one: it becomes the first
            log.debug("initialization: frame %d is sharper than frame %d: it becomes the first frame",
                      frame.index, first.index)
            while len(self._init_buffer) > 1:
                self._leave_init_buffer()
            return self._result(frame, record, timings)
        two_view: TwoViewResult | None = None
        if not sharp_enough(sharpness, list(self._recent_sharpness), ic.sharpness_ratio):
            self.counters.blurred_init_frames += 1
            reason = "motion-blurred (init.sharpness_ratio)"
        else:
            t0 = time.perf_counter()
            two_view, reason = try_two_view(first.image, frame.image, first.intrinsics.numpy(), ic, self.flow)
            timings.flow = time.perf_counter() - t0
        if two_view is None:
            log.debug("frame %d: no initialization yet (%s)", frame.index, reason)
            if len(self._init_buffer) > ic.max_frames:
                self._leave_init_buffer()
                # nor is the next first frame a motion-blurred one (next to the frames that follow it)
                while len(self._init_buffer) > 1 and not sharp_enough(
                        self._sharpness[self._init_buffer[0][1]],
                        [self._sharpness[rec] for _, rec in self._init_buffer[: ic.sharpness_window]],
                        ic.sharpness_ratio):
                    self._leave_init_buffer()
            return self._result(frame, record, timings)
        t0 = time.perf_counter()
        self._build_initial_map(two_view)
        timings.mapping = time.perf_counter() - t0
        log.info(
            "initialized from frames %d and %d: %d inliers, parallax %.1f px, %d Gaussians",
            first.index, frame.index, two_view.inliers, two_view.median_parallax_px, self.num_gaussians,
        )
        t0 = time.perf_counter()
        self._track_buffered()
        timings.tracking = time.perf_counter() - t0
        self._init_buffer = []
        self._preinit = deque()
        self._sharpness.clear()
        return self._result(frame, record, timings)

    def _frame_sharpness(self, frame: Frame, rec_index: int) -> float:
        """:func:`image_sharpness` of a frame waiting to initialize (kept while it waits; also
        among the recent ones :func:`sharp_enough` compares with)."""
        value = image_sharpness(frame.image)
        self._sharpness[rec_index] = value
        self._recent_sharpness.append(value)
        return value

    def _leave_init_buffer(self) -> None:
        """The first waiting frame leaves the initialization buffer: posed backward from the first
        keyframe once the map exists, or -- beyond ``init.backfill_frames`` -- never (counted)."""
        item = self._init_buffer.pop(0)
        self._sharpness.pop(item[1], None)
        self._preinit.append(item)
        if len(self._preinit) > self.config.init.backfill_frames:
            _, dropped = self._preinit.popleft()
            self.counters.unposed_frames += 1
            log.info("initialization: frame %d will get no pose (init.backfill_frames = %d waiting)",
                     self._records[dropped].index, self.config.init.backfill_frames)

    def _build_initial_map(self, two_view: TwoViewResult) -> None:
        cfg = self.config
        (first, first_rec), (second, second_rec) = self._init_buffer[0], self._init_buffer[-1]
        self._intrinsics = first.intrinsics
        self._scene_scale = float(np.median(two_view.depth_first))
        pose_b = two_view.pose_second
        dt = max(second.stamp - first.stamp, 1e-6)
        frame_dt = dt / max(len(self._init_buffer) - 1, 1)
        ratio = self._exposure_ratio * frame_dt / dt
        twist = initial_twist(np.eye(4), pose_b, ratio)
        kf0 = self._make_keyframe(first, np.eye(4), twist, fixed=True)
        kf1 = self._make_keyframe(second, pose_b, twist)
        # what moved between the two frames stays out of the first keyframes' loss (a fast object
        # entering would otherwise be fitted as static before any motion group could exist)
        for kf, moving in ((kf0, two_view.moving_first), (kf1, two_view.moving_second)):
            if moving is not None:
                kf.unexplained = torch.from_numpy(moving)
                log.info("initialization: %.1f %% of frame %d moved on its own: left out of the first map",
                         100.0 * moving.mean(), kf.frame_index)
        if cfg.mapping.affine_exposure:  # the second view's exposure relative to the first's (the map's gauge)
            kf1.exposure[0] = math.log(max(float(second.image.mean()), 1.0) / max(float(first.image.mean()), 1.0))
        h, w = first.image.shape[:2]
        stride = max(1.0, math.sqrt(h * w / max(cfg.init.seed_points, 1)))
        pixels = grid_samples(w, h, stride=max(int(round(stride)), 1), border=0)
        depth = two_view.depth_first[pixels[:, 1].astype(int), pixels[:, 0].astype(int)].astype(np.float64)
        self._keyframe_stamps = [first.stamp, second.stamp]
        self._pending_poses = {0: np.eye(4), 1: pose_b.copy()}
        self.initialized = True
        assert self.backend is not None
        self.backend.seed(kf0, kf1, pixels, depth, stride, self._scene_scale)
        snap = self._snapshot()
        for rec, kf_id in ((first_rec, 0), (second_rec, 1)):
            self._records[rec].map_index = self._map_index
            self._records[rec].is_keyframe = True
            self._store_pose(self._records[rec], snap.keyframe_poses[kf_id], TrackingState.TRACKING, kf_id)
            self._records[rec].twist = snap.keyframe_twists[kf_id].copy()
        self._history = [self._records[first_rec], self._records[second_rec]]
        self.counters.keyframes += 2

    def _track_buffered(self) -> None:
        """Pose the frames that waited for initialization, retroactively: those between the two
        initialization frames forward from the first keyframe, those before it (they left the
        initialization buffer) backward from it, each walk predicting with constant velocity.

        A mapping job (after the initial rounds, against the refined map): inline it runs now,
        concurrently the live frames are not kept waiting. Results reach the frames' records
        through :meth:`_take_late_poses`."""
        between = [(frame, rec_index) for frame, rec_index in self._init_buffer[1:-1]]
        before = list(reversed(self._preinit))  # newest first: walking back in time
        if not between and not before:
            return
        assert self.backend is not None
        tracker = Tracker(self.config, DenseFlow.from_config(self.config.tracking))
        first_stamp, second_stamp = self._keyframe_stamps[0], self._keyframe_stamps[1]
        late = self._late_poses

        def walk(history: list[tuple[float, np.ndarray]], frames: list[tuple[Frame, int]], twist: np.ndarray,
                 snap: MapSnapshot) -> list[tuple[float, np.ndarray]]:
            for frame, rec_index in frames:
                pred = self._predict(history, frame.stamp)
                res = tracker.track(frame.image, None, frame.intrinsics, pred, twist, snap.scene,
                                    self._settings(frame.intrinsics), refine=False, scene_scale=self._scene_scale)
                (t_a, p_a), (t_b, p_b) = sorted([history[-1], (frame.stamp, res.pose)], key=lambda item: item[0])
                late.append((rec_index, res.pose, self._motion_twist(t_a, p_a, t_b, p_b), res.lost))
                if not res.lost:
                    history.append((frame.stamp, res.pose))
            return history

        def job() -> None:
            snap = self._snapshot()
            twist = snap.keyframe_twists[1]
            forward = walk([(first_stamp, snap.keyframe_poses[0])], between, twist, snap)
            if before:  # velocity from the nearest posed frame after the first keyframe
                after = forward[1] if len(forward) > 1 else (second_stamp, snap.keyframe_poses[1])
                walk([after, (first_stamp, snap.keyframe_poses[0])], before, twist, snap)

        self.backend.submit(job)  # inline: done now, its poses reported with this frame's result

    def _take_late_poses(self) -> list[int]:
        """Store the poses the mapping thread found for buffered frames; returns their record indices."""
        taken = []
        while self._late_poses:
            rec_index, pose, twist, lost = self._late_poses.popleft()
            rec = self._records[rec_index]
            rec.map_index = self._map_index  # posed in the current map
            self._store_pose(rec, pose, TrackingState.LOST if lost else TrackingState.TRACKING,
                             self._nearest_keyframe(rec.stamp))
            rec.twist = twist
            taken.append(rec_index)
        return taken

    # ------------------------------------------------------------- tracking
    def _snapshot(self) -> MapSnapshot:
        snap = self.store.latest()
        if snap is None:
            raise RuntimeError("no map snapshot yet")
        return snap

    def _keyframe_pose(self, kf_id: int, snap: MapSnapshot | None = None) -> np.ndarray:
        """Latest ``[4, 4]`` pose of keyframe ``kf_id``: mapping's estimate once published, else
        the pose it was handed over with."""
        snap = snap if snap is not None else self.store.latest()
        if snap is not None and kf_id in snap.keyframe_poses:
            self._pending_poses.pop(kf_id, None)
            return snap.keyframe_poses[kf_id]
        return self._pending_poses[kf_id]

    @staticmethod
    def _predict(history: list[tuple[float, np.ndarray]], stamp: float) -> np.ndarray:
        """Constant-velocity pose ``[4, 4]`` at ``stamp`` from the last two ``(stamp, pose)``."""
        if len(history) < 2:
            return history[-1][1].copy()
        (t0, p0), (t1, p1) = history[-2], history[-1]
        ratio = (stamp - t1) / max(t1 - t0, 1e-9)
        return predict_constant_velocity(p1, p0, ratio)

    def _motion_twist(self, stamp_prev: float, pose_prev: np.ndarray, stamp: float, pose: np.ndarray) -> np.ndarray:
        """Exposure twist ``[6]`` of a frame from its motion: velocity x exposure time (the
        exposure ratio times the camera's frame period), mapping refines it for keyframes."""
        dt = max(stamp - stamp_prev, 1e-9)
        period = min(self._stamp_period or dt, dt)
        return initial_twist(pose_prev, pose, self._exposure_ratio * period / dt)

    def _live_subframes(self, twist: np.ndarray, intrinsics: Intrinsics) -> int:
        """Sub-frames of a live frame's blur (``blur.subframes``, or from its twist's blur length)."""
        b = self.config.blur
        return exposure_subframes(b.subframes, [twist], intrinsics.fx, intrinsics.width, intrinsics.height,
                                  self._scene_scale, b.subframe_spacing_px, b.max_subframes)

    def _settings(self, intrinsics: Intrinsics, scene_scale: float | None = None) -> RenderSettings:
        r = self.config.render
        s = self._scene_scale if scene_scale is None else scene_scale
        return RenderSettings(intrinsics.width, intrinsics.height, r.sh_degree, r.near_plane * s, r.far_plane * s, r.eps2d, r.background, r.backend)

    def _scene(self, snap: MapSnapshot) -> SceneTensors:
        """The map as rendered for tracking: motion groups at their latest poses."""
        return self.motion.scene(snap.scene) if self.motion is not None else snap.scene

    def _track(self, frame: Frame, pose_pred: np.ndarray, twist_init: np.ndarray, snap: MapSnapshot,
               refine: bool = False, exclude: np.ndarray | None = None, deadline: float | None = None) -> TrackingResult:
        if exclude is None and self.motion is not None:
            exclude = self.motion.exclusion_mask()
        refine = refine and self.config.tracking.refine_steps > 0
        target = self._image_tensor(frame) if refine else None
        return self.tracker.track(
            frame.image, target, frame.intrinsics, pose_pred, twist_init, self._scene(snap),
            self._settings(frame.intrinsics), exclude=exclude, refine=refine, scene_scale=self._scene_scale,
            deadline=deadline, scale=self.resolution.scale,
        )

    def _deadline(self, start: float) -> float | None:
        """Live camera (concurrent mode): when this frame's tracking should be done
        (``tracking.frame_budget`` of the camera's period -- from image arrivals when known, else
        from the stamps -- after ``start``); offline: None."""
        budget = self.config.tracking.frame_budget
        if not self.concurrent or budget <= 0:
            return None
        period = self.arrival_period or self._stamp_period
        return None if period is None else start + budget * period

    def _track_step(self, frame: Frame, deadline: float | None = None) -> FrameResult:
        """Track ``frame`` against the map; ``deadline``: see :meth:`Tracker.track`."""
        cfg = self.config
        timings = StageTimings()
        self._use_exposure_estimate()
        snap = self._snapshot()
        history = [(rec.stamp, self._final_pose(rec, snap)) for rec in self._history]
        last_stamp, last_pose = history[-1]
        gap = frame.stamp - last_stamp
        stale = gap > cfg.tracking.max_gap_s
        pred = last_pose.copy() if stale else self._predict(history, frame.stamp)
        twist = self._history[-1].twist
        if not np.any(twist):
            twist = self._motion_twist(last_stamp, last_pose, frame.stamp, pred)
        res = self._track(frame, pred, twist, snap, refine=True, deadline=deadline)
        self.counters.passes_cut += int(res.passes_cut)
        timings.flow = res.timings.get("flow", 0.0)
        timings.render = res.timings.get("render", 0.0)
        timings.tracking = res.timings.get("gauss_newton+refine", 0.0)
        state = TrackingState.TRACKING
        if res.lost:
            self.counters.lost_frames += 1
            reloc = self._relocalize(frame, snap)
            if reloc is not None:
                res, state = reloc, TrackingState.RELOCALIZED
                self.counters.relocalizations += 1
                self._lost_run = 0
            else:
                state = TrackingState.LOST
                self._lost_run += 1
        else:
            self._lost_run = 0
        if res.mismatch:  # tracked (a lost result is never a mismatch), relocalized ones included
            self.counters.mismatch_frames += 1
            log.info("frame %d: the map does not explain the frame (%s): a keyframe to correct it",
                     frame.index, res.reason)
        if not res.twist_refined:  # the exposure twist of an ordinary frame comes from its motion
            res.twist = self._motion_twist(last_stamp, last_pose, frame.stamp, res.pose)
        record = _FrameRecord(frame.index, frame.stamp, state, res.pose.copy(), twist=res.twist.copy(),
                              exposure=res.exposure, map_index=self._map_index)
        record.image = frame.image if self.keep_frames else None
        self._records.append(record)
        if self.motion is not None and state is not TrackingState.LOST:
            self._observe_motion(frame, res, record)
        if state is TrackingState.TRACKING:
            self._observe_exposure(frame, res)
        if state is TrackingState.LOST:
            log.warning("frame %d: tracking lost (%s)", frame.index, res.reason)
            self._store_pose(record, res.pose, state, self._nearest_keyframe(frame.stamp))
            if self._lost_run > cfg.tracking.max_lost_frames or stale:
                self._reinitialize(frame, record, "a long gap in the image stream" if stale else
                                   f"tracking lost for {self._lost_run} frames")
            return self._result(frame, record, timings, res.inlier_ratio)
        decision = self._keyframe_decision(frame, res, snap)
        if decision.is_keyframe:
            t0 = time.perf_counter()
            kf_id = self._submit_keyframe(frame, res, record)
            timings.mapping = time.perf_counter() - t0
            record.is_keyframe = True
            snap = self._snapshot()
            record.online_pose = self._keyframe_pose(kf_id, snap).copy()  # inline: refined by its round
            record.twist = snap.keyframe_twists.get(kf_id, record.twist).copy()
            record.exposure = snap.keyframe_exposures.get(kf_id, record.exposure).copy()
            self._store_pose(record, record.online_pose, state, kf_id)
            log.debug("frame %d: keyframe %d (%s)", frame.index, kf_id, decision.reason)
        else:
            self._store_pose(record, res.pose, state, self.num_keyframes - 1)
        self._history = (self._history + [record])[-3:]
        return self._result(frame, record, timings, res.inlier_ratio)

    def _observe_exposure(self, frame: Frame, res: TrackingResult) -> None:
        """Hand a tracked frame to the exposure-time estimate (``blur.exposure_pairs``); a pair of
        frames it completes is compared on the mapping thread (concurrent) or now."""
        est = self.exposure
        if est.max_pairs <= 0 or not self.config.blur.enabled or est.done or self.backend is None:
            return
        depth, alpha = res.render.depth[0, ..., 0], res.render.alpha[0, ..., 0]
        points = visible_points(depth, alpha, res.render_pose, frame.intrinsics, res.exclude)
        period = self._stamp_period or max(frame.stamp - self._history[-1].stamp, 1e-3)
        pair = est.push(frame.stamp, res.pose, exposure_gray(frame.image), points, period)
        if pair is None:
            return
        intrinsics = frame.intrinsics
        if self.backend.concurrent and self.backend.running:
            self.backend.submit(lambda: est.add(pair, intrinsics))
        else:
            est.add(pair, intrinsics)

    def _use_exposure_estimate(self) -> None:
        """Switch to the measured exposure ratio once it is known and whenever it moves by 0.05:
        the exposure twists made so far (frames, keyframes, motion groups) are rescaled to it."""
        new, old = self.exposure.ratio, self._exposure_ratio
        if abs(new - old) < 0.05:
            return
        self._exposure_ratio = new
        log.info("exposure time: %.2f of the frame period (measured on %d frame pairs; was %.2f)",
                 new, self.exposure.pairs, old)
        if old <= 1e-6:  # no twists to rescale: the next ones come from the motion
            return
        factor = new / old
        for rec in self._records:
            rec.twist = rec.twist * factor
            rec.group_twists = {g: t * factor for g, t in rec.group_twists.items()}
        if self.backend is not None and self.initialized:
            self.backend.edit(lambda gmap, keyframes: scale_twists(keyframes, factor))

    def _observe_motion(self, frame: Frame, res: TrackingResult, record: _FrameRecord) -> None:
        """Detect / move / spawn / merge motion groups with the tracked frame."""
        assert self.motion is not None
        t0 = time.perf_counter()
        depth, alpha = res.render.depth[0, ..., 0].numpy(), res.render.alpha[0, ..., 0].numpy()
        if depth.shape != frame.image.shape[:2]:  # tracking rendered at tracking.render_scale
            size = (frame.image.shape[1], frame.image.shape[0])
            depth = cv2.resize(depth, size, interpolation=cv2.INTER_NEAREST)
            alpha = cv2.resize(alpha, size, interpolation=cv2.INTER_LINEAR)
        obs = self.motion.observe(
            frame.image, res.pose, depth, alpha,
            frame.intrinsics, _BackendMap(self), self._scene_scale, self._exposure_ratio,
            self._settings(frame.intrinsics),
        )
        record.group_poses, record.group_twists, record.dynamic_mask = obs.poses, obs.twists, obs.mask
        self.counters.groups_spawned += len(obs.spawned)
        self.counters.groups_merged += len(obs.merged)
        for g in obs.merged:  # merged Gaussians are static now: forget the group in every frame (keyframes: the edit)
            for rec in self._records:
                rec.group_poses.pop(g, None)
                rec.group_twists.pop(g, None)
        log.debug("frame %d: motion handling %.3f s, groups %s", frame.index, time.perf_counter() - t0, sorted(obs.poses))

    def _keyframe_decision(self, frame: Frame, res: TrackingResult, snap: MapSnapshot) -> KeyframeDecision:
        """Keyframe test on map mismatch (:attr:`TrackingResult.mismatch`), coverage, translational
        parallax since the last keyframe and time.

        Parallax is measured with the current rotation for both positions, so camera shake
        (rotation) does not spawn keyframes; new areas it reveals show up as low coverage.
        While mapping has not integrated the last keyframe yet (concurrent mode), no new one
        is made: its area is not in the map yet, so coverage says nothing new.
        """
        if self.concurrent and self.mapping_backlog > 0:
            return KeyframeDecision(False, "")
        if res.mismatch:
            return KeyframeDecision(True, "map mismatch")
        last_id = self.num_keyframes - 1
        last_position = self._keyframe_pose(last_id, snap)[:3, 3]
        parallax_px = 0.0
        if len(res.points):
            k = frame.intrinsics.numpy()
            rot = res.pose[:3, :3]

            def proj(position: np.ndarray) -> np.ndarray:
                x = (res.points - position) @ rot
                return (x[:, :2] / np.maximum(x[:, 2:3], 1e-9)) * [k[0, 0], k[1, 1]]

            parallax_px = float(np.median(np.linalg.norm(proj(res.pose[:3, 3]) - proj(last_position), axis=1)))
        return decide_keyframe(res.coverage, parallax_px, frame.stamp - self._keyframe_stamps[last_id], self.config.keyframes)

    def _relocalize(self, frame: Frame, snap: MapSnapshot) -> TrackingResult | None:
        """Track from each window keyframe's pose (newest first); accept the first that holds."""
        for kf_id in reversed(snap.window):
            res = self._track(frame, snap.keyframe_poses[kf_id], snap.keyframe_twists[kf_id], snap)
            if not res.lost:
                log.info("frame %d: relocalized against keyframe %d", frame.index, kf_id)
                return res
        return None

    def _reinitialize(self, frame: Frame, record: _FrameRecord, why: str) -> None:
        log.warning("frame %d: %s, relocalization failed: re-initializing (new map, new scale)", frame.index, why)
        snap = self.store.latest()
        for rec in self._records:
            if rec.reference is not None:
                rec.absolute = self._final_pose(rec, snap)
                rec.reference = rec.relative = None
        self.counters.reinitializations += 1
        if snap is not None:  # kept: the frames posed in it are still rendered and its map saved from it
            self._retired[self._map_index] = snap
        self._map_index += 1  # this frame's record keeps the old map's prediction until the new map poses it
        self._new_map()
        self._init_buffer = [(frame, len(self._records) - 1)]
        self._frame_sharpness(frame, len(self._records) - 1)

    # -------------------------------------------------------------- mapping
    def _make_keyframe(
        self, frame: Frame, pose: np.ndarray, twist: np.ndarray, record: _FrameRecord | None = None, fixed: bool = False
    ) -> Keyframe:
        unit = twist_units(self._scene_scale)
        groups = record.group_poses if record is not None else {}
        group_twists = record.group_twists if record is not None else {}
        mask = record.dynamic_mask if record is not None else None
        return Keyframe(
            frame_index=frame.index,
            stamp=frame.stamp,
            image=self._image_tensor(frame),
            intrinsics=frame.intrinsics,
            pose=torch.from_numpy(pose.copy()),
            twist_u=torch.from_numpy(twist.copy()) / unit,
            fixed=fixed,
            unit=unit,
            dynamic_mask=None if mask is None else torch.from_numpy(mask),
            exposure=torch.from_numpy(record.exposure.copy()) if record is not None and not fixed else torch.zeros(2, dtype=torch.float64),
            group_poses={g: torch.from_numpy(m.copy()) for g, m in groups.items()},
            group_twists={g: torch.from_numpy(group_twists.get(g, np.zeros(6)).copy()) for g in groups},
        )

    def _submit_keyframe(self, frame: Frame, res: TrackingResult, record: _FrameRecord) -> int:
        """Hand ``frame`` to mapping as the next keyframe; returns its id."""
        assert self.backend is not None
        kf = self._make_keyframe(frame, res.pose, res.twist, record)
        kf_id = self.num_keyframes
        self._keyframe_stamps.append(frame.stamp)
        self._pending_poses[kf_id] = res.pose.copy()
        self.counters.keyframes += 1
        self.backend.submit(kf)
        return kf_id

    def finalize(self, iterations: int | None = None) -> MappingStats:
        """Offline: jointly refine the map, poses and exposure twists over every tracked frame.

        Uses the frames kept with ``keep_frames=True`` (else only the keyframes), at most
        ``mapping.final_max_views`` of them (evenly spaced), for ``mapping.final_steps_per_view``
        steps per tracked frame (at most ``mapping.final_iters``) unless ``iterations`` is given;
        the frames left out are then tracked against the refined map. Deblurring benchmarks
        evaluate the deblurred training views this way.
        """
        iters = self.config.mapping.final_iters if iterations is None else iterations
        if not self.initialized or self.backend is None:
            return MappingStats()
        backend = self.backend
        if backend.concurrent:  # the rest runs here, on the map the mapping thread leaves behind
            backend.wait_idle()
            backend.stop()
        self._use_exposure_estimate()
        self._take_late_poses()
        self._recover_lost()
        if iters <= 0:
            return MappingStats()
        snap = backend.publish()
        by_frame = {kf.frame_index: kf for kf in backend.keyframes}
        views: list[tuple[_FrameRecord | None, Keyframe]] = []
        for rec in self._records:
            if rec.state in (TrackingState.INITIALIZING, TrackingState.LOST) or rec.map_index != self._map_index:
                continue  # frames of a retired map (before a re-initialization) keep its poses
            kf = by_frame.get(rec.index) if rec.is_keyframe else None
            if kf is not None:
                views.append((None, kf))
            elif rec.image is not None and self._intrinsics is not None:
                view = self._make_keyframe(
                    Frame(rec.image, rec.stamp, self._intrinsics, rec.index), self._final_pose(rec, snap), rec.twist, rec
                )
                views.append((rec, view))
        if self.config.blur.enabled and self.config.blur.final_twist_fit:
            self._fit_view_twists([v for _, v in views], snap)
        limit = max(self.config.mapping.final_max_views, 2)
        tracked = len(views)
        rest: list[tuple[_FrameRecord | None, Keyframe]] = []  # beyond the limit: tracked once refined
        if len(views) > limit:
            keep = set(np.linspace(0, len(views) - 1, limit).round().astype(int).tolist())
            rest = [v for i, v in enumerate(views) if i not in keep]
            views = [v for i, v in enumerate(views) if i in keep]
        before = {view.frame_index: view.numpy_pose() for _, view in views}
        frames = [v for _, v in views]
        if iterations is None and self.config.mapping.final_steps_per_view > 0:
            iters = min(iters, self.config.mapping.final_steps_per_view * tracked)
        if iterations is None:
            iters = final_steps_for_cost(iters, [backend.mapper.subframes(v) for v in frames],
                                         self.config.mapping.final_budget_subframes)
        rounds = max(self.config.mapping.final_rounds, 1)
        stats = MappingStats(views=len(frames))
        self._retrack_groups(frames)  # online group poses come from frame-to-frame flow: refit first
        # a streak is preconditioned only when its length is known: the exposure time measured (or
        # fixed by the user with blur.exposure_pairs 0), not the prior guessed for an unmeasurable camera
        known = self.exposure.value is not None or self.config.blur.exposure_pairs == 0
        precondition = self.config.blur.final_precondition if known else 0.0
        if self.config.blur.final_precondition > 0 and not known:
            log.info("final refinement: exposure time not measured (%.2f of the frame period assumed): "
                     "streaks not preconditioned", self._exposure_ratio)
        for r in range(rounds):
            part = backend.mapper.refine_all(frames, iters // rounds + (1 if r < iters % rounds else 0), precondition)
            stats.iterations += part.iterations
            stats.added += part.added
            stats.pruned += part.pruned
            stats.skipped_steps += part.skipped_steps
            stats.preconditioned_steps += part.preconditioned_steps
            stats.final_loss = part.final_loss
            if self.config.mapping.optimize_poses:
                self._retrack(frames)
        if rest:
            self._track_unrefined([v for _, v in rest], frames, before)
        records = {rec.index: rec for rec in self._records}
        for rec, view in views + rest:
            if rec is not None:  # a non-keyframe view: its own refined pose from now on
                rec.absolute, rec.reference, rec.relative = view.numpy_pose(), None, None
                rec.twist = view.twist().detach().numpy()
                rec.exposure = view.exposure.detach().numpy().copy()
            rec = records.get(view.frame_index) if rec is None else rec
            if rec is not None:
                rec.group_poses = {g: m.detach().numpy().copy() for g, m in view.group_poses.items()}
                rec.group_twists = {g: e.detach().numpy().copy() for g, e in view.group_twists.items()}
                if view.dynamic_mask is not None:
                    rec.dynamic_mask = view.dynamic_mask.numpy().copy()
        backend.publish()
        return stats

    def _fit_view_twists(self, views: list[Keyframe], snap: MapSnapshot | None) -> None:
        """Offline: each view's exposure twist from the poses of the frames around it
        (:func:`neighbour_path`: the velocity at mid-exposure, where tracking's guess is the
        motion since the previous frame) and, with ``blur.final_bend``, its path's bend (the
        acceleration: a straight path through a turning streak puts the sharp render at the
        streak's centroid, off mid-exposure). At the ends of the sequence the path comes from two frames on
        one side; views with fewer posed neighbours keep theirs."""
        posed = [r for r in self._records if r.map_index == self._map_index
                 and r.state not in (TrackingState.INITIALIZING, TrackingState.LOST)]
        if len(posed) < 3:
            return
        poses = np.stack([self._final_pose(r, snap) for r in posed])
        finite = np.isfinite(poses).all(axis=(1, 2))
        posed, poses = [r for r, ok in zip(posed, finite) if ok], poses[finite]
        stamps = np.array([r.stamp for r in posed])
        position = {r.index: i for i, r in enumerate(posed)}
        period = self._stamp_period or camera_period(np.diff(stamps))
        if period is None or not period > 0:
            return
        for view in views:
            i = position.get(view.frame_index)
            if i is None:
                continue
            path = neighbour_path(stamps, poses, i, self._exposure_ratio * period, max_gap_s=2.5 * period)
            if path is not None:
                view.twist_u = torch.from_numpy(path[0]) / view.unit
                if self.config.blur.final_bend:
                    view.bend = torch.from_numpy(path[1].copy())

    def _recover_lost(self) -> None:
        """Offline: track the frames tracking lost online (their pose is only a prediction) once
        more, against the final map, from the pose interpolated between their posed neighbours,
        then from each neighbour's; a frame that holds is posed (``recovered_frames``), the rest
        keep the prediction and their LOST state. Needs the images (``keep_frames``); frames of
        an earlier map (before a re-initialization) are left alone."""
        records = [r for r in self._records if r.map_index == self._map_index]
        posed = [i for i, r in enumerate(records) if r.state in (TrackingState.TRACKING, TrackingState.RELOCALIZED)]
        lost = [i for i, r in enumerate(records) if r.state is TrackingState.LOST and r.image is not None]
        if not posed or not lost or self._intrinsics is None:
            return
        snap = self.store.latest()
        for i in lost:
            rec = records[i]
            neighbours = [records[posed[j]] for j in _neighbours(posed, i)]
            candidates = [self._final_pose(n, snap) for n in neighbours]
            if len(neighbours) == 2:
                candidates.insert(0, _pose_at(rec.stamp, [(n.stamp, p) for n, p in zip(neighbours, candidates)]))
            exclude = (exclusion_margin(rec.dynamic_mask) if rec.dynamic_mask is not None
                       else np.zeros(rec.image.shape[:2], bool))
            frame = Frame(rec.image, rec.stamp, self._intrinsics, rec.index)
            for pred in candidates:
                res = self._track(frame, pred, rec.twist, snap, exclude=exclude)
                if not res.lost and np.isfinite(res.pose).all():
                    self._store_pose(rec, res.pose, TrackingState.TRACKING, self._nearest_keyframe(rec.stamp),
                                     published=False)  # online it stays what was published
                    rec.exposure = res.exposure
                    self.counters.recovered_frames += 1
                    posed.insert(bisect.bisect_left(posed, i), i)
                    break
        log.info("offline: %d of %d frames lost online were tracked against the final map",
                 self.counters.recovered_frames, len(lost))

    def _track_unrefined(self, rest: list[Keyframe], refined: list[Keyframe], before: dict[int, np.ndarray]) -> None:
        """Offline, after the final refinement: the frames it left out (beyond
        ``mapping.final_max_views``) are tracked against the final map. Each starts from its own
        pose moved as its refined neighbours moved (their corrections interpolated in time), then
        takes :meth:`_retrack`'s pose step and the brightness of the final map's render; without
        this they keep poses fitted to the online map, and their renders miss the refined one.
        ``refined`` in time order; ``before``: their poses ``[4, 4]`` before the refinement."""
        start = time.perf_counter()
        order = [v.frame_index for v in refined]
        corrections = [(v.stamp, v.numpy_pose() @ np.linalg.inv(before[v.frame_index])) for v in refined]
        for view in rest:  # refined is never empty: final_max_views >= 2
            correction = _pose_at(view.stamp, [corrections[j] for j in _neighbours(order, view.frame_index)])
            view.pose = torch.from_numpy(correction @ view.numpy_pose())
        self._retrack(rest, exposure=True)
        self.counters.final_tracked_frames += len(rest)
        log.info("final refinement: %d frames beyond mapping.final_max_views tracked against the refined map in %.1f s",
                 len(rest), time.perf_counter() - start)

    def _retrack(self, views: list[Keyframe], exposure: bool = False) -> None:
        """JOGS's pose step against the refined map: flow-lifted Gauss-Newton for every view's
        camera (motion groups placed at the view's own poses of them), then every motion group.
        ``exposure``: also take each view's affine exposure from the tracked brightness (views
        the refinement did not fit photometrically)."""
        base = scene_tensors(self.backend.gmap, detach=True)
        for view in views:
            scene = move_groups(base, {g: m.detach() for g, m in view.group_poses.items()})
            image = (view.image.numpy() * 255 + 0.5).astype(np.uint8)
            exclude = exclusion_margin(view.dynamic_mask.numpy()) if view.dynamic_mask is not None else None
            res = self.tracker.track(
                image, view.image, view.intrinsics, view.numpy_pose(), view.twist().detach().numpy(), scene,
                self._settings(view.intrinsics), exclude=exclude, refine=False, scene_scale=self._scene_scale,
                blurred_subframes=self.backend.mapper.subframes(view) | 1,  # odd: a middle sub-frame at s = 0
                photometric_weight=self.config.mapping.final_photometric_weight,
                bend=None if view.bend is None else view.bend.numpy(),
            )
            if not res.lost and not res.mismatch and np.isfinite(res.pose).all():  # only a pose the map explains
                view.pose = torch.from_numpy(res.pose.copy())
                if exposure:
                    view.exposure = torch.from_numpy(res.exposure)
        self._retrack_groups(views)

    def _retrack_groups(self, views: list[Keyframe]) -> None:
        """Track every motion group in every view against its Gaussians (:func:`track_group`),
        walking forward in time from the first view that placed it, then backward from there:
        the walk also carries a group into views around the ones it was detected in (before its
        detection, after its region was lost) for as long as tracking holds."""
        if self.motion is None:
            return
        base = scene_tensors(self.backend.gmap, detach=True)
        present = sorted(int(g) for g in torch.unique(self.backend.gmap.group_ids).tolist() if g > 0)
        dyn = self.config.dynamic
        ratio = self._exposure_ratio
        for g in present:
            seen = [i for i, v in enumerate(views) if g in v.group_poses]
            if not seen:
                continue
            seed_area = None  # the group's image area where the walks start
            for walk in (range(seen[0], len(views)), range(seen[0] - 1, -1, -1)):
                history = [] if walk.start == seen[0] else [views[seen[0]].group_poses[g].detach().numpy()]
                last_area = None if walk.start == seen[0] else seed_area
                last_twist = views[seen[0]].group_twists.get(g, torch.zeros(6, dtype=torch.float64)).detach().numpy()
                for i in walk:
                    view = views[i]
                    known = g in view.group_poses
                    if known:
                        preds = [view.group_poses[g].detach().numpy()]
                    elif len(history) >= 2:  # constant velocity, or standing still (a swinging object turns)
                        preds = [predict_constant_velocity(history[-1], history[-2]), history[-1]]
                    elif history:
                        preds = [history[-1]]
                    else:
                        break
                    others = {o: m.detach().numpy() for o, m in view.group_poses.items() if o != g}
                    # what every prediction's attempt shares: the view's image, camera, settings and sub-frames
                    image = (view.image.numpy() * 255 + 0.5).astype(np.uint8)
                    camera_pose, camera_twist = view.numpy_pose(), view.twist().detach().numpy()
                    settings, subframes = self._settings(view.intrinsics), self.backend.mapper.subframes(view) | 1
                    track = None
                    for pred in preds:
                        twists = {o: e.detach().numpy() for o, e in view.group_twists.items()}
                        if not known:  # exposure twist from the walk's velocity (the last one's at its start)
                            ends = (history[-1], pred) if walk.step > 0 else (pred, history[-1])
                            twists[g] = initial_twist(*ends, ratio) if len(history) >= 2 else last_twist
                        attempt = track_group(
                            self.flow, image, view.intrinsics, camera_pose, base, settings, g, pred, others,
                            blur=(camera_twist, twists, subframes),
                            passes=self.config.tracking.flow_passes, huber_px=self.config.tracking.huber_px,
                        )
                        # a carried group's image area changes little from one frame to the next: a jump is a
                        # track that slid onto something else
                        plausible = known or last_area is None or attempt.visible.sum() <= CARRY_MAX_GROWTH * last_area
                        if attempt.ok and plausible and (track is None or attempt.inlier_ratio > track.inlier_ratio):
                            track, pred_used, twists_used = attempt, pred, twists
                    if track is None:
                        if known:
                            history.append(preds[0])
                            continue
                        break  # the group left the view (or cannot be followed): stop this walk
                    pred, twists = pred_used, twists_used
                    if track.inlier_ratio >= dyn.min_group_inliers:
                        view.group_poses[g] = torch.from_numpy(track.pose.copy())
                        if g not in view.group_twists:
                            view.group_twists[g] = torch.from_numpy(twists.get(g, np.zeros(6)).copy())
                        mask = torch.from_numpy(track.visible)
                        view.dynamic_mask = mask if view.dynamic_mask is None else view.dynamic_mask | mask
                        history.append(track.pose)
                        last_twist = view.group_twists[g].detach().numpy()
                        last_area = float(track.visible.sum())
                        if i == seen[0]:
                            seed_area = last_area
                    elif known:
                        history.append(pred)
                    else:
                        break  # the group left the view (or cannot be followed): stop this walk

    # -------------------------------------------------------------- outputs
    def _store_pose(self, rec: _FrameRecord, pose: np.ndarray, state: TrackingState, reference: int | None,
                    published: bool = True) -> None:
        """Set a frame's pose (relative to keyframe ``reference`` when given); ``published``: it is
        also the frame's online pose (what the node sends), else that stays as it was."""
        rec.state = state
        if published and state is not TrackingState.INITIALIZING:
            rec.online_pose = pose.copy()
        if reference is None or reference >= self.num_keyframes:
            rec.absolute, rec.reference, rec.relative = pose.copy(), None, None
            return
        rec.reference = reference
        rec.relative = np.linalg.inv(self._keyframe_pose(reference)) @ pose
        rec.absolute = None

    def _nearest_keyframe(self, stamp: float) -> int | None:
        if not self._keyframe_stamps:
            return None
        return int(np.argmin([abs(s - stamp) for s in self._keyframe_stamps]))

    def _final_pose(self, rec: _FrameRecord, snap: MapSnapshot | None = None) -> np.ndarray:
        """Latest ``[4, 4]`` estimate of a frame: relative to its keyframe as mapping refined it."""
        if rec.reference is not None and rec.relative is not None:
            return self._keyframe_pose(rec.reference, snap) @ rec.relative
        if rec.absolute is not None:
            return rec.absolute.copy()
        return rec.online_pose.copy()

    def _final_group_poses(self, rec: _FrameRecord) -> dict[int, np.ndarray]:
        """Group poses of a frame; a keyframe's refined ones when the frame is a keyframe."""
        keyframes = self.backend.keyframes if self.backend is not None else []
        if rec.is_keyframe and rec.reference is not None and rec.reference < len(keyframes):
            poses = dict(keyframes[rec.reference].group_poses)  # one atomic copy (mapping may edit it)
            return {g: m.detach().numpy().copy() for g, m in poses.items()}
        return {g: m.copy() for g, m in rec.group_poses.items()}

    def _final_exposure(self, rec: _FrameRecord, snap: MapSnapshot | None) -> np.ndarray:
        """Affine exposure ``[2]`` of a frame: a keyframe's as mapping refined it, else its own."""
        if rec.is_keyframe and rec.reference is not None and snap is not None:
            return snap.keyframe_exposures.get(rec.reference, rec.exposure).copy()
        return rec.exposure.copy()

    def _point(self, rec: _FrameRecord, snap: MapSnapshot | None, online: bool) -> TrajectoryPoint:
        if online:
            return TrajectoryPoint(rec.index, rec.stamp, rec.online_pose.copy(), rec.state, rec.is_keyframe,
                                   dict(rec.group_poses), rec.dynamic_mask, rec.exposure.copy(), rec.map_index)
        return TrajectoryPoint(rec.index, rec.stamp, self._final_pose(rec, snap), rec.state, rec.is_keyframe,
                               self._final_group_poses(rec), rec.dynamic_mask, self._final_exposure(rec, snap),
                               rec.map_index)

    def trajectory(self) -> list[TrajectoryPoint]:
        """Latest pose estimate of every frame that has one (keyframe-relative poses follow
        their keyframe's refinement; frames that never got a pose are left out).

        Like :meth:`process`, call it from the tracking thread."""
        self._take_late_poses()
        snap = self.store.latest()
        return [self._point(rec, snap, online=False) for rec in self._records if rec.state is not TrackingState.INITIALIZING]

    def online_trajectory(self) -> list[TrajectoryPoint]:
        """Poses as :meth:`process` returned them (what a live system published); frames
        buffered before initialization with the pose they got afterwards (``FrameResult.late``)."""
        self._take_late_poses()
        return [self._point(rec, None, online=True) for rec in self._records if rec.state is not TrackingState.INITIALIZING]

    @torch.no_grad()
    def render(
        self, pose: np.ndarray, intrinsics: Intrinsics, group_poses: dict[int, np.ndarray] | None = None,
        exposure: np.ndarray | None = None, map_index: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Sharp render of the newest map: RGB ``[H, W, 3]`` uint8 and depth ``[H, W]`` float32 (NaN = empty).

        ``group_poses``: where each motion group is (group -> ``[4, 4]``); groups not given are
        not rendered. ``exposure``: ``[2]`` (log gain, bias) of the frame to render as its camera
        recorded it (``TrajectoryPoint.exposure``); default the map's own brightness.
        ``map_index``: render the map that was current then (``TrajectoryPoint.map_index``; a
        re-initialization retires a map); default the newest. Safe from any thread (it renders a
        snapshot). ``intrinsics``: the camera as the frames gave it, at the size wanted (the focal
        self-calibration is applied here; a map built at ``max_image_width`` renders at any size).
        """
        return self._render_map(pose, self.calibrated(intrinsics), group_poses, exposure, map_index)

    def _render_map(
        self, pose: np.ndarray, intrinsics: Intrinsics, group_poses: dict[int, np.ndarray] | None = None,
        exposure: np.ndarray | None = None, map_index: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`render` with the map's own camera."""
        retired = self._retired.get(map_index) if map_index is not None else None
        scene = move_groups((retired or self._snapshot()).scene, {g: torch.from_numpy(m) for g, m in (group_poses or {}).items()})
        settings = self._settings(intrinsics, retired.scene_scale if retired is not None else None)
        out = render_views(scene, torch.from_numpy(pose)[None], intrinsics.matrix(torch.float64), settings)
        rgb = out.rgb[0]
        if exposure is not None and np.isfinite(exposure).all():
            rgb = rgb * math.exp(float(exposure[0])) + float(exposure[1])
        rgb = (rgb.clamp(0, 1) * 255 + 0.5).to(torch.uint8).cpu().numpy()
        depth = out.depth[0, ..., 0].cpu().numpy().astype(np.float32)
        depth[out.alpha[0, ..., 0].cpu().numpy() < 0.5] = np.nan
        return rgb, depth

    def keyframe_poses(self) -> list[np.ndarray]:
        """Current camera-to-map poses ``[4, 4]`` of all keyframes, by id."""
        snap = self.store.latest()
        return [self._keyframe_pose(i, snap) for i in range(self.num_keyframes)]

    def map_cloud(self) -> tuple[np.ndarray, np.ndarray]:
        """Gaussian centres ``[N, 3]`` float32 and colours ``[N, 3]`` uint8 of the newest map."""
        snap = self.store.latest()
        if snap is None:
            return np.zeros((0, 3), np.float32), np.zeros((0, 3), np.uint8)
        xyz = snap.state["means"].cpu().numpy().astype(np.float32)
        rgb = (sh0_to_rgb(snap.state["sh0"][:, 0]).cpu().numpy() * 255 + 0.5).astype(np.uint8)
        return xyz, rgb

    def save_map(self, path: str | Path) -> Path:
        """Write the newest map as a standard 3DGS PLY, atomically (the last one a re-initialization
        retired while the new one is not initialized yet)."""
        snap = self.store.latest()
        if snap is None and self._retired:
            snap = self._retired[max(self._retired)]
        if snap is None:
            raise RuntimeError("no map yet: nothing to save")
        return write_ply(path, snap.state)


class _BackendMap:
    """The map as motion handling sees it (:class:`~posegs_ros.dynamic.motion_groups.MapAccess`):
    reads the newest snapshot, hands edits to the mapping back end."""

    def __init__(self, engine: Reconstructor) -> None:
        self._engine = engine

    def scene(self) -> SceneTensors:
        return self._engine._snapshot().scene

    def edit(self, change: MapEdit) -> None:
        assert self._engine.backend is not None
        self._engine.backend.edit(change)
