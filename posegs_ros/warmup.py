"""Warm-up: compile (or load from numba's disk cache) every kernel and import every module the
first camera frames need, before a live system says it is ready.

The first call of each numba kernel compiles it (tens of seconds in a fresh installation, well
under a second from the cache afterwards) and the first Adam optimizer imports parts of torch
that take seconds; a live camera would lose those frames.  :func:`warm_up` runs the whole
engine -- initialization, tracking, a keyframe, mapping rounds with their backward passes --
on a tiny made-up sequence, in the caller's thread.
"""

from __future__ import annotations

import logging
import time

from .config import PosegsConfig, apply_flat

__all__ = ["warm_up"]

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
