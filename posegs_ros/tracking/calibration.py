"""Focal-length self-calibration from the first seconds of tracking.

A monocular map inherits any error of the focal length it is given. With a focal a few percent
too long, rotations come out too small, the rest of the motion turns into translation and the
map's depth bends (the 7-Scenes datasets ship their depth camera's 585 px as
``camera-intrinsics.txt``; the colour images fit ~525-550 px; a camera_info copied from the
wrong camera or a zoomed lens does the same). Short tracks cannot tell: the poses and the
Gaussians absorb a zoom. What does tell is a bundle adjustment over points followed across a few
seconds of hand-held motion, started from the engine's own online poses: one focal scale
(principal point and aspect kept), every frame's pose and every point's position, with a
robust (soft-L1) reprojection loss and the monocular scale held by the first-to-last camera
distance. It is solved by Levenberg-Marquardt with an analytic Jacobian, the points eliminated in
each step (Schur complement: a dense solve over the cameras only): 1.0-2.1 s for 90 views and
400 points at 320x240 (scipy's least_squares took 4-7 s for 30 and could stop short of the optimum).

Measured (README, "Real camera data"): on synthetic sequences with the true focal the estimate
stays within 3 % of it (0.98-1.03); on four 7-Scenes redkitchen windows given 585 px it gives
0.89-0.98 x 585. Hence the engine adopts an estimate only when it differs from the given focal by
at least ``calibration.min_change`` (5 %).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import cv2
import numpy as np
from scipy.sparse import csr_matrix
from scipy.spatial.transform import Rotation

__all__ = ["FocalEstimate", "PointTracks", "track_points", "estimate_focal_scale"]

log = logging.getLogger(__name__)

TRACK_FB_PX = 0.7  # a track ends where the backward Lucas-Kanade track misses its start by more than this
ROBUST_PX = 1.0  # soft-L1 scale of the reprojection residuals (pixels)
TRIANGULATION_PX = 4.0  # a point whose initial reprojection misses any view by more is left out
MIN_POINTS = 30
MIN_VIEWS = 4


@dataclass
class PointTracks:
    """Image points followed through frames: ``uv[i]`` ``[F, 2]`` pixels in ``frames[i]`` ``[F]``."""

    uv: list[np.ndarray]
    frames: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.uv)


@dataclass
class FocalEstimate:
    """What :func:`estimate_focal_scale` found: the focal fits best at ``scale`` x the given one."""

    scale: float
    sigma: float  # standard deviation of ``scale`` (Gauss-Newton, at the robust residuals' noise level)
    rms_px: float  # reprojection RMS of the observations within 3 px, at the estimate
    points: int
    views: int
    observations: int
    rotation_deg: float  # largest rotation between two of the views: what makes the focal observable

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return {k: float(v) if isinstance(v, (float, np.floating)) else v for k, v in asdict(self).items()}


def track_points(grays: Sequence[np.ndarray], max_points: int = 500, min_distance: int = 8) -> PointTracks:
    """Follow corners through ``grays`` (``[H, W]`` uint8 each, consecutive frames) by pyramidal
    Lucas-Kanade (window ~1/30 of the width) with a forward-backward check; corners are topped up in every frame where fewer
    than 70 % of ``max_points`` are alive, away from the live ones. A lost track never resumes."""
    # a window of ~1/30 of the image width: larger ones bias the focal (4 % at 128x96 with 21 px, where the
    # view changes within the window); 11 px at 320x240
    win = max(7, int(round(grays[0].shape[1] / 30)) | 1) if len(grays) else 11
    lk = {"winSize": (win, win), "maxLevel": 3, "criteria": (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 30, 0.01)}
    uv: list[list[np.ndarray]] = []
    frames: list[list[int]] = []
    live: list[int] = []
    live_pts = np.zeros((0, 2), np.float32)
    for t, gray in enumerate(grays):
        h, w = gray.shape
        if t > 0 and live:
            nxt, st, _ = cv2.calcOpticalFlowPyrLK(grays[t - 1], gray, live_pts, None, **lk)
            back, st_back, _ = cv2.calcOpticalFlowPyrLK(gray, grays[t - 1], nxt, None, **lk)
            fb = np.linalg.norm(back - live_pts, axis=1)
            inside = (nxt[:, 0] >= 0) & (nxt[:, 0] <= w - 1) & (nxt[:, 1] >= 0) & (nxt[:, 1] <= h - 1)
            ok = (st.ravel() == 1) & (st_back.ravel() == 1) & (fb < TRACK_FB_PX) & inside
            live = [i for i, keep in zip(live, ok) if keep]
            live_pts = nxt[ok]
            for i, p in zip(live, live_pts):
                uv[i].append(p.astype(np.float64))
                frames[i].append(t)
        if len(live) < 0.7 * max_points:
            mask = np.full((h, w), 255, np.uint8)
            for p in live_pts:
                cv2.circle(mask, (int(p[0]), int(p[1])), min_distance, 0, -1)
            new = cv2.goodFeaturesToTrack(gray, maxCorners=max_points - len(live), qualityLevel=0.01,
                                          minDistance=min_distance, mask=mask, blockSize=7)
            if new is not None:
                new = new.reshape(-1, 2).astype(np.float32)
                for p in new:
                    live.append(len(uv))
                    uv.append([p.astype(np.float64)])
                    frames.append([t])
                live_pts = np.concatenate([live_pts, new]) if len(live_pts) else new
    return PointTracks([np.array(u) for u in uv], [np.array(f, dtype=np.int64) for f in frames])


def _triangulate(world_to_cam: np.ndarray, k: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Linear triangulation of one point seen at ``uv`` ``[V, 2]`` by views ``world_to_cam`` ``[V, 4, 4]``."""
    rays = np.linalg.solve(k, np.concatenate([uv, np.ones((len(uv), 1))], 1).T).T  # [V, 3]
    p = world_to_cam[:, :3, :]  # [V, 3, 4]
    a = np.concatenate([rays[:, :1] * p[:, 2] - p[:, 0], rays[:, 1:2] * p[:, 2] - p[:, 1]])
    x = np.linalg.svd(a)[2][-1]
    return x[:3] / x[3] if abs(x[3]) > 1e-12 else np.full(3, np.nan)


def _project(k: np.ndarray, scale: float, rotvec: np.ndarray, trans: np.ndarray, view: np.ndarray,
             points: np.ndarray) -> np.ndarray:
    """Pixels ``[O, 2]`` of ``points`` ``[O, 3]`` in views ``view`` ``[O]`` (focal ``scale`` x ``k``'s)."""
    cam = Rotation.from_rotvec(rotvec[view]).apply(points) + trans[view]
    z = np.where(np.abs(cam[:, 2]) < 1e-6, 1e-6, cam[:, 2])
    return np.stack([k[0, 0] * scale * cam[:, 0] / z + k[0, 2], k[1, 1] * scale * cam[:, 1] / z + k[1, 2]], 1)


@dataclass
class _Problem:
    """A bundle adjustment set up by :func:`_setup`: views' world-to-camera poses and points."""

    views: list[int]
    rot0: np.ndarray  # [V, 3] rotation vectors (world to camera)
    trans0: np.ndarray  # [V, 3]
    points: np.ndarray  # [P, 3]
    view_of: np.ndarray  # [O] observation -> view slot
    point_of: np.ndarray  # [O] observation -> point
    uv: np.ndarray  # [O, 2] observed pixels
    span: float  # first-to-last camera distance (the gauge of scale)


def _centre(rotvec: np.ndarray, trans: np.ndarray) -> np.ndarray:
    return -Rotation.from_rotvec(rotvec).inv().apply(trans)


def _setup(tracks: PointTracks, camera_to_world: np.ndarray, k: np.ndarray, views: Sequence[int],
           max_points: int) -> _Problem | None:
    """Triangulate the longest tracks seen by :data:`MIN_VIEWS` or more of ``views`` (at most
    ``max_points``) from the given poses, keeping those that reproject within
    :data:`TRIANGULATION_PX` in every view; None when too few points or views are usable."""
    views = [int(v) for v in views if np.isfinite(camera_to_world[v]).all()]
    if len(views) < MIN_VIEWS:
        return None
    slot = {v: i for i, v in enumerate(views)}
    w2c = np.linalg.inv(camera_to_world[views])  # [V, 4, 4]
    candidates = []
    for uv, frames in zip(tracks.uv, tracks.frames):
        keep = np.array([f in slot for f in frames], dtype=bool)
        if keep.sum() >= MIN_VIEWS:
            candidates.append((uv[keep], np.array([slot[f] for f in frames[keep]])))
    candidates.sort(key=lambda c: -len(c[1]))
    points, obs_view, obs_point, obs_uv = [], [], [], []
    for uv, vs in candidates:
        x = _triangulate(w2c[vs], k, uv)
        if not np.isfinite(x).all():
            continue
        cam = np.einsum("vij,j->vi", w2c[vs, :3, :3], x) + w2c[vs, :3, 3]
        if (cam[:, 2] <= 1e-6).any():
            continue
        proj = cam[:, :2] / cam[:, 2:3] * [k[0, 0], k[1, 1]] + k[:2, 2]
        if np.linalg.norm(proj - uv, axis=1).max() > TRIANGULATION_PX:
            continue
        obs_view.append(vs)
        obs_point.append(np.full(len(vs), len(points)))
        obs_uv.append(uv)
        points.append(x)
        if len(points) >= max_points:
            break
    if len(points) < MIN_POINTS:
        return None
    rot0 = Rotation.from_matrix(w2c[:, :3, :3]).as_rotvec()
    trans0 = w2c[:, :3, 3].copy()
    span = float(np.linalg.norm(_centre(rot0[-1], trans0[-1]) - _centre(rot0[0], trans0[0])))
    if not span > 1e-9:
        return None
    return _Problem(views, rot0, trans0, np.array(points), np.concatenate(obs_view), np.concatenate(obs_point),
                    np.concatenate(obs_uv), span)


def _solve(problem: _Problem, k: np.ndarray, max_evaluations: int) -> tuple[_Solution, Any]:
    """Soft-L1 bundle adjustment of ``problem``: one log focal scale, every view's pose but the
    first's and every point; returns (the solution, unpack(x) -> (scale, rotvec [V, 3], trans
    [V, 3], points [P, 3]))."""
    pr = problem
    n_views, n_points, n_obs = len(pr.views), len(pr.points), len(pr.view_of)
    n_cameras = 1 + 6 * (n_views - 1)  # the focal, then the poses; the points follow

    def unpack(x: np.ndarray) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
        poses = x[1:n_cameras].reshape(-1, 6)
        rotvec = np.concatenate([pr.rot0[:1], poses[:, :3]])
        trans = np.concatenate([pr.trans0[:1], poses[:, 3:]])
        return float(np.exp(x[0])), rotvec, trans, x[n_cameras:].reshape(n_points, 3)

    def residuals(x: np.ndarray) -> np.ndarray:
        scale, rotvec, trans, pts = unpack(x)
        uv = _project(k, scale, rotvec, trans, pr.view_of, pts[pr.point_of])
        gauge = np.linalg.norm(_centre(rotvec[-1], trans[-1]) - _centre(rotvec[0], trans[0])) / pr.span - 1.0
        return np.concatenate([(uv - pr.uv).ravel(), [100.0 * gauge]])

    # the Jacobian's non-zeros: each pixel residual depends on the focal, its view's pose (not the
    # first's) and its point; the gauge on the last view's pose. Values come in this order.
    moving = pr.view_of > 0
    rows, cols = [], []
    for axis in range(2):
        r = 2 * np.arange(n_obs) + axis
        rows += [r] + [r[moving]] * 6 + [r] * 3
        cols += [np.zeros(n_obs, np.int64)]
        cols += [1 + 6 * (pr.view_of[moving] - 1) + c for c in range(6)]
        cols += [n_cameras + 3 * pr.point_of + c for c in range(3)]
    rows.append(np.full(6, 2 * n_obs))
    cols.append(np.arange(n_cameras - 6, n_cameras))
    r_all, c_all = np.concatenate(rows), np.concatenate(cols)

    def jacobian(x: np.ndarray) -> csr_matrix:
        # analytic: d pixel / d (log focal, rotation vector, translation, point) through
        # p = R(w) X + t, with d R(w) X / d w = -[R X]x J_left(w)
        scale, rotvec, trans, pts = unpack(x)
        rmat = Rotation.from_rotvec(rotvec).as_matrix()  # [V, 3, 3]
        q = np.einsum("oij,oj->oi", rmat[pr.view_of], pts[pr.point_of])  # [O, 3]
        p = q + trans[pr.view_of]
        z = np.where(np.abs(p[:, 2]) < 1e-6, 1e-6, p[:, 2])
        f = np.array([k[0, 0], k[1, 1]]) * scale
        proj = np.zeros((n_obs, 2, 3))  # d pixel / d p
        proj[:, 0, 0], proj[:, 1, 1] = f[0] / z, f[1] / z
        proj[:, :, 2] = -f * p[:, :2] / z[:, None] ** 2
        d_rot = -np.einsum("oaj,ojk,okl->oal", proj, _skew(q), _left_jacobian(rotvec)[pr.view_of])
        d_point = np.einsum("oaj,ojk->oak", proj, rmat[pr.view_of])
        vals = []
        for axis in range(2):
            vals.append(f[axis] * p[:, axis] / z)
            vals += [d_rot[moving, axis, c] for c in range(3)] + [proj[moving, axis, c] for c in range(3)]
            vals += [d_point[:, axis, c] for c in range(3)]
        vals.append(_gauge_gradient(rotvec[0], trans[0], rotvec[-1], trans[-1], pr.span))
        return csr_matrix((np.concatenate(vals), (r_all, c_all)), shape=(2 * n_obs + 1, n_cameras + 3 * n_points))

    x0 = np.concatenate([[0.0], np.concatenate([pr.rot0[1:], pr.trans0[1:]], 1).ravel(), pr.points.ravel()])
    return _levenberg_marquardt(residuals, jacobian, x0, n_cameras, max_evaluations), unpack


@dataclass
class _Solution:
    """What :func:`_levenberg_marquardt` returns (scipy.optimize.least_squares' names)."""

    x: np.ndarray
    fun: np.ndarray  # residuals at x
    cost: float  # robust cost at x, as least_squares(loss="soft_l1") counts it
    jac: csr_matrix  # Jacobian at x, rows scaled by the square root of the robust weights


def _soft_l1(r: np.ndarray) -> tuple[float, np.ndarray]:
    """Soft-L1 cost of residuals ``r`` at scale :data:`ROBUST_PX` (as scipy's least_squares counts
    it), and their iteratively-reweighted-least-squares weights."""
    s = (r / ROBUST_PX) ** 2
    return float(ROBUST_PX ** 2 * np.sum(np.sqrt(1.0 + s) - 1.0)), 1.0 / np.sqrt(1.0 + s)


def _levenberg_marquardt(residuals: Any, jacobian: Any, x0: np.ndarray, n_cameras: int,
                         max_evaluations: int) -> _Solution:
    """Robust (soft-L1, reweighted) Levenberg-Marquardt for a bundle adjustment whose parameters
    are ``n_cameras`` camera values followed by points of 3 that each residual touches one of:
    the points are eliminated per step (Schur complement), so a step costs a dense solve of the
    camera block only. At most ``max_evaluations`` residual evaluations."""
    x = x0.copy()
    r = residuals(x)
    cost, weight = _soft_l1(r)
    n_points = (len(x) - n_cameras) // 3
    damping, evaluations = 1e-4, 1
    jac = jacobian(x)
    while evaluations < max_evaluations:
        hcc, hcp, blocks = _normal_blocks(jac, weight, n_cameras)
        grad = jac.T @ (weight * r)
        grad_c, grad_p = grad[:n_cameras], grad[n_cameras:].reshape(n_points, 3)
        improved = converged = False
        while evaluations < max_evaluations:
            schur, hcp_binv, b_inv = _eliminate_points(hcc, hcp, blocks, damping)
            rhs = -(grad_c - hcp_binv @ grad_p.ravel())
            try:
                d_cam = np.linalg.solve(schur, rhs)
            except np.linalg.LinAlgError:
                d_cam = np.linalg.lstsq(schur, rhs, rcond=None)[0]
            d_pts = -np.einsum("pij,pj->pi", b_inv, grad_p + np.einsum("cpi,c->pi", hcp, d_cam)).ravel()
            x_new = x + np.concatenate([d_cam, d_pts])
            r_new = residuals(x_new)
            evaluations += 1
            cost_new, weight_new = _soft_l1(r_new)
            if np.isfinite(cost_new) and cost_new < cost:
                converged = cost - cost_new < 1e-8 * cost
                x, r, cost, weight = x_new, r_new, cost_new, weight_new
                damping = max(damping / 3.0, 1e-9)
                improved = True
                break
            damping *= 4.0
        if not improved:  # jac is the Jacobian at x
            break
        jac = jacobian(x)
        if converged:
            break
    return _Solution(x, r, cost, jac.multiply(np.sqrt(weight)[:, None]).tocsr())


def _normal_blocks(jac: csr_matrix, weight: np.ndarray, n_cameras: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The normal matrix J^T W J of a bundle adjustment (``n_cameras`` camera values, then points
    of 3) as its camera block ``[C, C]``, camera-point block ``[C, P, 3]`` (dense: BLAS below) and
    point blocks ``[P, 3, 3]`` (each residual touches one point, so the rest is zero)."""
    normal = (jac.T @ jac.multiply(weight[:, None]).tocsr()).tocsr()
    n_points = (normal.shape[0] - n_cameras) // 3
    hpp = normal[n_cameras:, n_cameras:]
    blocks = np.stack([np.stack([hpp[i::3, :][:, j::3].diagonal() for j in range(3)], -1) for i in range(3)], 1)
    return (normal[:n_cameras, :n_cameras].toarray(),
            normal[:n_cameras, n_cameras:].toarray().reshape(n_cameras, n_points, 3), blocks)


def _eliminate_points(hcc: np.ndarray, hcp: np.ndarray, blocks: np.ndarray,
                      damping: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Schur complement of the point blocks, each diagonal damped by ``damping`` (Levenberg-Marquardt;
    0 = none): the reduced camera matrix ``[C, C]``, H_cp H_pp^-1 ``[C, 3P]`` and H_pp^-1 ``[P, 3, 3]``."""
    n_cameras = len(hcc)
    b_inv = np.linalg.inv(blocks + damping * np.eye(3) * (np.einsum("pii->pi", blocks)[:, :, None] + 1e-9))
    hcp_binv = np.einsum("cpi,pij->cpj", hcp, b_inv).reshape(n_cameras, -1)
    schur = hcc + damping * np.diag(np.diag(hcc) + 1e-9) - hcp_binv @ hcp.reshape(n_cameras, -1).T
    return schur, hcp_binv, b_inv


def _skew(v: np.ndarray) -> np.ndarray:
    """``[N, 3, 3]`` cross-product matrices of ``v`` ``[N, 3]``."""
    out = np.zeros((len(v), 3, 3))
    out[:, 0, 1], out[:, 0, 2], out[:, 1, 2] = -v[:, 2], v[:, 1], -v[:, 0]
    return out - np.transpose(out, (0, 2, 1))


def _left_jacobian(rotvec: np.ndarray) -> np.ndarray:
    """``[N, 3, 3]`` left Jacobians of SO(3) at ``rotvec`` ``[N, 3]``."""
    theta = np.linalg.norm(rotvec, axis=1)[:, None, None]
    w = _skew(rotvec)
    small = theta < 1e-6
    t = np.where(small, 1.0, theta)
    a = np.where(small, 0.5, (1.0 - np.cos(t)) / t ** 2)
    b = np.where(small, 1.0 / 6.0, (t - np.sin(t)) / t ** 3)
    return np.eye(3) + a * w + b * (w @ w)


def _gauge_gradient(rot_first: np.ndarray, trans_first: np.ndarray, rot_last: np.ndarray, trans_last: np.ndarray,
                    span: float) -> np.ndarray:
    """``[6]`` derivative of the gauge residual (first-to-last distance) by the last view's pose
    (central differences: six cheap evaluations)."""
    first = _centre(rot_first, trans_first)

    def gauge(v: np.ndarray) -> float:
        return 100.0 * (np.linalg.norm(_centre(v[:3], v[3:]) - first) / span - 1.0)

    v0, eps = np.concatenate([rot_last, trans_last]), 1e-6
    return np.array([(gauge(v0 + eps * e) - gauge(v0 - eps * e)) / (2 * eps) for e in np.eye(6)])


def estimate_focal_scale(tracks: PointTracks, camera_to_world: np.ndarray, k: np.ndarray, views: Sequence[int],
                         max_points: int = 400, max_evaluations: int = 100) -> FocalEstimate | None:
    """Self-calibrating bundle adjustment: the focal scale that best explains ``tracks``.

    Args:
        tracks: points followed through the frames (frame numbers index ``camera_to_world``).
        camera_to_world: ``[T, 4, 4]`` the engine's poses of those frames (NaN where none).
        k: ``[3, 3]`` the given intrinsics.
        views: the frames that take part (e.g. every third posed frame): their poses are refined,
            the first one's held (gauge), and the distance from the first to the last camera
            centre holds the scale.
        max_points: the longest tracks seen by at least four views are used, at most this many.
    Returns None when too few points or views are usable.
    """
    problem = _setup(tracks, camera_to_world, k, views, max_points)
    if problem is None:
        return None
    sol, unpack = _solve(problem, k, max_evaluations)
    n_views, n_points, n_obs = len(problem.views), len(problem.points), len(problem.view_of)
    scale, rotvec, _, _ = unpack(sol.x)
    err = np.linalg.norm(sol.fun[:-1].reshape(-1, 2), axis=1)
    inlier = err < 3.0
    rms = float(np.sqrt(np.mean(err[inlier] ** 2))) if inlier.any() else float("nan")
    sigma = float("inf")
    try:  # Gauss-Newton covariance of the log scale (scipy folds the robust weights into the Jacobian)
        # the camera block of (J^T J)^-1 is the inverse of the points' Schur complement
        hcc, hcp, blocks = _normal_blocks(sol.jac, np.ones(sol.jac.shape[0]), len(sol.x) - 3 * n_points)
        schur = _eliminate_points(hcc, hcp, blocks, 0.0)[0]
        noise = 2.0 * sol.cost / max(len(sol.fun) - len(sol.x), 1)
        var = np.linalg.pinv(schur, rcond=1e-12, hermitian=True)[0, 0] * noise
        sigma = float(scale * np.sqrt(max(var, 0.0)))
    except (np.linalg.LinAlgError, ValueError):
        pass
    rots = Rotation.from_rotvec(rotvec)
    rotation_deg = float(np.degrees(max((rots[i].inv() * rots).magnitude().max() for i in range(n_views))))
    return FocalEstimate(scale, sigma, rms, n_points, n_views, n_obs, rotation_deg)
