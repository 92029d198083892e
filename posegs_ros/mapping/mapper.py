"""Sliding-window mapping with UPGS's three stages, the blur model, densification and pruning.

Per mapping round (one new keyframe), on the window's keyframes:

1. Gaussians only, poses fixed (``mapping.gaussian_iters`` steps),
2. poses and exposure twists only, Gaussians fixed (``mapping.pose_iters``),
3. everything jointly (``mapping.joint_iters``).

Each step renders one keyframe's exposure (``S`` sub-frame renders in one batched rasterizer
call), compares their mean with the observed, blurred frame, and takes an Adam step.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from ..scene.blur import (
    RenderOutput, RenderSettings, SceneTensors, exposure_subframes, group_subset, move_groups,
    exposure_offsets, precondition_streak, render_exposure, render_views, streak_offsets, tile_centres, tile_weights,
)
from ..scene.loss import photometric_loss
from ..camera import project, unproject
from ..config import PosegsConfig
from ..geometry import quat_to_rotmat, se3_inverse, transform_points
from ..scene.gaussians import GaussianMap
from ..scene.keyframes import Keyframe

__all__ = ["CameraOptimizer", "Mapper", "MappingStats", "RoundControl", "scene_tensors"]

log = logging.getLogger(__name__)

# mapping.defer_new_content: densifying a new keyframe, a sample with neither a rendered nor a triangulated depth borrows
# the nearest rendered depth only this many sampling strides from the map (a hole, not new content)
GUESS_MAX_GAP_STRIDES = 2
# final-refinement growth: a Gaussian whose largest standard deviation covers more than this many pixels (in the views
# that saw it) is split in two smaller ones, a smaller one is cloned (3DGS's adaptive density control, in pixels)
GROW_SPLIT_PX = 1.0
GROW_SPLIT_SHRINK = 1.6  # a split's children have the parent's scales divided by this (3DGS)
GROW_UNTIL = 0.6  # growth stops after this fraction of the final refinement's steps (the rest fits what was added)


def scene_tensors(gmap: GaussianMap, detach: bool = False) -> SceneTensors:
    """Render-ready tensors of the map (detached when Gaussians are not being optimized)."""
    act = gmap.activated()
    if detach:
        act = {k: v.detach() for k, v in act.items()}
    return SceneTensors(act["means"], act["quats"], act["scales"], act["opacities"], act["colors"], gmap.group_ids)


@dataclass
class MappingStats:
    iterations: int = 0
    final_loss: float = float("nan")
    added: int = 0
    pruned: int = 0
    skipped_steps: int = 0  # non-finite losses / gradients that were not applied
    views: int = 0  # frames the (final) refinement optimized
    preconditioned_steps: int = 0  # final-refinement steps whose gradient was filtered by the view's streak


@dataclass
class RoundControl:
    """What the owner of a running round says between two of its steps (see :meth:`Mapper.optimize`)."""

    added: list[Keyframe] = field(default_factory=list)  # keyframes integrated meanwhile: they join the round
    stop: bool = False  # end the round now (pose corrections made so far are still folded in)


@dataclass
class GradientStats:
    """Per-Gaussian view-space positional gradients summed over the steps that saw each one."""

    grad_px: Tensor  # [N] sum of |dL / d(projected centre)|, L the per-pixel loss summed over the image (per pixel of motion)
    footprint_px: Tensor  # [N] sum of the largest standard deviation's size in pixels
    views: Tensor  # [N] steps in which the Gaussian got a gradient

    @classmethod
    def zeros(cls, n: int) -> GradientStats:
        return cls(torch.zeros(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64))


class CameraOptimizer:
    """Adam over the keyframes' camera-side parameters (pose corrections, exposure twists, affine
    exposures, motion-group poses and twists), one ``torch.optim.Adam`` per keyframe.

    A mapping step renders one keyframe, so only that keyframe's parameters get gradients, and
    Adam leaves a parameter without a gradient untouched: stepping that keyframe's optimizer alone
    gives exactly what one Adam over every keyframe gives, at a cost that does not grow with the
    number of keyframes (the final refinement optimizes hundreds of frames, three or more
    parameter groups each).
    """

    def __init__(self, groups: dict[int, list[dict[str, Any]]]) -> None:
        """``groups``: ``id(keyframe)`` -> that keyframe's Adam parameter groups (non-empty)."""
        self._by_frame = {key: torch.optim.Adam(g) for key, g in groups.items()}
        self.param_groups: list[dict[str, Any]] = [g for opt in self._by_frame.values() for g in opt.param_groups]

    def __contains__(self, kf: Keyframe) -> bool:
        return id(kf) in self._by_frame

    def params(self, kf: Keyframe) -> list[Tensor]:
        """``kf``'s optimized tensors (empty if it has none here)."""
        opt = self._by_frame.get(id(kf))
        return [] if opt is None else [p for g in opt.param_groups for p in g["params"]]

    def zero_grad(self, kf: Keyframe) -> None:
        """Drop the gradients of ``kf``'s parameters."""
        for p in self.params(kf):
            p.grad = None

    def step(self, kf: Keyframe) -> None:
        """Adam step on ``kf``'s parameters."""
        opt = self._by_frame.get(id(kf))
        if opt is not None:
            opt.step()


class Mapper:
    """Owns the optimization of the Gaussians and of the window keyframes' poses."""

    def __init__(self, cfg: PosegsConfig, gmap: GaussianMap, rng: np.random.Generator) -> None:
        self.cfg = cfg
        self.gmap = gmap
        self.rng = rng
        self.scene_scale = 1.0  # median scene depth at initialization (map units)
        self.steps = 0  # optimization steps taken (all stages, the final refinement included)
        self.gradients: GradientStats | None = None  # accumulated while the final refinement grows the map
        self.precondition = 0.0  # blur.final_precondition while the final refinement runs
        self.preconditioned_steps = 0  # steps whose gradient was filtered by the view's streak
        self._tiles: tuple | None = None  # (image size and grid, weights [K, H, W], centres [K, 2])

    # ------------------------------------------------------------------ setup
    def set_scene_scale(self, scale: float) -> None:
        """Scale distance-like learning rates to the map's (arbitrary monocular) scale."""
        self.scene_scale = float(scale)
        m = self.cfg.mapping
        self.gmap.setup_optimizers(
            {
                "means": m.lr_means * self.scene_scale,
                "quats": m.lr_quats,
                "scales": m.lr_scales,
                "opacities": m.lr_opacity,
                "sh0": m.lr_colors,
                "shN": m.lr_colors / 20.0,
            }
        )

    def render_settings(self, kf: Keyframe) -> RenderSettings:
        r = self.cfg.render
        return RenderSettings(
            width=kf.intrinsics.width,
            height=kf.intrinsics.height,
            sh_degree=r.sh_degree,
            near_plane=r.near_plane * self.scene_scale,
            far_plane=r.far_plane * self.scene_scale,
            eps2d=r.eps2d,
            background=r.background,
            backend=r.backend,
        )

    def subframes(self, kf: Keyframe) -> int:
        """Sub-frames of ``kf``'s blurred prediction: ``blur.subframes``, or chosen from the blur
        length of its exposure twists (the camera's and its motion groups') when that is 0."""
        b = self.cfg.blur
        if not b.enabled:
            return 1
        twists = [kf.twist().detach().numpy()] + [e.detach().numpy() for e in kf.group_twists.values()]
        return exposure_subframes(b.subframes, twists, kf.intrinsics.fx, kf.intrinsics.width, kf.intrinsics.height,
                                  self.scene_scale, b.subframe_spacing_px, b.max_subframes)

    # --------------------------------------------------------------- seeding
    @torch.no_grad()
    def add_from_depth(
        self,
        kf: Keyframe,
        pixels: np.ndarray,
        depth: np.ndarray,
        stride: float,
        opacity: float = 0.7,
        group_id: int = 0,
    ) -> int:
        """Add Gaussians at ``pixels`` ``[M, 2]`` of ``kf`` lifted to ``depth`` ``[M]``.

        Colours come from the keyframe's image; isotropic scales cover about ``stride`` pixels.
        A motion group's Gaussians (``group_id > 0``) are stored in the group's frame, through
        the keyframe's pose of that group.
        """
        ok = np.isfinite(depth) & (depth > 0)
        pixels, depth = pixels[ok], depth[ok]
        if len(depth) == 0:
            return 0
        k = kf.intrinsics.matrix(torch.float64)
        uv = torch.from_numpy(pixels).double()
        z = torch.from_numpy(depth).double()
        cam = unproject(uv, z, k)
        pose = kf.pose
        world = cam @ pose[:3, :3].T + pose[:3, 3]
        if group_id > 0:
            m = kf.group_poses[group_id].detach().double()
            world = (world - m[:3, 3]) @ m[:3, :3]
        h, w = kf.image.shape[:2]
        ui = uv[:, 0].round().long().clamp(0, w - 1)
        vi = uv[:, 1].round().long().clamp(0, h - 1)
        rgb = kf.radiance(kf.image[vi, ui].double()).clamp(0.0, 1.0)
        scale = z / kf.intrinsics.fx * stride * 0.5
        return self.gmap.add(world.float(), rgb.float(), scale.float(), opacities=opacity, group_ids=group_id)

    # ---------------------------------------------------------- optimization
    def _render_keyframe(self, kf: Keyframe, scene: SceneTensors, pose_grad: bool) -> tuple[Tensor, RenderOutput]:
        pose = kf.current_pose() if pose_grad else kf.current_pose().detach()
        twist = kf.twist() if pose_grad else kf.twist().detach()
        blur_on = self.cfg.blur.enabled
        if not blur_on:
            twist = torch.zeros_like(twist)
        groups = {}
        for g in kf.group_poses:
            m = kf.current_group_pose(g)
            e = kf.group_twists.get(g, torch.zeros(6, dtype=torch.float64))
            if not blur_on:
                e = torch.zeros_like(e)
            groups[g] = (m, e) if pose_grad else (m.detach(), e.detach())
        k = kf.intrinsics.matrix(torch.float64)
        return render_exposure(scene, pose, twist, k, self.render_settings(kf), self.subframes(kf), groups or None,
                               bend=kf.bend if blur_on else None)

    def _pose_optimizer(self, keyframes: list[Keyframe]) -> CameraOptimizer | None:
        """Adam over the pose corrections, exposure twists, affine exposures and motion-group poses / twists."""
        groups: dict[int, list[dict[str, Any]]] = {}
        m = self.cfg.mapping
        for kf in keyframes:
            kf.delta = torch.zeros(6, dtype=torch.float64, requires_grad=True)
            params = [{"params": [kf.delta], "lr": m.lr_pose}]
            if m.affine_exposure:
                kf.exposure = kf.exposure.detach().clone().requires_grad_(True)
                params.append({"params": [kf.exposure], "lr": m.lr_affine})
            if self.cfg.blur.enabled:
                kf.twist_u = kf.twist_u.detach().clone().requires_grad_(True)
                params.append({"params": [kf.twist_u], "lr": m.lr_exposure})
            for g in kf.group_poses:
                kf.group_deltas[g] = torch.zeros(6, dtype=torch.float64, requires_grad=True)
                params.append({"params": [kf.group_deltas[g]], "lr": m.lr_pose})
                if self.cfg.blur.enabled and g in kf.group_twists:
                    kf.group_twists[g] = kf.group_twists[g].detach().clone().requires_grad_(True)
                    params.append({"params": [kf.group_twists[g]], "lr": m.lr_exposure})
            groups[id(kf)] = params
        return CameraOptimizer(groups) if groups else None

    def optimize(
        self,
        window: list[Keyframe],
        newest: Keyframe | None,
        replay: Keyframe | None = None,
        fallback_depth: np.ndarray | None = None,
        between_steps: Callable[[], RoundControl] | None = None,
    ) -> MappingStats:
        """Run the three stages on ``window`` (+ an optional replayed frozen keyframe).

        ``newest`` (the keyframe that triggered the round) is densified before stage 1 (with
        ``fallback_depth`` ``[H, W]`` where the map is transparent) and again after it.
        ``between_steps`` (the concurrent mapping thread) is called after every step: keyframes
        it reports as added join the round (the last one becomes the newest), ``stop`` ends it.
        """
        m = self.cfg.mapping
        stats = MappingStats()
        if newest is not None and len(self.gmap) > 0:
            stats.added += self.densify(newest, fallback_depth)
        if len(self.gmap) == 0 or not window:
            return stats
        poses = m.optimize_poses
        schedule = [("gaussians", m.gaussian_iters), ("poses", m.pose_iters if poses else 0), ("joint", m.joint_iters)]
        frames = list(window) + ([replay] if replay is not None else [])
        pose_frames = [kf for kf in window if not kf.fixed] if poses else []
        return self._run(schedule, frames, pose_frames, newest, fallback_depth, stats, between_steps=between_steps,
                         means_lr_factor=m.window_means_lr_factor)

    def refine_all(self, views: list[Keyframe], iterations: int, precondition: float | None = None) -> MappingStats:
        """Offline final refinement over ``views`` (keyframes and, in replay, every tracked frame).

        Each view is first densified where the map leaves it transparent, then ``iterations``
        joint steps (Gaussians, and poses + exposure twists unless ``mapping.optimize_poses`` is
        off; the gauge keyframe's too) visit the views in shuffled rounds so each is seen equally often. ``precondition``:
        ``eps`` of the streak preconditioning of blurred views (None: ``blur.final_precondition``; 0: off).
        """
        stats = MappingStats()
        if len(self.gmap) == 0 or not views or iterations <= 0:
            return stats
        m = self.cfg.mapping
        online_cap = self.gmap.max_gaussians
        self.gmap.max_gaussians = max(online_cap, m.final_max_gaussians)
        try:
            self.precondition = self.cfg.blur.final_precondition if precondition is None else float(precondition)
            before = self.preconditioned_steps
            stats = self._refine_all(views, iterations, stats)
            stats.preconditioned_steps = self.preconditioned_steps - before
            return stats
        finally:
            self.gmap.max_gaussians = online_cap
            self.precondition = 0.0

    def _refine_all(self, views: list[Keyframe], iterations: int, stats: MappingStats) -> MappingStats:
        """:meth:`refine_all` under the final refinement's cap on the number of Gaussians."""
        m = self.cfg.mapping
        for view in views:
            stats.added += self.densify(view, stride=m.final_densify_stride, error=m.final_densify_error)
        # the gauge keyframe too: its pose pins the gauge online, but held fixed here it lags the
        # map, which every other view drags along, by a fraction of a pixel (and its render with it)
        pose_frames = list(views) if self.cfg.mapping.optimize_poses else []
        order = np.concatenate([self.rng.permutation(len(views)) for _ in range(iterations // len(views) + 1)])
        visits = iter(order[:iterations].tolist())
        between_steps = None
        if m.final_grow_interval > 0 and m.final_grow_grad > 0:
            self.gradients = GradientStats.zeros(len(self.gmap))
            taken = 0

            def between_steps() -> RoundControl:
                nonlocal taken
                taken += 1
                if taken % m.final_grow_interval == 0 and taken <= GROW_UNTIL * iterations:
                    added, pruned = self.grow()
                    stats.added += added
                    stats.pruned += pruned
                return RoundControl()

        try:
            return self._run([("joint", iterations)], list(views), pose_frames, None, None, stats,
                             pick=lambda: views[next(visits)], final_lr_factor=m.final_lr_factor,
                             appearance_boost=m.final_lr_boost, between_steps=between_steps,
                             means_lr_factor=m.final_means_lr_factor)
        finally:
            self.gradients = None

    def _run(
        self,
        schedule: list[tuple[str, int]],
        frames: list[Keyframe],
        pose_frames: list[Keyframe],
        newest: Keyframe | None,
        fallback_depth: np.ndarray | None,
        stats: MappingStats,
        pick: Callable[[], Keyframe] | None = None,
        final_lr_factor: float = 1.0,
        appearance_boost: float = 1.0,
        between_steps: Callable[[], RoundControl] | None = None,
        means_lr_factor: float = 1.0,
    ) -> MappingStats:
        """Run ``schedule`` [(stage, steps)]; learning rates of positions and poses decay
        exponentially to ``final_lr_factor`` times their value over the run (1 = constant; the
        positions' from ``means_lr_factor`` times theirs); those
        of colours, opacities, scales and rotations start at ``appearance_boost`` times their value
        and decay exponentially back to it."""
        frames = list(frames)
        stopped = False
        pose_opt = self._pose_optimizer(pose_frames) if pose_frames else None
        means = self.gmap.optimizers.get("means")
        means_groups = means.param_groups if means is not None else []
        boosted = [g for name, opt in self.gmap.optimizers.items() if name != "means" for g in opt.param_groups]
        # (param group, its rate, factor at the start, factor at the end): exponential in between
        schedules = [(g, g["lr"], 1.0, final_lr_factor) for g in (pose_opt.param_groups if pose_opt else [])]
        schedules += [(g, g["lr"], means_lr_factor, means_lr_factor * final_lr_factor) for g in means_groups]
        schedules += [(g, g["lr"], appearance_boost, 1.0) for g in boosted]
        total = max(sum(n for _, n in schedule), 1)
        step_index = 0
        for stage, iters in schedule:
            gaussians = stage in ("gaussians", "joint")
            for _ in range(iters):
                progress = step_index / total
                step_index += 1
                for g, lr, start, end in schedules:
                    g["lr"] = lr * start ** (1.0 - progress) * end**progress
                if stage == "poses":
                    if pose_opt is None:
                        break
                    kf = self._pick(pose_frames, newest if newest in pose_frames else None)
                else:
                    kf = pick() if pick is not None else self._pick(frames, newest)
                pose = stage in ("poses", "joint") and pose_opt is not None and kf in pose_frames
                loss = self._step(kf, gaussians, pose, pose_opt)
                stats.iterations += 1
                if math.isfinite(loss):
                    stats.final_loss = loss
                else:
                    stats.skipped_steps += 1
                if between_steps is not None:
                    control = between_steps()
                    for added in control.added:
                        if added not in frames:
                            frames.append(added)
                        newest, fallback_depth = added, None  # densified when it was integrated
                    if control.stop:
                        stopped = True
                        break
            if stopped:
                break
            if stage == "gaussians" and newest is not None:
                stats.added += self.densify(newest, fallback_depth)
        for g, lr, _, _ in schedules:
            g["lr"] = lr
        for kf in pose_frames:
            kf.fold()
        stats.pruned += self.prune()
        stats.pruned += self.gmap.sanitize()
        return stats

    def _pick(self, frames: list[Keyframe], newest: Keyframe | None) -> Keyframe:
        """The newest keyframe a third of the time, otherwise uniformly from the window."""
        if newest is not None and self.rng.random() < 1.0 / 3.0:
            return newest
        return frames[int(self.rng.integers(len(frames)))]

    def _precondition(self, kf: Keyframe, pred: Tensor, out: RenderOutput) -> Tensor:
        """``pred`` ``[H, W, 3]`` with its gradient filtered by the inverse attenuation of ``kf``'s
        streak (``blur.final_precondition``), per tile of a ``blur.final_precondition_tiles`` grid:
        each tile's streak is that of its centre at the tile's median rendered depth."""
        mid = out.rgb.shape[0] // 2
        depth, alpha = out.depth[mid, ..., 0].detach(), out.alpha[mid, ..., 0].detach()
        h, w = depth.shape
        grid = max(1, int(self.cfg.blur.final_precondition_tiles))
        if self._tiles is None or self._tiles[0] != (h, w, grid):
            self._tiles = ((h, w, grid), tile_weights(h, w, grid).float(), tile_centres(h, w, grid))
        _, weights, centres = self._tiles
        seen = alpha > 0.5
        overall = float(depth[seen].median()) if bool(seen.any()) else self.scene_scale
        depths = []
        for ys, xs in ((slice(int(i * h / grid), int((i + 1) * h / grid)), slice(int(j * w / grid), int((j + 1) * w / grid)))
                       for i in range(grid) for j in range(grid)):
            d = depth[ys, xs][seen[ys, xs]]
            depths.append(float(d.median()) if d.numel() >= 16 else overall)
        streak = streak_offsets(kf.current_pose(), kf.twist(), kf.intrinsics.matrix(torch.float64),
                                exposure_offsets(out.rgb.shape[0], torch.float64), np.array(depths), centres,
                                kf.bend if self.cfg.blur.enabled else None)
        return precondition_streak(pred, streak, self.precondition, weights)

    def _step(self, kf: Keyframe, gaussians: bool, pose: bool, pose_opt: CameraOptimizer | None) -> float:
        self.steps += 1
        self.gmap.zero_grad()
        if pose_opt is not None:
            pose_opt.zero_grad(kf)
        scene = scene_tensors(self.gmap, detach=not gaussians)
        pred, out = self._render_keyframe(kf, scene, pose_grad=pose)
        if self.precondition > 0 and out.rgb.shape[0] > 1:
            pred = self._precondition(kf, pred, out)
            self.preconditioned_steps += 1
        pred = kf.observed(pred)
        excluded = kf.excluded()
        loss = photometric_loss(pred, kf.image, self.cfg.mapping.ssim_weight, None if excluded is None else ~excluded,
                                self.cfg.mapping.gradient_weight)
        if not torch.isfinite(loss):
            return float("nan")
        camera = [p for p in (kf.delta, kf.twist_u, kf.exposure) if p.requires_grad] if pose else []
        if camera and kf.group_poses and kf.dynamic_mask is not None and bool(kf.dynamic_mask.any()):
            # the camera learns from static pixels only: a moving object's pixels move its own
            # group (pose, twist, Gaussians), never the camera, however badly the group explains them
            # (mask grown by 3 px; there the target is the render itself, so neither the L1 nor the
            # SSIM windows see the object's pixels)
            grown = torch.nn.functional.max_pool2d(kf.excluded(with_groups=True)[None, None].float(), 7, 1, 3)[0, 0] > 0
            target = torch.where(grown[..., None], pred.detach(), kf.image)
            static = photometric_loss(pred, target, self.cfg.mapping.ssim_weight, ~grown, self.cfg.mapping.gradient_weight)
            camera_grads = torch.autograd.grad(static, camera, retain_graph=True)
            loss.backward()
            for p, g in zip(camera, camera_grads):
                p.grad = g
        else:
            loss.backward()
        grads_ok = all(p.grad is None or bool(torch.isfinite(p.grad).all()) for p in self.gmap.params.values())
        if pose and pose_opt is not None:
            grads_ok &= all(p.grad is None or bool(torch.isfinite(p.grad).all()) for p in pose_opt.params(kf))
        if not grads_ok:
            return float("nan")
        if gaussians and self.gradients is not None:
            self._accumulate_gradients(kf)
        if gaussians:
            self.gmap.step()
        if pose and pose_opt is not None:
            pose_opt.step(kf)
        return float(loss.detach())

    # ---------------------------------------------------- densify and prune
    @torch.no_grad()
    def _accumulate_gradients(self, kf: Keyframe) -> None:
        """Add this step's view-space positional gradient of every static Gaussian that ``kf``
        saw to :attr:`gradients`: the map-frame gradient of its centre turned into the camera
        frame, whose x / y parts are ``fx / z`` times the gradient w.r.t. the projected centre."""
        stats, grad = self.gradients, self.gmap.means.grad
        if stats is None or grad is None or grad.shape[0] != stats.views.shape[0]:
            return
        pose = kf.current_pose().detach()
        rot, t = pose[:3, :3], pose[:3, 3]
        g = grad.double() @ rot  # [N, 3] camera frame
        z = ((self.gmap.means.detach().double() - t) @ rot)[:, 2]
        seen = (grad.abs().sum(1) > 0) & (z > 0) & (self.gmap.group_ids == 0)
        px_per_unit = kf.intrinsics.fx / z.clamp_min(1e-9)
        pixels = kf.intrinsics.width * kf.intrinsics.height  # the loss is a mean: make the threshold resolution-free
        stats.grad_px += torch.where(seen, g[:, :2].norm(dim=1) / px_per_unit * pixels, 0.0)
        size = torch.exp(self.gmap.log_scales.detach().double()).max(dim=1).values * px_per_unit
        stats.footprint_px += torch.where(seen, size, 0.0)
        stats.views += seen.double()

    @torch.no_grad()
    def grow(self) -> tuple[int, int]:
        """3DGS's adaptive density control on the accumulated view-space gradients: every static
        Gaussian whose mean gradient over the views that saw it exceeds ``mapping.final_grow_grad``
        is split in two (``GROW_SPLIT_SHRINK`` times smaller, centres drawn from it) when its
        footprint exceeds ``GROW_SPLIT_PX`` pixels, else cloned (a copy drawn from it); the
        strongest gradients first while the cap leaves room. Nearly transparent Gaussians are
        pruned first to make room. Resets the accumulation; returns (added, pruned)."""
        stats = self.gradients
        if stats is None or stats.views.shape[0] != len(self.gmap):
            return 0, 0
        faint = torch.sigmoid(self.gmap.opacity_logits.detach()) < self.cfg.mapping.prune_opacity
        pruned = self.gmap.remove(faint)
        views = stats.views[~faint]
        mean_grad = stats.grad_px[~faint] / views.clamp_min(1.0)
        footprint = stats.footprint_px[~faint] / views.clamp_min(1.0)
        n = len(self.gmap)
        room = max(self.gmap.max_gaussians - n, 0)
        candidates = torch.nonzero((mean_grad > self.cfg.mapping.final_grow_grad) & (views > 0)).flatten()
        self.gradients = GradientStats.zeros(n)
        if room == 0 or candidates.numel() == 0:
            return 0, pruned
        candidates = candidates[torch.argsort(mean_grad[candidates], descending=True)][:room]
        split = footprint[candidates] > GROW_SPLIT_PX
        log_scales = self.gmap.log_scales.detach()[candidates].double()
        scales = torch.exp(log_scales)
        rot = quat_to_rotmat(self.gmap.quats.detach()[candidates].double())
        gen = torch.Generator().manual_seed(int(self.rng.integers(2**31)))
        offsets = torch.randn(len(candidates), 3, generator=gen, dtype=torch.float64) * scales
        means = self.gmap.means.detach()[candidates].double()
        child = means + (rot @ offsets[..., None])[..., 0]
        child_scales = torch.where(split[:, None], log_scales - math.log(GROW_SPLIT_SHRINK), log_scales)
        added = self.gmap.duplicate(candidates, child, child_scales)
        if added == 0:
            return 0, pruned
        split, candidates = split[:added], candidates[:added]
        # a split Gaussian becomes the second child: shrunk, moved to the opposite draw
        params = self.gmap.params
        params["scales"].data[candidates[split]] = child_scales[:added][split].to(params["scales"].dtype)
        params["means"].data[candidates[split]] = (means - (child - means))[:added][split].to(params["means"].dtype)
        self.gradients = GradientStats.zeros(len(self.gmap))
        if log.isEnabledFor(logging.DEBUG):  # the quantiles are for tuning only
            log.debug("grow: %d split, %d cloned, %d pruned (%d Gaussians); mean gradient q50 / q90 / q99 %s, "
                      "footprint q50 %.2f px", int(split.sum()), int((~split).sum()), pruned, len(self.gmap),
                      np.round(np.quantile(mean_grad[views > 0].numpy(), [0.5, 0.9, 0.99]), 3),
                      float(footprint[views > 0].median()))
        return added, pruned

    @torch.no_grad()
    def render_sharp(self, kf: Keyframe, only_group: int | None = None) -> RenderOutput:
        """Sharp render ``s = 0`` at the keyframe's current pose (rgb, depth, alpha, C = 1), motion
        groups at the keyframe's poses of them; ``only_group``: that group's Gaussians alone."""
        scene = scene_tensors(self.gmap, detach=True)
        if only_group is not None:
            scene = group_subset(scene, only_group)
        scene = move_groups(scene, {g: kf.current_group_pose(g).detach() for g in kf.group_poses})
        k = kf.intrinsics.matrix(torch.float64)
        return render_views(scene, kf.current_pose().detach()[None], k, self.render_settings(kf))

    @torch.no_grad()
    def move_surface_to_depth(self, kf: Keyframe, depth: np.ndarray, surface_band: float = 0.2,
                              max_change: float = 0.5) -> int:
        """Move the static surface ``kf`` sees along its rays to ``depth`` ``[H, W]`` (NaN: no estimate).

        A static Gaussian is on that surface if its depth in ``kf`` is within ``surface_band``
        (absolute log ratio) of the rendered depth at its pixel; it moves by the ratio of ``depth``
        to the rendered depth there (so the surface's own thickness is kept), if that ratio is
        within ``max_change`` in log, and its scales grow or shrink with it. Returns how many moved.
        """
        out = self.render_sharp(kf)
        alpha = out.alpha[0, ..., 0].numpy()
        rendered = np.where(alpha > 0.5, out.depth[0, ..., 0].numpy(), np.nan)
        h, w = rendered.shape
        pose = torch.from_numpy(kf.numpy_pose())
        cam = transform_points(se3_inverse(pose), self.gmap.means.detach().double())  # [N, 3] in the keyframe's frame
        uv, z = project(cam, kf.intrinsics.matrix(torch.float64))
        u, v = uv.round().long().unbind(-1)
        inside = (z > 0) & (u >= 0) & (u < w) & (v >= 0) & (v < h) & (self.gmap.group_ids == 0)
        idx = inside.nonzero()[:, 0]
        ui, vi = u[idx].numpy(), v[idx].numpy()
        at_surface = torch.from_numpy(rendered[vi, ui])
        target = torch.from_numpy(depth[vi, ui].astype(np.float64))
        ratio = target / at_surface
        move = (torch.isfinite(ratio) & ((z[idx] / at_surface).log().abs() < surface_band)
                & (ratio.log().abs() < max_change))
        idx, ratio = idx[move], ratio[move]
        if len(idx) == 0:
            return 0
        moved = transform_points(pose, cam[idx] * ratio[:, None])
        means, scales = self.gmap.params["means"], self.gmap.params["scales"]
        means.data[idx] = moved.to(means.dtype)
        scales.data[idx] += ratio.log()[:, None].to(scales.dtype)  # log scales
        return int(len(idx))

    @torch.no_grad()
    def densify(
        self,
        kf: Keyframe,
        fallback_depth: np.ndarray | None = None,
        stride: int | None = None,
        error: float | None = None,
    ) -> int:
        """Add Gaussians where ``kf`` is transparent or badly explained by the map.

        Pixels are sampled every ``stride`` (default ``mapping.densify_stride``); badly
        explained = mean L1 error above ``error`` (default ``mapping.densify_error``). Depth: the
        rendered depth where the map is opaque enough, else ``fallback_depth`` ``[H, W]``
        (e.g. triangulated), else the nearest rendered depth.
        """
        m = self.cfg.mapping
        stride = m.densify_stride if stride is None else stride
        error = m.densify_error if error is None else error
        out = self.render_sharp(kf)
        alpha = out.alpha[0, ..., 0].numpy()
        depth = out.depth[0, ..., 0].numpy()
        err = (kf.observed(out.rgb[0]) - kf.image).abs().mean(-1).numpy()
        h, w = alpha.shape
        offset = int(self.rng.integers(stride))
        vs, us = np.mgrid[offset:h:stride, offset:w:stride]
        us, vs = us.ravel(), vs.ravel()
        a, e = alpha[vs, us], err[vs, us]
        transparent = a < m.densify_alpha
        wrong = (~transparent) & (e > error)
        excluded = kf.excluded(with_groups=True)
        if excluded is not None:
            static = ~excluded.numpy()[vs, us]
            transparent &= static
            wrong &= static
        if not (transparent.any() or wrong.any()):
            return 0
        d = np.where(alpha > 0.5, depth, np.nan)[vs, us]
        pick = transparent | wrong
        rendered = int((np.isfinite(d) & pick).sum())
        if fallback_depth is not None:
            d = np.where(np.isfinite(d), d, fallback_depth[vs, us])
        missing = ~np.isfinite(d)
        n_pick, n_missing = int(pick.sum()), int((missing & pick).sum())
        if missing.any():
            d[missing], gap = _nearest_valid(np.where(alpha > 0.5, depth, np.nan), us[missing], vs[missing])
            if fallback_depth is not None and m.defer_new_content:
                # a new keyframe: far from the map and not triangulated (it just came into view), a
                # borrowed depth is a guess that tracking would take for geometry -- leave it to the
                # next keyframe, which sees it from two views
                far = np.zeros_like(missing)
                far[missing] = gap > GUESS_MAX_GAP_STRIDES * stride
                pick &= ~far
        log.debug("densify: %d transparent, %d badly explained; depth: rendered %d, triangulated %d, borrowed %d, "
                  "left for a later keyframe %d", int(transparent.sum()), int(wrong.sum()), rendered,
                  n_pick - rendered - n_missing, int((missing & pick).sum()), n_pick - int(pick.sum()))
        pixels = np.stack([us[pick], vs[pick]], 1).astype(np.float64)
        added = self.add_from_depth(kf, pixels, d[pick], stride=stride, opacity=0.5)
        if kf.dynamic_mask is not None and kf.group_poses:
            added += self._densify_groups(kf, us, vs, e, error, stride)
        return added

    @torch.no_grad()
    def _densify_groups(self, kf: Keyframe, us: np.ndarray, vs: np.ndarray, err: np.ndarray, error: float,
                        stride: int) -> int:
        """Grow the motion groups where ``kf``'s moving-object mask shows more of them than
        their Gaussians cover (a spinning object shows new sides) or where they explain it badly.

        Samples ``us, vs`` ``[M]`` with render errors ``err`` ``[M]``: each masked sample goes to
        the group whose render covers it most, else to the nearest group footprint; depth from
        that group's render, else its median rendered depth.
        """
        groups = sorted(g for g in kf.group_poses if bool((self.gmap.group_ids == g).any()))
        if not groups:
            return 0
        dyn = kf.dynamic_mask.numpy()[vs, us]
        alphas, depths = [], []
        for g in groups:
            out = self.render_sharp(kf, only_group=g)
            alphas.append(out.alpha[0, ..., 0].numpy())
            depths.append(out.depth[0, ..., 0].numpy())
        alpha = np.stack(alphas)  # [G, H, W]
        a = alpha[:, vs, us]  # [G, M]
        best = a.argmax(0)
        covered = a.max(0)
        pick = dyn & ((covered < self.cfg.mapping.densify_alpha) | (err > error))
        if not pick.any():
            return 0
        footprint = alpha.max(0) > 0.5
        if not footprint.any():
            return 0
        import cv2

        # samples outside every footprint: the group of the nearest footprint pixel
        _, labels = cv2.distanceTransformWithLabels((~footprint).astype(np.uint8), cv2.DIST_L2, 5,
                                                    labelType=cv2.DIST_LABEL_PIXEL)
        fy, fx = np.nonzero(footprint)
        idx = labels[vs, us] - 1
        nearest = alpha[:, fy[idx], fx[idx]].argmax(0)
        owner = np.where(covered > 0.05, best, nearest)
        added = 0
        for i, g in enumerate(groups):
            sel = pick & (owner == i)
            if not sel.any():
                continue
            depth = depths[i]
            known = (alphas[i] > 0.5) & np.isfinite(depth)
            if not known.any():
                continue
            d = np.where(known[vs[sel], us[sel]], depth[vs[sel], us[sel]], float(np.median(depth[known])))
            pixels = np.stack([us[sel], vs[sel]], 1).astype(np.float64)
            added += self.add_from_depth(kf, pixels, d, stride=stride, opacity=0.5, group_id=g)
        return added

    @torch.no_grad()
    def prune(self) -> int:
        """Remove nearly transparent Gaussians and ones larger than ``prune_scale`` of the scene."""
        if len(self.gmap) == 0:
            return 0
        m = self.cfg.mapping
        opacity = torch.sigmoid(self.gmap.opacity_logits)
        big = torch.exp(self.gmap.log_scales).max(dim=1).values > m.prune_scale * self.scene_scale
        return self.gmap.remove((opacity < m.prune_opacity) | big)


def _nearest_valid(depth: np.ndarray, us: np.ndarray, vs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Depth ``[M]`` of the nearest finite pixel of ``depth`` ``[H, W]`` for each query and the
    distance ``[M]`` (px) to it; NaN and inf if there is none."""
    valid = np.isfinite(depth)
    if not valid.any():
        return np.full(len(us), np.nan), np.full(len(us), np.inf)
    import cv2

    # distance transform with labels gives, for every pixel, the index of the nearest valid one
    dist, labels = cv2.distanceTransformWithLabels((~valid).astype(np.uint8), cv2.DIST_L2, 5,
                                                   labelType=cv2.DIST_LABEL_PIXEL)
    vy, vx = np.nonzero(valid)
    # labels enumerate zero pixels in row-major order starting at 1
    idx = labels[vs, us] - 1
    return depth[vy[idx], vx[idx]], dist[vs, us].astype(np.float64)
