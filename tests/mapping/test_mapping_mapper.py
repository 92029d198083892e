"""Mapping: three-stage rounds reduce the loss, densify fills holes, prune drops transparent Gaussians,
Adam state stays aligned, non-finite parameters never stay in the map."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from posegs_ros.camera import project
from posegs_ros.config import PosegsConfig, apply_flat
from posegs_ros.geometry import se3_inverse, transform_points
from posegs_ros.scene.gaussians import GaussianMap
from posegs_ros.scene.keyframes import Keyframe
from posegs_ros.mapping.mapper import GUESS_MAX_GAP_STRIDES, CameraOptimizer, Mapper
from posegs_ros.tracking.tracker import twist_units


def keyframe(frame, intrinsics, scale: float, fixed: bool = False) -> Keyframe:
    return Keyframe(frame.index, frame.stamp, torch.from_numpy(frame.blurred).float() / 255, intrinsics,
                    torch.from_numpy(frame.pose.copy()), torch.zeros(6, dtype=torch.float64), fixed=fixed,
                    unit=twist_units(scale))


def seeded(seq, cfg, left_half_only: bool = False):
    f0 = seq.frames[0]
    gmap = GaussianMap(0, 40_000)
    mapper = Mapper(cfg, gmap, np.random.default_rng(0))
    mapper.set_scene_scale(float(np.median(f0.depth)))
    kf = keyframe(f0, seq.intrinsics, mapper.scene_scale, fixed=True)
    h, w = f0.depth.shape
    vs, us = np.mgrid[0:h:2, 0 : (w // 2 if left_half_only else w) : 2]
    mapper.add_from_depth(kf, np.stack([us.ravel(), vs.ravel()], 1).astype(float),
                          f0.depth[vs.ravel(), us.ravel()].astype(float), stride=2.0)
    return gmap, mapper, kf


def test_mapping_round_lowers_the_loss_and_moves_only_free_poses(small_sequence) -> None:
    seq = small_sequence
    cfg = apply_flat(PosegsConfig(), {"mapping.gaussian_iters": 15, "mapping.pose_iters": 4, "mapping.joint_iters": 4, "blur.subframes": 3})
    gmap, mapper, kf0 = seeded(seq, cfg)
    kf1 = keyframe(seq.frames[4], seq.intrinsics, mapper.scene_scale)
    kf1.twist_u = torch.tensor([0.0, 0.0, 0.0, 0.002, 0.002, 0.0], dtype=torch.float64)
    first = mapper.optimize([kf0, kf1], None)
    second = mapper.optimize([kf0, kf1], None)
    assert second.final_loss < first.final_loss or second.final_loss < 0.08
    assert torch.equal(kf0.pose, torch.from_numpy(seq.frames[0].pose))  # the gauge keyframe never moves
    assert not torch.equal(kf1.pose, torch.from_numpy(seq.frames[4].pose))  # a free one is refined
    assert torch.count_nonzero(kf1.delta) == 0 and not kf1.twist_u.requires_grad  # folded back


def test_densify_fills_an_uncovered_half_and_keeps_optimizer_rows(small_sequence) -> None:
    seq = small_sequence
    cfg = apply_flat(PosegsConfig(), {"mapping.gaussian_iters": 2, "mapping.pose_iters": 0, "mapping.joint_iters": 0})
    gmap, mapper, kf0 = seeded(seq, cfg, left_half_only=True)
    mapper.optimize([kf0], None)  # creates Adam state
    n_before = len(gmap)
    alpha_before = mapper.render_sharp(kf0).alpha[0, ..., 0]
    w = alpha_before.shape[1]
    assert alpha_before[:, w * 3 // 4 :].mean() < 0.1
    added = mapper.densify(kf0, fallback_depth=seq.frames[0].depth)
    assert added > 0 and len(gmap) == n_before + added
    for name, opt in gmap.optimizers.items():
        state = opt.state[gmap.params[name]]
        assert state["exp_avg"].shape[0] == len(gmap)
        assert torch.count_nonzero(state["exp_avg"][n_before:]) == 0
    alpha_after = mapper.render_sharp(kf0).alpha[0, ..., 0]
    assert alpha_after[:, w * 3 // 4 :].mean() > 0.5
    # the new Gaussians sit at the fallback (ground-truth) depth
    new_means = gmap.means[n_before:].detach().double()
    pose = kf0.pose
    z = ((new_means - pose[:3, 3]) @ pose[:3, :3])[:, 2].numpy()
    assert np.median(z) > 0.5 * np.median(seq.frames[0].depth)


def test_a_new_keyframe_borrows_depth_only_next_to_the_map(small_sequence) -> None:
    """``mapping.defer_new_content``: densifying a new keyframe (a triangulated depth is given), samples with neither a rendered
    nor a triangulated depth borrow the nearest rendered one only close to the map; far from it
    (content that just came into view) they wait for a later keyframe. The final refinement (no
    triangulated depth) still fills them."""
    seq = small_sequence
    cfg = apply_flat(PosegsConfig(), {"mapping.gaussian_iters": 2, "mapping.pose_iters": 0, "mapping.joint_iters": 0,
                                      "mapping.defer_new_content": True})
    gmap, mapper, kf0 = seeded(seq, cfg, left_half_only=True)
    mapper.optimize([kf0], None)
    w = seq.intrinsics.width
    untriangulated = np.full(seq.frames[0].depth.shape, np.nan, np.float32)
    n_before = len(gmap)
    mapper.densify(kf0, fallback_depth=untriangulated)
    new = gmap.means[n_before:].detach().double()
    k = seq.intrinsics.matrix(torch.float64)
    cam = (new - kf0.pose[:3, 3]) @ kf0.pose[:3, :3]
    u = (cam[:, 0] / cam[:, 2] * k[0, 0] + k[0, 2]).numpy()
    stride = cfg.mapping.densify_stride
    edge = w // 2  # the seeded map ends here
    assert (u > edge).any()  # the hole next to the map is filled
    assert u.max() <= edge + (GUESS_MAX_GAP_STRIDES + 1) * stride
    assert mapper.render_sharp(kf0).alpha[0, :, w * 3 // 4 :, 0].mean() < 0.1
    mapper.densify(kf0)  # no triangulated depth at all (final refinement): borrowed everywhere
    assert mapper.render_sharp(kf0).alpha[0, :, w * 3 // 4 :, 0].mean() > 0.5


def test_prune_and_sanitize(small_sequence) -> None:
    seq = small_sequence
    cfg = apply_flat(PosegsConfig(), {"mapping.prune_opacity": 0.05})
    gmap, mapper, _ = seeded(seq, cfg)
    n = len(gmap)
    with torch.no_grad():
        gmap.params["opacities"][:10] = -10.0  # opacity ~ 4.5e-5
        gmap.params["scales"][10:12] = 10.0  # huge
        gmap.params["means"][12, 1] = float("nan")
    assert mapper.prune() == 12
    assert gmap.sanitize() == 1
    assert len(gmap) == n - 13
    assert all(torch.isfinite(p).all() for p in gmap.params.values())


def test_densify_grows_a_motion_group_in_its_own_frame(small_sequence) -> None:
    """Pixels of the moving-object mask the group does not cover get Gaussians of that group,
    stored in the group's frame: moved by the keyframe's group pose they land in the mask."""
    cfg = apply_flat(PosegsConfig(), {})
    gmap, mapper, kf = seeded(small_sequence, cfg)
    f0 = small_sequence.frames[0]
    h, w = f0.depth.shape
    k = small_sequence.intrinsics.numpy()
    # a group: Gaussians lifted from the left part of a box region, in a group frame that is the
    # map moved by m (so its Gaussians are stored at inv(m) x)
    m = np.eye(4)
    m[:3, 3] = [0.05, -0.02, 0.03]
    kf.group_poses = {1: torch.from_numpy(m)}
    mask = np.zeros((h, w), bool)
    mask[30:70, 40:90] = True
    vs, us = np.mgrid[30:70:2, 40:60:2]
    mapper.add_from_depth(kf, np.stack([us.ravel(), vs.ravel()], 1).astype(float),
                          0.8 * f0.depth[vs.ravel(), us.ravel()].astype(float), stride=2.0, group_id=1)
    before = int((gmap.group_ids == 1).sum())
    kf.dynamic_mask = torch.from_numpy(mask)
    added = mapper.densify(kf, stride=2)
    ids = gmap.group_ids.numpy()
    assert added > 0 and int((ids == 1).sum()) > before
    new = gmap.means.detach().double().numpy()[ids == 1][before:]
    world = new @ m[:3, :3].T + m[:3, 3]
    x = (world - f0.pose[:3, 3]) @ f0.pose[:3, :3]
    u = k[0, 0] * x[:, 0] / x[:, 2] + k[0, 2]
    v = k[1, 1] * x[:, 1] / x[:, 2] + k[1, 2]
    inside = mask[np.clip(np.round(v).astype(int), 0, h - 1), np.clip(np.round(u).astype(int), 0, w - 1)]
    assert inside.mean() > 0.95
    assert (u > 60).mean() > 0.5  # mostly the uncovered right part of the mask


def test_final_refinement_boosts_appearance_learning_rates_then_restores_them(small_sequence) -> None:
    seq = small_sequence
    steps = 6
    seen: dict[float, dict[str, list[float]]] = {}
    colours: dict[float, torch.Tensor] = {}
    for boost in (1.0, 3.0):
        cfg = apply_flat(PosegsConfig(), {"mapping.gaussian_iters": 2, "mapping.pose_iters": 0, "mapping.joint_iters": 0,
                                          "blur.subframes": 3, "mapping.final_lr_boost": boost})
        gmap, mapper, kf0 = seeded(seq, cfg)
        kf1 = keyframe(seq.frames[4], seq.intrinsics, mapper.scene_scale)
        mapper.optimize([kf0], None)  # creates the optimizers
        base = {name: opt.param_groups[0]["lr"] for name, opt in gmap.optimizers.items()}
        lrs: dict[str, list[float]] = {name: [] for name in ("means", "sh0", "opacities")}
        for name in lrs:
            gmap.optimizers[name].register_step_pre_hook(
                lambda opt, args, kwargs, name=name: lrs[name].append(opt.param_groups[0]["lr"]))
        mapper.refine_all([kf0, kf1], steps)
        seen[boost] = {name: [lr / base[name] for lr in values] for name, values in lrs.items()}
        colours[boost] = gmap.params["sh0"].detach().clone()
        assert {name: opt.param_groups[0]["lr"] for name, opt in gmap.optimizers.items()} == base  # restored
    # colours and opacities start at boost x their rate and decay towards it; positions are not boosted
    assert seen[3.0]["sh0"][0] == pytest.approx(3.0) and seen[3.0]["opacities"][0] == pytest.approx(3.0)
    assert all(a > b > 1.0 for a, b in zip(seen[3.0]["sh0"], seen[3.0]["sh0"][1:]))
    assert seen[3.0]["means"] == seen[1.0]["means"] and seen[1.0]["sh0"] == [1.0] * len(seen[1.0]["sh0"])
    assert len(seen[3.0]["sh0"]) == steps
    assert not torch.equal(colours[1.0][: len(colours[3.0])], colours[3.0][: len(colours[1.0])])


def test_the_final_refinement_frees_the_gauge_keyframe_that_online_rounds_hold(small_sequence) -> None:
    # the gauge keyframe sits 1 px off the map two other views agree with: online rounds keep its
    # pose (the gauge), the final refinement brings it onto the map like any other view
    seq = small_sequence
    cfg = apply_flat(PosegsConfig(), {"mapping.gaussian_iters": 2, "mapping.pose_iters": 2, "mapping.joint_iters": 2,
                                      "blur.subframes": 1, "mapping.final_grow_grad": 0.0})
    gmap, mapper, kf0 = seeded(seq, cfg)
    truth = [torch.from_numpy(seq.frames[i].pose.copy()) for i in (0, 2)]
    offset = torch.eye(4, dtype=torch.float64)
    offset[0, 3] = mapper.scene_scale / seq.intrinsics.fx  # a pixel sideways at the median depth
    kf0.pose = truth[0] @ offset
    kf1, kf2 = (keyframe(seq.frames[i], seq.intrinsics, mapper.scene_scale) for i in (2, 4))

    def relative_error() -> float:  # kf0 seen from kf1 against the truth (the gauge drops out)
        est, true = se3_inverse(kf1.pose) @ kf0.pose, se3_inverse(truth[1]) @ truth[0]
        return float(torch.linalg.norm((se3_inverse(true) @ est)[:3, 3]))

    held = kf0.pose.clone()
    mapper.optimize([kf0, kf1, kf2], None)
    assert torch.equal(kf0.pose, held)  # online: the gauge
    start = relative_error()
    mapper.refine_all([kf0, kf1, kf2], 60)
    assert not torch.equal(kf0.pose, held) and relative_error() < 0.6 * start
    assert torch.count_nonzero(kf0.delta) == 0 and not kf0.twist_u.requires_grad  # folded back


def test_camera_learns_from_static_pixels_only_when_a_group_covers_an_object(small_sequence) -> None:
    """With a motion group in a keyframe, the camera's pose / twist / exposure gradients do not
    depend on what the image shows inside the (grown) moving-object mask, the group's do."""
    cfg = apply_flat(PosegsConfig(), {"blur.subframes": 1})
    gmap, mapper, _ = seeded(small_sequence, cfg)
    f0 = small_sequence.frames[0]
    h, w = f0.depth.shape
    vs, us = np.mgrid[30:70:2, 40:90:2]
    spawn = keyframe(f0, small_sequence.intrinsics, mapper.scene_scale)
    spawn.group_poses = {1: torch.eye(4, dtype=torch.float64)}
    mapper.add_from_depth(spawn, np.stack([us.ravel(), vs.ravel()], 1).astype(float),
                          0.8 * f0.depth[vs.ravel(), us.ravel()].astype(float), stride=2.0, group_id=1)
    mask = np.zeros((h, w), bool)
    mask[30:70, 40:90] = True

    def gradients(image: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        kf = keyframe(f0, small_sequence.intrinsics, mapper.scene_scale)
        kf.image = torch.from_numpy(image).float() / 255
        kf.group_poses = {1: torch.eye(4, dtype=torch.float64)}
        kf.dynamic_mask = torch.from_numpy(mask)
        opt = mapper._pose_optimizer([kf])
        mapper._step(kf, gaussians=False, pose=True, pose_opt=opt)
        grads = kf.delta.grad.clone(), kf.group_deltas[1].grad.clone()
        opt.zero_grad(kf)
        return grads

    image = f0.blurred.copy()
    other = image.copy()
    other[30:70, 40:90] = np.random.default_rng(0).integers(0, 255, (40, 50, 3))  # the object looks different
    cam_a, group_a = gradients(image)
    cam_b, group_b = gradients(other)
    assert torch.count_nonzero(cam_a) > 0
    torch.testing.assert_close(cam_a, cam_b)  # the camera does not see it
    assert not torch.allclose(group_a, group_b)  # its group does


# the final refinement's error / hole densification off: growth alone adds Gaussians
NO_DENSIFY = {"mapping.final_densify_error": 1.0, "mapping.densify_alpha": 0.0}


def coarse_map_with_a_detailed_patch(seq, cfg, patch: tuple[slice, slice]):
    """A target that is flat grey except inside ``patch`` (rows, cols), where it shows frame 0's
    sharp texture, and a map of it from Gaussians every 6 px: only in the patch does the map
    fall short."""
    f0 = seq.frames[0]
    gmap = GaussianMap(0, 40_000)
    mapper = Mapper(cfg, gmap, np.random.default_rng(0))
    mapper.set_scene_scale(float(np.median(f0.depth)))
    kf = keyframe(f0, seq.intrinsics, mapper.scene_scale, fixed=True)
    target = torch.full_like(kf.image, 0.5)
    target[patch] = torch.from_numpy(f0.sharp[patch]).float() / 255
    kf.image = target
    h, w = f0.depth.shape
    vs, us = np.mgrid[-3:h + 6:6, -3:w + 6:6]  # one row / column beyond the image: even cover at the border
    mapper.add_from_depth(kf, np.stack([us.ravel(), vs.ravel()], 1).astype(float),
                          np.full(us.size, float(np.median(f0.depth))), stride=6.0, opacity=0.9)
    return gmap, mapper, kf


def test_final_refinement_grows_the_map_where_it_falls_short_and_nowhere_else(small_sequence) -> None:
    """Gradient-driven growth (``mapping.final_grow_grad``): the Gaussians added by splitting and
    cloning sit where the target shows detail the coarse map lacks, and the patch's error drops
    more than without growth; the cap holds."""
    seq = small_sequence
    rows, cols = slice(24, 72), slice(16, 64)
    errors, maps = {}, {}
    for grow in (0.0, 1.0):
        cfg = apply_flat(PosegsConfig(), {"blur.subframes": 1, "mapping.final_lr_boost": 1.0, **NO_DENSIFY,
                                          "mapping.final_grow_grad": grow, "mapping.final_grow_interval": 20})
        gmap, mapper, kf = coarse_map_with_a_detailed_patch(seq, cfg, (rows, cols))
        n0 = len(gmap)
        stats = mapper.refine_all([kf], 300)
        pred = mapper.render_sharp(kf).rgb[0]
        errors[grow] = float((pred - kf.image)[rows, cols].abs().mean())
        maps[grow] = (n0, gmap, kf)
        if grow == 0.0:
            assert len(gmap) <= n0 and stats.added == 0
    n0, gmap, kf = maps[1.0]
    assert len(gmap) > n0 + 100
    new = gmap.means[n0:].detach().double()  # duplicates are appended after the seeded rows
    k = seq.intrinsics.matrix(torch.float64)
    cam = (new - kf.pose[:3, 3]) @ kf.pose[:3, :3]
    u = (cam[:, 0] / cam[:, 2] * k[0, 0] + k[0, 2]).numpy()
    v = (cam[:, 1] / cam[:, 2] * k[1, 1] + k[1, 2]).numpy()
    margin = 9  # 1.5 seeding strides: a Gaussian just outside the patch reaches into it
    inside = (u > cols.start - margin) & (u < cols.stop + margin) & (v > rows.start - margin) & (v < rows.stop + margin)
    area = (cols.stop - cols.start + 2 * margin) * (rows.stop - rows.start + 2 * margin) / (seq.intrinsics.width * seq.intrinsics.height)
    assert area < 0.4 and inside.mean() > 0.8  # 35 % of the image holds over 80 % of what was added
    assert errors[1.0] < 0.9 * errors[0.0]


def test_growth_respects_the_cap(small_sequence) -> None:
    seq = small_sequence
    cfg = apply_flat(PosegsConfig(), {"blur.subframes": 1, "mapping.final_grow_grad": 1.0,
                                      "mapping.final_grow_interval": 10, "mapping.final_max_gaussians": 0, **NO_DENSIFY})
    gmap, mapper, kf = coarse_map_with_a_detailed_patch(seq, cfg, (slice(24, 72), slice(16, 64)))
    gmap.max_gaussians = len(gmap) + 40
    mapper.refine_all([kf], 60)
    assert len(gmap) <= gmap.max_gaussians
    assert len(gmap) >= gmap.max_gaussians - 40 + 20  # it did grow, up to the cap
    for name, opt in gmap.optimizers.items():
        assert opt.state[gmap.params[name]]["exp_avg"].shape[0] == len(gmap)


def test_the_final_refinement_grows_up_to_its_own_cap_and_restores_the_online_one(small_sequence) -> None:
    """``mapping.final_max_gaussians`` above the online cap: the final refinement grows past
    the online cap, up to its own, and the online cap holds again afterwards."""
    seq = small_sequence
    cfg = apply_flat(PosegsConfig(), {"blur.subframes": 1, "mapping.final_grow_grad": 1.0,
                                      "mapping.final_grow_interval": 10, **NO_DENSIFY})
    gmap, mapper, kf = coarse_map_with_a_detailed_patch(seq, cfg, (slice(24, 72), slice(16, 64)))
    online = len(gmap) + 10
    gmap.max_gaussians = online
    mapper.cfg = apply_flat(cfg, {"mapping.final_max_gaussians": online + 60})
    mapper.refine_all([kf], 60)
    assert online + 60 - 20 <= len(gmap) <= online + 60  # past the online cap, within its own
    assert gmap.max_gaussians == online
    assert gmap.add(gmap.means[:5].detach(), torch.rand(5, 3), torch.full((5,), 0.01)) == 0  # online: full


def test_window_rounds_move_means_at_their_factor_and_the_final_refinement_at_the_full_rate(small_sequence) -> None:
    seq = small_sequence
    flat = {"mapping.gaussian_iters": 4, "mapping.pose_iters": 0, "mapping.joint_iters": 0, "blur.subframes": 1,
            "mapping.final_grow_grad": 0.0, "mapping.final_lr_factor": 1.0, "mapping.final_means_lr_factor": 1.0,
            **NO_DENSIFY}
    moved = {}
    for factor in (1.0, 0.1):
        cfg = apply_flat(PosegsConfig(), {**flat, "mapping.window_means_lr_factor": factor})
        gmap, mapper, kf0 = seeded(seq, cfg)
        kf0.image = kf0.image.flip(1)  # a target the seeded map does not explain: the means must move
        start = gmap.means.detach().clone()
        lr = mapper.gmap.optimizers["means"].param_groups[0]["lr"]
        mapper.optimize([kf0], None)
        assert mapper.gmap.optimizers["means"].param_groups[0]["lr"] == lr  # restored after the round
        moved[factor] = float((gmap.means.detach() - start).abs().max())
        if factor == 0.1:
            before = gmap.means.detach().clone()
            mapper.refine_all([kf0], 4)
            final_step = float((gmap.means.detach() - before).abs().max())
    # Adam's first steps move each mean by ~lr: a tenth of the rate, a tenth of the motion
    assert moved[0.1] < 0.15 * moved[1.0]
    assert final_step > 0.5 * moved[1.0]  # the final refinement is not slowed


def test_the_final_refinement_moves_means_at_its_own_factor(small_sequence) -> None:
    """``mapping.final_means_lr_factor`` scales the final refinement's rate of the means (Adam's
    first steps move each mean by about its rate: three times the rate, three times the motion)."""
    flat = {"blur.subframes": 1, "mapping.final_grow_grad": 0.0, "mapping.final_lr_factor": 1.0, **NO_DENSIFY}
    moved = {}
    for factor in (1.0, 3.0):
        gmap, mapper, kf0 = seeded(small_sequence, apply_flat(PosegsConfig(), {**flat, "mapping.final_means_lr_factor": factor}))
        kf0.image = kf0.image.flip(1)
        lr = mapper.gmap.optimizers["means"].param_groups[0]["lr"]
        start = gmap.means.detach().clone()
        mapper.refine_all([kf0], 3)
        assert mapper.gmap.optimizers["means"].param_groups[0]["lr"] == lr  # restored afterwards
        moved[factor] = float((gmap.means.detach() - start).abs().max())
    assert 2.5 * moved[1.0] < moved[3.0] < 3.5 * moved[1.0]



def test_the_visible_surface_moves_to_a_new_depth_and_hidden_or_moving_gaussians_stay(small_sequence) -> None:
    """``move_surface_to_depth``: the surface the keyframe sees scales along its rays (Gaussians and
    their sizes); what lies behind it, what moves with a group and what the depth leaves out stays."""
    seq = small_sequence
    gmap, mapper, kf = seeded(seq, PosegsConfig())
    f0 = seq.frames[0]
    h, w = f0.depth.shape
    surface = len(gmap)
    # a hidden layer far behind the surface, and a motion group's Gaussians on it
    vs, us = np.mgrid[2:h:8, 2:w:8]
    px = np.stack([us.ravel(), vs.ravel()], 1).astype(float)
    mapper.add_from_depth(kf, px, 2.0 * f0.depth[vs.ravel(), us.ravel()].astype(float), stride=2.0)
    gmap.add(gmap.means.detach()[:50].clone(), torch.full((50, 3), 0.5), torch.full((50,), 0.01), group_ids=1)
    before_means, before_scales = gmap.means.detach().clone(), gmap.log_scales.detach().clone()
    depth = 1.2 * f0.depth.astype(np.float64)
    depth[:, : w // 4] = np.nan  # no estimate on the left quarter
    moved = mapper.move_surface_to_depth(kf, depth)
    to_camera = se3_inverse(torch.from_numpy(f0.pose))
    k = seq.intrinsics.matrix(torch.float64)
    uv_before, z_before = project(transform_points(to_camera, before_means.double()), k)
    uv_after, z_after = project(transform_points(to_camera, gmap.means.detach().double()), k)
    u, u_after = uv_before[:, 0], uv_after[:, 0]
    ratio = z_after / z_before
    changed = (gmap.means.detach() != before_means).any(1)
    left = u < w // 4 - 1
    assert moved == int(changed.sum())
    assert changed[:surface][~left[:surface]].float().mean() > 0.8  # the surface where a depth exists ...
    assert not changed[:surface][left[:surface]].any()  # ... and only there
    off = (ratio[changed] - 1.2).abs()
    assert off.median() < 0.02 and off.quantile(0.9) < 0.06  # at depth edges the rendered depth blends
    # rays kept: the pixel a moved Gaussian projects to does not change
    assert torch.allclose(u_after[changed], u[changed], atol=1e-3)
    growth = (gmap.log_scales.detach() - before_scales)[changed]
    assert torch.allclose(growth, ratio[changed].log()[:, None].float().expand_as(growth), atol=1e-4)
    assert not changed[surface:].any()  # the hidden layer and the group's Gaussians stay


def test_camera_optimizer_steps_one_keyframe_as_one_adam_over_all_of_them_would() -> None:
    """Per-keyframe Adams, stepped only for the keyframe that got gradients, match a single Adam
    over every keyframe's parameter groups bit for bit, learning-rate changes included."""
    frames = [object() for _ in range(4)]
    rng = np.random.default_rng(3)
    start = [[torch.from_numpy(rng.normal(size=6)), torch.from_numpy(rng.normal(size=2))] for _ in frames]
    mine = [[t.clone().requires_grad_(True) for t in ts] for ts in start]
    theirs = [[t.clone().requires_grad_(True) for t in ts] for ts in start]
    ours = CameraOptimizer({id(kf): [{"params": [a], "lr": 0.01}, {"params": [b], "lr": 0.002}]
                            for kf, (a, b) in zip(frames, mine)})
    single = torch.optim.Adam([{"params": [p], "lr": lr} for a, b in theirs for p, lr in ((a, 0.01), (b, 0.002))])
    assert len(ours.param_groups) == len(single.param_groups) == 8
    for step in range(12):
        i = int(rng.integers(len(frames)))
        for g_ours, g_single in zip(ours.param_groups, single.param_groups):
            g_ours["lr"] = g_single["lr"] = g_single["lr"] * 0.9
        ours.zero_grad(frames[i])
        single.zero_grad(set_to_none=True)
        target = torch.from_numpy(rng.normal(size=6))
        for params in (mine[i], theirs[i]):
            ((params[0] - target) ** 2).sum().add((params[1] ** 3).sum()).backward()
        assert ours.params(frames[i]) == mine[i]
        ours.step(frames[i])
        single.step()
    for a, b in zip(mine, theirs):
        for x, y in zip(a, b):
            assert torch.equal(x, y)
    assert frames[0] in ours and object() not in ours


def test_the_final_refinement_preconditions_blurred_views_only(small_sequence, monkeypatch) -> None:
    """``blur.final_precondition``: in the final refinement each step on a blurred view filters its
    gradient with that view's streak, one per tile of the grid, each as long as the view's twist
    makes it at the tile's rendered depth; a sharp view (no twist: one sub-frame) and the online
    rounds are left alone, and the setting ends with the refinement."""
    import posegs_ros.mapping.mapper as mapper_module
    from posegs_ros.scene.blur import blur_length_px

    calls: list[tuple[np.ndarray, float, torch.Tensor | None]] = []
    real = mapper_module.precondition_streak

    def spy(image, streak, eps, weights=None):
        calls.append((streak, eps, weights))
        return real(image, streak, eps, weights)

    monkeypatch.setattr(mapper_module, "precondition_streak", spy)
    seq = small_sequence
    cfg = apply_flat(PosegsConfig(), {"mapping.gaussian_iters": 2, "mapping.pose_iters": 0, "mapping.joint_iters": 2,
                                      "blur.final_precondition": 0.1, "blur.final_precondition_tiles": 3})
    gmap, mapper, kf0 = seeded(seq, cfg)  # kf0: zero twist, one sub-frame
    kf1 = keyframe(seq.frames[4], seq.intrinsics, mapper.scene_scale)
    kf1.twist_u = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.04, 0.0], dtype=torch.float64) / kf1.unit[3]  # yaw 0.04 rad
    mapper.optimize([kf0, kf1], None)
    assert calls == []  # online rounds: never
    assert mapper.subframes(kf0) == 1 and mapper.subframes(kf1) > 1
    mapper.refine_all([kf0, kf1], 8)
    assert mapper.precondition == 0.0
    assert 1 <= len(calls) <= 8  # only the steps that visited kf1
    streak, eps, weights = calls[0]
    assert eps == 0.1 and streak.shape == (9, mapper.subframes(kf1), 2) and weights.shape == (9, 96, 128)
    lengths = np.linalg.norm(streak[:, -1] - streak[:, 0], axis=1) * mapper.subframes(kf1) / (mapper.subframes(kf1) - 1)
    expected = blur_length_px(kf1.twist().detach().numpy(), seq.intrinsics.fx, 128, 96, mapper.scene_scale)
    assert lengths[4] == pytest.approx(expected, rel=0.1)  # a yaw: about as long everywhere
    assert np.all(np.abs(streak[:, -1, 1] - streak[:, 0, 1]) < 0.3 * np.abs(streak[:, -1, 0] - streak[:, 0, 0]))  # sideways
    calls.clear()
    off = apply_flat(cfg, {"blur.final_precondition": 0.0})
    gmap, mapper, kf0 = seeded(seq, off)
    kf1.twist_u = kf1.twist_u.detach()
    mapper.refine_all([kf0, kf1], 4)
    assert calls == []
