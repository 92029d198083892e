"""The exposure blur model: a blurred render is the mean of sharp renders along T exp(s d)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from posegs_ros.scene.blur import (
    RenderSettings,
    SceneTensors,
    blur_length_px,
    exposure_offsets,
    exposure_subframes,
    exposure_poses,
    precondition_streak,
    render_exposure,
    render_views,
    streak_filter,
    streak_offsets,
    subframes_for_blur,
)
from posegs_ros.camera import Intrinsics
from posegs_ros.scene.gaussians import rgb_to_sh0

INTR = Intrinsics(80.0, 80.0, 47.5, 35.5, 96, 72)


def textured_wall(n_side: int = 40, seed: int = 0, groups: bool = False) -> SceneTensors:
    gen = torch.Generator().manual_seed(seed)
    u, v = torch.meshgrid(torch.linspace(-1.2, 1.2, n_side), torch.linspace(-0.9, 0.9, n_side), indexing="ij")
    means = torch.stack([u.ravel(), v.ravel(), torch.full((n_side * n_side,), 2.0)], 1)
    n = means.shape[0]
    rgb = torch.rand(n, 3, generator=gen)
    group_ids = (means[:, 0] > 0.5).long() if groups else None
    return SceneTensors(
        means, torch.tensor([[1.0, 0, 0, 0]]).expand(n, 4), torch.full((n, 3), 0.03), torch.full((n,), 0.8),
        rgb_to_sh0(rgb)[:, None, :], group_ids,
    )


def wall_view() -> tuple[RenderSettings, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Render settings, intrinsics ``[3, 3]``, identity camera pose ``[4, 4]`` and zero twist ``[6]``."""
    return RenderSettings(INTR.width, INTR.height), INTR.matrix(torch.float64), torch.eye(4, dtype=torch.float64), \
        torch.zeros(6, dtype=torch.float64)


def test_exposure_offsets() -> None:
    assert exposure_offsets(1).tolist() == [0.0]
    assert exposure_offsets(5).tolist() == pytest.approx([-0.4, -0.2, 0.0, 0.2, 0.4])  # slice midpoints
    assert exposure_offsets(4).tolist() == pytest.approx([-0.375, -0.125, 0.125, 0.375])
    with pytest.raises(ValueError):
        exposure_offsets(0)


def test_few_subframes_approximate_the_continuous_exposure() -> None:
    """A frame is the time average over the exposure: 3 or 5 sub-frames at the slice midpoints
    come closer to a densely sampled exposure than the same number spanning its ends."""
    scene = textured_wall()
    settings, k, pose, _ = wall_view()
    twist = torch.tensor([0.2, 0.05, 0.0, 0.0, 0.0, 0.0], dtype=torch.float64)  # ~8 px streak at 2 m
    assert blur_length_px(twist.numpy(), INTR.fx, INTR.width, INTR.height, 2.0) == pytest.approx(8.2, abs=0.1)
    continuous, _ = render_exposure(scene, pose, twist, k, settings, subframes=61)
    for n in (3, 5):
        midpoints, _ = render_exposure(scene, pose, twist, k, settings, subframes=n)
        ends = torch.linspace(-0.5, 0.5, n, dtype=torch.float64)
        spanning = render_views(scene, exposure_poses(pose, twist, ends), k, settings).rgb.mean(0)
        err_mid = float((midpoints - continuous).abs().mean())
        err_ends = float((spanning - continuous).abs().mean())
        assert err_mid < 0.75 * err_ends, (n, err_mid, err_ends)


def test_blurred_render_is_mean_of_shifted_renders() -> None:
    scene = textured_wall()
    settings = RenderSettings(INTR.width, INTR.height)
    k = INTR.matrix(torch.float64)
    pose = torch.eye(4, dtype=torch.float64)
    twist = torch.tensor([0.06, -0.015, 0.0, 0.0, 0.045, 0.015], dtype=torch.float64)
    blurred, views = render_exposure(scene, pose, twist, k, settings, subframes=5)
    singles = [render_views(scene, p[None], k, settings).rgb[0] for p in exposure_poses(pose, twist, exposure_offsets(5, torch.float64))]
    assert torch.allclose(blurred, torch.stack(singles).mean(0), atol=1e-5)
    assert views.rgb.shape == (5, INTR.height, INTR.width, 3)
    # the middle sub-frame is the sharp render at the pose itself
    assert torch.allclose(views.rgb[2], render_views(scene, pose[None], k, settings).rgb[0], atol=1e-6)
    # blur removes detail: less gradient energy than the sharp image
    def energy(img: torch.Tensor) -> float:
        return float((img[1:] - img[:-1]).abs().mean() + (img[:, 1:] - img[:, :-1]).abs().mean())
    assert energy(blurred) < 0.8 * energy(views.rgb[2])


def test_a_bent_path_keeps_the_mid_exposure_pose_and_moves_the_streak_off_it() -> None:
    """``T exp(s d + s^2 b)``: the sub-frame at ``s = 0`` is the pose itself; without a bend the
    path is the straight one; a bend shifts both ends the same way (a hand turning within the
    exposure), so the streak's centroid moves off the pose while the sharp render stays."""
    scene = textured_wall()
    settings = RenderSettings(INTR.width, INTR.height)
    k = INTR.matrix(torch.float64)
    pose = torch.eye(4, dtype=torch.float64)
    twist = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.01, 0.0], dtype=torch.float64)
    bend = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.12, 0.0], dtype=torch.float64)  # the yaw rate reverses in the exposure
    offsets = exposure_offsets(5, torch.float64)
    straight, bent = exposure_poses(pose, twist, offsets), exposure_poses(pose, twist, offsets, bend)
    assert torch.equal(exposure_poses(pose, twist, offsets, None), straight)
    assert torch.allclose(bent[2], pose, atol=1e-12) and torch.allclose(straight[2], pose, atol=1e-12)
    # both ends turn the same way: yaw of the first and last sub-frames have the same sign
    yaw = [float(p[0, 2]) for p in (bent[0], bent[4])]
    assert yaw[0] > 0 and yaw[1] > 0
    blurred_straight, _ = render_exposure(scene, pose, twist, k, settings, subframes=5)
    blurred_bent, views = render_exposure(scene, pose, twist, k, settings, subframes=5, bend=bend)
    assert torch.allclose(views.rgb[2], render_views(scene, pose[None], k, settings).rgb[0], atol=1e-6)
    singles = [render_views(scene, p[None], k, settings).rgb[0] for p in bent]
    assert torch.allclose(blurred_bent, torch.stack(singles).mean(0), atol=1e-5)

    # the straight streak is centred on the pose; the bent one's mean yaw lies bend * mean(s^2) off it
    def mean_yaw(poses: torch.Tensor) -> float:
        return float(torch.atan2(poses[:, 0, 2], poses[:, 0, 0]).mean())

    assert abs(mean_yaw(straight)) < 1e-12
    assert mean_yaw(bent) == pytest.approx(0.12 * float((offsets**2).mean()), rel=1e-3)
    assert not torch.allclose(blurred_bent, blurred_straight, atol=1e-3)


def test_zero_twist_means_no_blur() -> None:
    scene = textured_wall()
    settings, k, pose, zero = wall_view()
    blurred, _ = render_exposure(scene, pose, zero, k, settings, subframes=4)
    assert torch.allclose(blurred, render_views(scene, pose[None], k, settings).rgb[0], atol=1e-6)


def test_motion_group_is_moved_by_its_transform() -> None:
    scene = textured_wall(groups=True)
    settings, k, pose, zero = wall_view()
    move = torch.eye(4, dtype=torch.float64)
    move[1, 3] = 0.1
    moved, _ = render_exposure(scene, pose, zero, k, settings, subframes=1, groups={1: (move, zero)})
    shifted_means = scene.means.clone()
    shifted_means[scene.group_ids == 1, 1] += 0.1
    manual = SceneTensors(shifted_means, scene.quats, scene.scales, scene.opacities, scene.colors, scene.group_ids)
    assert torch.allclose(moved, render_views(manual, pose[None], k, settings).rgb[0], atol=1e-5)


def test_groups_without_a_pose_are_hidden_and_placed_scenes_stay_put() -> None:
    from posegs_ros.scene.blur import group_subset, move_groups

    scene = textured_wall(groups=True)
    settings, k, pose, zero = wall_view()
    # no pose for group 1 in this view: only the static part is drawn
    hidden, _ = render_exposure(scene, pose, zero, k, settings, subframes=1)
    static = scene.group_ids == 0
    only_static = SceneTensors(scene.means[static], scene.quats[static], scene.scales[static],
                               scene.opacities[static], scene.colors[static], None)
    assert torch.allclose(hidden, render_views(only_static, pose[None], k, settings).rgb[0], atol=1e-6)
    # a placed scene has no group ids left: rendering it again does not move or hide anything
    move = torch.eye(4, dtype=torch.float64)
    move[0, 3] = -0.2
    placed = move_groups(scene, {1: move})
    assert placed.group_ids is None
    again, _ = render_exposure(placed, pose, zero, k, settings, subframes=1)
    assert torch.allclose(again, render_views(placed, pose[None], k, settings).rgb[0], atol=1e-6)
    # the subset of one group keeps its ids
    sub = group_subset(scene, 1)
    assert sub.means.shape[0] == int((scene.group_ids == 1).sum()) and bool((sub.group_ids == 1).all())


def test_camera_gradients_come_from_static_gaussians_only() -> None:
    """With camera_from_static (default) a moving group renders the same but gives the camera
    pose and exposure twist no gradient: a scene made only of a group leaves them at zero."""
    from posegs_ros.geometry import se3_exp

    wall = textured_wall(groups=True)
    only_group = SceneTensors(wall.means, wall.quats, wall.scales, wall.opacities, wall.colors,
                              torch.ones_like(wall.group_ids))
    settings = RenderSettings(INTR.width, INTR.height)
    k = INTR.matrix(torch.float64)
    m = torch.eye(4, dtype=torch.float64)
    m[1, 3] = 0.05
    group_twist = torch.tensor([0.0, 0.01, 0.0, 0.0, 0.0, 0.02], dtype=torch.float64)
    images, grads = [], []
    for follow in (True, False):
        delta = torch.zeros(6, dtype=torch.float64, requires_grad=True)
        twist = torch.tensor([0.01, 0.0, 0.0, 0.0, 0.01, 0.0], dtype=torch.float64, requires_grad=True)
        img, _ = render_exposure(only_group, se3_exp(delta), twist, k, settings, 3, groups={1: (m, group_twist)},
                                 camera_from_static=follow)
        img.sum().backward()
        images.append(img.detach())
        grads.append(torch.cat([delta.grad, twist.grad]))
    assert torch.allclose(images[0], images[1], atol=1e-6)
    assert grads[1].abs().max() > 1.0  # without it the object pulls the camera
    assert grads[0].abs().max() < 1e-3 * grads[1].abs().max()


def _streak_px(twist: np.ndarray, point: np.ndarray) -> float:
    """Pixel distance between the projections of ``point`` (camera frame at s = 0) at the
    exposure's start and end, through the real exposure poses."""
    k = INTR.matrix(torch.float64).numpy()
    ends = exposure_poses(torch.eye(4, dtype=torch.float64), torch.from_numpy(twist), torch.tensor([-0.5, 0.5], dtype=torch.float64))
    pix = []
    for pose in ends.numpy():
        cam = pose[:3, :3].T @ (point - pose[:3, 3])
        uvw = k @ cam
        pix.append(uvw[:2] / uvw[2])
    return float(np.linalg.norm(pix[1] - pix[0]))


@pytest.mark.parametrize("twist", [
    np.array([0.06, 0.0, 0.0, 0.0, 0.0, 0.0]),  # sideways translation
    np.array([0.0, 0.0, 0.0, 0.0, 0.05, 0.0]),  # pan
    np.array([0.0, 0.0, 0.0, 0.08, 0.0, 0.0]),  # tilt
])
def test_blur_length_is_the_projected_streak_at_the_image_centre(twist: np.ndarray) -> None:
    depth = 2.0
    centre = np.array([0.0, 0.0, depth])  # principal point ~ image centre
    expected = _streak_px(twist, centre)
    assert expected > 2.0
    assert blur_length_px(twist, INTR.fx, INTR.width, INTR.height, depth) == pytest.approx(expected, rel=0.03)


def test_roll_and_forward_motion_count_away_from_the_centre() -> None:
    roll = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.1])
    length = blur_length_px(roll, INTR.fx, INTR.width, INTR.height, 2.0)
    # a point at half the half-diagonal from the centre streaks by radius x angle
    radius = 0.25 * math.hypot(INTR.width, INTR.height)
    point = np.array([radius / INTR.fx * 2.0, 0.0, 2.0])
    assert length == pytest.approx(_streak_px(roll, point), rel=0.05)
    assert blur_length_px(np.zeros(6), INTR.fx, INTR.width, INTR.height, 2.0) == 0.0
    assert blur_length_px(np.full(6, np.nan), INTR.fx, INTR.width, INTR.height, 2.0) == 0.0


def test_subframes_sample_the_streak_densely_enough() -> None:
    spacing = 1.5
    for length in [0.1, 0.5, 2.9, 4.9, 9.0, 12.0]:
        n = subframes_for_blur(length, spacing, 15)
        assert n % 2 == 1 and n >= 3
        assert length / (n - 1) <= spacing + 1e-9  # no gap between sub-frames wider than the spacing
        if n > 3:
            assert length / (n - 3) > spacing  # and no more sub-frames than that needs
    assert subframes_for_blur(9.0, spacing, 15) == 7  # a 9 px streak: 7 sub-frames, not 5
    # no streak to speak of (a sharp camera): the frame renders sharp, one sub-frame
    assert [subframes_for_blur(length, spacing, 15) for length in (0.0, 0.05, float("nan"))] == [1, 1, 1]
    assert subframes_for_blur(0.1, spacing, 15) == subframes_for_blur(0.5, spacing, 15) == 3
    assert subframes_for_blur(100.0, spacing, 9) == 9  # capped
    assert subframes_for_blur(100.0, spacing, 8) == 7  # the cap rounds down to odd
    with pytest.raises(ValueError):
        subframes_for_blur(1.0, 0.0, 9)


def test_fixed_subframes_win_over_the_blur_length() -> None:
    pan = np.array([0.0, 0.0, 0.0, 0.0, 0.1, 0.0])  # 8 px at fx 80
    assert exposure_subframes(5, [pan], INTR.fx, INTR.width, INTR.height, 2.0, 1.5, 15) == 5
    assert exposure_subframes(0, [pan], INTR.fx, INTR.width, INTR.height, 2.0, 1.5, 15) == 7
    # the longest streak decides: a fast object's twist next to a still camera
    assert exposure_subframes(0, [np.zeros(6), pan], INTR.fx, INTR.width, INTR.height, 2.0, 1.5, 15) == 7
    assert exposure_subframes(0, [np.zeros(6)], INTR.fx, INTR.width, INTR.height, 2.0, 1.5, 15) == 1  # still: sharp



def test_the_streak_is_where_the_subframes_see_the_image_centre() -> None:
    """``streak_offsets``: a bright dot 2 m ahead on the image centre's ray, rendered from each
    sub-exposure pose, sits where the streak says (its intensity centroid, relative to their mean);
    a bend moves both ends of the streak the same way."""
    settings, k, pose, _ = wall_view()
    dot = SceneTensors(
        torch.tensor([[0.0, 0.0, 2.0]]), torch.tensor([[1.0, 0, 0, 0]]), torch.full((1, 3), 0.03),
        torch.tensor([0.9]), rgb_to_sh0(torch.ones(1, 3))[:, None, :],
    )
    twist = torch.tensor([0.0, 0.0, 0.0, 0.02, 0.06, 0.0], dtype=torch.float64)  # ~3.8 px sideways, ~1.3 px up
    bend = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.1, 0.0], dtype=torch.float64)
    offsets = exposure_offsets(5, torch.float64)
    ys, xs = torch.meshgrid(torch.arange(INTR.height, dtype=torch.float64),
                            torch.arange(INTR.width, dtype=torch.float64), indexing="ij")
    centre = np.array([[float(k[0, 2]), float(k[1, 2])]])

    def streak_at_centre(b: torch.Tensor | None) -> np.ndarray:
        return streak_offsets(pose, twist, k, offsets, np.array([2.0]), centre, b)[0]

    for b in (None, bend):
        streak = streak_at_centre(b)
        assert streak.shape == (5, 2) and np.abs(streak.mean(0)).max() < 1e-9
        rgb = render_views(dot, exposure_poses(pose, twist, offsets, b), k, settings).rgb.double().mean(-1)  # [S, H, W]
        centroid = torch.stack([(rgb * xs).sum((1, 2)), (rgb * ys).sum((1, 2))], 1) / rgb.sum((1, 2))[:, None]
        centroid = (centroid - centroid.mean(0)).numpy()
        assert np.abs(centroid - streak).max() < 0.05, (centroid, streak)
    straight, bent = streak_at_centre(None), streak_at_centre(bend)
    assert abs(straight[4, 0] - straight[0, 0]) > 3.0
    assert bent[0, 0] - straight[0, 0] == pytest.approx(bent[4, 0] - straight[4, 0], rel=0.01)  # both ends alike
    assert abs(bent[0, 0] - straight[0, 0]) > 0.3


def test_the_streak_filter_inverts_the_streaks_attenuation() -> None:
    """``(1 + eps) / (|H|^2 + eps)``: 1 at zero frequency; at a zero of a 4 px box (period 4 px
    along it) ``(1 + eps) / eps``; across the streak (vertical frequencies) 1; equal to the
    definition written with a cosine and sine per shift."""
    streak = np.stack([np.arange(4) - 1.5, np.zeros(4)], 1)  # 4 shifts 1 px apart: a 4 px box along x
    filt = streak_filter(streak, 32, 64, 0.1)
    assert filt.shape == (32, 33)
    assert float(filt[0, 0]) == pytest.approx(1.0)
    assert float(filt[0, 16]) == pytest.approx(1.1 / 0.1)  # 16 / 64 = 1 / 4 cycles per pixel
    assert np.allclose(filt[:, 0], 1.0)
    fy = np.fft.fftfreq(32)[:, None] * 2 * np.pi
    fx = np.fft.rfftfreq(64)[None] * 2 * np.pi
    phase = np.stack([fx * dx + fy * dy for dx, dy in streak])
    h2 = np.cos(phase).mean(0) ** 2 + np.sin(phase).mean(0) ** 2
    assert np.allclose(filt, 1.1 / (h2 + 0.1), rtol=1e-5)


def test_preconditioned_gradients_fit_detail_through_streaks_sooner() -> None:
    """An image of 2 px blocks seen only through box streaks of 5-7 px in three directions (means
    of shifted copies, as the sub-frames average): Adam from flat grey gets much closer to the sharp
    image in the same steps when each view's gradient is filtered by its streak's inverse
    attenuation (``precondition_streak``); the forward value is untouched."""
    from posegs_ros.scene.loss import photometric_loss

    gen = torch.Generator().manual_seed(5)
    sharp = 0.2 + 0.6 * torch.rand(24, 32, 3, generator=gen).repeat_interleave(2, 0).repeat_interleave(2, 1)
    views = [np.stack([np.arange(7) - 3.0, np.zeros(7)], 1), np.stack([np.zeros(5), np.arange(5) - 2.0], 1),
             np.stack([np.arange(7) - 3.0, np.arange(7) - 3.0], 1)]

    def streak(x: torch.Tensor, shifts: np.ndarray) -> torch.Tensor:
        return torch.stack([torch.roll(x, (int(dy), int(dx)), (0, 1)) for dx, dy in shifts]).mean(0)

    whole = torch.ones(1, 48, 64)  # one tile: the whole image
    x0 = torch.rand(48, 64, 3, generator=gen)
    assert torch.equal(precondition_streak(x0, views[0][None], 0.1, whole), x0)
    psnr = {}
    for eps in (0.0, 0.1):
        x = torch.full_like(sharp, 0.5).requires_grad_(True)
        opt = torch.optim.Adam([x], lr=0.005)
        for step in range(80):
            shifts = views[step % 3]
            opt.zero_grad()
            pred = streak(x, shifts)
            if eps > 0:
                pred = precondition_streak(pred, shifts[None], eps, whole)
            photometric_loss(pred, streak(sharp, shifts), 0.2, None, 0.5).backward()
            opt.step()
        psnr[eps] = -10 * math.log10(float(((x.detach() - sharp) ** 2).mean()))
    assert psnr[0.1] > psnr[0.0] + 4.0, psnr
