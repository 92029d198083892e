"""The synthetic ray caster: exact depth, face culling, texture orientation, mip-mapped minification."""

from __future__ import annotations

import numpy as np
import pytest

from posegs_ros.camera import Intrinsics
from posegs_ros.tools.scene import Quads, Scene, TextureAtlas, box_quads, look_at

K = Intrinsics(40.0, 40.0, 15.5, 11.5, 32, 24)


def _atlas(size: int = 64) -> TextureAtlas:
    """Texture 0: left half red, right half blue, top rows green; texture 1: fine checkerboard."""
    half = np.zeros((size, size, 3), np.float32)
    half[:, : size // 2, 0] = 1.0
    half[:, size // 2 :, 2] = 1.0
    half[: size // 8, :, :] = [0.0, 1.0, 0.0]
    checker = ((np.indices((size, size)).sum(axis=0) % 2)[:, :, None] * np.ones(3)).astype(np.float32)
    return TextureAtlas.from_images(["halves", "checker"], [half, checker])


def _wall(distance: float, texture: int, tile: float) -> Scene:
    """A 4 x 4 m wall facing a camera at the origin that looks along +y (world z up)."""
    quads = box_quads(np.array([-2.0, distance, -2.0]), np.array([2.0, distance + 1.0, 2.0]), texture, (tile, tile))
    return Scene(quads, _atlas(), background=0.25)


def test_depth_is_exact_z_depth_at_pixel_centres() -> None:
    camera = look_at(np.zeros(3), np.array([0.0, 1.0, 0.0]))
    out = _wall(2.5, 0, 4.0).render(K, camera, with_depth=True)
    np.testing.assert_allclose(out.depth, 2.5, rtol=1e-5)
    assert (out.body == 0).all()
    tilted = look_at(np.zeros(3), np.array([0.3, 1.0, 0.0]))  # wall now oblique: depth varies
    oblique = _wall(2.5, 0, 4.0).render(K, tilted, with_depth=True).depth
    v, u = 11, 3
    ray = tilted[:3, :3] @ np.array([(u - K.cx) / K.fx, (v - K.cy) / K.fy, 1.0])
    assert oblique[v, u] == pytest.approx(2.5 / ray[1], rel=1e-5)


def test_faces_are_visible_from_one_side_only() -> None:
    camera = look_at(np.zeros(3), np.array([0.0, 1.0, 0.0]))
    around_camera = box_quads(np.array([-1.0, -1.0, -1.0]), np.array([1.0, 1.0, 1.0]), 0, (1.0, 1.0))
    out = Scene(around_camera, _atlas(), background=0.25).render(K, camera, with_depth=True)
    assert np.allclose(out.rgb, 0.25) and (out.body == -1).all()  # outside-facing box seen from inside
    room = box_quads(np.array([-1.0, -1.0, -1.0]), np.array([1.0, 1.0, 1.0]), 0, (1.0, 1.0), inside=True)
    assert (Scene(room, _atlas()).render(K, camera, with_depth=True).body == 0).all()


def test_textures_stand_upright_and_unmirrored() -> None:
    camera = look_at(np.zeros(3), np.array([0.0, 1.0, 0.0]))
    rgb = _wall(2.0, 0, 4.0).render(K, camera, supersample=3).rgb  # one tile covers the wall
    # the camera sees x in [-0.8, 0.8] m, z in [-0.6, 0.6] m of the wall: left of centre is red
    assert rgb[12, 2, 0] > 0.9 and rgb[12, 2, 2] < 0.1
    assert rgb[12, 29, 2] > 0.9 and rgb[12, 29, 0] < 0.1
    # 2 m tiles start at the wall's top edge (z = 2): a tile's top (green band, 0.25 m) begins at
    # z = 0, i.e. just below the image centre; above it is the bottom of the tile above (red)
    tiles = _wall(2.0, 0, 2.0).render(K, camera, supersample=3).rgb
    assert tiles[14, 16, 1] > 0.9 and tiles[8, 16, 1] < 0.1 and tiles[8, 16, 0] > 0.9


def test_minified_checkerboard_is_filtered_not_aliased() -> None:
    camera = look_at(np.zeros(3), np.array([0.0, 1.0, 0.0]))
    far = _wall(3.0, 1, 0.05).render(K, camera).rgb  # ~64 texels per pixel
    assert abs(far.mean() - 0.5) < 0.02 and far.std() < 0.02  # mip-mapped grey, no moire


def test_quads_concat_and_dynamic_bodies_need_an_object_pose() -> None:
    static = box_quads(np.zeros(3), np.ones(3), 0, (1.0, 1.0))
    moving = box_quads(-np.ones(3) / 4, np.ones(3) / 4, 1, (0.5, 0.5), body=1)
    both = Quads.concat([static, moving])
    assert len(both) == 12 and both.body.tolist() == [0] * 6 + [1] * 6
    scene = Scene(both, _atlas())
    with pytest.raises(ValueError, match="object_pose"):
        scene.render(K, np.eye(4))
    object_pose = np.eye(4)
    object_pose[:3, 3] = [0.0, 0.0, 2.0]  # in front of an identity camera (optical z forward)
    out = scene.render(K, np.eye(4), object_pose, with_depth=True)
    assert out.body[12, 16] == 1 and out.depth[12, 16] == pytest.approx(1.75)
