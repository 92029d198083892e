"""Moving objects as motion groups: detection, spawning, per-frame SE(3), merging (UPGS's per-primitive SE(3)).

Every Gaussian carries a group id (0 = static map).  The Gaussians of group ``g > 0`` are stored in
the group's own frame (the map frame at the moment the group was spawned) and rendered at
``M_g,k @ x`` for keyframe / frame ``k`` (and ``M_g,k @ exp(s e_g,k)`` along the exposure).

Per tracked frame (after the camera pose is solved):

1. frame-to-frame flow ``prev -> curr`` is compared with the flow the camera motion alone would
   cause through the rendered depth, give or take ``dynamic.depth_slack`` of depth error
   (:func:`posegs_ros.dynamic.detection.closest_static_flow`,
   :func:`posegs_ros.dynamic.detection.flow_disagreement`);
2. candidate pixels persist as regions (:class:`posegs_ros.dynamic.detection.MotionSegmenter`);
3. a confirmed region without a group spawns one if its residual stops sharply at its border
   (:func:`posegs_ros.dynamic.detection.boundary_contrast`; a smooth residual field is a camera or
   depth error) and stayed steady over its last frames
   (:func:`posegs_ros.dynamic.detection.residual_change`; camera jitter flips it): Gaussians
   lifted from the previous frame with a depth filled from the region's surroundings
   (monocular: the only depth available for a new moving object), static Gaussians in front of
   the background inside the region (the object mapped as static before it was detected) are
   removed;
4. each group's motion since the previous frame is solved from the region's flow
   (:func:`posegs_ros.dynamic.detection.motion_from_region_flow`); a group that stops moving merges back
   into the static map.

Tracking of the camera excludes the groups' pixels (:meth:`MotionGroups.exclusion_mask`).
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

import cv2
import numpy as np
import torch

from ..scene.blur import RenderSettings, SceneTensors, group_subset, move_groups, render_exposure, render_views
from ..camera import Intrinsics
from ..config import PosegsConfig
from .detection import (
    GroupMotionHistory,
    MotionSegmenter,
    MotionRegion,
    boundary_contrast,
    flow_disagreement,
    motion_from_flowed_pixels,
    motion_from_region_flow,
    region_depth_fill,
    residual_change,
    static_flow_fields,
    texture_mask,
    warp_mask,
)
from ..tracking.flow import DenseFlow
from ..scene.gaussians import GaussianMap
from ..scene.keyframes import Keyframe
from ..scene.snapshot import MapEdit
from ..geometry import se3_log

__all__ = [
    "MotionGroup", "GroupObservation", "MotionGroups", "GroupTrack", "track_group", "exclusion_margin", "MapAccess",
    "DirectMapAccess", "touches_border",
]

log = logging.getLogger(__name__)


@dataclass
class MotionGroup:
    """One moving object."""

    group_id: int
    region_id: int  # the segmenter's region that feeds it
    pose: np.ndarray  # [4, 4] M_g: group frame -> map, at the latest frame
    step: np.ndarray = field(default_factory=lambda: np.eye(4))  # [4, 4] last per-frame motion (map frame)
    twist: np.ndarray = field(default_factory=lambda: np.zeros(6))  # [6] exposure twist (group frame)
    frames: int = 0
    depth: float = float("nan")  # depth its Gaussians were spawned at (first view)
    at_border: bool = False  # its last mask reached the image border (it may be leaving the view)
    parked: int = 0  # frames since it left the view (0: in view); parked groups coast, then stop


@dataclass
class GroupObservation:
    """What motion handling found in one frame."""

    mask: np.ndarray | None  # [H, W] bool: pixels of moving objects in the current frame
    poses: dict[int, np.ndarray]  # group -> [4, 4] M_g at the current frame
    twists: dict[int, np.ndarray]  # group -> [6]
    spawned: list[int] = field(default_factory=list)
    merged: list[int] = field(default_factory=list)


class MapAccess(Protocol):
    """How motion handling reads and changes the map it does not own."""

    def scene(self) -> SceneTensors:
        """The map now: render-ready Gaussians with their group ids (read-only)."""

    def edit(self, change: MapEdit) -> None:
        """Have the map's owner run ``change(gmap, keyframes)`` (at once, or between two mapping steps)."""


class DirectMapAccess:
    """:class:`MapAccess` to a :class:`GaussianMap` the caller owns: edits apply at once."""

    def __init__(self, gmap: GaussianMap, keyframes: list[Keyframe] | None = None) -> None:
        self.gmap = gmap
        self.keyframes = keyframes if keyframes is not None else []

    def scene(self) -> SceneTensors:
        from ..mapping.mapper import scene_tensors

        return scene_tensors(self.gmap, detach=True)

    def edit(self, change: MapEdit) -> None:
        change(self.gmap, self.keyframes)


EXCLUSION_MARGIN_PX = 4  # about half a moving object's blur plus the flow's smear around it
BORDER_PX = 3  # a mask this close to the image border may belong to an object leaving the view
COAST_FRAMES = 10  # a group that left the view keeps its velocity this many frames, then stops
MIN_RESIDUAL_PIXELS = 20  # valid pixels a region needs for its median flow residual to enter its history


def touches_border(mask: np.ndarray, px: int = BORDER_PX) -> bool:
    """Whether ``mask`` ``[H, W]`` bool has pixels within ``px`` of the image border."""
    return bool(mask[:px].any() or mask[-px:].any() or mask[:, :px].any() or mask[:, -px:].any())


def leaving_margin(mask: np.ndarray, flow: np.ndarray) -> int:
    """Border distance (pixels) within which a moving region may be leaving the view: two of
    its frame-to-frame displacements (median ``flow`` ``[H, W, 2]`` over ``mask``) plus
    :data:`BORDER_PX` -- detection loses an object before its last pixels reach the border,
    as pixels whose flow leaves the image are not compared."""
    f = flow[mask]
    f = f[np.isfinite(f).all(axis=1)]
    step = float(np.median(np.linalg.norm(f, axis=1))) if len(f) else 0.0
    return BORDER_PX + int(np.ceil(2.0 * step))


def exclusion_margin(mask: np.ndarray, px: int = EXCLUSION_MARGIN_PX) -> np.ndarray:
    """``mask`` ``[H, W]`` bool grown by ``px`` pixels: what camera tracking leaves out around
    moving objects (their blur and the flow smeared across their border reach beyond them)."""
    return cv2.dilate(mask.astype(np.uint8), np.ones((2 * px + 1, 2 * px + 1), np.uint8)).astype(bool)


@dataclass
class GroupTrack:
    """One group tracked against its own Gaussians in one view."""

    pose: np.ndarray  # [4, 4] M_g: group frame -> map, solved
    inlier_ratio: float
    num_points: int
    visible: np.ndarray  # [H, W] bool: the group's unoccluded, opaque pixels at the solved pose
    ok: bool  # solved with enough points


@torch.no_grad()
def track_group(
    flow: DenseFlow,
    image: np.ndarray,
    intrinsics: Intrinsics,
    camera_pose: np.ndarray,
    scene: SceneTensors,
    settings: RenderSettings,
    group: int,
    predicted: np.ndarray,
    others: dict[int, np.ndarray] | None = None,
    blur: tuple[np.ndarray, dict[int, np.ndarray], int] | None = None,
    passes: int = 2,
    stride: int = 2,
    huber_px: float = 1.5,
    min_points: int = 30,
    erode_px: int = 3,
) -> GroupTrack:
    """Track motion group ``group`` in one frame against its Gaussians (JOGS's step, for an object).

    Render the view with the group at ``predicted`` ``[4, 4]``, flow render -> ``image``
    ``[H, W, 3]`` uint8, lift the group's own pixels with its rendered depth and solve the
    object's motion from the flowed pixels (:func:`posegs_ros.dynamic.detection.object_motion`), ``passes``
    times.  ``scene`` holds every Gaussian with group ids (not placed); ``others`` places the
    other groups (group -> ``[4, 4]``; unlisted ones are hidden).  ``blur`` = (camera exposure
    twist ``[6]``, group twists {group: ``[6]``}, odd sub-frame count) renders the blurred view
    for the flow, like the observation; ``None`` renders it sharp.  The group's pixels are
    eroded by ``erode_px`` (kept whole when that leaves less than a quarter), sampled every
    ``stride``.
    """
    k_t = intrinsics.matrix(torch.float64)
    k = intrinsics.numpy()
    cam = torch.from_numpy(camera_pose)
    own = group_subset(scene, group)
    h, w = settings.height, settings.width
    pose = np.asarray(predicted, np.float64).copy()
    placed = dict(others or {})
    result = None
    used = 0

    def own_render(m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = render_views(move_groups(own, {group: torch.from_numpy(m)}), cam[None], k_t, settings)
        return out.alpha[0, ..., 0].numpy(), out.depth[0, ..., 0].numpy()

    for _ in range(max(passes, 1)):
        transforms = {g: torch.from_numpy(m) for g, m in placed.items()}
        transforms[group] = torch.from_numpy(pose)
        if blur is not None and blur[2] > 1 and blur[2] % 2 == 1:
            twist, group_twists, subframes = blur
            groups = {g: (m, torch.from_numpy(group_twists.get(g, np.zeros(6)))) for g, m in transforms.items()}
            rgb_t, subs = render_exposure(scene, cam, torch.from_numpy(twist), k_t, settings, subframes, groups)
            mid = subframes // 2
            depth_all = subs.depth[mid, ..., 0].numpy()
        else:
            out = render_views(move_groups(scene, transforms), cam[None], k_t, settings)
            rgb_t, depth_all = out.rgb[0], out.depth[0, ..., 0].numpy()
        alpha_g, depth_g = own_render(pose)
        visible = (alpha_g > 0.7) & np.isfinite(depth_g) & (depth_g > 0) & (depth_all > 0.9 * depth_g)
        # dense flow smears the background's motion a few pixels into the object's border
        inner = cv2.erode(visible.astype(np.uint8), np.ones((2 * erode_px + 1,) * 2, np.uint8)).astype(bool)
        if inner.sum() >= visible.sum() // 4:
            visible = inner
        sel = np.zeros_like(visible)
        sel[stride // 2 :: stride, stride // 2 :: stride] = True
        vs, us = np.nonzero(visible & sel)
        if len(us) < min_points:
            break
        fl = flow(rgb_t.clamp(0, 1).numpy(), image)
        res = motion_from_flowed_pixels(us, vs, depth_g[vs, us].astype(np.float64), fl[vs, us], (w, h), k,
                                        camera_pose, camera_pose, huber_px=huber_px, min_points=min_points,
                                        edge_px=0.0)
        if not res.ok:
            break
        pose = res.motion @ pose
        result, used = res, res.num_points
    alpha_g, depth_g = own_render(pose)
    visible = (alpha_g > 0.5) & np.isfinite(depth_g)
    ok = result is not None and np.isfinite(pose).all()
    return GroupTrack(pose if ok else np.asarray(predicted, np.float64).copy(),
                      result.inlier_ratio if result is not None else 0.0, used, visible, ok)


class MotionGroups:
    """Owns the dynamic-object state of one map."""

    def __init__(self, cfg: PosegsConfig, flow: DenseFlow) -> None:
        self.cfg = cfg
        self.flow = flow
        self.segmenter = MotionSegmenter(cfg.dynamic)
        self.history = GroupMotionHistory(cfg.dynamic, frames=cfg.dynamic.merge_frames)
        self.groups: dict[int, MotionGroup] = {}
        self._next_id = 1
        self._prev: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None  # image, pose, depth, alpha
        self._last_flow: np.ndarray | None = None
        self._mask: np.ndarray | None = None
        # region id -> its median flow residual [2] over its last dynamic.residual_frames observed frames
        self._residuals: dict[int, deque[np.ndarray]] = {}

    # ----------------------------------------------------------------- queries
    def poses(self) -> dict[int, np.ndarray]:
        return {g: grp.pose.copy() for g, grp in self.groups.items()}

    def twists(self) -> dict[int, np.ndarray]:
        return {g: grp.twist.copy() for g, grp in self.groups.items()}

    def exclusion_mask(self) -> np.ndarray | None:
        """Pixels tracking should ignore in the next frame ``[H, W]`` bool: the current
        moving-object mask pushed along the last flow and dilated (None without objects)."""
        if self._mask is None or not self._mask.any():
            return None
        return exclusion_margin(warp_mask(self._mask, self._last_flow) | self._mask)

    def scene(self, scene: SceneTensors) -> SceneTensors:
        """``scene`` with every group's Gaussians at its latest pose."""
        return move_groups(scene, {g: torch.from_numpy(grp.pose) for g, grp in self.groups.items()})

    # ------------------------------------------------------------------ update
    def observe(
        self,
        image: np.ndarray,
        pose: np.ndarray,
        depth: np.ndarray,
        alpha: np.ndarray,
        intrinsics: Intrinsics,
        world: MapAccess,
        scene_scale: float,
        exposure_ratio: float,
        settings: RenderSettings | None = None,
    ) -> GroupObservation:
        """Update detection and groups with a tracked frame.

        Args:
            image: ``[H, W, 3]`` uint8 current frame.
            pose: ``[4, 4]`` its solved camera-to-map pose.
            depth: ``[H, W]`` rendered depth of the map (with groups) at ``pose``.
            alpha: ``[H, W]`` rendered opacity at ``pose``.
            world: the map (read; spawns and merges are edits its owner applies).
            settings: render settings of the frame; with them (and ``dynamic.track_groups``)
                groups that already have Gaussians are tracked against them
                (:func:`track_group`), the region flow being the fallback.
        """
        obs = GroupObservation(None, {}, {})
        prev, self._prev = self._prev, (image, pose, depth, alpha)
        if prev is None:
            return self._finish(obs)
        image_prev, pose_prev, depth_prev, alpha_prev = prev
        k = intrinsics.numpy()
        flow = self.flow(image_prev, image)
        inside, static, flow_residual = static_flow_fields(flow, depth_prev, k, pose_prev, pose,
                                                           self.cfg.dynamic.depth_slack)
        valid = inside & (alpha_prev > 0.7)
        candidates = flow_disagreement(flow, static, self.cfg.dynamic.flow_threshold_px, valid=valid,
                                       textured=texture_mask(image_prev), residual=flow_residual)
        regions = self.segmenter.update(candidates, self._last_flow)
        self._last_flow = flow
        confirmed = [r for r in regions if r.confirmed]
        linked = {grp.region_id: grp for grp in self.groups.values()}
        self._record_residuals([r for r in regions if r.id not in linked], flow, static, valid)
        mask = np.zeros(image.shape[:2], bool)
        tracked: dict[int, GroupTrack] = {}
        if settings is not None and self.cfg.dynamic.track_groups:
            tracked = self._track_models(image, pose, intrinsics, world.scene(), settings, {r.id for r in confirmed})
        for region in confirmed:
            grp = linked.get(region.id)
            depth_move = depth_prev
            if grp is None:
                if sum(not g.parked for g in self.groups.values()) >= self.cfg.dynamic.max_groups:
                    continue
                contrast = boundary_contrast(flow_residual, region.mask, valid)
                if contrast < self.cfg.dynamic.min_boundary_contrast:
                    log.debug("region %d: residual contrast %.2f at its border: a smooth error field, no group",
                              region.id, contrast)
                    continue
                change = residual_change(list(self._residuals.get(region.id, ())))
                if change > self.cfg.dynamic.max_residual_change:
                    log.debug("region %d: its flow residual changed by %.2f between frames: jitter, no group (yet)",
                              region.id, change)
                    continue
                grp = self._spawn(region.mask, image_prev, pose_prev, depth_prev, intrinsics, world)
                if grp is None:
                    continue
                grp.region_id = region.id
                obs.spawned.append(grp.group_id)
                depth_move = np.where(region.mask, np.float32(grp.depth), depth_prev)
            track = tracked.get(grp.group_id)
            if track is not None:
                self._moved_to(grp, track.pose, exposure_ratio, self._centroid(world.scene(), grp))
                mask |= track.visible
            else:
                self._move(grp, region.mask, depth_move, flow, k, pose_prev, pose, scene_scale, exposure_ratio)
            mask |= warp_mask(region.mask, flow)
            if region.observed:  # (a missed region's mask is only its prediction)
                grp.at_border = touches_border(region.mask, leaving_margin(region.mask, flow))
        # groups whose region vanished keep moving at constant velocity for the segmenter's grace;
        # then one last seen at the image border left the view: it is parked (coasts out of view,
        # then stops, its Gaussians kept for the frames that saw it), any other merges back
        live = {r.id for r in regions}
        for g, grp in list(self.groups.items()):
            if grp.parked:
                grp.parked += 1
                self._moved_to(grp, (grp.step if grp.parked <= COAST_FRAMES else np.eye(4)) @ grp.pose,
                               exposure_ratio, None)
            elif grp.region_id not in live and grp.at_border:
                grp.parked, grp.region_id = 1, -1
                self.history.drop(g)
                log.info("motion group %d left the view: parked (kept out of the static map)", g)
            elif grp.region_id not in live:
                self._merge(g, world, reason="its region disappeared")
                obs.merged.append(g)
            elif self.history.should_merge(g, scene_scale):
                self._merge(g, world, reason="it stopped moving")
                self.segmenter.drop(grp.region_id)
                obs.merged.append(g)
        obs.mask = mask if mask.any() else None
        return self._finish(obs)

    def _record_residuals(self, regions: list[MotionRegion], flow: np.ndarray, static: np.ndarray,
                          valid: np.ndarray) -> None:
        """Append each observed region's median flow residual ``flow - static`` over its valid
        pixels to its history (:func:`~posegs_ros.dynamic.detection.residual_change`); forget
        the rest. ``regions``: those that may still spawn a group (none linked to one: their
        history is never read again)."""
        live = {r.id for r in regions}
        for rid in [rid for rid in self._residuals if rid not in live]:
            del self._residuals[rid]
        for region in regions:
            if not region.observed:
                continue
            ys, xs = np.nonzero(region.mask & valid)
            diff = flow[ys, xs] - static[ys, xs]
            diff = diff[np.isfinite(diff).all(axis=1)]
            if len(diff) < MIN_RESIDUAL_PIXELS:
                continue
            history = self._residuals.setdefault(region.id, deque(maxlen=self.cfg.dynamic.residual_frames))
            history.append(np.median(diff, axis=0))

    def _finish(self, obs: GroupObservation) -> GroupObservation:
        obs.poses, obs.twists = self.poses(), self.twists()
        self._mask = obs.mask
        return obs

    @torch.no_grad()
    def _spawn(
        self,
        region: np.ndarray,
        image: np.ndarray,
        pose: np.ndarray,
        depth: np.ndarray,
        intrinsics: Intrinsics,
        world: MapAccess,
    ) -> MotionGroup | None:
        """New group from a region of the previous frame (group frame = map frame at that time);
        its Gaussians (and the removal of the static ones it replaces) are a map edit."""
        # depth: monocular, a new object's depth is unknown and only its product with the object's
        # motion is observed; a plane at spawn_depth_ratio of the background depth around the
        # region keeps the object in front of what it occludes (the motion solved with it
        # absorbs the scale)
        k = intrinsics.numpy()
        ys, xs = np.nonzero(region)
        if len(xs) < self.cfg.dynamic.min_region_px:
            return None
        try:
            background = float(np.median(region_depth_fill(np.where(region, np.nan, depth), region)[region]))
        except ValueError:
            return None
        stride = 2
        keep = (ys % stride == 0) & (xs % stride == 0)
        ys, xs = ys[keep], xs[keep]
        z = np.full(len(xs), self.cfg.dynamic.spawn_depth_ratio * background)
        cam = np.stack([(xs - k[0, 2]) / k[0, 0] * z, (ys - k[1, 2]) / k[1, 1] * z, z], 1)
        points = torch.from_numpy(cam @ pose[:3, :3].T + pose[:3, 3]).float()
        g = self._next_id
        self._next_id += 1
        rgb = torch.from_numpy(image[ys, xs].astype(np.float32) / 255.0)
        scale = torch.from_numpy(z / k[0, 0] * stride * 0.5).float()

        def spawn(gmap: GaussianMap, keyframes: list[Keyframe]) -> None:
            self._remove_static_inside(region, background, pose, k, gmap)
            added = gmap.add(points, rgb, scale, opacities=0.8, group_ids=g)
            log.info("motion group %d spawned: %d Gaussians at depth %.2f", g, added, float(np.median(z)))

        world.edit(spawn)
        grp = MotionGroup(group_id=g, region_id=-1, pose=np.eye(4), depth=float(z[0]))
        self.groups[g] = grp
        return grp

    @staticmethod
    @torch.no_grad()
    def _remove_static_inside(region: np.ndarray, background_depth: float, pose: np.ndarray,
                              k: np.ndarray, gmap: GaussianMap) -> None:
        """Drop static Gaussians that project into ``region`` in front of its background: the
        object mapped as static before it was detected (they would stay behind as a ghost)."""
        if len(gmap) == 0:
            return
        means = gmap.means.detach().double().numpy()
        x = (means - pose[:3, 3]) @ pose[:3, :3]
        z = x[:, 2]
        ok = z > 1e-6
        u = np.full(len(z), -1)
        v = np.full(len(z), -1)
        u[ok] = np.round(k[0, 0] * x[ok, 0] / z[ok] + k[0, 2]).astype(int)
        v[ok] = np.round(k[1, 1] * x[ok, 1] / z[ok] + k[1, 2]).astype(int)
        h, w = region.shape
        inside = ok & (u >= 0) & (u < w) & (v >= 0) & (v < h)
        hit = np.zeros(len(z), bool)
        hit[inside] = region[v[inside], u[inside]]
        static = gmap.group_ids.numpy() == 0
        remove = hit & static & (z < 0.9 * background_depth)
        if remove.any():
            gmap.remove(torch.from_numpy(remove))

    def _track_models(self, image: np.ndarray, pose: np.ndarray, intrinsics: Intrinsics, scene: SceneTensors,
                      settings: RenderSettings, live_regions: set[int]) -> dict[int, GroupTrack]:
        """Track every group with a live region against its own Gaussians in ``scene`` (trusted results only)."""
        predicted = {g: grp.step @ grp.pose for g, grp in self.groups.items()}
        out: dict[int, GroupTrack] = {}
        for g, grp in self.groups.items():
            if grp.region_id not in live_regions:
                continue
            others = {o: m for o, m in predicted.items() if o != g}
            track = track_group(self.flow, image, intrinsics, pose, scene, settings, g, predicted[g], others,
                                passes=self.cfg.tracking.flow_passes, huber_px=self.cfg.tracking.huber_px)
            if track.ok and track.inlier_ratio >= self.cfg.dynamic.min_group_inliers:
                out[g] = track
            else:
                log.debug("group %d: model tracking not trusted (inliers %.2f, %d points)", g,
                          track.inlier_ratio, track.num_points)
        return out

    @staticmethod
    def _centroid(scene: SceneTensors, grp: MotionGroup) -> np.ndarray:
        """``[3]`` centre of the group's Gaussians in the map at its current pose."""
        assert scene.group_ids is not None
        sel = scene.group_ids == grp.group_id
        c = scene.means[sel].double().mean(0).numpy() if bool(sel.any()) else np.zeros(3)
        return grp.pose[:3, :3] @ c + grp.pose[:3, 3]

    def _moved_to(self, grp: MotionGroup, new_pose: np.ndarray, exposure_ratio: float,
                  centroid: np.ndarray | None) -> None:
        """Set the group's pose for this frame (step and exposure twist follow); a measured motion
        (``centroid`` ``[3]`` given: the group's centre in the map) enters the merge history."""
        step = new_pose @ np.linalg.inv(grp.pose)
        if centroid is not None:
            self.history.add(grp.group_id, step, centroid)
        grp.step = step
        rel = np.linalg.inv(grp.pose) @ new_pose  # motion in the group frame
        grp.twist = se3_log(torch.from_numpy(rel)).numpy() * exposure_ratio
        grp.pose = new_pose
        grp.frames += 1

    def _move(self, grp: MotionGroup, region: np.ndarray, depth_prev: np.ndarray, flow: np.ndarray,
              k: np.ndarray, pose_prev: np.ndarray, pose: np.ndarray, scene_scale: float, exposure_ratio: float) -> None:
        depth = depth_prev
        if not np.isfinite(depth[region]).any():
            try:
                depth = region_depth_fill(depth_prev, region)
            except ValueError:
                depth = None
        result = None
        if depth is not None:
            result = motion_from_region_flow(depth, region, flow, k, pose_prev, pose, init=grp.step)
        if result is not None and result.ok and result.inlier_ratio > self.cfg.dynamic.min_group_inliers:
            self._moved_to(grp, result.motion @ grp.pose, exposure_ratio, result.centroid)
        else:  # constant velocity (not evidence of motion: the history is left alone)
            self._moved_to(grp, grp.step @ grp.pose, exposure_ratio, None)

    def _merge(self, g: int, world: MapAccess, reason: str) -> None:
        """Bake group ``g`` at its current pose into the static map (a map edit that also
        forgets the group in every keyframe)."""
        grp = self.groups.pop(g)
        self.history.drop(g)
        pose = grp.pose.copy()

        @torch.no_grad()
        def merge(gmap: GaussianMap, keyframes: list[Keyframe]) -> None:
            sel = gmap.group_ids == g
            if bool(sel.any()):
                m = torch.from_numpy(pose).to(gmap.means.dtype)
                moved = move_groups(
                    SceneTensors(gmap.means.detach(), gmap.quats.detach(), gmap.log_scales.detach(),
                                 gmap.opacity_logits.detach(), gmap.params["sh0"].detach(), gmap.group_ids),
                    {g: m},
                )
                gmap.params["means"].data.copy_(moved.means)
                gmap.params["quats"].data.copy_(moved.quats)
                gmap.group_ids[sel] = 0
            for kf in keyframes:
                kf.group_poses.pop(g, None)
                kf.group_twists.pop(g, None)

        world.edit(merge)
        log.info("motion group %d merged into the static map (%s)", g, reason)

    def reset(self) -> None:
        self.segmenter.reset()
        self.groups.clear()
        self.history = GroupMotionHistory(self.cfg.dynamic, frames=self.cfg.dynamic.merge_frames)
        self._prev = None
        self._last_flow = None
        self._mask = None
        self._residuals.clear()
