"""The numba CPU rasterizer against its PyTorch twin: outputs and every gradient."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from render_scenes import Scene, loss_weights, random_scene

from posegs_ros.render import RENDER_MODES, rasterize

LEAF_NAMES = ("means", "quats", "scales", "opacities", "colors", "viewmats", "backgrounds")


def render_and_grad(scene: Scene, backend: str, mode: str, packed: bool = True) -> tuple[torch.Tensor, ...]:
    s = scene.clone()
    colors, alphas, meta = rasterize(
        *s.args(), backgrounds=s.backgrounds, sh_degree=s.sh_degree, render_mode=mode, packed=packed, backend=backend
    )
    loss = (colors * loss_weights(colors.shape, 1)).sum() + (alphas * loss_weights(alphas.shape, 2)).sum()
    if meta["means2d"].requires_grad:
        meta["means2d"].retain_grad()
    grads = torch.autograd.grad(loss, s.leaves(), allow_unused=True, materialize_grads=True)
    return (colors.detach(), alphas.detach(), *grads)


def assert_match(fast: torch.Tensor, ref: torch.Tensor, what: str) -> None:
    scale = float(ref.abs().max()) if ref.numel() else 0.0
    torch.testing.assert_close(fast, ref, rtol=1e-3, atol=1e-4 * scale + 1e-6, msg=lambda m: f"{what}: {m}")


SCENES = {
    "rgb": dict(seed=0),
    "backgrounds-3cams": dict(seed=1, backgrounds=True, n_cams=3),
    "sh3": dict(seed=2, sh_degree=3),
    "sh1-backgrounds": dict(seed=3, sh_degree=1, backgrounds=True),
    "per-camera-colors": dict(seed=4, per_camera_colors=True, backgrounds=True),
    # the reconstruction engine's call: SH0 colours, backgrounds, several sub-exposure cameras
    "sh0-backgrounds-3cams": dict(seed=9, sh_degree=0, backgrounds=True, n_cams=3),
}
# every render mode on the plain scene, the other scenes with the modes that stress them
CASES = [("rgb", mode) for mode in RENDER_MODES] + [
    ("backgrounds-3cams", "RGB+ED"),
    ("backgrounds-3cams", "D"),
    ("sh3", "RGB"),
    ("sh3", "RGB+D"),
    ("sh1-backgrounds", "RGB+ED"),
    ("per-camera-colors", "RGB"),
    ("sh0-backgrounds-3cams", "RGB+ED"),
]


@pytest.mark.parametrize(("scene_name", "mode"), CASES, ids=[f"{a}-{b}" for a, b in CASES])
def test_outputs_and_gradients_match_reference(scene_name: str, mode: str) -> None:
    scene = random_scene(**SCENES[scene_name])
    fast = render_and_grad(scene, "cpu", mode)
    ref = render_and_grad(scene, "reference", mode)
    assert_match(fast[0], ref[0], f"{mode} colors")
    assert_match(fast[1], ref[1], f"{mode} alphas")
    for name, g_fast, g_ref in zip(LEAF_NAMES, fast[2:], ref[2:]):
        unused = mode in ("D", "ED") and name in ("colors", "backgrounds")
        assert unused or g_ref.abs().max() > 0, f"{name} has no gradient"
        assert_match(g_fast, g_ref, f"{mode} d/d{name}")


def test_scene_exercises_the_hard_cases() -> None:
    """The shared scene really has culled, off-screen, sub-pixel, huge and saturated Gaussians."""
    scene = random_scene(0)
    colors, alphas, meta = rasterize(*scene.args(), packed=False, backend="cpu")
    radii = meta["radii"]
    visible = (radii > 0).all(-1)
    assert not visible.all(), "some Gaussians are culled"
    assert (meta["depths"][~visible] == 0).all()
    assert alphas.max() > 1 - 2e-4, "some pixel reaches the early-stop transmittance"
    assert (radii.max() > max(scene.width, scene.height) // 2), "a huge Gaussian covers most of the image"
    m2d = meta["means2d"][visible]
    assert ((m2d[:, 0] < 0) | (m2d[:, 0] > scene.width)).any(), "a visible Gaussian is centred off-screen"


@pytest.mark.parametrize("packed", [False, True])
def test_meta_matches_reference(packed: bool) -> None:
    scene = random_scene(5, backgrounds=True)
    _, _, m_fast = rasterize(*scene.args(), packed=packed, backend="cpu")
    _, _, m_ref = rasterize(*scene.args(), packed=packed, backend="reference")
    if packed:
        assert torch.equal(m_fast["camera_ids"], m_ref["camera_ids"])
        assert torch.equal(m_fast["gaussian_ids"], m_ref["gaussian_ids"])
    assert m_fast["radii"].dtype == torch.int32 and m_fast["radii"].shape == m_ref["radii"].shape
    # ceil() may land on the other side of an integer for one entry in a million
    assert (m_fast["radii"] - m_ref["radii"]).abs().max() <= 1
    for key in ("means2d", "depths", "conics", "opacities"):
        assert m_fast[key].shape == m_ref[key].shape, key
        assert_match(m_fast[key], m_ref[key], key)


def test_means2d_gradient_is_exposed() -> None:
    """``meta["means2d"].grad`` works as with gsplat (densification statistics)."""
    grads = {}
    for backend in ("cpu", "reference"):
        s = random_scene(6).clone()
        colors, _, meta = rasterize(*s.args(), packed=False, backend=backend)
        meta["means2d"].retain_grad()
        (colors * loss_weights(colors.shape, 3)).sum().backward()
        grads[backend] = meta["means2d"].grad
    assert grads["cpu"] is not None and grads["cpu"].shape == (2, 400, 2)
    assert_match(grads["cpu"], grads["reference"], "means2d.grad")


def test_wide_features_render_in_channel_groups() -> None:
    """D = 9 feature channels (three 4-channel groups in the kernels) with backgrounds."""
    scene = random_scene(7, backgrounds=False)
    g = torch.Generator().manual_seed(7)
    scene.colors = torch.rand(scene.means.shape[0], 9, generator=g)
    scene.backgrounds = torch.rand(2, 9, generator=g)
    fast = render_and_grad(scene, "cpu", "RGB+ED")
    ref = render_and_grad(scene, "reference", "RGB+ED")
    for name, a, b in zip(("colors", "alphas", *LEAF_NAMES), fast, ref):
        assert_match(a, b, name)


def test_float64_inputs_give_float64_outputs() -> None:
    scene = random_scene(8).clone(torch.float64)
    colors, alphas, meta = rasterize(*scene.args(), backend="cpu")
    assert colors.dtype == alphas.dtype == meta["means2d"].dtype == torch.float64
    colors.sum().backward()
    assert scene.means.grad is not None and scene.means.grad.dtype == torch.float64


def test_pose_only_gradients_match_full_gradients() -> None:
    """With only the viewmats requiring grad (pose tracking), the CPU path skips the
    per-Gaussian gradients and gives the same viewmat gradient bit for bit."""
    scene = random_scene(10, sh_degree=0, backgrounds=True, n_cams=3)
    grads = []
    for pose_only in (False, True):
        s = scene.clone(requires_grad=False)
        leaves = [s.viewmats] if pose_only else [s.means, s.quats, s.scales, s.opacities, s.colors, s.viewmats]
        for leaf in leaves:
            leaf.requires_grad_(True)
        colors, alphas, _ = rasterize(
            *s.args(), backgrounds=s.backgrounds, sh_degree=0, render_mode="RGB+ED", backend="cpu"
        )
        loss = (colors * loss_weights(colors.shape, 1)).sum() + (alphas * loss_weights(alphas.shape, 2)).sum()
        loss.backward()
        assert s.viewmats.grad is not None and s.viewmats.grad.abs().max() > 0
        assert pose_only or s.means.grad is not None
        grads.append(s.viewmats.grad)
    assert torch.equal(grads[0], grads[1])


@pytest.mark.parametrize("cameras, gaussians", [(3, 1500), (2500, 1), (4, 0)])
def test_packing_keeps_the_visible_entries_in_row_major_order(cameras: int, gaussians: int) -> None:
    """The packing kernel (blocks on several threads) gives gsplat's packed layout: the entries
    with both radii > 0, camera by camera, with their camera and Gaussian ids and each entry's
    slot -- also when a block spans several cameras (one Gaussian) or nothing is there."""
    from posegs_ros.render.cpu import _pack_visible

    rng = np.random.default_rng(cameras)
    total = cameras * gaussians
    radii = rng.integers(0, 3, (total, 2)).astype(np.int32)
    radii[: total // 3] = np.repeat(rng.random(total // 3) > 0.5, 2).reshape(-1, 2)  # runs as well as noise
    arrays = (radii, rng.random((total, 2), dtype=np.float32), rng.random(total, dtype=np.float32),
              rng.random((total, 3), dtype=np.float32), rng.integers(0, 9, total))
    flat = np.flatnonzero((radii[:, 0] > 0) & (radii[:, 1] > 0))
    *packed, ids, elements = _pack_visible(*arrays, gaussians)
    for mine, full in zip(packed, arrays):
        assert mine.dtype == full.dtype and np.array_equal(mine, full[flat])
    assert np.array_equal(ids, np.stack((flat // max(gaussians, 1), flat % max(gaussians, 1))))
    expected = np.full(total, -1)
    expected[flat] = np.arange(len(flat))
    assert np.array_equal(elements, expected)
