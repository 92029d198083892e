"""Known answers, edge cases, determinism and the API contract of ``rasterize``."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
from render_scenes import loss_weights, random_scene

from posegs_ros.render import rasterize, resolve_backend
from posegs_ros.render._common import ALPHA_THRESHOLD

BACKENDS = ("cpu", "reference")


def single_gaussian(opacity: float = 0.6, sigma_world: float = 0.05, depth: float = 2.0):
    """One isotropic Gaussian straight ahead; its projected mean is a pixel centre."""
    means = torch.tensor([[0.0, 0.0, depth]])
    quats = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    scales = torch.full((1, 3), sigma_world)
    opacities = torch.tensor([opacity])
    colors = torch.tensor([[0.2, 0.5, 0.9]])
    viewmats = torch.eye(4)[None]
    # 33 x 31 image, principal point at the centre of pixel (16, 15)
    ks = torch.tensor([[40.0, 0.0, 16.5], [0.0, 40.0, 15.5], [0.0, 0.0, 1.0]])[None]
    return means, quats, scales, opacities, colors, viewmats, ks, 33, 31


@pytest.mark.parametrize("backend", BACKENDS)
def test_single_gaussian_known_answer(backend: str) -> None:
    means, quats, scales, opac, colors, viewmats, ks, w, h = single_gaussian()
    bg = torch.tensor([[0.1, 0.1, 0.1]])
    out, alphas, meta = rasterize(
        means, quats, scales, opac, colors, viewmats, ks, w, h, backgrounds=bg, packed=False, backend=backend
    )
    var2d = (40.0 * 0.05 / 2.0) ** 2 + 0.3  # (f s / z)^2 + eps2d
    # centre pixel: sigma = 0, alpha = opacity
    assert alphas[0, 15, 16, 0].item() == pytest.approx(0.6, abs=1e-6)
    assert out[0, 15, 16].tolist() == pytest.approx((0.6 * colors[0] + 0.4 * bg[0]).tolist(), abs=1e-6)
    # one pixel to the right: alpha = o exp(-1 / (2 var))
    assert alphas[0, 15, 17, 0].item() == pytest.approx(0.6 * math.exp(-0.5 / var2d), abs=1e-6)
    # far away: background only
    assert alphas[0, 0, 0, 0].item() == 0.0
    assert out[0, 0, 0].tolist() == pytest.approx(bg[0].tolist(), abs=1e-7)
    # meta: projection of a known Gaussian
    extend = min(3.33, math.sqrt(2.0 * math.log(0.6 / ALPHA_THRESHOLD)))
    radius = math.ceil(extend * math.sqrt(var2d))
    assert meta["radii"].dtype == torch.int32
    assert meta["radii"][0, 0].tolist() == [radius, radius]
    assert meta["means2d"][0, 0].tolist() == pytest.approx([16.5, 15.5], abs=1e-5)
    assert meta["depths"][0, 0].item() == pytest.approx(2.0, abs=1e-6)
    assert meta["conics"][0, 0].tolist() == pytest.approx([1 / var2d, 0.0, 1 / var2d], rel=1e-5, abs=1e-7)
    assert meta["opacities"].shape == (1, 1)


@pytest.mark.parametrize("backend", BACKENDS)
def test_alpha_is_clamped_and_depth_modes(backend: str) -> None:
    means, quats, scales, _, colors, viewmats, ks, w, h = single_gaussian()
    opac = torch.tensor([1.0])
    out, alphas, _ = rasterize(means, quats, scales, opac, colors, viewmats, ks, w, h, render_mode="RGB+D",
                               backend=backend)  # fmt: skip
    assert alphas[0, 15, 16, 0].item() == pytest.approx(0.999, abs=1e-6)
    assert out[0, 15, 16, 3].item() == pytest.approx(0.999 * 2.0, abs=1e-5)  # accumulated depth
    ed, alphas_ed, _ = rasterize(means, quats, scales, opac, colors, viewmats, ks, w, h, render_mode="ED",
                                 backend=backend)  # fmt: skip
    assert ed.shape == (1, h, w, 1)
    assert ed[0, 15, 16, 0].item() == pytest.approx(2.0, abs=1e-5)  # expected depth
    assert ed[0, 0, 0, 0].item() == 0.0  # no alpha: 0 / clamp(0, 1e-10)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("packed", [False, True])
def test_everything_culled_renders_background_with_zero_gradients(backend: str, packed: bool) -> None:
    scene = random_scene(21, n=50, backgrounds=True).clone()
    with torch.no_grad():
        scene.means[:, 2] = -1.0  # all behind the cameras
    out, alphas, meta = rasterize(*scene.args(), backgrounds=scene.backgrounds, packed=packed, backend=backend)
    assert (alphas == 0).all()
    assert torch.allclose(out, scene.backgrounds[:, None, None, :].expand_as(out))
    assert (meta["radii"] == 0).all()
    (out * loss_weights(out.shape, 1)).sum().backward()
    for leaf in (scene.means, scene.quats, scene.scales, scene.opacities, scene.colors, scene.viewmats):
        assert leaf.grad is None or (leaf.grad == 0).all()
    # the background alone receives gradient: sum of the loss weights per camera
    expected = loss_weights(out.shape, 1).sum(dim=(1, 2))
    assert torch.allclose(scene.backgrounds.grad, expected, rtol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_scene(backend: str) -> None:
    scene = random_scene(22, n=8)
    empty = [x[:0] for x in scene.args()[:5]]
    bg = torch.tensor([[0.3, 0.2, 0.1], [0.0, 0.0, 1.0]])
    out, alphas, meta = rasterize(*empty, scene.viewmats, scene.Ks, 20, 10, backgrounds=bg, backend=backend)
    assert out.shape == (2, 10, 20, 3) and alphas.shape == (2, 10, 20, 1)
    assert (alphas == 0).all() and torch.equal(out, bg[:, None, None, :].expand(2, 10, 20, 3))
    assert meta["radii"].shape == (0, 2)


def _run_cpu_twice(threads: int, sh_degree: int = 1, n_cams: int = 2) -> list[torch.Tensor]:
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        scene = random_scene(23, n=600, backgrounds=True, sh_degree=sh_degree, n_cams=n_cams).clone()
        out, alphas, meta = rasterize(*scene.args(), backgrounds=scene.backgrounds, sh_degree=sh_degree,
                                      render_mode="RGB+ED", backend="cpu")  # fmt: skip
        loss = (out * loss_weights(out.shape, 5)).sum() + (alphas * loss_weights(alphas.shape, 6)).sum()
        meta["means2d"].retain_grad()
        loss.backward()
        return [out.detach(), alphas.detach(), meta["means2d"].grad] + [leaf.grad for leaf in scene.leaves()]
    finally:
        torch.set_num_threads(previous)


@pytest.mark.parametrize(("sh_degree", "n_cams"), [(1, 2), (0, 5)], ids=["sh1-2cams", "sh0-5cams"])
def test_cpu_backward_is_deterministic(sh_degree: int, n_cams: int) -> None:
    """Bit-identical outputs and gradients run to run with 2 threads, and with 1 and 3 threads
    (work is taken dynamically, so each run splits it differently)."""
    first, second = _run_cpu_twice(2, sh_degree, n_cams), _run_cpu_twice(2, sh_degree, n_cams)
    single, triple = _run_cpu_twice(1, sh_degree, n_cams), _run_cpu_twice(3, sh_degree, n_cams)
    for a, b, c, d in zip(first, second, single, triple):
        assert torch.equal(a, b)
        assert torch.equal(a, c)
        assert torch.equal(a, d)


def test_pose_gradient_through_se3() -> None:
    """A pose parameterized as a twist gets its gradient through viewmats."""
    from posegs_ros.geometry import se3_exp

    scene = random_scene(24, n=300, n_cams=1)
    twist = torch.zeros(6, requires_grad=True)
    viewmats = scene.viewmats @ se3_exp(twist)[None]
    shifted = scene.viewmats.clone()
    shifted[:, 0, 3] += 0.02
    out, _, _ = rasterize(*scene.args()[:5], shifted, scene.Ks, scene.width, scene.height, backend="cpu")
    # d loss / d twist at 0 for loss = |render(T exp(xi)) - render(shifted)|^2 points back to the shift
    render, _, _ = rasterize(*scene.args()[:5], viewmats, scene.Ks, scene.width, scene.height, backend="cpu")
    ((render - out) ** 2).sum().backward()
    assert twist.grad is not None and torch.isfinite(twist.grad).all()
    assert twist.grad[0] < 0, twist.grad


def test_bad_arguments_are_rejected() -> None:
    scene = random_scene(25, n=10)
    args = list(scene.args())
    with pytest.raises(ValueError, match="quats"):
        rasterize(args[0], args[1][:, :3], *args[2:])
    with pytest.raises(ValueError, match="render_mode"):
        rasterize(*args, render_mode="RGBD")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="SH colors"):
        rasterize(*args, sh_degree=2)
    with pytest.raises(ValueError, match="backgrounds"):
        rasterize(*args, backgrounds=torch.zeros(3))
    with pytest.raises(ValueError, match="backend"):
        rasterize(*args, backend="opengl")  # type: ignore[arg-type]


def test_backend_resolution() -> None:
    assert resolve_backend("auto", device_is_cuda=False) == "cpu"
    assert resolve_backend("auto", device_is_cuda=True) == "gsplat"
    assert resolve_backend("reference", device_is_cuda=True) == "reference"
    with pytest.raises(ValueError, match="CPU tensors"):
        resolve_backend("cpu", device_is_cuda=True)


def test_missing_gsplat_gives_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    from posegs_ros.render._gsplat import import_gsplat

    monkeypatch.setitem(sys.modules, "gsplat", None)  # makes `import gsplat` fail
    with pytest.raises(ImportError, match=r"pip install 'posegs_ros\[cuda\]'"):
        import_gsplat()


def test_import_compiles_nothing() -> None:
    """Importing the package must not import numba (kernels compile lazily, on first use)."""
    code = "import sys, posegs_ros.render; print('numba' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
