"""``posegs synth OUT``: a synthetic motion-blurred camera sequence with exact ground truth.

Library use (the engine's tests build small sequences in memory)::

    seq = generate(SynthConfig(frames=8, width=160, height=120, subframes=5))
    seq.frames[0].blurred, seq.frames[0].pose, seq.intrinsics
    write(seq, "out/", storage="mcap")

Model: the camera follows a smooth continuous trajectory (a slow dolly with real parallax plus
hand-held rotational shake); frame ``i`` is stamped at mid-exposure ``t_i = start + i / fps``.
Its blurred image is the mean of ``subframes`` sharp renders at times
``t_i + s_k * exposure``, ``s_k = (k + 1/2) / S - 1/2`` (midpoint rule over the exposure),
with the camera (and the moving box) posed on their continuous trajectories at those times.
Poses come straight from the continuous trajectories (no interpolation error); the sharp image,
depth and mask are rendered at mid-exposure.  The blur extent of a frame is the mean over its
pixels of the length of the path each pixel's scene point travels in the image during the
exposure (from the GT depth and poses, sampled finely over the whole exposure).  Defaults
(320x240, fx = fy = 250, 30 fps, 25 ms exposure, 9 sub-frames) give 4-5 px of mean blur.

Output directory (:func:`write`; every file written atomically, ``meta.json`` last)::

    bag/                rosbag2 (mcap or sqlite3): /camera/image_raw (rgb8, blurred),
                        /camera/camera_info (with every image), /ground_truth/pose (PoseStamped,
                        mid-exposure camera-to-map, frame "map"), /ground_truth/image_sharp,
                        /ground_truth/object_pose (with --dynamic; the k-th box, k >= 2, on
                        /ground_truth/object_pose_<k>)
    gt.tum              mid-exposure camera-to-map poses, t = header stamp
    blurred/NNNN.png    the camera images (same as the bag's)
    sharp/NNNN.png      mid-exposure sharp renders
    depth/NNNN.npy      float32 metric z-depth at mid-exposure
    masks/NNNN.png      moving-object masks at mid-exposure (with --dynamic; every box), object.tum
                        (the first box's poses; object_<k>.tum for the k-th, k >= 2)
    meta.json           intrinsics, timing, seed, blur extent per frame and mean, scene
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from ..camera import Intrinsics
    from .scene import Scene

log = logging.getLogger(__name__)

__all__ = [
    "SynthConfig",
    "SynthFrame",
    "SynthSequence",
    "CameraPath",
    "ObjectPath",
    "SlidePath",
    "SpinPath",
    "OBJECT_MOTIONS",
    "object_paths",
    "generate",
    "write",
    "generated",
    "subframe_offsets",
    "add_arguments",
    "run",
]

CAMERA_FRAME = "camera_optical_frame"
MAP_FRAME = "map"
TOPICS = {
    "image": "/camera/image_raw",
    "camera_info": "/camera/camera_info",
    "pose": "/ground_truth/pose",
    "sharp": "/ground_truth/image_sharp",
    "object_pose": "/ground_truth/object_pose",
}
MAX_OBJECTS = 3
OBJECT_MOTIONS = ("swing", "slide", "spin")
OUTPUT_ENTRIES = ("bag", "sharp", "blurred", "depth", "masks", "gt.tum", "object.tum",
                  *(f"object_{k}.tum" for k in range(2, MAX_OBJECTS + 1)), "meta.json")


def object_topic(index: int) -> str:
    """Ground-truth pose topic of moving box ``index`` (0-based)."""
    return TOPICS["object_pose"] if index == 0 else f"{TOPICS['object_pose']}_{index + 1}"


def object_tum_name(index: int) -> str:
    """TUM file name of moving box ``index`` (0-based)."""
    return "object.tum" if index == 0 else f"object_{index + 1}.tum"


@dataclass(frozen=True)
class SynthConfig:
    """Everything that determines a synthetic sequence (same config -> same bytes)."""

    seed: int = 0
    frames: int = 60
    width: int = 320
    height: int = 240
    fps: float = 30.0
    exposure: float = 0.025  # seconds the shutter is open (<= 1 / fps)
    shake: float = 1.0  # scale of the hand-held rotational shake (0: smooth path only)
    subframes: int = 9  # sharp renders averaged per blurred frame
    dynamic: bool = False  # add moving textured boxes (ground-truth masks + poses)
    objects: int = 1  # moving boxes (with dynamic)
    object_motion: str = "swing"  # swing | slide | spin (with dynamic)
    object_size: float = 0.45  # cube edge (metres)
    object_speed: float = 1.0  # scale of the boxes' speeds (1: ~1.6-1.8 m/s swing / slide)
    texture_detail: str = "default"  # "fine": high-contrast detail of 1-3 px (text, noise, stripes, small tiles)
    supersample: int = 2  # rays per pixel side (antialiasing)
    focal: float | None = None  # pixels; default 250 * width / 320
    start_time: float = 1_700_000_000.0  # header stamp of frame 0 (seconds)

    def __post_init__(self) -> None:
        if self.frames < 1 or self.width < 8 or self.height < 8:
            raise ValueError(f"need frames >= 1 and an image of at least 8x8, got {self.frames}, "
                             f"{self.width}x{self.height}")
        if self.fps <= 0 or self.exposure < 0 or self.exposure > 1.0 / self.fps + 1e-12:
            raise ValueError(f"need fps > 0 and 0 <= exposure <= 1/fps, got fps={self.fps}, exposure={self.exposure}")
        if self.subframes < 1 or self.supersample < 1 or self.shake < 0:
            raise ValueError("subframes and supersample must be >= 1 and shake >= 0")
        if self.texture_detail not in ("default", "fine"):
            raise ValueError(f"texture_detail must be default or fine, got {self.texture_detail!r}")
        if self.object_motion not in OBJECT_MOTIONS:
            raise ValueError(f"object_motion must be one of {OBJECT_MOTIONS}, got {self.object_motion!r}")
        if not 1 <= self.objects <= MAX_OBJECTS or not 0.05 <= self.object_size <= 1.5 or self.object_speed < 0:
            raise ValueError(f"need 1 <= objects <= {MAX_OBJECTS}, 0.05 <= object_size <= 1.5 m and "
                             f"object_speed >= 0, got {self.objects}, {self.object_size}, {self.object_speed}")

    @property
    def focal_px(self) -> float:
        return float(self.focal) if self.focal is not None else 250.0 * self.width / 320.0


def subframe_offsets(subframes: int) -> np.ndarray:
    """Exposure-time offsets ``s_k`` in [-1/2, 1/2] (units of the exposure) of the sub-frames ``[S]``."""
    return (np.arange(subframes) + 0.5) / subframes - 0.5


def _rotation(rotvec: np.ndarray) -> np.ndarray:
    """Rodrigues: rotation matrix ``[3, 3]`` of a rotation vector ``[3]``."""
    theta = float(np.linalg.norm(rotvec))
    if theta < 1e-12:
        return np.eye(3)
    k = rotvec / theta
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(theta) * kx + (1 - np.cos(theta)) * kx @ kx


@dataclass(frozen=True)
class CameraPath:
    """Continuous camera-to-world trajectory: sinusoidal dolly + look-at + hand-held shake.

    Position: per axis ``centre + amp * sin(freq * t + phase)`` (lateral ~0.35 m/s: ~0.7 m of
    sideways travel in 2 s, bounded for long sequences).  Orientation: looking at a slowly
    drifting target on the far wall, then a body-frame shake rotation
    ``exp(shake * sum_k a_k * sin(2 pi f_k t + phi_k))`` (1.5-5 Hz, hand tremor / walking).
    """

    centre: np.ndarray  # [3]
    amp: np.ndarray  # [3]
    freq: np.ndarray  # [3] rad/s
    phase: np.ndarray  # [3]
    target_centre: np.ndarray  # [3]
    target_amp: np.ndarray  # [3]
    target_freq: np.ndarray  # [3]
    shake_amp: np.ndarray  # [K, 3] rad
    shake_freq: np.ndarray  # [K] Hz
    shake_phase: np.ndarray  # [K, 3]

    @classmethod
    def random(cls, rng: np.random.Generator, shake: float) -> CameraPath:
        lateral = rng.choice([-1.0, 1.0])
        amp = np.array([0.6 * lateral, 0.25, 0.05])
        freq = np.array([0.6, 0.45, 1.3]) * rng.uniform(0.9, 1.1, 3)
        phase = np.array([-freq[0] * 1.0, rng.uniform(-np.pi, np.pi), rng.uniform(-np.pi, np.pi)])
        shake_freq = rng.uniform(1.5, 5.0, 3)
        shake_amp = shake * rng.uniform(0.6, 1.0, (3, 3)) * np.array([0.03, 0.03, 0.012]) * (2.5 / shake_freq[:, None])
        return cls(
            centre=np.array([0.0, -0.1, 1.4]) + rng.uniform(-0.05, 0.05, 3), amp=amp, freq=freq, phase=phase,
            target_centre=np.array([0.0, 3.8, 1.15]), target_amp=np.array([0.6, 0.0, 0.15]),
            target_freq=np.array([0.35, 0.0, 0.5]) * rng.uniform(0.8, 1.2, 3),
            shake_amp=shake_amp, shake_freq=shake_freq, shake_phase=rng.uniform(-np.pi, np.pi, (3, 3)),
        )

    def pose(self, t: float) -> np.ndarray:
        """Camera-to-world ``[4, 4]`` at time ``t`` (seconds since the first frame)."""
        from .scene import look_at

        position = self.centre + self.amp * np.sin(self.freq * t + self.phase)
        target = self.target_centre + self.target_amp * np.sin(self.target_freq * t)
        pose = look_at(position, target)
        shake = (self.shake_amp * np.sin(2 * np.pi * self.shake_freq[:, None] * t + self.shake_phase)).sum(axis=0)
        pose[:3, :3] = pose[:3, :3] @ _rotation(shake)
        return pose


@dataclass(frozen=True)
class ObjectPath:
    """Object-to-world trajectory of a ``swing`` box: a fast side-to-side swing while it spins.

    Peak speed ~1.8 m/s at ~1.7 m from the camera plus ~2 rad/s spin (``speed`` 1): blurred like
    the camera.  ``speed`` scales every frequency (so the speeds); a second box swings lower,
    further away and to one side.
    """

    centre: np.ndarray  # [3]
    amp: np.ndarray  # [3]
    freq: np.ndarray  # [3] rad/s
    phase: np.ndarray  # [3]
    spin: float  # rad/s about z
    spin0: float
    tilt: float  # rad amplitude about x
    tilt_freq: float = 1.3  # rad/s

    @classmethod
    def random(cls, rng: np.random.Generator, speed: float = 1.0, size: float = 0.45, index: int = 0,
               first: ObjectPath | None = None) -> ObjectPath:
        centre = np.array([0.0, 1.7, 1.05]) if index == 0 else np.array([0.9 * (-1.0) ** index, 2.3, 0.8])
        amp = np.array([0.8, 0.1, 0.12]) if index == 0 else np.array([0.6, 0.1, 0.1])
        return cls(
            centre=centre, amp=amp,
            freq=np.array([2.2, 1.1, 3.1]) * rng.uniform(0.9, 1.1, 3) * speed, phase=rng.uniform(-np.pi, np.pi, 3),
            spin=float(rng.uniform(1.5, 2.5)) * rng.choice([-1.0, 1.0]) * speed,
            spin0=float(rng.uniform(0, 2 * np.pi)), tilt=0.4, tilt_freq=1.3 * speed,
        )

    def pose(self, t: float) -> np.ndarray:
        """Object-to-world ``[4, 4]`` at time ``t``."""
        pose = np.eye(4)
        pose[:3, :3] = _rotation(np.array([0.0, 0.0, self.spin0 + self.spin * t])) @ _rotation(
            np.array([self.tilt * np.sin(self.tilt_freq * t), 0.0, 0.0]))
        pose[:3, 3] = self.centre + self.amp * np.sin(self.freq * t + self.phase)
        return pose


@dataclass(frozen=True)
class SlidePath:
    """A ``slide`` box: straight sideways (x) at constant speed, turning round off-screen.

    The box starts just outside the view and crosses it (it enters and leaves the image);
    it moves back and forth between ``x = -reach`` and ``+reach`` (the room's side walls minus
    its half size, outside the camera's view at its depth), yawing slowly.  ``speed`` 1 is
    ~1.6 m/s at ~1.3 m from the camera (~6 px of blur); a second box slides the other way
    further back, so the two cross and the nearer one occludes the other.
    """

    start: float  # x at t = 0
    direction: float  # +1 or -1: the sense of the first crossing
    speed: float  # m/s
    reach: float  # |x| where it turns round
    y: float
    z: float
    yaw_rate: float  # rad/s
    yaw0: float

    @classmethod
    def random(cls, rng: np.random.Generator, speed: float = 1.0, size: float = 0.45, index: int = 0,
               first: SlidePath | None = None) -> SlidePath:
        direction = float(rng.choice([-1.0, 1.0]))
        if first is not None:  # the other boxes slide against the first one
            direction = -first.direction
        start = -direction * float(rng.uniform(1.6, 2.0) if index == 0 else rng.uniform(1.0, 1.4))
        y = 1.2 + index * max(0.6, size + 0.1)
        return cls(start=start, direction=direction, speed=1.6 * speed * float(rng.uniform(0.9, 1.1)),
                   reach=2.45 - size / 2.0, y=y, z=1.15 - 0.2 * index, yaw_rate=float(rng.uniform(-0.6, 0.6)),
                   yaw0=float(rng.uniform(0, 2 * np.pi)))

    def pose(self, t: float) -> np.ndarray:
        """Object-to-world ``[4, 4]`` at time ``t``."""
        period = 4.0 * self.reach
        travelled = (self.direction * self.start + self.reach + self.speed * t) % period
        along = (travelled if travelled <= 2.0 * self.reach else period - travelled) - self.reach
        pose = np.eye(4)
        pose[:3, :3] = _rotation(np.array([0.0, 0.0, self.yaw0 + self.yaw_rate * t]))
        pose[:3, 3] = [self.direction * along, self.y, self.z]
        return pose


@dataclass(frozen=True)
class SpinPath:
    """A ``spin`` box: turns fast about a tilted axis while drifting slowly on a small circle.

    ``speed`` 1 is ~4 rad/s (corners at ~1.3 m/s for the default 0.45 m box) at ~1.6 m.
    """

    centre: np.ndarray  # [3]
    axis: np.ndarray  # [3] unit
    rate: float  # rad/s
    angle0: float
    drift: float  # m, radius of the drift circle
    drift_rate: float  # rad/s

    @classmethod
    def random(cls, rng: np.random.Generator, speed: float = 1.0, size: float = 0.45, index: int = 0,
               first: SpinPath | None = None) -> SpinPath:
        centre = (np.array([rng.uniform(-0.3, 0.3), 1.5, 1.1]) if index == 0
                  else np.array([0.8 * (-1.0) ** index, 2.0, 0.9]))
        axis = np.array([rng.uniform(-0.5, 0.5), rng.uniform(-0.5, 0.5), 1.0])
        return cls(centre=centre, axis=axis / np.linalg.norm(axis),
                   rate=4.0 * speed * float(rng.uniform(0.9, 1.1)) * float(rng.choice([-1.0, 1.0])),
                   angle0=float(rng.uniform(0, 2 * np.pi)), drift=0.08, drift_rate=1.0 * speed)

    def pose(self, t: float) -> np.ndarray:
        """Object-to-world ``[4, 4]`` at time ``t``."""
        pose = np.eye(4)
        pose[:3, :3] = _rotation(self.axis * (self.angle0 + self.rate * t))
        a = self.drift_rate * t
        pose[:3, 3] = self.centre + self.drift * np.array([np.cos(a) - 1.0, 0.0, np.sin(a)])
        return pose


_OBJECT_PATHS = {"swing": ObjectPath, "slide": SlidePath, "spin": SpinPath}


def object_paths(rng: np.random.Generator, count: int = 1, motion: str = "swing", speed: float = 1.0,
                 size: float = 0.45) -> list[ObjectPath | SlidePath | SpinPath]:
    """Random trajectories of ``count`` moving boxes for ``motion`` in :data:`OBJECT_MOTIONS`."""
    if motion not in _OBJECT_PATHS:
        raise ValueError(f"object motion must be one of {OBJECT_MOTIONS}, got {motion!r}")
    paths: list = []
    for index in range(count):
        paths.append(_OBJECT_PATHS[motion].random(rng, speed=speed, size=size, index=index,
                                                  first=paths[0] if paths else None))
    return paths


@dataclass
class SynthFrame:
    """One generated frame with its ground truth."""

    index: int
    stamp: float  # header stamp, seconds (mid-exposure)
    pose: np.ndarray  # [4, 4] float64 camera-to-map at mid-exposure
    blurred: np.ndarray  # [H, W, 3] uint8: the camera image (input)
    sharp: np.ndarray  # [H, W, 3] uint8: render at mid-exposure
    depth: np.ndarray  # [H, W] float32 metric z-depth at mid-exposure
    blur_px: float  # mean pixel path length during the exposure
    subframe_poses: np.ndarray  # [S, 4, 4] camera-to-map at the sub-frame times
    object_pose: np.ndarray | None = None  # [4, 4] first box's object-to-map at mid-exposure (dynamic)
    mask: np.ndarray | None = None  # [H, W] bool, any moving box at mid-exposure (dynamic)
    object_poses: np.ndarray | None = None  # [K, 4, 4] every box's object-to-map at mid-exposure (dynamic)
    object_blur_px: float | None = None  # blur extent over the boxes' pixels only (0: none seen; dynamic)

    @property
    def stamp_ns(self) -> int:
        from ..io import seconds_to_nanoseconds

        return seconds_to_nanoseconds(self.stamp)


@dataclass
class SynthSequence:
    """A generated sequence: frames, camera, and the scene + paths that made them."""

    config: SynthConfig
    intrinsics: Intrinsics
    frames: list[SynthFrame]
    scene: Scene = field(repr=False)  # renders any other view of the same scene
    camera_path: CameraPath = field(repr=False)
    object_paths: list = field(default_factory=list, repr=False)  # one per moving box
    seconds: float = 0.0  # generation wall time

    @property
    def object_path(self) -> ObjectPath | SlidePath | SpinPath | None:
        """The first moving box's trajectory (None without boxes)."""
        return self.object_paths[0] if self.object_paths else None

    @property
    def stamps(self) -> np.ndarray:
        """``[N]`` header stamps in seconds."""
        return np.array([f.stamp for f in self.frames])

    @property
    def poses(self) -> np.ndarray:
        """``[N, 4, 4]`` mid-exposure camera-to-map poses."""
        return np.stack([f.pose for f in self.frames])

    @property
    def blur_px(self) -> np.ndarray:
        """``[N]`` blur extent per frame (pixels)."""
        return np.array([f.blur_px for f in self.frames])

    def meta(self) -> dict:
        """The content of ``meta.json``."""
        cfg, k = self.config, self.intrinsics
        meta = {
            "generator": "posegs synth",
            "config": asdict(cfg),
            "intrinsics": {"fx": k.fx, "fy": k.fy, "cx": k.cx, "cy": k.cy, "width": k.width, "height": k.height},
            "distortion": {"model": "plumb_bob", "d": [0.0] * 5},
            "fps": cfg.fps, "exposure": cfg.exposure, "subframes": cfg.subframes, "seed": cfg.seed,
            "dynamic": cfg.dynamic,
            "subframe_offsets": subframe_offsets(cfg.subframes).tolist(),
            "stamps": "header stamp = mid-exposure time; gt.tum and /ground_truth/pose are mid-exposure poses",
            "depth": "depth/NNNN.npy: float32 z-depth in metres at pixel centres, mid-exposure",
            "frames": len(self.frames),
            "blur_px": [round(float(b), 4) for b in self.blur_px],
            "blur_px_mean": float(np.mean(self.blur_px)),
            "blur_definition": "mean over pixels of the image path length of each pixel's scene point "
                               "during the exposure (GT depth + continuous GT poses)",
            "scene": self.scene.description,
            "frame_ids": {"map": MAP_FRAME, "camera": CAMERA_FRAME},
            "topics": {k_: v for k_, v in TOPICS.items() if cfg.dynamic or k_ != "object_pose"}
            | ({f"object_pose_{k + 1}": object_topic(k) for k in range(1, cfg.objects)} if cfg.dynamic else {}),
            "generation_seconds": round(self.seconds, 3),
        }
        if cfg.dynamic:
            meta["object_poses"] = [f.object_pose.round(9).tolist() for f in self.frames]
            seen = [f.object_blur_px for f in self.frames if f.mask is not None and f.mask.any()]
            meta["object_blur_px"] = [round(float(f.object_blur_px), 4) for f in self.frames]
            meta["object_blur_px_mean"] = float(np.mean(seen)) if seen else 0.0
            meta["object_area_mean"] = float(np.mean([f.mask.mean() for f in self.frames if f.mask.any()])) if seen else 0.0
            meta["object_frames_seen"] = len(seen)
            meta["objects"] = [{"motion": cfg.object_motion, "size": cfg.object_size, "speed": cfg.object_speed,
                                "tum": object_tum_name(k), "topic": object_topic(k),
                                "path": {n: np.asarray(v).round(6).tolist()
                                         for n, v in asdict(path).items()}}
                               for k, path in enumerate(self.object_paths)]
        return meta


def _blur_extent(intrinsics: Intrinsics, depth: np.ndarray, body: np.ndarray, pose_mid: np.ndarray, poses: np.ndarray,
                 object_mid: np.ndarray | None, object_poses: np.ndarray | None, stride: int = 3,
                 moving_only: bool = False) -> float:
    """Mean image path length (pixels) over ``poses`` ``[T, 4, 4]`` of the points seen at mid-exposure.

    Points are the pixel centres (every ``stride``-th) lifted with the GT ``depth``; points on
    moving box ``k`` (``body == 1 + k``) move with ``object_poses[:, k]`` (``object_mid`` ``[K, 4, 4]``,
    ``object_poses`` ``[T, K, 4, 4]``).  ``moving_only``: average over the boxes' points only
    (0 when none is seen).
    """
    k = intrinsics
    v, u = np.mgrid[0:depth.shape[0]:stride, 0:depth.shape[1]:stride]
    z = depth[v, u].astype(np.float64)
    ids = body[v, u]
    ok = np.isfinite(z) & (ids >= (1 if moving_only else 0))
    u, v, z, ids = u[ok], v[ok], z[ok], ids[ok]
    if z.size == 0:
        return 0.0
    cam = np.stack([(u - k.cx) / k.fx * z, (v - k.cy) / k.fy * z, z, np.ones_like(z)], axis=0)  # [4, N]
    world = pose_mid @ cam
    points = np.broadcast_to(world, (poses.shape[0],) + world.shape).copy()  # [T, 4, N]
    if object_mid is not None and object_poses is not None:
        for box in range(object_mid.shape[0]):
            moving = ids == 1 + box
            if np.any(moving):
                local = np.linalg.inv(object_mid[box]) @ world[:, moving]
                points[:, :, moving] = object_poses[:, box] @ local
    pc = np.linalg.inv(poses) @ points  # [T, 4, N] in the camera at each time
    zc = np.maximum(pc[:, 2], 1e-6)
    track = np.stack([k.fx * pc[:, 0] / zc + k.cx, k.fy * pc[:, 1] / zc + k.cy], axis=-1)  # [T, N, 2]
    lengths = np.linalg.norm(np.diff(track, axis=0), axis=2).sum(axis=0)
    return float(lengths.mean())


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.round(image * 255.0), 0, 255).astype(np.uint8)


def generate(cfg: SynthConfig = SynthConfig(), progress: bool = False) -> SynthSequence:
    """Render the sequence of ``cfg`` in memory (deterministic given ``cfg.seed``)."""
    from ..camera import Intrinsics
    from .scene import build_scene

    started = time.perf_counter()
    rng = np.random.default_rng(cfg.seed)
    scene = build_scene(rng, dynamic=cfg.dynamic, texture_detail=cfg.texture_detail, objects=cfg.objects,
                        object_size=cfg.object_size)
    camera_path = CameraPath.random(rng, cfg.shake)
    paths = object_paths(rng, cfg.objects, cfg.object_motion, cfg.object_speed, cfg.object_size) if cfg.dynamic else []
    f = cfg.focal_px
    intrinsics = Intrinsics(f, f, (cfg.width - 1) / 2.0, (cfg.height - 1) / 2.0, cfg.width, cfg.height)
    offsets = subframe_offsets(cfg.subframes)
    dense = np.linspace(-0.5, 0.5, max(2 * cfg.subframes + 1, 17))  # for the blur extent
    frames = []
    iterator = range(cfg.frames)
    if progress:
        from tqdm import tqdm

        iterator = tqdm(iterator, desc="synth", unit="frame")
    def object_at(time_s: float) -> np.ndarray | None:  # [K, 4, 4]
        return np.stack([p.pose(time_s) for p in paths]) if paths else None

    for i in iterator:
        t = i / cfg.fps
        objects_mid = object_at(t)
        mid = scene.render(intrinsics, camera_path.pose(t), objects_mid, cfg.supersample, with_depth=True)
        sub_poses = np.stack([camera_path.pose(t + s * cfg.exposure) for s in offsets])
        accumulated = np.zeros_like(mid.rgb, dtype=np.float64)
        for s, pose in zip(offsets, sub_poses):
            if abs(s) < 1e-12:
                accumulated += mid.rgb
            else:
                accumulated += scene.render(intrinsics, pose, object_at(t + s * cfg.exposure), cfg.supersample).rgb
        blurred = accumulated / cfg.subframes
        dense_poses = np.stack([camera_path.pose(t + s * cfg.exposure) for s in dense])
        dense_objects = np.stack([object_at(t + s * cfg.exposure) for s in dense]) if paths else None
        blur = _blur_extent(intrinsics, mid.depth, mid.body, camera_path.pose(t), dense_poses, objects_mid,
                            dense_objects)
        object_blur = (_blur_extent(intrinsics, mid.depth, mid.body, camera_path.pose(t), dense_poses, objects_mid,
                                    dense_objects, stride=1, moving_only=True) if paths else None)
        frames.append(SynthFrame(
            index=i, stamp=cfg.start_time + t, pose=camera_path.pose(t), blurred=_to_uint8(blurred),
            sharp=_to_uint8(mid.rgb), depth=mid.depth, blur_px=blur, subframe_poses=sub_poses,
            object_pose=objects_mid[0] if paths else None, mask=(mid.body >= 1) if cfg.dynamic else None,
            object_poses=objects_mid, object_blur_px=object_blur,
        ))
    return SynthSequence(cfg, intrinsics, frames, scene, camera_path, paths, time.perf_counter() - started)


def _prepare_output(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a directory")
    if out.exists() and any(out.iterdir()):
        if not force:
            raise FileExistsError(f"{out} is not empty: choose another directory or pass --force")
        for name in OUTPUT_ENTRIES:  # only what synth writes; other files are left alone
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    out.mkdir(parents=True, exist_ok=True)


def write(seq: SynthSequence, out: str | Path, storage: str = "mcap", force: bool = False) -> Path:
    """Write ``seq`` into directory ``out`` (layout in the module docstring); returns ``out``.

    Raises:
        FileExistsError: ``out`` is not empty and ``force`` is False.
    """
    from ..io import (
        BagWriter,
        CameraModel,
        atomic_save_npy,
        atomic_write_image,
        atomic_write_json,
        camera_info_message,
        pose_stamped_message,
        rgb_to_image,
        write_tum,
    )

    out = Path(out)
    _prepare_output(out, force)
    camera = CameraModel.from_intrinsics(seq.intrinsics)
    for frame in seq.frames:
        name = f"{frame.index:04d}"
        atomic_write_image(out / "sharp" / f"{name}.png", frame.sharp)
        atomic_write_image(out / "blurred" / f"{name}.png", frame.blurred)
        atomic_save_npy(out / "depth" / f"{name}.npy", frame.depth)
        if frame.mask is not None:
            atomic_write_image(out / "masks" / f"{name}.png", frame.mask)
    write_tum(out / "gt.tum", seq.stamps, seq.poses)
    if seq.config.dynamic:
        for k in range(seq.config.objects):
            write_tum(out / object_tum_name(k), seq.stamps, np.stack([f.object_poses[k] for f in seq.frames]))
    with BagWriter(out / "bag", storage=storage) as bag:
        for frame in seq.frames:
            ns = frame.stamp_ns
            bag.write(TOPICS["camera_info"], camera_info_message(camera, ns, CAMERA_FRAME))
            bag.write(TOPICS["image"], rgb_to_image(frame.blurred, ns, CAMERA_FRAME))
            bag.write(TOPICS["pose"], pose_stamped_message(frame.pose, ns, MAP_FRAME))
            bag.write(TOPICS["sharp"], rgb_to_image(frame.sharp, ns, CAMERA_FRAME))
            for k, object_pose in enumerate(frame.object_poses if frame.object_poses is not None else ()):
                bag.write(object_topic(k), pose_stamped_message(object_pose, ns, MAP_FRAME))
    meta = seq.meta()
    meta["storage"] = storage
    atomic_write_json(out / "meta.json", meta)  # written last: its presence marks a complete output
    return out


def generated(cfg: SynthConfig, out: str | Path, storage: str = "mcap") -> Path:
    """``out`` holding the sequence of ``cfg``: reused if its ``meta.json`` records the same
    config (a complete earlier output), else generated and written (replacing synth outputs)."""
    out = Path(out)
    try:
        if json.loads((out / "meta.json").read_text())["config"] == json.loads(json.dumps(asdict(cfg))):
            return out
    except (OSError, ValueError, KeyError):
        pass
    return write(generate(cfg), out, storage=storage, force=True)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = SynthConfig()
    parser.add_argument("out", type=Path, help="output directory (bag/, gt.tum, sharp/, blurred/, depth/, meta.json)")
    parser.add_argument("--seed", type=int, default=d.seed, help="random seed (scene layout, paths, shake)")
    parser.add_argument("--frames", type=int, default=d.frames, help="number of frames")
    parser.add_argument("--width", type=int, default=d.width, help="image width (pixels)")
    parser.add_argument("--height", type=int, default=d.height, help="image height (pixels)")
    parser.add_argument("--fps", type=float, default=d.fps, help="frame rate (Hz)")
    parser.add_argument("--exposure", type=float, default=d.exposure, help="exposure time (seconds, <= 1/fps)")
    parser.add_argument("--shake", type=float, default=d.shake, help="hand-held shake scale (0 = none)")
    parser.add_argument("--subframes", type=int, default=d.subframes, help="sharp renders averaged per frame")
    parser.add_argument("--supersample", type=int, default=d.supersample, help="rays per pixel side")
    parser.add_argument("--focal", type=float, default=None, help="focal length in pixels (default 250*width/320)")
    parser.add_argument("--dynamic", action="store_true", help="add moving boxes with GT masks and poses")
    parser.add_argument("--objects", type=int, default=d.objects, help=f"moving boxes, 1..{MAX_OBJECTS} (with --dynamic)")
    parser.add_argument("--object-motion", choices=OBJECT_MOTIONS, default=d.object_motion,
                        help="swing: side to side while spinning; slide: straight across the view, entering "
                        "and leaving it (two boxes cross, the nearer occludes); spin: turning fast in place")
    parser.add_argument("--object-size", type=float, default=d.object_size, help="cube edge of the boxes (metres)")
    parser.add_argument("--object-speed", type=float, default=d.object_speed,
                        help="scale of the boxes' speeds (1: ~1.6-1.8 m/s for swing and slide, ~4 rad/s spin)")
    parser.add_argument("--texture-detail", choices=("default", "fine"), default=d.texture_detail,
                        help="fine: high-contrast detail of 1-3 px (text, noise, stripes, photographs at small tiles)")
    parser.add_argument("--sharp-twin", type=Path, default=None, metavar="DIR",
                        help="also write the same sequence with a sharp camera (exposure 0) to DIR")
    parser.add_argument("--storage", choices=("mcap", "sqlite3"), default="mcap", help="rosbag2 storage plugin")
    parser.add_argument("--force", action="store_true", help="replace synth outputs in a non-empty OUT")


def run(args: argparse.Namespace) -> int:
    out: Path = args.out
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not args.force:
        log.error("%s is not empty: choose another directory or pass --force", out)
        return 2
    try:
        cfg = SynthConfig(seed=args.seed, frames=args.frames, width=args.width, height=args.height, fps=args.fps,
                          exposure=args.exposure, shake=args.shake, subframes=args.subframes,
                          dynamic=args.dynamic, supersample=args.supersample, focal=args.focal,
                          texture_detail=args.texture_detail, objects=args.objects,
                          object_motion=args.object_motion, object_size=args.object_size,
                          object_speed=args.object_speed)
    except ValueError as err:
        log.error("%s", err)
        return 2
    seq = generate(cfg, progress=True)
    write(seq, out, storage=args.storage, force=args.force)
    log.info("wrote %d frames to %s in %.1f s (render), blur extent %.2f px mean (min %.2f, max %.2f)",
             len(seq.frames), out, seq.seconds, seq.blur_px.mean(), seq.blur_px.min(), seq.blur_px.max())
    if args.sharp_twin is not None:
        twin = generate(dataclasses.replace(cfg, exposure=0.0), progress=True)
        write(twin, args.sharp_twin, storage=args.storage, force=args.force)
        log.info("wrote the sharp-camera twin (same scene and path, exposure 0) to %s", args.sharp_twin)
    return 0
