"""SO(3)/SE(3)/Sim(3) maths: round trips, stability near 0 and pi, gradients."""

from __future__ import annotations

import math

import pytest
import torch

from posegs_ros import geometry as g


def random_rotvecs(n: int, gen: torch.Generator, max_angle: float = math.pi) -> torch.Tensor:
    axis = torch.randn(n, 3, generator=gen, dtype=torch.float64)
    axis = axis / axis.norm(dim=-1, keepdim=True)
    angle = torch.rand(n, 1, generator=gen, dtype=torch.float64) * max_angle
    return axis * angle


@pytest.mark.parametrize("angle", [0.0, 1e-9, 1e-5, 1e-3, 0.3, 2.0, math.pi - 1e-3, math.pi - 1e-7])
def test_so3_exp_log_round_trip_across_angles(angle: float) -> None:
    gen = torch.Generator().manual_seed(0)
    axis = torch.randn(16, 3, generator=gen, dtype=torch.float64)
    phi = axis / axis.norm(dim=-1, keepdim=True) * angle
    r = g.so3_exp(phi)
    assert torch.allclose(r @ r.transpose(-1, -2), torch.eye(3, dtype=torch.float64).expand(16, 3, 3), atol=1e-12)
    assert torch.allclose(torch.det(r), torch.ones(16, dtype=torch.float64))
    back = g.so3_log(r)
    # near pi, phi and -phi are the same rotation
    assert torch.allclose(g.so3_exp(back), r, atol=1e-9)
    if angle < math.pi - 1e-2:
        assert torch.allclose(back, phi, atol=1e-9)


def test_so3_log_at_exactly_pi() -> None:
    for axis in torch.eye(3, dtype=torch.float64):
        r = g.so3_exp(axis * math.pi)
        phi = g.so3_log(r)
        assert phi.norm().item() == pytest.approx(math.pi, abs=1e-9)
        assert torch.allclose(g.so3_exp(phi), r, atol=1e-12)


def test_so3_exp_matches_matrix_exponential() -> None:
    gen = torch.Generator().manual_seed(1)
    phi = random_rotvecs(32, gen)
    assert torch.allclose(g.so3_exp(phi), torch.linalg.matrix_exp(g.hat(phi)), atol=1e-12)


def test_se3_exp_matches_matrix_exponential_and_round_trips() -> None:
    gen = torch.Generator().manual_seed(2)
    xi = torch.cat([torch.randn(32, 3, generator=gen, dtype=torch.float64), random_rotvecs(32, gen, 3.0)], -1)
    twist = torch.zeros(32, 4, 4, dtype=torch.float64)
    twist[:, :3, :3] = g.hat(xi[:, 3:])
    twist[:, :3, 3] = xi[:, :3]
    t = g.se3_exp(xi)
    assert torch.allclose(t, torch.linalg.matrix_exp(twist), atol=1e-10)
    assert torch.allclose(g.se3_log(t), xi, atol=1e-9)
    small = xi * 1e-7
    assert torch.allclose(g.se3_log(g.se3_exp(small)), small, atol=1e-15)


def test_inverse_compose_and_retract() -> None:
    gen = torch.Generator().manual_seed(3)
    xi = torch.randn(8, 6, generator=gen, dtype=torch.float64)
    t = g.se3_exp(xi)
    eye = torch.eye(4, dtype=torch.float64).expand(8, 4, 4)
    assert torch.allclose(g.se3_compose(t, g.se3_inverse(t)), eye, atol=1e-12)
    delta = torch.randn(8, 6, generator=gen, dtype=torch.float64) * 1e-2
    moved = g.se3_retract(t, delta)
    assert torch.allclose(g.se3_log(g.se3_inverse(t) @ moved), delta, atol=1e-12)


def test_quaternion_round_trip_and_unnormalized_input() -> None:
    gen = torch.Generator().manual_seed(4)
    q = torch.randn(64, 4, generator=gen, dtype=torch.float64)
    r = g.quat_to_rotmat(q * 3.7)  # scale does not matter
    back = g.rotmat_to_quat(r)
    qn = g.quat_normalize(q)
    qn = torch.where(qn[:, :1] < 0, -qn, qn)
    assert torch.allclose(back, qn, atol=1e-12)
    assert torch.allclose(g.quat_to_rotmat(back), r, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_small_angle_gradients_are_finite(dtype: torch.dtype) -> None:
    xi = torch.zeros(6, dtype=dtype, requires_grad=True)
    t = g.se3_exp(xi)
    (t.sum() + g.se3_log(t).sum()).backward()
    assert torch.isfinite(xi.grad).all()


def test_gradcheck_exp_and_log() -> None:
    gen = torch.Generator().manual_seed(5)
    xi = (torch.randn(4, 6, generator=gen, dtype=torch.float64) * 0.7).requires_grad_(True)
    assert torch.autograd.gradcheck(g.se3_exp, (xi,))
    t = g.se3_exp(xi.detach()).requires_grad_(True)
    # log is checked on the manifold: perturb through the exponential
    assert torch.autograd.gradcheck(lambda d: g.se3_log(t.detach() @ g.se3_exp(d)), (torch.zeros(4, 6, dtype=torch.float64, requires_grad=True),))
    phi = torch.tensor([[1e-5, -2e-5, 3e-6]], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(g.so3_exp, (phi,))


def test_umeyama_recovers_known_similarity() -> None:
    gen = torch.Generator().manual_seed(6)
    src = torch.randn(50, 3, generator=gen, dtype=torch.float64)
    rot = g.so3_exp(torch.tensor([0.3, -1.2, 2.0], dtype=torch.float64))
    trans = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    dst = 2.5 * src @ rot.T + trans
    sim = g.umeyama(src, dst)
    assert sim.scale.item() == pytest.approx(2.5, rel=1e-10)
    assert torch.allclose(sim.rotation, rot, atol=1e-10)
    assert torch.allclose(sim.translation, trans, atol=1e-10)
    assert torch.allclose(sim.apply(src), dst, atol=1e-10)
    rigid = g.umeyama(src, src @ rot.T + trans, with_scale=False)
    assert rigid.scale.item() == 1.0
    assert torch.allclose(rigid.rotation, rot, atol=1e-10)


def test_umeyama_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="at least 3"):
        g.umeyama(torch.zeros(2, 3), torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"\[N, 3\]"):
        g.umeyama(torch.zeros(5, 3), torch.zeros(4, 3))
