"""Gaussian map: Adam state stays row-aligned through add/remove, the cap, 3DGS PLY round trip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from posegs_ros.scene.gaussians import GaussianMap, PlyError, read_ply, rgb_to_sh0, sh0_to_rgb

LRS = {"means": 1e-2, "quats": 1e-2, "scales": 1e-2, "opacities": 1e-2, "sh0": 1e-2, "shN": 1e-2}


def make_map(n: int = 10, sh_degree: int = 0, cap: int = 1000, seed: int = 0) -> GaussianMap:
    gen = torch.Generator().manual_seed(seed)
    gmap = GaussianMap(sh_degree=sh_degree, max_gaussians=cap)
    gmap.add(torch.randn(n, 3, generator=gen), torch.rand(n, 3, generator=gen), torch.full((n,), 0.05))
    gmap.setup_optimizers(LRS)
    return gmap


def take_step(gmap: GaussianMap) -> None:
    gmap.zero_grad()
    act = gmap.activated()
    loss = (act["means"] ** 2).sum() + act["colors"].sum() + act["scales"].sum() + act["opacities"].sum() + act["quats"].sum()
    loss.backward()
    gmap.step()


def test_colour_conversion_round_trip() -> None:
    rgb = torch.rand(20, 3)
    assert torch.allclose(sh0_to_rgb(rgb_to_sh0(rgb)), rgb, atol=1e-6)


def test_remove_keeps_adam_moments_aligned_with_rows() -> None:
    gmap = make_map(10)
    take_step(gmap)
    opt = gmap.optimizers["means"]
    before = opt.state[gmap.params["means"]]["exp_avg"].clone()
    mask = torch.tensor([i % 3 == 0 for i in range(10)])
    assert gmap.remove(mask) == int(mask.sum())
    after = opt.state[gmap.params["means"]]["exp_avg"]
    assert torch.equal(after, before[~mask])
    assert opt.param_groups[0]["params"][0] is gmap.params["means"]
    take_step(gmap)  # optimizer still works on the new tensors
    assert len(gmap) == 6


def test_add_appends_zero_moments_and_keeps_old_ones() -> None:
    gmap = make_map(5)
    take_step(gmap)
    old = gmap.optimizers["sh0"].state[gmap.params["sh0"]]["exp_avg_sq"].clone()
    assert gmap.add(torch.zeros(3, 3), torch.full((3, 3), 0.5), torch.full((3,), 0.1), group_ids=2) == 3
    state = gmap.optimizers["sh0"].state[gmap.params["sh0"]]["exp_avg_sq"]
    assert torch.equal(state[:5], old)
    assert torch.count_nonzero(state[5:]) == 0
    assert gmap.group_ids.tolist() == [0] * 5 + [2] * 3
    take_step(gmap)


def test_duplicate_copies_rows_with_new_centres_and_scales_up_to_the_cap() -> None:
    gmap = make_map(6, cap=9)
    gmap.group_ids[4] = 3
    take_step(gmap)
    old = {name: p.detach().clone() for name, p in gmap.params.items()}
    index = torch.tensor([4, 1, 2, 0])
    means, log_scales = torch.full((4, 3), 7.0), torch.full((4, 3), -3.0)
    assert gmap.duplicate(index, means, log_scales) == 3  # the cap leaves room for three
    assert len(gmap) == 9 and torch.equal(gmap.params["means"][:6], old["means"])
    assert torch.equal(gmap.params["means"][6:], means[:3]) and torch.equal(gmap.params["scales"][6:], log_scales[:3])
    for name in ("quats", "opacities", "sh0", "shN"):
        assert torch.equal(gmap.params[name][6:], old[name][index[:3]])
    assert gmap.group_ids.tolist() == [0, 0, 0, 0, 3, 0, 3, 0, 0]
    state = gmap.optimizers["means"].state[gmap.params["means"]]["exp_avg"]
    assert state.shape[0] == 9 and torch.count_nonzero(state[6:]) == 0
    assert gmap.duplicate(index, means, log_scales) == 0
    with pytest.raises(ValueError, match="non-finite"):
        make_map(2).duplicate(torch.tensor([0]), torch.full((1, 3), float("nan")), torch.zeros(1, 3))
    take_step(gmap)


def test_capacity_cap_limits_additions() -> None:
    gmap = make_map(8, cap=10)
    assert gmap.add(torch.zeros(5, 3), torch.rand(5, 3), torch.full((5,), 0.1)) == 2
    assert len(gmap) == 10
    assert gmap.add(torch.zeros(5, 3), torch.rand(5, 3), torch.full((5,), 0.1)) == 0


def test_non_finite_gaussians_are_refused_and_sanitized() -> None:
    gmap = make_map(4)
    with pytest.raises(ValueError, match="non-finite"):
        gmap.add(torch.full((1, 3), float("nan")), torch.rand(1, 3), torch.full((1,), 0.1))
    with torch.no_grad():
        gmap.params["means"][1, 0] = float("inf")
    assert gmap.sanitize() == 1
    assert len(gmap) == 3 and torch.isfinite(gmap.means).all()


@pytest.mark.parametrize("sh_degree", [0, 1, 3])
def test_ply_round_trip(tmp_path: Path, sh_degree: int) -> None:
    gmap = make_map(50, sh_degree=sh_degree, seed=sh_degree)
    with torch.no_grad():
        gmap.params["shN"].normal_()
        gmap.params["quats"].normal_()
    gmap.group_ids[:5] = 3
    path = gmap.save_ply(tmp_path / "map.ply")
    header = path.read_bytes().split(b"end_header")[0].decode()
    assert "format binary_little_endian 1.0" in header
    for prop in ["x", "nx", "f_dc_0", "opacity", "scale_2", "rot_3", "motion_group"]:
        assert f" {prop}\n" in header
    assert header.count("f_rest_") == 3 * ((sh_degree + 1) ** 2 - 1)
    back = GaussianMap.from_ply(path)
    assert back.sh_degree == sh_degree and len(back) == 50
    for name, value in gmap.state_dict().items():
        assert torch.equal(back.state_dict()[name], value), name
    assert not list(tmp_path.glob(".*tmp"))  # no temp files left behind


def test_ply_f_rest_is_channel_major(tmp_path: Path) -> None:
    gmap = make_map(1, sh_degree=1)
    with torch.no_grad():
        gmap.params["shN"][0] = torch.arange(9, dtype=torch.float32).reshape(3, 3)  # [K-1, 3]
    path = gmap.save_ply(tmp_path / "one.ply")
    body = path.read_bytes().split(b"end_header\n")[1]
    values = np.frombuffer(body, dtype="<f4")
    f_rest = values[9:18]  # after x y z nx ny nz f_dc_0..2
    assert f_rest.tolist() == [0, 3, 6, 1, 4, 7, 2, 5, 8]  # R coefficients, then G, then B


def test_empty_map_round_trips(tmp_path: Path) -> None:
    back = GaussianMap.from_ply(GaussianMap(sh_degree=1).save_ply(tmp_path / "empty.ply"))
    assert len(back) == 0 and back.sh_degree == 1


def test_read_ply_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.ply"
    bad.write_bytes(b"not a ply")
    with pytest.raises(PlyError, match="not a PLY"):
        read_ply(bad)
    gmap = make_map(4)
    good = gmap.save_ply(tmp_path / "good.ply")
    data = good.read_bytes()
    truncated = tmp_path / "truncated.ply"
    truncated.write_bytes(data[:-10])
    with pytest.raises(PlyError, match="truncated"):
        read_ply(truncated)
    ascii_ply = tmp_path / "ascii.ply"
    ascii_ply.write_bytes(b"ply\nformat ascii 1.0\nelement vertex 0\nend_header\n")
    with pytest.raises(PlyError, match="binary_little_endian"):
        read_ply(ascii_ply)
    with pytest.raises(PlyError, match="cannot read"):
        read_ply(tmp_path / "missing.ply")
