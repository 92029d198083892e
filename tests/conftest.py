"""Shared fixtures: small synthetic sequences (independent ray-cast renderer) and a fast engine config."""

from __future__ import annotations

import pytest

from posegs_ros.config import PosegsConfig, apply_flat

# Few iterations and small images: the tests check behaviour, not final quality (that is
# measured by `posegs bench` and `posegs demo`, whose numbers are in the README).
FAST_ENGINE = {
    "init.min_parallax_px": 4.0,
    "init.min_inliers": 150,
    "init.seed_points": 1500,
    "init.mapping_rounds": 1,
    "tracking.refine_steps": 2,
    "mapping.gaussian_iters": 6,
    "mapping.pose_iters": 2,
    "mapping.joint_iters": 3,
    "blur.subframes": 3,
    "mapping.final_iters": 60,
}


@pytest.fixture(scope="session")
def small_sequence():
    """24 blurred frames at 128x96 with ground truth (generated once per test session)."""
    from posegs_ros.tools.synth import SynthConfig, generate

    return generate(SynthConfig(seed=3, frames=24, width=128, height=96))


@pytest.fixture
def fast_config() -> PosegsConfig:
    return apply_flat(PosegsConfig(), FAST_ENGINE)


@pytest.fixture(scope="module")
def fast_config_module() -> PosegsConfig:
    return apply_flat(PosegsConfig(), FAST_ENGINE)


@pytest.fixture
def fast_engine_overrides() -> dict:
    """:data:`FAST_ENGINE` as dotted overrides (for CLI ``--set`` tests)."""
    return dict(FAST_ENGINE)
