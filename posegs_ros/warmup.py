"""Warm-up: compile (or load from numba's disk cache) every kernel and import every module the
first camera frames need, before a live system says it is ready.

The first call of each numba kernel compiles it (tens of seconds in a fresh installation, well
under a second from the cache afterwards) and the first Adam optimizer imports parts of torch
that take seconds; a live camera would lose those frames.  :func:`warm_up` runs the whole
engine -- initialization, tracking, a keyframe, mapping rounds with their backward passes --
on a tiny made-up sequence, in the caller's thread. :func:`compile_kernels` covers only the
numba kernels of rendering (forward and backward) and pose solving, on a made-up Gaussian
wall, without the synthetic-scene ray caster: ``posegs demo`` runs it in another process while
it synthesizes its sequence.
"""

from __future__ import annotations

import logging
import time

from .config import PosegsConfig, apply_flat

__all__ = ["KERNEL_GROUPS", "compile_kernels", "warm_up"]

log = logging.getLogger(__name__)

# small and quick: the point is to run every code path once, not to reconstruct well
_WARM_UP = {
    "init.min_parallax_px": 1.0,
    "init.min_inliers": 30,
    "init.seed_points": 600,
    "init.mapping_rounds": 1,
    "mapping.gaussian_iters": 2,
    "mapping.pose_iters": 1,
    "mapping.joint_iters": 1,
    "keyframes.max_interval_s": 0.05,
    "mapping.final_iters": 0,
}


KERNEL_GROUPS = ("render", "pose")


def compile_kernels(config: PosegsConfig | None = None, groups: tuple[str, ...] = KERNEL_GROUPS) -> float:
    """Compile (or load from numba's disk cache) the engine's numba kernels, without the
    synthetic-scene ray caster. ``groups``: "render" = one blurred render with gradients of
    every Gaussian parameter and of the pose (96x72, a random wall of Gaussians); "pose" = the
    Gauss-Newton pose solver with its photometric term and the SE(3) log / exp. The groups share
    no kernel, so separate processes can compile them at once. Returns seconds."""
    import numpy as np

    start = time.perf_counter()
    cfg = config or PosegsConfig()
    unknown = set(groups) - set(KERNEL_GROUPS)
    if unknown:
        raise ValueError(f"unknown kernel group(s) {sorted(unknown)}: use {KERNEL_GROUPS}")
    if "render" in groups:
        import torch

        from .camera import Intrinsics
        from .geometry import se3_exp
        from .scene.blur import RenderSettings, SceneTensors, render_exposure
        from .scene.loss import photometric_loss
        from .scene.gaussians import rgb_to_sh0

        gen = torch.Generator().manual_seed(0)
        intr = Intrinsics(80.0, 80.0, 47.5, 35.5, 96, 72)
        u, v = torch.meshgrid(torch.linspace(-1.4, 1.4, 48), torch.linspace(-1.0, 1.0, 36), indexing="ij")
        n = u.numel()
        means = torch.stack([u.ravel(), v.ravel(), 2.0 + 0.2 * torch.rand(n, generator=gen)], 1)
        params = [means, torch.tensor([[1.0, 0.0, 0.0, 0.0]]).repeat(n, 1), torch.full((n, 3), 0.03),
                  torch.full((n,), 0.9), rgb_to_sh0(torch.rand(n, 3, generator=gen))[:, None, :]]
        for t in params:
            t.requires_grad_(True)
        scene = SceneTensors(*params, torch.zeros(n, dtype=torch.long))
        delta = torch.zeros(6, dtype=torch.float64, requires_grad=True)
        twist = torch.tensor([0.01, 0.0, 0.0, 0.0, 0.005, 0.0], dtype=torch.float64, requires_grad=True)
        pred, _ = render_exposure(scene, se3_exp(delta), twist, intr.matrix(torch.float64),
                                  RenderSettings(intr.width, intr.height, backend=cfg.render.backend), 3)
        mask = torch.ones(pred.shape[:2], dtype=torch.bool)
        photometric_loss(pred, pred.detach().roll(1, 1), cfg.mapping.ssim_weight, mask,
                         cfg.mapping.gradient_weight).backward()
    if "pose" in groups:
        from .tracking import _pose_kernels
        from .tracking.pose_solver import PhotometricTerm, solve_pose

        rng = np.random.default_rng(0)
        k = np.array([[80.0, 0.0, 47.5], [0.0, 80.0, 35.5], [0.0, 0.0, 1.0]])
        points = np.c_[rng.uniform(-1, 1, (200, 2)), rng.uniform(1.5, 2.5, 200)]
        targets = points[:, :2] / points[:, 2:] * 80.0 + [48.0, 36.0]
        image = rng.random((72, 96)).astype(np.float32)
        term = PhotometricTerm(points, rng.random(200), image, image.copy(), image.copy())
        solve_pose(points, targets, k, np.eye(4), photometric=term, image_size=(96, 72), iterations=2)
        _pose_kernels.se3_exp(_pose_kernels.se3_log(np.eye(4)))
    seconds = time.perf_counter() - start
    log.info("kernels (%s) compiled or loaded in %.1f s", ", ".join(groups), seconds)
    return seconds


def warm_up(config: PosegsConfig | None = None, frames: int = 8) -> float:
    """Run the engine of ``config`` (render backend, flow, blur, dynamic settings) on a tiny
    synthetic sequence; returns the seconds it took."""
    from .pipeline import Frame, Reconstructor
    from .tools.synth import SynthConfig, generate

    start = time.perf_counter()
    cfg = apply_flat(config or PosegsConfig(), _WARM_UP)
    seq = generate(SynthConfig(seed=0, frames=frames, width=96, height=72, supersample=1, subframes=3,
                               dynamic=cfg.dynamic.enabled))
    engine = Reconstructor(cfg)
    try:
        for f in seq.frames:
            result = engine.process(Frame(f.blurred, f.stamp, seq.intrinsics, f.index))
            if result.has_pose:
                result.deblurred()
    finally:
        engine.close()
    seconds = time.perf_counter() - start
    log.info("warm-up: kernels compiled or loaded and the engine exercised in %.1f s", seconds)
    return seconds
