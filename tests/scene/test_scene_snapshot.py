"""Map snapshots: copies that later map changes cannot reach; the store's versions and waits."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from posegs_ros.scene.gaussians import GaussianMap
from posegs_ros.scene.snapshot import MapSnapshot, MapStore


def small_map(n: int = 50) -> GaussianMap:
    gen = torch.Generator().manual_seed(0)
    gmap = GaussianMap(0, 1000)
    gmap.add(torch.rand(n, 3, generator=gen), torch.rand(n, 3, generator=gen), torch.full((n,), 0.05), opacities=0.5)
    gmap.setup_optimizers({"means": 0.01, "sh0": 0.01})
    return gmap


def test_snapshot_is_untouched_by_in_place_steps_adds_and_removes() -> None:
    gmap = small_map()
    poses = {0: np.eye(4)}
    snap = MapSnapshot.capture(gmap, poses, {0: np.zeros(6)}, version=1)
    frozen = {k: v.clone() for k, v in snap.state.items()}
    frozen_scene = [t.clone() for t in (snap.scene.means, snap.scene.scales, snap.scene.opacities, snap.scene.colors)]
    # an Adam step writes the parameters in place, as mapping does between two tracking renders
    (gmap.params["means"].sum() + gmap.params["sh0"].sum()).backward()
    gmap.step()
    with torch.no_grad():
        gmap.params["means"].add_(1.0)
    gmap.add(torch.zeros(5, 3), torch.zeros(5, 3), torch.full((5,), 0.1))
    gmap.remove(torch.arange(len(gmap)) < 10)
    poses[0][0, 3] = 7.0  # the caller's pose array changes too
    for name, value in frozen.items():
        assert torch.equal(snap.state[name], value), name
    for before, now in zip(frozen_scene, (snap.scene.means, snap.scene.scales, snap.scene.opacities, snap.scene.colors)):
        assert torch.equal(before, now)
    assert snap.keyframe_poses[0][0, 3] == 0.0
    assert snap.num_gaussians == 50 and snap.scene.means.data_ptr() != gmap.means.data_ptr()


def test_activated_scene_matches_the_map() -> None:
    gmap = small_map()
    snap = MapSnapshot.capture(gmap, {}, {}, version=3)
    act = gmap.activated()
    assert torch.allclose(snap.scene.scales, act["scales"]) and torch.allclose(snap.scene.opacities, act["opacities"])
    assert torch.equal(snap.scene.group_ids, gmap.group_ids)


def test_store_versions_increase_and_waiters_wake() -> None:
    store = MapStore()
    assert store.latest() is None
    gmap = small_map(5)
    first = MapSnapshot.capture(gmap, {}, {}, version=store.next_version())
    store.publish(first)
    assert store.wait_newer(first.version, timeout=0.0) is first  # nothing newer: returns the latest at once
    seen: list[int] = []
    ready = threading.Event()

    def reader() -> None:
        ready.set()
        snap = store.wait_newer(first.version, timeout=30.0)
        seen.append(snap.version)

    thread = threading.Thread(target=reader)
    thread.start()
    ready.wait()
    second = MapSnapshot.capture(gmap, {}, {}, version=store.next_version())
    store.publish(second)
    thread.join(30.0)
    assert seen == [second.version] and second.version > first.version
    with pytest.raises(ValueError, match="older"):
        store.publish(first)
    store.clear()
    assert store.latest() is None and store.next_version() > second.version
