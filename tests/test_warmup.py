"""Warm-up: the kernels a first camera frame needs are compiled (or loaded) beforehand."""

from __future__ import annotations

import pytest

from posegs_ros.config import PosegsConfig
from posegs_ros.warmup import KERNEL_GROUPS, compile_kernels, warm_up


def test_compile_kernels_runs_each_group_alone_and_rejects_unknown_ones() -> None:
    for group in KERNEL_GROUPS:
        assert compile_kernels(PosegsConfig(), (group,)) > 0.0
    with pytest.raises(ValueError, match="unknown kernel group"):
        compile_kernels(PosegsConfig(), ("gpu",))


def test_warm_up_exercises_the_whole_engine() -> None:
    assert warm_up(PosegsConfig(), frames=6) > 0.0
