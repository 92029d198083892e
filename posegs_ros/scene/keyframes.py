"""Keyframes and the sliding-window policy (pure functions, MonoGS's habit).

A keyframe stores its (blurred) observation, its mid-exposure pose, exposure twist and affine
exposure (gain and bias of the camera's auto-exposure relative to the map).  Poses
are optimized as small body-frame corrections ``pose @ exp(delta)`` that are folded back into
``pose`` after each mapping round.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from ..camera import Intrinsics
from ..config import KeyframeConfig
from ..geometry import se3_exp

__all__ = ["Keyframe", "KeyframeDecision", "decide_keyframe", "add_to_window", "choose_replay", "scale_twists"]


@dataclass
class Keyframe:
    """One keyframe of the map."""

    frame_index: int
    stamp: float
    image: Tensor  # [H, W, 3] float in [0, 1], the observed (blurred) frame
    intrinsics: Intrinsics
    pose: Tensor  # [4, 4] float64 mid-exposure camera-to-map
    twist_u: Tensor  # [6] float64 exposure twist in units of ``unit`` (optimized directly)
    # [6] float64 second-order term of the exposure path (map units, not optimized): T exp(s d + s^2 bend);
    # None = a straight path (online; offline it comes from the neighbouring poses, blur.final_bend)
    bend: Tensor | None = None
    fixed: bool = False  # gauge keyframe: its pose is never optimized online (the final refinement frees it)
    dynamic_mask: Tensor | None = None  # [H, W] bool, pixels of moving objects
    # [H, W] bool, pixels kept out of the loss and of densification although no motion group
    # covers them (what moved between the two initialization frames, before any group existed)
    unexplained: Tensor | None = None
    group_poses: dict[int, Tensor] = field(default_factory=dict)  # group -> [4, 4] M_g: group frame -> map
    group_twists: dict[int, Tensor] = field(default_factory=dict)  # group -> [6] exposure twist (group frame)
    group_deltas: dict[int, Tensor] = field(default_factory=dict)  # group -> [6] pending correction
    delta: Tensor = field(default_factory=lambda: torch.zeros(6, dtype=torch.float64))  # [6] pending correction
    unit: Tensor = field(default_factory=lambda: torch.ones(6, dtype=torch.float64))  # [6] units of delta
    # [2] affine exposure (log gain a, bias b): the camera recorded exp(a) * radiance + b (auto-exposure,
    # white level); zero = the map's own brightness (the gauge keyframe keeps it)
    exposure: Tensor = field(default_factory=lambda: torch.zeros(2, dtype=torch.float64))

    def excluded(self, with_groups: bool = False) -> Tensor | None:
        """``[H, W]`` bool pixels the static map must not learn from: the moving objects (also
        those rendered by their motion groups when ``with_groups``) and :attr:`unexplained`;
        None if none."""
        parts = [m for m in (self.dynamic_mask if with_groups or not self.group_poses else None, self.unexplained)
                 if m is not None]
        if not parts:
            return None
        return parts[0] if len(parts) == 1 else parts[0] | parts[1]

    def current_pose(self) -> Tensor:
        """``pose @ exp(delta * unit)`` ``[4, 4]`` (differentiable in ``delta``)."""
        return self.pose @ se3_exp(self.delta * self.unit)

    def current_group_pose(self, group: int) -> Tensor:
        """``M_g @ exp(delta_g * unit)`` ``[4, 4]`` (differentiable in the group's correction)."""
        delta = self.group_deltas.get(group)
        pose = self.group_poses[group]
        return pose if delta is None else pose @ se3_exp(delta * self.unit)

    def twist(self) -> Tensor:
        """Exposure twist ``[6]`` in map units (differentiable in ``twist_u``)."""
        return self.twist_u * self.unit

    def observed(self, rgb: Tensor) -> Tensor:
        """Map radiance ``[..., 3]`` as this keyframe's camera recorded it (differentiable in ``exposure``)."""
        gain, bias = torch.exp(self.exposure[0]), self.exposure[1]
        return rgb * gain.to(rgb.dtype) + bias.to(rgb.dtype)

    def radiance(self, rgb: Tensor) -> Tensor:
        """Recorded colours ``[..., 3]`` back in the map's brightness (inverse of :meth:`observed`)."""
        gain, bias = torch.exp(self.exposure[0].detach()), self.exposure[1].detach()
        return (rgb - bias.to(rgb.dtype)) / gain.to(rgb.dtype)

    def fold(self) -> None:
        """Fold the optimized correction into ``pose`` and reset it."""
        with torch.no_grad():
            new_pose = self.current_pose().detach()
            if torch.isfinite(new_pose).all():
                self.pose = new_pose
        self.delta = torch.zeros(6, dtype=torch.float64)
        self.twist_u = self.twist_u.detach()
        self.exposure = self.exposure.detach()
        with torch.no_grad():
            for g in list(self.group_deltas):
                if g in self.group_poses:
                    new = self.current_group_pose(g).detach()
                    if torch.isfinite(new).all():
                        self.group_poses[g] = new
            self.group_twists = {g: t.detach() for g, t in self.group_twists.items()}
        self.group_deltas = {}

    def numpy_pose(self) -> np.ndarray:
        return self.pose.detach().cpu().numpy().astype(np.float64)


@dataclass(frozen=True)
class KeyframeDecision:
    is_keyframe: bool
    reason: str  # "coverage", "parallax", "time" or "" when not a keyframe


def decide_keyframe(coverage: float, parallax_px: float, seconds_since_keyframe: float, cfg: KeyframeConfig) -> KeyframeDecision:
    """A frame becomes a keyframe when the map covers too little of it, when it has moved far
    from the last keyframe (median translational parallax), or when the last keyframe is too old."""
    if coverage < cfg.min_overlap:
        return KeyframeDecision(True, "coverage")
    if parallax_px > cfg.max_parallax_px:
        return KeyframeDecision(True, "parallax")
    if seconds_since_keyframe > cfg.max_interval_s:
        return KeyframeDecision(True, "time")
    return KeyframeDecision(False, "")


def add_to_window(window: tuple[int, ...], new: int, size: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Append keyframe id ``new`` to the window of at most ``size`` ids; returns (window, removed).

    The oldest keyframes leave first; removed ones are frozen (kept in the map, replayed now
    and then so the map does not forget them).
    """
    if size < 1:
        raise ValueError(f"window size must be >= 1, got {size}")
    if new in window:
        return window, ()
    grown = window + (new,)
    excess = max(len(grown) - size, 0)
    return grown[excess:], grown[:excess]


def choose_replay(frozen: tuple[int, ...], mapping_round: int, every: int, rng: np.random.Generator) -> int | None:
    """Every ``every``-th mapping round, one frozen keyframe (uniformly at random) is replayed."""
    if not frozen or every <= 0 or mapping_round % every != every - 1:
        return None
    return int(frozen[int(rng.integers(len(frozen)))])


def scale_twists(keyframes: list[Keyframe], factor: float) -> None:
    """Scale every keyframe's exposure twists (camera and motion groups) by ``factor`` in place
    (a changed exposure time: the streaks scale with it; a path's bend with its square); optimizer
    state is kept."""
    with torch.no_grad():
        for kf in keyframes:
            kf.twist_u.mul_(factor)
            if kf.bend is not None:
                kf.bend.mul_(factor * factor)  # second order in the exposure time
            for twist in kf.group_twists.values():
                twist.mul_(factor)
