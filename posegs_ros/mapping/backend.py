"""The mapping back end: owner of the Gaussian map and the keyframes (PTAM / ORB-SLAM / MonoGS split).

Tracking (the front end, :class:`posegs_ros.pipeline.Reconstructor`) decides keyframes and hands
them to a :class:`MappingBackend`; the back end integrates each one (densify where the map does
not explain it, the sliding window, replay of frozen keyframes) and runs UPGS's three-stage
window rounds (:class:`~posegs_ros.mapping.mapper.Mapper`).  It is the only writer of the map;
everyone else reads the :class:`~posegs_ros.scene.snapshot.MapSnapshot` it publishes.

Two ways to run, same code:

- **inline** (``concurrent=False``, offline replay): :meth:`MappingBackend.submit` does the work
  at once in the caller's thread -- a fixed, reproducible interleaving of tracking and mapping;
- **concurrent** (the node, ``posegs replay --realtime``): a thread takes the work from a FIFO
  queue, sleeping on a condition variable when there is none.  Between two optimization steps
  it integrates keyframes that arrived meanwhile (they join the running round, so a new
  keyframe's area is in the map within one step), applies queued map edits and publishes a
  snapshot.  After the queue runs dry it keeps refining the window for ``mapping.idle_rounds``
  rounds, then sleeps until new work arrives (no busy waiting).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
import traceback
import warnings
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from ..config import PosegsConfig
from ..render._threads import set_thread_budget
from ..scene.gaussians import GaussianMap
from ..scene.keyframes import Keyframe, add_to_window, choose_replay
from ..scene.snapshot import MapEdit, MapSnapshot, MapStore
from ..tracking.flow import DenseFlow, forward_backward_error
from ..tracking.initialization import grid_samples, triangulate
from .mapper import Mapper, MappingStats, RoundControl

__all__ = ["MappingBackend", "BackendStats"]

log = logging.getLogger(__name__)

# mapping.defer_new_content: largest forward-backward flow mismatch (px) of a pixel triangulated
# between two keyframes
TRIANGULATION_FB_PX = 1.0
# init.retriangulate_baseline: the flow from keyframe 0 to the keyframe chosen must come back in at least this
# fraction of keyframe 0's samples (a strongly blurred keyframe does not: the next one is tried) ...
RETRIANGULATION_MIN_CONSISTENT = 0.5
# ... before the baseline grows past this multiple of the trigger (flow that far is unreliable: given up)
RETRIANGULATION_GIVE_UP = 2.0
# ... and a sample's depth counts only with a baseline above this fraction of it; its depth is the median over
# this many samples across (2 px apart)
RETRIANGULATION_MIN_PARALLAX = 0.03
RETRIANGULATION_MEDIAN = 5


@dataclass
class BackendStats:
    """Counters of the back end (read them from a snapshot's ``extra`` in other threads)."""

    keyframes: int = 0  # keyframes integrated
    rounds: int = 0  # window rounds completed (stopped ones included)
    idle_rounds: int = 0  # of which ran without a new keyframe
    steps: int = 0  # optimization steps
    skipped_steps: int = 0  # non-finite losses / gradients not applied
    edits: int = 0
    retriangulated: int = 0  # Gaussians of the first map moved to a wider-baseline depth (init.retriangulate_baseline)
    errors: int = 0  # exceptions caught in the mapping thread (logged; the map is kept)
    busy_seconds: float = 0.0  # time spent working (not waiting)


class MappingBackend:
    """Owns :class:`GaussianMap`, :class:`Mapper` and the keyframes; runs inline or in a thread.

    Args:
        cfg: the configuration.
        store: where snapshots are published.
        concurrent: run the work in an own thread (else in :meth:`submit`'s caller).
        threads: renderer / torch threads of the mapping thread (concurrent only).
    """

    def __init__(self, cfg: PosegsConfig, store: MapStore, concurrent: bool = False, threads: int = 1) -> None:
        self.cfg = cfg
        self.store = store
        self.concurrent = concurrent
        self.threads = max(1, int(threads))
        torch.manual_seed(cfg.seed)
        self.rng = np.random.default_rng(cfg.seed)
        self.device = torch.device(cfg.render.device)
        self.gmap = GaussianMap(cfg.render.sh_degree, cfg.mapping.max_gaussians, self.device)
        self.mapper = Mapper(cfg, self.gmap, self.rng)
        self.flow = DenseFlow.from_config(cfg.tracking)  # own instance: OpenCV's is not shared
        self.keyframes: list[Keyframe] = []
        self.window: tuple[int, ...] = ()
        self.frozen: tuple[int, ...] = ()
        self.stats = BackendStats()
        self._poses: dict[int, np.ndarray] = {}  # published keyframe poses [4, 4]
        self._twists: dict[int, np.ndarray] = {}
        self._exposures: dict[int, np.ndarray] = {}  # [2] affine exposure of each keyframe
        self._moving: set[int] = set()  # keyframes whose pose the running round optimizes
        self._first_map_settled = False  # init.retriangulate_baseline done or given up
        self._cond = threading.Condition(threading.Lock())
        self._queue: deque[Keyframe | Callable[[], Any]] = deque()
        self._stop = False
        self._working = False
        self._idle_left = 0  # idle rounds still to run after the last keyframe
        self._init_rounds_left = 0  # rounds on the two initial keyframes still to run
        self._busy_mark = 0.0  # mapping thread: when the busy time was last counted
        self._thread: threading.Thread | None = None
        self.in_round = threading.Event()  # set while a window round runs (tests wait on it)
        if concurrent:
            self._thread = threading.Thread(target=self._run, name="posegs_mapping", daemon=True)
            self._thread.start()

    # ------------------------------------------------------------------ front-end side
    @property
    def scene_scale(self) -> float:
        return self.mapper.scene_scale

    def seed(self, kf0: Keyframe, kf1: Keyframe, pixels: np.ndarray, depth: np.ndarray, stride: float,
             scene_scale: float) -> None:
        """Start the map: keyframes 0 and 1 and Gaussians at ``pixels`` ``[M, 2]`` of ``kf0``
        lifted to ``depth`` ``[M]``; then ``init.mapping_rounds`` rounds. The seeded map is
        published before the rounds run (concurrently, tracking starts on it at once)."""
        with self._cond:
            if self._queue or self._working or self.keyframes:
                raise RuntimeError("seed() starts a new map: the back end must be new and idle")
        self.mapper.set_scene_scale(scene_scale)
        self.mapper.add_from_depth(kf0, pixels, depth, stride=stride, opacity=0.7)
        self.keyframes = [kf0, kf1]
        self.window = (0, 1)
        self.stats.keyframes = 2
        self.publish()
        rounds = max(self.cfg.init.mapping_rounds, 1)
        if not self.concurrent:
            for _ in range(rounds):
                self._round(kf1, None)
            self.publish()
            return
        with self._cond:
            self._init_rounds_left = rounds
            self._cond.notify_all()

    def submit(self, work: Keyframe | Callable[[], Any]) -> None:
        """A new keyframe (its id is its position in the submission order) or a job; inline
        it runs now, concurrently it is queued (FIFO) for the mapping thread. Keyframes and jobs
        that arrive during a round are taken between two of its steps (keyframes join the round),
        so a job must be short: it must not run rounds itself."""
        if not self.concurrent:
            self._do(work)
            self.publish()
            return
        with self._cond:
            if self._stop:
                raise RuntimeError("the mapping back end has stopped")
            self._queue.append(work)
            self._cond.notify_all()

    def edit(self, change: MapEdit) -> None:
        """Change the map in its owner's thread: ``change(gmap, keyframes)`` runs now (inline, or
        once the mapping thread has stopped: the caller owns the map then) or between two mapping
        steps (concurrent); its effect shows in the next snapshot."""
        if self.concurrent and self._stop and not self.running:
            self._apply_edit(change)
            self.publish()
            return
        self.submit(lambda: self._apply_edit(change))

    @property
    def backlog(self) -> int:
        """Keyframes submitted but not integrated yet."""
        with self._cond:
            return sum(isinstance(w, Keyframe) for w in self._queue)

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until the queue is empty and no work runs (initial and idle rounds included); True if so."""
        if not self.concurrent:
            return True
        with self._cond:
            return self._cond.wait_for(lambda: self._stop or not self._has_work() and not self._working, timeout)

    def _has_work(self) -> bool:
        return bool(self._queue) or self._init_rounds_left > 0 or self._idle_left > 0

    def stop(self, timeout: float | None = 30.0) -> bool:
        """Stop the mapping thread after its current step (queued work is dropped, a running
        round ends early and folds what it has); True if the thread ended in time."""
        with self._cond:
            self._stop = True
            self._queue.clear()
            self._cond.notify_all()
        if self._thread is None:
            return True
        if self._thread is threading.current_thread():
            return False
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # ------------------------------------------------------------------ snapshots
    def publish(self) -> MapSnapshot:
        """Publish the current map (called by the map's owner only)."""
        for i in set(self.window) | self._moving | (set(range(len(self.keyframes))) - set(self._poses)):
            kf = self.keyframes[i]
            with torch.no_grad():
                self._poses[i] = kf.current_pose().detach().cpu().numpy().astype(np.float64)
                self._twists[i] = kf.twist().detach().cpu().numpy().astype(np.float64)
                self._exposures[i] = kf.exposure.detach().cpu().numpy().astype(np.float64)
        if not self.in_round.is_set():
            self._moving = set()  # folded and captured: their poses change only in a later round
        self.stats.steps = self.mapper.steps
        snap = MapSnapshot.capture(
            self.gmap, self._poses, self._twists, self.store.next_version(), self.window, self.mapper.scene_scale,
            self.stats.rounds, stats=dataclasses.asdict(self.stats), keyframe_exposures=self._exposures,
        )
        self.store.publish(snap)
        return snap

    # ------------------------------------------------------------------ the work
    def _do(self, work: Keyframe | Callable[[], Any]) -> None:
        """Integrate a keyframe and run a round on it, or run a job (the caller publishes)."""
        if isinstance(work, Keyframe):
            self._round(work, self._integrate(work))
        else:
            work()

    def _apply_edit(self, change: MapEdit) -> None:
        change(self.gmap, self.keyframes)
        self.stats.edits += 1

    def _integrate(self, kf: Keyframe) -> np.ndarray | None:
        """Add ``kf`` to the window (the oldest keyframe may leave it, frozen); returns a depth
        ``[H, W]`` triangulated against the previous newest keyframe, for densifying ``kf``."""
        previous = self.keyframes[self.window[-1]] if self.window else None
        self.keyframes.append(kf)
        kf_id = len(self.keyframes) - 1
        self.window, removed = add_to_window(self.window, kf_id, self.cfg.keyframes.window_size)
        self.frozen = self.frozen + removed
        self.stats.keyframes += 1
        with self._cond:
            self._idle_left = self.cfg.mapping.idle_rounds  # refine the window for a while after each keyframe
        self._retriangulate_first_map(kf)
        if previous is None:
            return None
        return self._triangulated_depth(previous, kf, consistent_only=self.cfg.mapping.defer_new_content)

    def _retriangulate_first_map(self, newest: Keyframe) -> None:
        """``init.retriangulate_baseline``: once ``newest`` is far enough from keyframe 0, move the
        surface keyframe 0 sees to the depth triangulated between the two (the first map's depth
        comes from the short initial baseline; tracking and the window rounds keep its errors)."""
        factor = self.cfg.init.retriangulate_baseline
        if self._first_map_settled or factor <= 0 or len(self.keyframes) < 3:
            return
        kf0, kf1 = self.keyframes[0], self.keyframes[1]
        origin = kf0.numpy_pose()[:3, 3]
        initial = float(np.linalg.norm(kf1.numpy_pose()[:3, 3] - origin))
        ratio = float(np.linalg.norm(newest.numpy_pose()[:3, 3] - origin)) / max(initial, 1e-12)
        if ratio < factor:
            return
        if ratio > RETRIANGULATION_GIVE_UP * factor:
            self._first_map_settled = True
            log.info("first map not re-triangulated: no keyframe up to %.1fx the initial baseline matched keyframe 0",
                     ratio)
            return
        stride = 2
        px, z, fb = self._triangulate_samples(newest, kf0, stride, fb_error=True,
                                              min_parallax=RETRIANGULATION_MIN_PARALLAX)
        consistent = fb < TRIANGULATION_FB_PX
        ok = consistent & np.isfinite(z)
        if ok.sum() < 50 or consistent.mean() < RETRIANGULATION_MIN_CONSISTENT:
            log.info("first map: keyframe %d (%.1fx the initial baseline) gives keyframe 0 too little depth (flow "
                     "back within %g px: %.0f %%); trying the next", len(self.keyframes) - 1, ratio,
                     TRIANGULATION_FB_PX, 100 * consistent.mean())
            return
        # two-view depth carries the flow's noise (~1-2 % at this baseline on real frames): take each
        # sample's median with its neighbours' (log depth, RETRIANGULATION_MEDIAN samples across)
        columns = len(np.unique(px[:, 0]))
        log_z = np.where(ok, np.log(np.where(ok, z, 1.0)), np.nan).reshape(-1, columns)
        smooth = np.exp(_nan_median_filter(log_z, RETRIANGULATION_MEDIAN).ravel())
        depth = _splat(px[ok], smooth[ok], stride, kf0.image.shape[:2])
        moved = self.mapper.move_surface_to_depth(kf0, depth)
        self._first_map_settled = True
        self.stats.retriangulated = moved
        log.info("first map re-triangulated against keyframe %d (%.1fx the initial baseline): %d of %d Gaussians "
                 "moved", len(self.keyframes) - 1, ratio, moved, len(self.gmap))

    def _round(self, newest: Keyframe | None, fallback: np.ndarray | None) -> MappingStats:
        """One window round (densify ``newest`` first); concurrently, arrivals join it."""
        replay_id = choose_replay(self.frozen, self.stats.rounds, self.cfg.keyframes.replay_every, self.rng)
        replay = self.keyframes[replay_id] if replay_id is not None else None
        window = [self.keyframes[i] for i in self.window]
        self._moving = {i for i in self.window if not self.keyframes[i].fixed}
        self.in_round.set()
        try:
            stats = self.mapper.optimize(window, newest, replay, fallback,
                                         between_steps=self._between_steps if self.concurrent else None)
        finally:
            self.in_round.clear()
        self.stats.rounds += 1
        self.stats.idle_rounds += int(newest is None)
        self.stats.skipped_steps += stats.skipped_steps
        return stats

    def _between_steps(self) -> RoundControl:
        """Concurrent rounds: publish the step, then integrate arrivals and apply edits."""
        control = RoundControl()
        self._count_busy()  # a round may outlast the run (live, mapping behind): count as it goes
        self.publish()
        while True:
            with self._cond:
                if self._stop:
                    control.stop = True
                    return control
                if not self._queue:
                    return control
                work = self._queue.popleft()
            if isinstance(work, Keyframe):
                self.mapper.densify(work, self._integrate(work))
                control.added.append(work)
            else:
                self._do(work)
            self.publish()

    def _count_busy(self) -> None:
        """Add the time since the last mark to ``stats.busy_seconds`` (mapping thread only)."""
        now = time.perf_counter()
        self.stats.busy_seconds += now - self._busy_mark
        self._busy_mark = now

    def _triangulate_samples(self, a: Keyframe, b: Keyframe, stride: int, fb_error: bool, min_parallax: float
                             ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Keyframe ``b``'s grid samples ``[M, 2]`` (every ``stride`` px), their depths ``[M]`` in ``b``
        triangulated from the flow to keyframe ``a`` (NaN if not in front or if the baseline is not
        above ``min_parallax`` of the depth) and the flow's forward-backward error ``[M]`` (px, NaN
        where it leaves the image; only if ``fb_error``)."""
        img_a = (a.image.numpy() * 255).astype(np.uint8)
        img_b = (b.image.numpy() * 255).astype(np.uint8)
        flow = self.flow(img_b, img_a)
        h, w = flow.shape[:2]
        px = grid_samples(w, h, stride=stride)
        ui, vi = px[:, 0].astype(int), px[:, 1].astype(int)
        fb = forward_backward_error(flow, self.flow(img_a, img_b))[vi, ui] if fb_error else None
        pose_b = b.numpy_pose()
        pts = triangulate(b.intrinsics.numpy(), pose_b, a.numpy_pose(), px, px + flow[vi, ui].astype(np.float64))
        z = ((pts - pose_b[:3, 3]) @ pose_b[:3, :3])[:, 2]
        base = np.linalg.norm(pose_b[:3, 3] - a.numpy_pose()[:3, 3])
        with np.errstate(invalid="ignore", divide="ignore"):
            z = np.where(np.isfinite(z) & (z > 0) & (base / z > min_parallax), z, np.nan)
        return px, z, fb

    def _triangulated_depth(self, a: Keyframe, b: Keyframe, consistent_only: bool = False) -> np.ndarray | None:
        """Dense depth ``[H, W]`` of keyframe ``b`` triangulated from flow to keyframe ``a``, None if
        under 50 samples; with ``consistent_only`` only where the flow comes back within
        ``TRIANGULATION_FB_PX`` (content ``a`` did not see, hidden or outside its view, has a flow
        that does not come back)."""
        stride = 4
        px, z, fb = self._triangulate_samples(a, b, stride, fb_error=consistent_only, min_parallax=0.01)
        ok = np.isfinite(z)
        if fb is not None:
            ok &= fb < TRIANGULATION_FB_PX
        if ok.sum() < 50:
            return None
        return _splat(px[ok], z[ok], stride, b.image.shape[:2])

    # ------------------------------------------------------------------ thread
    def _run(self) -> None:
        set_thread_budget(self.threads)
        torch.set_num_threads(self.threads)
        nice = self.cfg.mapping.thread_nice
        if nice > 0 and hasattr(os, "setpriority"):
            try:  # Linux: a thread id is a valid PRIO_PROCESS target and renices that thread only
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), os.getpriority(os.PRIO_PROCESS, 0) + nice)
            except OSError as err:
                log.debug("mapping thread keeps its priority: %s", err)
        while True:
            with self._cond:
                self._working = False
                self._cond.notify_all()
                self._cond.wait_for(lambda: self._stop or self._has_work())
                if self._stop:
                    return
                # queued work first (keyframes, edits, jobs: in order), then the initial rounds, then idle rounds
                work: Keyframe | Callable[[], Any] | None = self._queue.popleft() if self._queue else None
                initial = work is None and self._init_rounds_left > 0
                if initial:
                    self._init_rounds_left -= 1
                elif work is None:
                    self._idle_left -= 1
                self._working = True
            self._busy_mark = time.perf_counter()
            try:
                if work is not None:
                    self._do(work)
                elif initial:
                    self._round(self.keyframes[1], None)
                else:
                    self._round(None, None)
                self.publish()
            except Exception as err:  # the thread must outlive any bug; the map stays as it is
                self.stats.errors += 1
                log.error("mapping: %s: %s\n%s", type(err).__name__, err, traceback.format_exc())
            finally:
                self._count_busy()


def _splat(px: np.ndarray, values: np.ndarray, stride: int, shape: tuple[int, int]) -> np.ndarray:
    """``[H, W]`` float32 NaN image with each sample's value ``[M]`` on its ``stride`` x ``stride``
    cell around the pixel ``px`` ``[M, 2]`` (nearest-sample upsampling)."""
    out = np.full(shape, np.nan, np.float32)
    lo = stride // 2
    for (u, v), d in zip(px.astype(int), values):
        out[max(v - lo, 0) : v + stride - lo, max(u - lo, 0) : u + stride - lo] = d
    return out


def _nan_median_filter(grid: np.ndarray, size: int) -> np.ndarray:
    """Median of the finite values of ``grid`` ``[R, C]`` in a ``size`` x ``size`` window around
    each cell, ``[R, C]``; NaN where the window holds none."""
    r = size // 2
    windows = np.lib.stride_tricks.sliding_window_view(np.pad(grid, r, constant_values=np.nan), (size, size))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN windows
        return np.nanmedian(windows.reshape(*grid.shape, size * size), axis=-1)
