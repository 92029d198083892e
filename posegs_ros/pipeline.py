"""The reconstruction engine's front door: ``Reconstructor.process(frame) -> FrameResult``.

This module never imports ROS: the node (``posegs_ros.ros``) and ``posegs replay`` both feed
:class:`Frame` objects built by :mod:`posegs_ros.io` and read :class:`FrameResult` back.

Flow of one frame (DESIGN.md, "The method in one page"):

- before a map exists, frames are buffered until two of them have enough parallax for a
  two-view initialization (:mod:`posegs_ros.tracking.initialization`); buffered frames are then
  tracked against the new map, so they get poses too (in :meth:`Reconstructor.trajectory`);
- afterwards each frame is tracked (:mod:`posegs_ros.tracking.tracker`); a frame that becomes a
  keyframe triggers a mapping round on the sliding window (:mod:`posegs_ros.mapping.mapper`);
- tracking failures try to relocalize against the window keyframes, then re-initialize.
"""

from __future__ import annotations

import enum
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .scene.blur import RenderSettings, SceneTensors, move_groups
from .camera import Intrinsics
from .config import PosegsConfig
from .tracking.flow import DenseFlow
from .scene.gaussians import GaussianMap
from .tracking.initialization import TwoViewResult, grid_samples, triangulate, try_two_view
from .scene.keyframes import Keyframe, KeyframeDecision, add_to_window, choose_replay, decide_keyframe
from .mapping.mapper import Mapper, MappingStats, scene_tensors
from .dynamic.motion_groups import MotionGroups, exclusion_margin, track_group
from .tracking.tracker import Tracker, TrackingResult, initial_twist, predict_constant_velocity, twist_units

__all__ = ["Frame", "FrameError", "FrameResult", "TrackingState", "StageTimings", "Reconstructor", "TrajectoryPoint"]

log = logging.getLogger(__name__)


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
        """Sharp render at the mid-exposure pose, ``[H, W, 3]`` uint8 RGB (rendered on first call)."""
        return self._rendered()[0]

    def depth(self) -> np.ndarray:
        """Rendered expected depth at the mid-exposure pose, ``[H, W]`` float32 (NaN where no map)."""
        return self._rendered()[1]


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
    image: np.ndarray | None = field(default=None, repr=False)  # [H, W, 3] uint8, kept for finalize()
    group_poses: dict[int, np.ndarray] = field(default_factory=dict)  # group -> [4, 4] M_g at this frame
    group_twists: dict[int, np.ndarray] = field(default_factory=dict)  # group -> [6]
    dynamic_mask: np.ndarray | None = field(default=None, repr=False)  # [H, W] bool


@dataclass
class EngineCounters:
    frames: int = 0
    keyframes: int = 0
    lost_frames: int = 0
    relocalizations: int = 0
    reinitializations: int = 0
    skipped_mapping_steps: int = 0
    rejected_frames: int = 0
    groups_spawned: int = 0
    groups_merged: int = 0


class Reconstructor:
    """Online monocular pose + 3DGS reconstruction with an exposure-blur model."""

    def __init__(self, config: PosegsConfig | None = None, keep_frames: bool = False) -> None:
        """``keep_frames``: remember every frame's image so :meth:`finalize` can refine over all
        of them (offline replay); a live node leaves it off and memory stays bounded."""
        self.config = config or PosegsConfig()
        self.keep_frames = keep_frames
        if self.config.threads > 0:
            torch.set_num_threads(self.config.threads)
        self.device = torch.device(self.config.render.device)
        self.flow = DenseFlow(self.config.tracking.flow, self.config.tracking.flow_preset)
        self.tracker = Tracker(self.config, self.flow)
        self.counters = EngineCounters()
        self._records: list[_FrameRecord] = []
        self.reset()

    # ------------------------------------------------------------------ state
    def reset(self) -> None:
        """Forget the map and the trajectory; the next frame starts a new initialization."""
        self._new_map()
        self._records = []
        self.counters = EngineCounters()
        self._last_stamp: float | None = None

    def _new_map(self) -> None:
        cfg = self.config
        torch.manual_seed(cfg.seed)
        self.rng = np.random.default_rng(cfg.seed)
        self.gmap = GaussianMap(cfg.render.sh_degree, cfg.mapping.max_gaussians, self.device)
        self.mapper = Mapper(cfg, self.gmap, self.rng)
        self.keyframes: list[Keyframe] = []
        self.window: tuple[int, ...] = ()
        self.frozen: tuple[int, ...] = ()
        self.mapping_rounds = 0
        self.initialized = False
        self._init_buffer: list[tuple[Frame, int]] = []  # (frame, record index)
        self._track_history: list[tuple[float, np.ndarray, np.ndarray]] = []  # (stamp, pose, twist)
        self._lost_run = 0
        self._intrinsics: Intrinsics | None = None
        self.motion = MotionGroups(cfg, self.flow) if cfg.dynamic.enabled else None

    @property
    def num_gaussians(self) -> int:
        return len(self.gmap)

    # ------------------------------------------------------------- frontend
    def process(self, frame: Frame) -> FrameResult:
        """Track ``frame``, update the map if it becomes a keyframe, return the result.

        Raises:
            FrameError: the frame is malformed, its stamp does not increase, or its camera
                differs from the map's (callers reset or skip; the map is untouched).
        """
        self._validate(frame)
        t_start = time.perf_counter()
        self.counters.frames += 1
        self._last_stamp = frame.stamp
        if not self.initialized:
            result = self._initialize_step(frame)
        else:
            result = self._track_step(frame)
        result.timings.total = time.perf_counter() - t_start
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
        if self._intrinsics is not None and frame.intrinsics != self._intrinsics:
            raise FrameError(f"camera changed from {self._intrinsics} to {frame.intrinsics}; reset() to start a new map")

    def _image_tensor(self, frame: Frame) -> torch.Tensor:
        return torch.from_numpy(frame.image).to(self.device, torch.float32) / 255.0

    def _result(self, frame: Frame, record: _FrameRecord, timings: StageTimings, inlier_ratio: float = 0.0) -> FrameResult:
        pose = record.online_pose.copy()
        render = None
        groups = {g: m.copy() for g, m in record.group_poses.items()}
        if self.initialized and record.state is not TrackingState.INITIALIZING:
            intr = frame.intrinsics
            render = lambda: self.render(pose, intr, groups)  # noqa: E731 - deferred, rendered on demand
        return FrameResult(
            stamp=frame.stamp,
            index=frame.index,
            pose=pose,
            state=record.state,
            is_keyframe=record.is_keyframe,
            num_gaussians=len(self.gmap),
            num_keyframes=len(self.keyframes),
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
        record = _FrameRecord(frame.index, frame.stamp, TrackingState.INITIALIZING, np.eye(4))
        record.image = frame.image if self.keep_frames else None
        self._records.append(record)
        self._init_buffer.append((frame, len(self._records) - 1))
        if len(self._init_buffer) < 2:
            return self._result(frame, record, timings)
        first = self._init_buffer[0][0]
        t0 = time.perf_counter()
        two_view, reason = try_two_view(first.image, frame.image, first.intrinsics.numpy(), self.config.init, self.flow)
        timings.flow = time.perf_counter() - t0
        if two_view is None:
            log.debug("frame %d: no initialization yet (%s)", frame.index, reason)
            if len(self._init_buffer) > self.config.init.max_frames:
                _, dropped = self._init_buffer.pop(0)
                log.info("initialization: frame %d left the buffer without a pose", self._records[dropped].index)
            return self._result(frame, record, timings)
        t0 = time.perf_counter()
        self._build_initial_map(two_view)
        timings.mapping = time.perf_counter() - t0
        log.info(
            "initialized from frames %d and %d: %d inliers, parallax %.1f px, %d Gaussians",
            first.index, frame.index, two_view.inliers, two_view.median_parallax_px, len(self.gmap),
        )
        t0 = time.perf_counter()
        self._track_buffered()
        timings.tracking = time.perf_counter() - t0
        self._init_buffer = []
        return self._result(frame, record, timings)

    def _build_initial_map(self, two_view: TwoViewResult) -> None:
        cfg = self.config
        (first, first_rec), (second, second_rec) = self._init_buffer[0], self._init_buffer[-1]
        self._intrinsics = first.intrinsics
        scale = float(np.median(two_view.depth_first))
        self.mapper.set_scene_scale(scale)
        pose_b = two_view.pose_second
        dt = max(second.stamp - first.stamp, 1e-6)
        frame_dt = dt / max(len(self._init_buffer) - 1, 1)
        ratio = cfg.blur.exposure_ratio * frame_dt / dt
        twist = initial_twist(np.eye(4), pose_b, ratio)
        kf0 = self._make_keyframe(first, np.eye(4), twist, fixed=True)
        kf1 = self._make_keyframe(second, pose_b, twist)
        h, w = first.image.shape[:2]
        stride = max(1.0, math.sqrt(h * w / max(cfg.init.seed_points, 1)))
        pixels = grid_samples(w, h, stride=max(int(round(stride)), 1), border=0)
        depth = two_view.depth_first[pixels[:, 1].astype(int), pixels[:, 0].astype(int)].astype(np.float64)
        self.mapper.add_from_depth(kf0, pixels, depth, stride=stride, opacity=0.7)
        self.keyframes = [kf0, kf1]
        self.window = (0, 1)
        self.initialized = True
        for _ in range(max(cfg.init.mapping_rounds, 1)):
            self._mapping_round(kf1, fallback_depth=None)
        for rec, kf_id in ((first_rec, 0), (second_rec, 1)):
            self._records[rec].is_keyframe = True
            self._store_pose(self._records[rec], self.keyframes[kf_id].numpy_pose(), TrackingState.TRACKING, kf_id)
        self._records[second_rec].twist = self.keyframes[1].twist().detach().numpy()
        self._track_history = [
            (first.stamp, self.keyframes[0].numpy_pose(), self.keyframes[0].twist().detach().numpy()),
            (second.stamp, self.keyframes[1].numpy_pose(), self.keyframes[1].twist().detach().numpy()),
        ]

    def _track_buffered(self) -> None:
        """Track the frames buffered between the two initialization frames (retroactively)."""
        between = self._init_buffer[1:-1]
        if not between:
            return
        kf0 = self.keyframes[0]
        history = [(kf0.stamp, kf0.numpy_pose(), kf0.twist().detach().numpy())]
        for frame, rec_index in between:
            pred = self._predict(history, frame.stamp)
            res = self._track(frame, pred, history[-1][2], refine=True)
            rec = self._records[rec_index]
            state = TrackingState.LOST if res.lost else TrackingState.TRACKING
            self._store_pose(rec, res.pose, state, self._nearest_keyframe(frame.stamp))
            rec.twist = res.twist
            if not res.lost:
                history.append((frame.stamp, res.pose, res.twist))

    # ------------------------------------------------------------- tracking
    def _predict(self, history: list[tuple[float, np.ndarray, np.ndarray]], stamp: float) -> np.ndarray:
        if len(history) < 2:
            return history[-1][1].copy()
        (t0, p0, _), (t1, p1, _) = history[-2], history[-1]
        ratio = (stamp - t1) / max(t1 - t0, 1e-9)
        return predict_constant_velocity(p1, p0, ratio)

    def _settings(self, intrinsics: Intrinsics) -> RenderSettings:
        r = self.config.render
        s = self.mapper.scene_scale
        return RenderSettings(intrinsics.width, intrinsics.height, r.sh_degree, r.near_plane * s, r.far_plane * s, r.eps2d, r.background, r.backend)

    def _scene(self) -> SceneTensors:
        """The map as rendered now: motion groups at their latest poses."""
        scene = scene_tensors(self.gmap, detach=True)
        return self.motion.scene(scene) if self.motion is not None else scene

    def _track(self, frame: Frame, pose_pred: np.ndarray, twist_init: np.ndarray, refine: bool, exclude: np.ndarray | None = None) -> TrackingResult:
        scene = self._scene()
        if exclude is None and self.motion is not None:
            exclude = self.motion.exclusion_mask()
        return self.tracker.track(
            frame.image, self._image_tensor(frame), frame.intrinsics, pose_pred, twist_init, scene,
            self._settings(frame.intrinsics), exclude=exclude, refine=refine, scene_scale=self.mapper.scene_scale,
        )

    def _track_step(self, frame: Frame) -> FrameResult:
        cfg = self.config
        timings = StageTimings()
        pred = self._predict(self._track_history, frame.stamp)
        prev_twist = self._track_history[-1][2]
        if not np.any(prev_twist):
            prev_twist = initial_twist(self._track_history[-1][1], pred, cfg.blur.exposure_ratio)
        res = self._track(frame, pred, prev_twist, refine=True)
        timings.flow = res.timings.get("flow", 0.0)
        timings.render = res.timings.get("render", 0.0)
        timings.tracking = res.timings.get("gauss_newton+refine", 0.0)
        state = TrackingState.TRACKING
        if res.lost:
            self.counters.lost_frames += 1
            reloc = self._relocalize(frame)
            if reloc is not None:
                res, state = reloc, TrackingState.RELOCALIZED
                self.counters.relocalizations += 1
                self._lost_run = 0
            else:
                state = TrackingState.LOST
                self._lost_run += 1
        else:
            self._lost_run = 0
        record = _FrameRecord(frame.index, frame.stamp, state, res.pose.copy(), twist=res.twist.copy())
        record.image = frame.image if self.keep_frames else None
        self._records.append(record)
        if self.motion is not None and state is not TrackingState.LOST:
            self._observe_motion(frame, res, record)
        if state is TrackingState.LOST:
            log.warning("frame %d: tracking lost (%s)", frame.index, res.reason)
            self._store_pose(record, res.pose, state, self._nearest_keyframe(frame.stamp))
            if self._lost_run > cfg.tracking.max_lost_frames:
                self._reinitialize(frame, record)
            return self._result(frame, record, timings, res.inlier_ratio)
        decision = self._keyframe_decision(frame, res)
        if decision.is_keyframe:
            t0 = time.perf_counter()
            kf_id = self._add_keyframe(frame, res, record)
            timings.mapping = time.perf_counter() - t0
            record.is_keyframe = True
            pose = self.keyframes[kf_id].numpy_pose()
            record.online_pose = pose.copy()
            record.twist = self.keyframes[kf_id].twist().detach().numpy()
            self._store_pose(record, pose, state, kf_id)
            log.debug("frame %d: keyframe %d (%s)", frame.index, kf_id, decision.reason)
        else:
            self._store_pose(record, res.pose, state, self.window[-1])
        self._track_history.append((frame.stamp, record.online_pose.copy(), record.twist.copy()))
        self._track_history = self._track_history[-3:]
        return self._result(frame, record, timings, res.inlier_ratio)

    def _observe_motion(self, frame: Frame, res: TrackingResult, record: _FrameRecord) -> None:
        """Detect / move / spawn / merge motion groups with the tracked frame."""
        assert self.motion is not None
        t0 = time.perf_counter()
        obs = self.motion.observe(
            frame.image, res.pose, res.render.depth[0, ..., 0].numpy(), res.render.alpha[0, ..., 0].numpy(),
            frame.intrinsics, self.gmap, self.mapper.scene_scale, self.config.blur.exposure_ratio,
            self._settings(frame.intrinsics),
        )
        record.group_poses, record.group_twists, record.dynamic_mask = obs.poses, obs.twists, obs.mask
        self.counters.groups_spawned += len(obs.spawned)
        self.counters.groups_merged += len(obs.merged)
        for g in obs.merged:  # merged Gaussians are static now: forget the group everywhere
            for kf in self.keyframes:
                kf.group_poses.pop(g, None)
                kf.group_twists.pop(g, None)
            for rec in self._records:
                rec.group_poses.pop(g, None)
                rec.group_twists.pop(g, None)
        log.debug("frame %d: motion handling %.3f s, groups %s", frame.index, time.perf_counter() - t0, sorted(obs.poses))

    def _keyframe_decision(self, frame: Frame, res: TrackingResult) -> KeyframeDecision:
        """Keyframe test on coverage, translational parallax since the last keyframe and time.

        Parallax is measured with the current rotation for both positions, so camera shake
        (rotation) does not spawn keyframes; new areas it reveals show up as low coverage.
        """
        last = self.keyframes[self.window[-1]]
        parallax_px = 0.0
        if len(res.points):
            k = frame.intrinsics.numpy()
            rot = res.pose[:3, :3]

            def proj(position: np.ndarray) -> np.ndarray:
                x = (res.points - position) @ rot
                return (x[:, :2] / np.maximum(x[:, 2:3], 1e-9)) * [k[0, 0], k[1, 1]]

            parallax_px = float(np.median(np.linalg.norm(proj(res.pose[:3, 3]) - proj(last.numpy_pose()[:3, 3]), axis=1)))
        return decide_keyframe(res.coverage, parallax_px, frame.stamp - last.stamp, self.config.keyframes)

    def _relocalize(self, frame: Frame) -> TrackingResult | None:
        """Track from each window keyframe's pose (newest first); accept the first that holds."""
        for kf_id in reversed(self.window):
            kf = self.keyframes[kf_id]
            res = self._track(frame, kf.numpy_pose(), kf.twist().detach().numpy(), refine=False)
            if not res.lost:
                log.info("frame %d: relocalized against keyframe %d", frame.index, kf_id)
                return res
        return None

    def _reinitialize(self, frame: Frame, record: _FrameRecord) -> None:
        log.warning(
            "frame %d: tracking lost for %d frames, relocalization failed: re-initializing (new map, new scale)",
            frame.index, self._lost_run,
        )
        for rec in self._records:
            if rec.reference is not None:
                rec.absolute = self._final_pose(rec)
                rec.reference = rec.relative = None
        self.counters.reinitializations += 1
        self._new_map()
        self._init_buffer = [(frame, len(self._records) - 1)]

    # -------------------------------------------------------------- mapping
    def _make_keyframe(
        self, frame: Frame, pose: np.ndarray, twist: np.ndarray, record: _FrameRecord | None = None, fixed: bool = False
    ) -> Keyframe:
        unit = twist_units(self.mapper.scene_scale)
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
            group_poses={g: torch.from_numpy(m.copy()) for g, m in groups.items()},
            group_twists={g: torch.from_numpy(group_twists.get(g, np.zeros(6)).copy()) for g in groups},
        )

    def _add_keyframe(self, frame: Frame, res: TrackingResult, record: _FrameRecord) -> int:
        kf = self._make_keyframe(frame, res.pose, res.twist, record)
        previous = self.keyframes[self.window[-1]]
        self.keyframes.append(kf)
        kf_id = len(self.keyframes) - 1
        self.window, removed = add_to_window(self.window, kf_id, self.config.keyframes.window_size)
        self.frozen = self.frozen + removed
        self.counters.keyframes += 1
        fallback = self._triangulated_depth(previous, kf)
        self._mapping_round(kf, fallback)
        return kf_id

    def _mapping_round(self, newest: Keyframe, fallback_depth: np.ndarray | None) -> MappingStats:
        replay_id = choose_replay(self.frozen, self.mapping_rounds, self.config.keyframes.replay_every, self.rng)
        replay = self.keyframes[replay_id] if replay_id is not None else None
        stats = self.mapper.optimize([self.keyframes[i] for i in self.window], newest, replay, fallback_depth)
        self.mapping_rounds += 1
        self.counters.skipped_mapping_steps += stats.skipped_steps
        return stats

    def _triangulated_depth(self, a: Keyframe, b: Keyframe) -> np.ndarray | None:
        """Dense depth ``[H, W]`` of keyframe ``b`` triangulated from flow to keyframe ``a``."""
        img_a = (a.image.numpy() * 255).astype(np.uint8)
        img_b = (b.image.numpy() * 255).astype(np.uint8)
        flow = self.flow(img_b, img_a)
        h, w = flow.shape[:2]
        px = grid_samples(w, h, stride=4)
        fl = flow[px[:, 1].astype(int), px[:, 0].astype(int)].astype(np.float64)
        pa = px + fl
        k = b.intrinsics.numpy()
        pts = triangulate(k, b.numpy_pose(), a.numpy_pose(), px, pa)
        pose_b = b.numpy_pose()
        z = ((pts - pose_b[:3, 3]) @ pose_b[:3, :3])[:, 2]
        base = np.linalg.norm(pose_b[:3, 3] - a.numpy_pose()[:3, 3])
        ok = np.isfinite(z) & (z > 0) & (base / np.maximum(z, 1e-9) > 0.01)
        if ok.sum() < 50:
            return None
        depth = np.full((h, w), np.nan, np.float32)
        # splat each sample's depth onto its stride x stride cell (nearest-sample upsampling)
        s = 4
        for (u, v), d in zip(px[ok].astype(int), z[ok]):
            depth[max(v - s // 2, 0) : v + s - s // 2, max(u - s // 2, 0) : u + s - s // 2] = d
        return depth

    def finalize(self, iterations: int | None = None) -> MappingStats:
        """Offline: jointly refine the map, poses and exposure twists over every tracked frame.

        Uses the frames kept with ``keep_frames=True`` (else only the keyframes), at most
        ``mapping.final_max_views`` of them, for ``mapping.final_iters`` steps by default.
        Deblurring benchmarks evaluate the deblurred training views this way.
        """
        iters = self.config.mapping.final_iters if iterations is None else iterations
        if not self.initialized or iters <= 0:
            return MappingStats()
        by_frame = {kf.frame_index: kf for kf in self.keyframes}
        views: list[tuple[_FrameRecord | None, Keyframe]] = []
        for rec in self._records:
            if rec.state in (TrackingState.INITIALIZING, TrackingState.LOST):
                continue
            kf = by_frame.get(rec.index) if rec.is_keyframe else None
            if kf is not None:
                views.append((None, kf))
            elif rec.image is not None and self._intrinsics is not None:
                view = self._make_keyframe(
                    Frame(rec.image, rec.stamp, self._intrinsics, rec.index), self._final_pose(rec), rec.twist, rec
                )
                views.append((rec, view))
        limit = max(self.config.mapping.final_max_views, 2)
        if len(views) > limit:
            keep = np.unique(np.linspace(0, len(views) - 1, limit).round().astype(int))
            views = [views[i] for i in keep]
        frames = [v for _, v in views]
        rounds = max(self.config.mapping.final_rounds, 1)
        stats = MappingStats()
        self._retrack_groups(frames)  # online group poses come from frame-to-frame flow: refit first
        for r in range(rounds):
            part = self.mapper.refine_all(frames, iters // rounds + (1 if r < iters % rounds else 0))
            stats.iterations += part.iterations
            stats.added += part.added
            stats.pruned += part.pruned
            stats.skipped_steps += part.skipped_steps
            stats.final_loss = part.final_loss
            if self.config.mapping.optimize_poses:
                self._retrack(frames)
        records = {rec.index: rec for rec in self._records}
        for rec, view in views:
            if rec is not None:  # a non-keyframe view: its own refined pose from now on
                rec.absolute, rec.reference, rec.relative = view.numpy_pose(), None, None
                rec.twist = view.twist().detach().numpy()
            rec = records.get(view.frame_index) if rec is None else rec
            if rec is not None:
                rec.group_poses = {g: m.detach().numpy().copy() for g, m in view.group_poses.items()}
                rec.group_twists = {g: e.detach().numpy().copy() for g, e in view.group_twists.items()}
                if view.dynamic_mask is not None:
                    rec.dynamic_mask = view.dynamic_mask.numpy().copy()
        return stats

    def _retrack(self, views: list[Keyframe]) -> None:
        """JOGS's pose step against the refined map: flow-lifted Gauss-Newton for every view's
        camera (motion groups placed at the view's own poses of them), then every motion group."""
        base = scene_tensors(self.gmap, detach=True)
        for view in views:
            if view.fixed:
                continue
            scene = move_groups(base, {g: m.detach() for g, m in view.group_poses.items()})
            image = (view.image.numpy() * 255 + 0.5).astype(np.uint8)
            exclude = exclusion_margin(view.dynamic_mask.numpy()) if view.dynamic_mask is not None else None
            res = self.tracker.track(
                image, view.image, view.intrinsics, view.numpy_pose(), view.twist().detach().numpy(), scene,
                self._settings(view.intrinsics), exclude=exclude, refine=False, scene_scale=self.mapper.scene_scale,
                blurred_subframes=self.mapper.subframes() | 1,  # odd: a middle sub-frame at s = 0
            )
            if not res.lost and np.isfinite(res.pose).all():
                view.pose = torch.from_numpy(res.pose.copy())
        self._retrack_groups(views)

    def _retrack_groups(self, views: list[Keyframe]) -> None:
        """Track every motion group in every view against its Gaussians (:func:`track_group`),
        walking forward in time from the first view that placed it, then backward from there:
        the walk also carries a group into views around the ones it was detected in (before its
        detection, after its region was lost) for as long as tracking holds."""
        if self.motion is None:
            return
        base = scene_tensors(self.gmap, detach=True)
        present = sorted(int(g) for g in torch.unique(self.gmap.group_ids).tolist() if g > 0)
        dyn = self.config.dynamic
        subframes = self.mapper.subframes() | 1
        ratio = self.config.blur.exposure_ratio
        for g in present:
            seen = [i for i, v in enumerate(views) if g in v.group_poses]
            if not seen:
                continue
            for walk in (range(seen[0], len(views)), range(seen[0] - 1, -1, -1)):
                history = [] if walk.start == seen[0] else [views[seen[0]].group_poses[g].detach().numpy()]
                last_twist = views[seen[0]].group_twists.get(g, torch.zeros(6, dtype=torch.float64)).detach().numpy()
                for i in walk:
                    view = views[i]
                    known = g in view.group_poses
                    if known:
                        pred = view.group_poses[g].detach().numpy()
                    elif len(history) >= 2:
                        pred = predict_constant_velocity(history[-1], history[-2])
                    elif history:
                        pred = history[-1]
                    else:
                        break
                    others = {o: m.detach().numpy() for o, m in view.group_poses.items() if o != g}
                    twists = {o: e.detach().numpy() for o, e in view.group_twists.items()}
                    if not known:  # exposure twist from the walk's velocity (the last one's at its start)
                        ends = (history[-1], pred) if walk.step > 0 else (pred, history[-1])
                        twists[g] = initial_twist(*ends, ratio) if len(history) >= 2 else last_twist
                    track = track_group(
                        self.flow, (view.image.numpy() * 255 + 0.5).astype(np.uint8), view.intrinsics,
                        view.numpy_pose(), base, self._settings(view.intrinsics), g, pred, others,
                        blur=(view.twist().detach().numpy(), twists, subframes),
                        passes=self.config.tracking.flow_passes, huber_px=self.config.tracking.huber_px,
                    )
                    if track.ok and track.inlier_ratio >= dyn.min_group_inliers:
                        view.group_poses[g] = torch.from_numpy(track.pose.copy())
                        if g not in view.group_twists:
                            view.group_twists[g] = torch.from_numpy(twists.get(g, np.zeros(6)).copy())
                        mask = torch.from_numpy(track.visible)
                        view.dynamic_mask = mask if view.dynamic_mask is None else view.dynamic_mask | mask
                        history.append(track.pose)
                        last_twist = view.group_twists[g].detach().numpy()
                    elif known:
                        history.append(pred)
                    else:
                        break  # the group left the view (or cannot be followed): stop this walk

    # -------------------------------------------------------------- outputs
    def _store_pose(self, rec: _FrameRecord, pose: np.ndarray, state: TrackingState, reference: int | None) -> None:
        rec.state = state
        rec.online_pose = pose.copy() if rec.state is not TrackingState.INITIALIZING else rec.online_pose
        if reference is None or reference >= len(self.keyframes):
            rec.absolute, rec.reference, rec.relative = pose.copy(), None, None
            return
        rec.reference = reference
        rec.relative = np.linalg.inv(self.keyframes[reference].numpy_pose()) @ pose
        rec.absolute = None

    def _nearest_keyframe(self, stamp: float) -> int | None:
        if not self.keyframes:
            return None
        return int(np.argmin([abs(kf.stamp - stamp) for kf in self.keyframes]))

    def _final_pose(self, rec: _FrameRecord) -> np.ndarray:
        if rec.reference is not None and rec.relative is not None:
            return self.keyframes[rec.reference].numpy_pose() @ rec.relative
        if rec.absolute is not None:
            return rec.absolute.copy()
        return rec.online_pose.copy()

    def _final_group_poses(self, rec: _FrameRecord) -> dict[int, np.ndarray]:
        """Group poses of a frame; a keyframe's refined ones when the frame is a keyframe."""
        if rec.is_keyframe and rec.reference is not None:
            kf = self.keyframes[rec.reference]
            return {g: m.detach().numpy().copy() for g, m in kf.group_poses.items()}
        return {g: m.copy() for g, m in rec.group_poses.items()}

    def trajectory(self) -> list[TrajectoryPoint]:
        """Latest pose estimate of every frame that has one (keyframe-relative poses follow
        their keyframe's refinement; frames that never got a pose are left out)."""
        return [
            TrajectoryPoint(rec.index, rec.stamp, self._final_pose(rec), rec.state, rec.is_keyframe,
                            self._final_group_poses(rec), rec.dynamic_mask)
            for rec in self._records
            if rec.state is not TrackingState.INITIALIZING
        ]

    def online_trajectory(self) -> list[TrajectoryPoint]:
        """Poses exactly as :meth:`process` returned them (what a live system published)."""
        return [
            TrajectoryPoint(rec.index, rec.stamp, rec.online_pose.copy(), rec.state, rec.is_keyframe,
                            dict(rec.group_poses), rec.dynamic_mask)
            for rec in self._records
            if rec.state is not TrackingState.INITIALIZING
        ]

    @torch.no_grad()
    def render(
        self, pose: np.ndarray, intrinsics: Intrinsics, group_poses: dict[int, np.ndarray] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Sharp render of the map: RGB ``[H, W, 3]`` uint8 and depth ``[H, W]`` float32 (NaN = empty).

        ``group_poses``: where each motion group is (group -> ``[4, 4]``); groups not given are
        not rendered.
        """
        from .scene.blur import render_views

        scene = scene_tensors(self.gmap, detach=True)
        scene = move_groups(scene, {g: torch.from_numpy(m) for g, m in (group_poses or {}).items()})
        out = render_views(scene, torch.from_numpy(pose)[None], intrinsics.matrix(torch.float64), self._settings(intrinsics))
        rgb = (out.rgb[0].clamp(0, 1) * 255 + 0.5).to(torch.uint8).cpu().numpy()
        depth = out.depth[0, ..., 0].cpu().numpy().astype(np.float32)
        depth[out.alpha[0, ..., 0].cpu().numpy() < 0.5] = np.nan
        return rgb, depth

    def keyframe_poses(self) -> list[np.ndarray]:
        """Current camera-to-map poses ``[4, 4]`` of all keyframes."""
        return [kf.numpy_pose() for kf in self.keyframes]

    def map_cloud(self) -> tuple[np.ndarray, np.ndarray]:
        """Gaussian centres ``[N, 3]`` float32 and colours ``[N, 3]`` uint8."""
        xyz = self.gmap.means.detach().cpu().numpy().astype(np.float32)
        rgb = (self.gmap.rgb().cpu().numpy() * 255 + 0.5).astype(np.uint8)
        return xyz, rgb

    def save_map(self, path: str | Path) -> Path:
        """Write the map as a standard 3DGS PLY, atomically."""
        return self.gmap.save_ply(path)
