"""Keyframe decisions and the sliding-window policy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from posegs_ros.camera import Intrinsics
from posegs_ros.config import KeyframeConfig
from posegs_ros.geometry import se3_exp
from posegs_ros.scene.keyframes import Keyframe, add_to_window, choose_replay, decide_keyframe, scale_twists


def test_decision_reasons() -> None:
    cfg = KeyframeConfig(min_overlap=0.8, max_parallax_px=10.0, max_interval_s=1.0)
    assert decide_keyframe(0.5, 0.0, 0.0, cfg).reason == "coverage"
    assert decide_keyframe(0.95, 12.0, 0.0, cfg).reason == "parallax"
    assert decide_keyframe(0.95, 2.0, 1.5, cfg).reason == "time"
    assert not decide_keyframe(0.95, 2.0, 0.5, cfg).is_keyframe


def test_window_slides_oldest_out() -> None:
    window: tuple[int, ...] = ()
    removed_all: list[int] = []
    for kf in range(7):
        window, removed = add_to_window(window, kf, size=3)
        removed_all += removed
        assert len(window) <= 3
    assert window == (4, 5, 6)
    assert removed_all == [0, 1, 2, 3]
    assert add_to_window(window, 6, 3) == (window, ())
    with pytest.raises(ValueError):
        add_to_window((), 0, 0)


def test_replay_schedule_is_periodic_and_deterministic() -> None:
    frozen = (0, 1, 2)
    picks = [choose_replay(frozen, r, 3, np.random.default_rng(0)) for r in range(6)]
    assert [p is not None for p in picks] == [False, False, True, False, False, True]
    assert choose_replay((), 2, 3, np.random.default_rng(0)) is None
    again = [choose_replay(frozen, r, 3, np.random.default_rng(0)) for r in range(6)]
    assert picks == again


def test_keyframe_fold_applies_scaled_correction() -> None:
    kf = Keyframe(0, 0.0, torch.zeros(4, 4, 3), Intrinsics(10, 10, 2, 2, 4, 4), torch.eye(4, dtype=torch.float64),
                  torch.zeros(6, dtype=torch.float64), unit=torch.tensor([2.0] * 3 + [1.0] * 3, dtype=torch.float64))
    kf.delta = torch.tensor([0.1, 0, 0, 0, 0, 0.05], dtype=torch.float64)
    expected = se3_exp(kf.delta * kf.unit)
    kf.fold()
    assert torch.allclose(kf.pose, expected)
    assert torch.count_nonzero(kf.delta) == 0
    assert kf.pose[0, 3].item() == pytest.approx(0.2, rel=1e-2)


def test_scale_twists_scales_camera_and_group_twists_in_place_keeping_them_trainable() -> None:
    twist = torch.tensor([0.1, 0.0, 0.0, 0.01, -0.02, 0.0], dtype=torch.float64, requires_grad=True)
    group = torch.tensor([0.0, 0.2, 0.0, 0.0, 0.0, 0.03], dtype=torch.float64)
    kf = Keyframe(0, 0.0, torch.zeros(4, 4, 3), Intrinsics(10, 10, 2, 2, 4, 4), torch.eye(4, dtype=torch.float64),
                  twist, group_poses={1: torch.eye(4, dtype=torch.float64)}, group_twists={1: group})
    scale_twists([kf], 1.5)
    assert kf.twist_u is twist and twist.requires_grad  # the optimizer's tensor, moved in place
    np.testing.assert_allclose(kf.twist_u.detach().numpy(), [0.15, 0, 0, 0.015, -0.03, 0])
    np.testing.assert_allclose(kf.group_twists[1].numpy(), [0, 0.3, 0, 0, 0, 0.045])
