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
                        /ground_truth/object_pose (with --dynamic)
    gt.tum              mid-exposure camera-to-map poses, t = header stamp
    blurred/NNNN.png    the camera images (same as the bag's)
    sharp/NNNN.png      mid-exposure sharp renders
    depth/NNNN.npy      float32 metric z-depth at mid-exposure
    masks/NNNN.png      moving-object masks at mid-exposure (with --dynamic), object.tum
    meta.json           intrinsics, timing, seed, blur extent per frame and mean, scene
"""

from __future__ import annotations

import argparse
import dataclasses
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
    "generate",
    "write",
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
OUTPUT_ENTRIES = ("bag", "sharp", "blurred", "depth", "masks", "gt.tum", "object.tum", "meta.json")


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
    dynamic: bool = False  # add a moving textured box (ground-truth masks + pose)
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
    """Object-to-world trajectory of the moving box: a fast side-to-side swing while it spins.

    Peak speed ~1.8 m/s at ~1.7 m from the camera plus ~2 rad/s spin: blurred like the camera.
    """

    centre: np.ndarray  # [3]
    amp: np.ndarray  # [3]
    freq: np.ndarray  # [3] rad/s
    phase: np.ndarray  # [3]
    spin: float  # rad/s about z
    spin0: float
    tilt: float  # rad amplitude about x

    @classmethod
    def random(cls, rng: np.random.Generator) -> ObjectPath:
        return cls(
            centre=np.array([0.0, 1.7, 1.05]), amp=np.array([0.8, 0.1, 0.12]),
            freq=np.array([2.2, 1.1, 3.1]) * rng.uniform(0.9, 1.1, 3), phase=rng.uniform(-np.pi, np.pi, 3),
            spin=float(rng.uniform(1.5, 2.5)) * rng.choice([-1.0, 1.0]), spin0=float(rng.uniform(0, 2 * np.pi)),
            tilt=0.4,
        )

    def pose(self, t: float) -> np.ndarray:
        """Object-to-world ``[4, 4]`` at time ``t``."""
        pose = np.eye(4)
        pose[:3, :3] = _rotation(np.array([0.0, 0.0, self.spin0 + self.spin * t])) @ _rotation(
            np.array([self.tilt * np.sin(1.3 * t), 0.0, 0.0]))
        pose[:3, 3] = self.centre + self.amp * np.sin(self.freq * t + self.phase)
        return pose


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
    object_pose: np.ndarray | None = None  # [4, 4] object-to-map at mid-exposure (dynamic)
    mask: np.ndarray | None = None  # [H, W] bool, moving object at mid-exposure (dynamic)

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
    object_path: ObjectPath | None = field(default=None, repr=False)
    seconds: float = 0.0  # generation wall time

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
            "topics": {k_: v for k_, v in TOPICS.items() if cfg.dynamic or k_ != "object_pose"},
            "generation_seconds": round(self.seconds, 3),
        }
        if cfg.dynamic:
            meta["object_poses"] = [f.object_pose.round(9).tolist() for f in self.frames]
        return meta


def _blur_extent(intrinsics: Intrinsics, depth: np.ndarray, body: np.ndarray, pose_mid: np.ndarray, poses: np.ndarray,
                 object_mid: np.ndarray | None, object_poses: np.ndarray | None, stride: int = 3) -> float:
    """Mean image path length (pixels) over ``poses`` ``[T, 4, 4]`` of the points seen at mid-exposure.

    Points are the pixel centres (every ``stride``-th) lifted with the GT ``depth``; points on the
    moving box (``body == 1``) move with ``object_poses`` ``[T, 4, 4]``.
    """
    k = intrinsics
    v, u = np.mgrid[0:depth.shape[0]:stride, 0:depth.shape[1]:stride]
    z = depth[v, u].astype(np.float64)
    ids = body[v, u]
    ok = np.isfinite(z) & (ids >= 0)
    u, v, z, ids = u[ok], v[ok], z[ok], ids[ok]
    if z.size == 0:
        return 0.0
    cam = np.stack([(u - k.cx) / k.fx * z, (v - k.cy) / k.fy * z, z, np.ones_like(z)], axis=0)  # [4, N]
    world = pose_mid @ cam
    points = np.broadcast_to(world, (poses.shape[0],) + world.shape).copy()  # [T, 4, N]
    moving = ids == 1
    if object_mid is not None and object_poses is not None and np.any(moving):
        local = np.linalg.inv(object_mid) @ world[:, moving]
        points[:, :, moving] = object_poses @ local
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
    scene = build_scene(rng, dynamic=cfg.dynamic, texture_detail=cfg.texture_detail)
    camera_path = CameraPath.random(rng, cfg.shake)
    object_path = ObjectPath.random(rng) if cfg.dynamic else None
    f = cfg.focal_px
    intrinsics = Intrinsics(f, f, (cfg.width - 1) / 2.0, (cfg.height - 1) / 2.0, cfg.width, cfg.height)
    offsets = subframe_offsets(cfg.subframes)
    dense = np.linspace(-0.5, 0.5, max(2 * cfg.subframes + 1, 17))  # for the blur extent
    frames = []
    iterator = range(cfg.frames)
    if progress:
        from tqdm import tqdm

        iterator = tqdm(iterator, desc="synth", unit="frame")
    def object_at(time_s: float) -> np.ndarray | None:
        return object_path.pose(time_s) if object_path is not None else None

    for i in iterator:
        t = i / cfg.fps
        mid = scene.render(intrinsics, camera_path.pose(t), object_at(t), cfg.supersample, with_depth=True)
        sub_poses = np.stack([camera_path.pose(t + s * cfg.exposure) for s in offsets])
        accumulated = np.zeros_like(mid.rgb, dtype=np.float64)
        for s, pose in zip(offsets, sub_poses):
            if abs(s) < 1e-12:
                accumulated += mid.rgb
            else:
                accumulated += scene.render(intrinsics, pose, object_at(t + s * cfg.exposure), cfg.supersample).rgb
        blurred = accumulated / cfg.subframes
        dense_poses = np.stack([camera_path.pose(t + s * cfg.exposure) for s in dense])
        dense_objects = np.stack([object_at(t + s * cfg.exposure) for s in dense]) if object_path is not None else None
        blur = _blur_extent(intrinsics, mid.depth, mid.body, camera_path.pose(t), dense_poses, object_at(t),
                            dense_objects)
        frames.append(SynthFrame(
            index=i, stamp=cfg.start_time + t, pose=camera_path.pose(t), blurred=_to_uint8(blurred),
            sharp=_to_uint8(mid.rgb), depth=mid.depth, blur_px=blur, subframe_poses=sub_poses,
            object_pose=object_at(t), mask=(mid.body == 1) if cfg.dynamic else None,
        ))
    return SynthSequence(cfg, intrinsics, frames, scene, camera_path, object_path, time.perf_counter() - started)


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
        write_tum(out / "object.tum", seq.stamps, np.stack([f.object_pose for f in seq.frames]))
    with BagWriter(out / "bag", storage=storage) as bag:
        for frame in seq.frames:
            ns = frame.stamp_ns
            bag.write(TOPICS["camera_info"], camera_info_message(camera, ns, CAMERA_FRAME))
            bag.write(TOPICS["image"], rgb_to_image(frame.blurred, ns, CAMERA_FRAME))
            bag.write(TOPICS["pose"], pose_stamped_message(frame.pose, ns, MAP_FRAME))
            bag.write(TOPICS["sharp"], rgb_to_image(frame.sharp, ns, CAMERA_FRAME))
            if frame.object_pose is not None:
                bag.write(TOPICS["object_pose"], pose_stamped_message(frame.object_pose, ns, MAP_FRAME))
    meta = seq.meta()
    meta["storage"] = storage
    atomic_write_json(out / "meta.json", meta)  # written last: its presence marks a complete output
    return out


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
    parser.add_argument("--dynamic", action="store_true", help="add a moving box with GT masks and pose")
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
                          texture_detail=args.texture_detail)
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
