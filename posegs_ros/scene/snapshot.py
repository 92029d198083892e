"""Immutable map snapshots: what tracking reads while mapping writes.

Mapping owns the :class:`~posegs_ros.scene.gaussians.GaussianMap` and the keyframes and changes
them in place (Adam steps, densify, prune, pose folds).  After each change it *publishes* a
:class:`MapSnapshot`: cloned parameters, their render-ready (activated) form and every
keyframe's current pose, stamped with an increasing version.  Readers take the latest snapshot
once per frame and use only it, so a frame never sees half of a mapping step (no torn reads),
and nobody holds a lock across an optimization: :class:`MapStore` swaps one reference under a
lock held for a few instructions (copy-on-write).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import torch
from torch import Tensor

from .blur import SceneTensors
from .gaussians import GaussianMap
from .keyframes import Keyframe

__all__ = ["MapEdit", "MapSnapshot", "MapStore"]

MapEdit = Callable[[GaussianMap, list[Keyframe]], Any]
"""A change of the map, run by the map's owner (the mapping back end) with its Gaussians and keyframes."""


@dataclass(frozen=True)
class MapSnapshot:
    """One consistent state of the map (treat every tensor and array as read-only)."""

    version: int  # increases with every publication of one map
    state: Mapping[str, Tensor]  # cloned raw parameters + "group_ids" (GaussianMap.state_dict layout)
    scene: SceneTensors  # activated, render-ready view of ``state`` (detached)
    keyframe_poses: Mapping[int, np.ndarray]  # keyframe id -> [4, 4] camera-to-map (current estimate)
    keyframe_twists: Mapping[int, np.ndarray]  # keyframe id -> [6] exposure twist (map units)
    window: tuple[int, ...] = ()  # keyframe ids in the optimization window, oldest first
    keyframe_exposures: Mapping[int, np.ndarray] = field(default_factory=dict)  # keyframe id -> [2] (log gain, bias)
    scene_scale: float = 1.0  # median scene depth at initialization (map units)
    mapping_rounds: int = 0  # window rounds completed so far
    stats: Mapping[str, float] = field(default_factory=dict)  # the mapping back end's counters

    @property
    def num_gaussians(self) -> int:
        return int(self.state["means"].shape[0])

    @property
    def num_keyframes(self) -> int:
        return len(self.keyframe_poses)

    @classmethod
    def capture(
        cls,
        gmap: GaussianMap,
        keyframe_poses: Mapping[int, np.ndarray],
        keyframe_twists: Mapping[int, np.ndarray],
        version: int,
        window: Iterable[int] = (),
        scene_scale: float = 1.0,
        mapping_rounds: int = 0,
        stats: Mapping[str, float] | None = None,
        keyframe_exposures: Mapping[int, np.ndarray] | None = None,
    ) -> MapSnapshot:
        """Copy ``gmap`` (the caller holds it still for the copy) and the given poses ``[4, 4]`` /
        twists ``[6]`` / affine exposures ``[2]``."""
        with torch.no_grad():
            state = gmap.state_dict()  # detached clones
            scene = SceneTensors(
                means=state["means"],
                quats=state["quats"],
                scales=torch.exp(state["scales"]),
                opacities=torch.sigmoid(state["opacities"]),
                colors=torch.cat([state["sh0"], state["shN"]], dim=1),
                group_ids=state["group_ids"],
            )
        return cls(
            version=version,
            state=state,
            scene=scene,
            keyframe_poses={k: np.array(v, dtype=np.float64) for k, v in keyframe_poses.items()},
            keyframe_twists={k: np.array(v, dtype=np.float64) for k, v in keyframe_twists.items()},
            window=tuple(window),
            keyframe_exposures={k: np.array(v, dtype=np.float64) for k, v in (keyframe_exposures or {}).items()},
            scene_scale=float(scene_scale),
            mapping_rounds=int(mapping_rounds),
            stats=dict(stats or {}),
        )


class MapStore:
    """Holds the latest :class:`MapSnapshot`; any thread reads, the map's owner publishes."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._latest: MapSnapshot | None = None
        self._version = 0

    def next_version(self) -> int:
        """A fresh version number (increasing for the store's lifetime, across new maps)."""
        with self._cond:
            self._version += 1
            return self._version

    def publish(self, snapshot: MapSnapshot) -> None:
        """Make ``snapshot`` the latest (its version must not go backwards)."""
        with self._cond:
            if self._latest is not None and snapshot.version < self._latest.version:
                raise ValueError(f"snapshot version {snapshot.version} is older than {self._latest.version}")
            self._latest = snapshot
            self._cond.notify_all()

    def latest(self) -> MapSnapshot | None:
        """The newest snapshot (None before the first publication)."""
        with self._cond:
            return self._latest

    def wait_newer(self, version: int, timeout: float | None = None) -> MapSnapshot | None:
        """Block until a snapshot newer than ``version`` is published (or ``timeout`` s pass);
        returns the latest snapshot either way (None if there is none)."""
        with self._cond:
            self._cond.wait_for(lambda: self._latest is not None and self._latest.version > version, timeout)
            return self._latest

    def clear(self) -> None:
        """Forget the snapshot (a new map starts; versions keep increasing)."""
        with self._cond:
            self._latest = None
            self._cond.notify_all()
