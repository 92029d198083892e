"""``posegs bag-from-frames DIR OUT``: a TUM RGB-D or 7-Scenes sequence folder -> rosbag2.

Layouts (detected from the folder's content):

- **TUM RGB-D** (``rgb.txt`` + ``groundtruth.txt``): image stamps from ``rgb.txt``; ground truth
  (``t tx ty tz qx qy qz qw``, camera-to-world) interpolated at each image stamp (linear position,
  slerp rotation) when the two neighbouring samples lie within ``2 * tolerance`` of each other,
  else the nearest sample within ``tolerance``, else the image gets no ground truth (counted).
  Intrinsics: ``--camera`` or the published calibrations of the TUM benchmark, detected from
  ``freiburg1`` / ``freiburg2`` / ``freiburg3`` (or ``fr1`` ...) in the folder name
  (:data:`TUM_CAMERAS`: fr1 and fr2 carry plumb_bob distortion, fr3 is already undistorted).
- **7-Scenes** (``frame-XXXXXX.color.png|jpg`` + ``frame-XXXXXX.pose.txt`` 4x4 camera-to-world,
  one ``seq-NN`` folder): stamps ``start + i / fps``; intrinsics ``--camera``, else the folder's
  ``camera-intrinsics.txt`` (3x3 matrix, 640x480), else fx = fy = 585, cx = 320, cy = 240.

Output in OUT (as ``posegs synth``): ``bag/`` with ``/camera/image_raw`` (rgb8),
``/camera/camera_info`` (with every image), ``/ground_truth/pose`` (PoseStamped, ``map``);
``gt.tum``; ``meta.json``.  ``--resize WxH`` resizes images (``cv2.INTER_AREA``) and scales the
intrinsics to match (:meth:`Intrinsics.scaled`; distortion coefficients are scale-free).
"""

from __future__ import annotations

import argparse
import logging
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from ..camera import Intrinsics

log = logging.getLogger(__name__)

__all__ = [
    "TUM_CAMERAS",
    "SEVEN_SCENES_CAMERA",
    "CameraSpec",
    "DatasetFrame",
    "Dataset",
    "read_dataset",
    "read_tum_rgbd",
    "read_seven_scenes",
    "associate_poses",
    "tum_camera_name",
    "ConversionResult",
    "convert",
    "parse_camera",
    "parse_size",
    "add_arguments",
    "run",
]

CAMERA_FRAME = "camera_optical_frame"
MAP_FRAME = "map"
OUTPUT_ENTRIES = ("bag", "gt.tum", "meta.json")


@dataclass(frozen=True)
class CameraSpec:
    """Pinhole + plumb_bob calibration of a dataset's colour camera (for ``width`` x ``height``)."""

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int
    d: tuple[float, ...] = (0.0, 0.0, 0.0, 0.0, 0.0)  # k1 k2 p1 p2 k3


# Published calibrations of the TUM RGB-D benchmark's colour cameras (640x480), ROS camera_info
# convention: https://cvg.cit.tum.de/data/datasets/rgbd-dataset/file_formats
TUM_CAMERAS: dict[str, CameraSpec] = {
    "freiburg1": CameraSpec(517.306408, 516.469215, 318.643040, 255.313989, 640, 480,
                            (0.262383, -0.953104, -0.005358, 0.002628, 1.163314)),
    "freiburg2": CameraSpec(520.908620, 521.007327, 325.141442, 249.701764, 640, 480,
                            (0.231222, -0.784899, -0.003257, -0.000105, 0.917205)),
    "freiburg3": CameraSpec(535.4, 539.2, 320.1, 247.6, 640, 480),
}
# 7-Scenes (Microsoft Kinect v1 colour camera): the dataset page's suggested intrinsics.
SEVEN_SCENES_CAMERA = CameraSpec(585.0, 585.0, 320.0, 240.0, 640, 480)


@dataclass
class DatasetFrame:
    """One image of a dataset with its stamp and (optional) ground-truth pose."""

    stamp: float  # seconds
    image_path: Path
    pose: np.ndarray | None  # [4, 4] camera-to-world, None when no ground truth matches


@dataclass
class Dataset:
    """A sequence folder read into memory (images stay on disk)."""

    layout: str  # "tum" | "7scenes"
    root: Path
    frames: list[DatasetFrame]
    camera: CameraSpec | None  # None: no calibration known, --camera needed
    notes: dict = field(default_factory=dict)


def parse_camera(text: str, width: int, height: int) -> CameraSpec:
    """``"fx,fy,cx,cy[,k1,k2,p1,p2,k3]"`` -> :class:`CameraSpec` for a ``width`` x ``height`` image."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise ValueError(f"--camera expects numbers 'fx,fy,cx,cy[,k1,k2,p1,p2,k3]', got {text!r}") from None
    if len(values) not in (4, 8, 9):
        raise ValueError(f"--camera expects fx,fy,cx,cy plus optionally 4 or 5 plumb_bob coefficients, "
                         f"got {len(values)} values")
    d = tuple(values[4:]) + (0.0,) * (9 - len(values)) if len(values) > 4 else (0.0,) * 5
    return CameraSpec(values[0], values[1], values[2], values[3], width, height, d)


def parse_size(text: str) -> tuple[int, int]:
    """``"WxH"`` -> ``(W, H)``."""
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not match or int(match.group(1)) <= 0 or int(match.group(2)) <= 0:
        raise ValueError(f"--resize expects WxH with positive integers, e.g. 320x240, got {text!r}")
    return int(match.group(1)), int(match.group(2))


def _read_table(path: Path, columns: int) -> list[list[str]]:
    """Non-comment rows of a whitespace-separated text file with at least ``columns`` fields."""
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        parts = text.split()
        if len(parts) < columns:
            raise ValueError(f"{path}:{number}: expected {columns} fields, got {text!r}")
        rows.append(parts)
    return rows


def _slerp(q0: np.ndarray, q1: np.ndarray, w: float) -> np.ndarray:
    """Spherical interpolation of unit quaternions (any order convention), ``w`` in [0, 1]."""
    dot = float(np.dot(q0, q1))
    if dot < 0:
        q1, dot = -q1, -dot
    if dot > 0.9995:
        q = q0 + w * (q1 - q0)
        return q / np.linalg.norm(q)
    theta = np.arccos(np.clip(dot, -1.0, 1.0))
    return (np.sin((1 - w) * theta) * q0 + np.sin(w * theta) * q1) / np.sin(theta)


def associate_poses(
    image_stamps: np.ndarray, gt_stamps: np.ndarray, gt_xyz_qxyzw: np.ndarray, tolerance: float
) -> list[np.ndarray | None]:
    """Ground truth ``[4, 4]`` (or None) at each image stamp: interpolated or nearest (see module doc)."""
    from ..io import quaternion_xyzw_to_matrix

    order = np.argsort(gt_stamps)
    gt_stamps, values = gt_stamps[order], gt_xyz_qxyzw[order]
    poses: list[np.ndarray | None] = []
    for t in image_stamps:
        j = int(np.searchsorted(gt_stamps, t, side="right"))  # gt_stamps[j-1] <= t < gt_stamps[j]
        before, after = j - 1, j
        value = None
        if 0 <= before and after < len(gt_stamps) and gt_stamps[after] - gt_stamps[before] <= 2 * tolerance:
            t0, t1 = gt_stamps[before], gt_stamps[after]
            w = 0.0 if t1 == t0 else (t - t0) / (t1 - t0)
            q = _slerp(values[before, 3:] / np.linalg.norm(values[before, 3:]),
                       values[after, 3:] / np.linalg.norm(values[after, 3:]), w)
            value = np.concatenate([(1 - w) * values[before, :3] + w * values[after, :3], q])
        else:
            candidates = [i for i in (before, after) if 0 <= i < len(gt_stamps)]
            if candidates:
                best = min(candidates, key=lambda i: abs(gt_stamps[i] - t))
                if abs(gt_stamps[best] - t) <= tolerance:
                    value = values[best]
        if value is None:
            poses.append(None)
            continue
        pose = np.eye(4)
        pose[:3, :3] = quaternion_xyzw_to_matrix(value[3:])
        pose[:3, 3] = value[:3]
        poses.append(pose)
    return poses


def tum_camera_name(folder_name: str) -> str | None:
    """``"freiburg1"``/``2``/``3`` if the folder name says so (``..._freiburg2_xyz``, ``fr3_office``)."""
    name = folder_name.lower()
    match = re.search(r"freiburg([123])", name) or re.search(r"(?:^|[_\-])fr([123])(?:[_\-]|$)", name)
    return f"freiburg{match.group(1)}" if match else None


def read_tum_rgbd(root: Path, tolerance: float = 0.02) -> Dataset:
    """A TUM RGB-D sequence folder (``rgb.txt``, ``groundtruth.txt``, ``rgb/*.png``)."""
    rows = _read_table(root / "rgb.txt", 2)
    stamps = np.array([float(r[0]) for r in rows])
    paths = [root / r[1] for r in rows]
    gt_file = root / "groundtruth.txt"
    poses: list[np.ndarray | None] = [None] * len(rows)
    if gt_file.exists():
        gt = np.array([[float(v) for v in r[:8]] for r in _read_table(gt_file, 8)]).reshape(-1, 8)
        if len(gt):
            poses = associate_poses(stamps, gt[:, 0], gt[:, 1:], tolerance)
    frames = [DatasetFrame(float(t), p, pose) for t, p, pose in zip(stamps, paths, poses)]
    name = tum_camera_name(root.resolve().name)
    return Dataset("tum", root, frames, TUM_CAMERAS[name] if name else None,
                   {"calibration": f"TUM published {name}" if name else "not detected from the folder name"})


_SEVEN_SCENES_IMAGE = re.compile(r"^frame-(\d+)\.color\.(png|jpg|jpeg)$")


def read_seven_scenes(root: Path, fps: float = 30.0, start_time: float = 0.0) -> Dataset:
    """A 7-Scenes ``seq-NN`` folder (``frame-XXXXXX.color.png`` + ``frame-XXXXXX.pose.txt``)."""
    images = sorted((int(m.group(1)), p) for p in root.iterdir() if (m := _SEVEN_SCENES_IMAGE.match(p.name)))
    frames = []
    for i, (number, path) in enumerate(images):
        pose_file = root / f"frame-{number:06d}.pose.txt"
        pose = None
        if pose_file.exists():
            values = np.array(pose_file.read_text(encoding="utf-8").split(), dtype=np.float64)
            if values.size != 16 or not np.all(np.isfinite(values)):
                raise ValueError(f"{pose_file}: expected a 4x4 matrix of finite numbers")
            pose = values.reshape(4, 4)
        frames.append(DatasetFrame(start_time + i / fps, path, pose))
    camera, notes = SEVEN_SCENES_CAMERA, {"stamps": f"synthesized at {fps} Hz"}
    intrinsics_file = root / "camera-intrinsics.txt"
    if intrinsics_file.exists():
        camera = _read_intrinsics_matrix(intrinsics_file)
        notes["camera"] = intrinsics_file.name
    return Dataset("7scenes", root, frames, camera, notes)


def _read_intrinsics_matrix(path: Path) -> CameraSpec:
    """A 3x3 pinhole matrix ``K`` written as text (as 7-Scenes copies carry) for 640x480 images."""
    values = np.array(path.read_text(encoding="utf-8").split(), dtype=np.float64)
    if values.size != 9 or not np.all(np.isfinite(values)):
        raise ValueError(f"{path}: expected a 3x3 intrinsics matrix of finite numbers")
    k = values.reshape(3, 3)
    if k[0, 0] <= 0 or k[1, 1] <= 0 or not np.allclose(k[2], (0.0, 0.0, 1.0)):
        raise ValueError(f"{path}: not a pinhole matrix [[fx 0 cx] [0 fy cy] [0 0 1]]")
    return CameraSpec(float(k[0, 0]), float(k[1, 1]), float(k[0, 2]), float(k[1, 2]), 640, 480)


def read_dataset(root: str | Path, tolerance: float = 0.02, fps: float = 30.0) -> Dataset:
    """Detect the layout of ``root`` and read it.

    Raises:
        FileNotFoundError: ``root`` missing.
        ValueError: neither layout found (the message says what was expected).
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a directory")
    if (root / "rgb.txt").exists():
        return read_tum_rgbd(root, tolerance)
    if any(_SEVEN_SCENES_IMAGE.match(p.name) for p in root.iterdir()):
        return read_seven_scenes(root, fps)
    sequences = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name.startswith("seq-"))
    hint = f" (7-Scenes scene folder: pick one of {', '.join(sequences)})" if sequences else ""
    raise ValueError(
        f"{root} is neither a TUM RGB-D sequence (rgb.txt) nor a 7-Scenes sequence "
        f"(frame-XXXXXX.color.png + frame-XXXXXX.pose.txt){hint}"
    )


def _load_rgb(path: Path) -> np.ndarray:
    import cv2

    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"cannot read image {path}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _prepare_output(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a directory")
    if out.exists() and any(out.iterdir()):
        if not force:
            raise FileExistsError(f"{out} is not empty: choose another directory or pass --force")
        for name in OUTPUT_ENTRIES:
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    out.mkdir(parents=True, exist_ok=True)


@dataclass
class ConversionResult:
    """What :func:`convert` wrote."""

    out: Path
    layout: str
    frames: int
    frames_with_pose: int
    intrinsics: Intrinsics  # of the written images
    distortion: tuple[float, ...]


def convert(
    source: str | Path,
    out: str | Path,
    *,
    camera: str | CameraSpec | None = None,
    resize: tuple[int, int] | None = None,
    max_frames: int | None = None,
    first_frame: int = 0,
    storage: str = "mcap",
    tolerance: float = 0.02,
    fps: float = 30.0,
    force: bool = False,
) -> ConversionResult:
    """Convert a dataset folder into ``out`` (bag + gt.tum + meta.json).

    ``camera`` is a :class:`CameraSpec` or the ``--camera`` string (for the image size on disk).
    ``first_frame`` skips that many images (a window of a long sequence: stamps stay the source's).

    Raises:
        ValueError: unknown layout, no calibration, unreadable images or poses.
        FileExistsError: ``out`` not empty and ``force`` False.
    """
    import cv2

    from ..camera import Intrinsics
    from ..io import (
        BagWriter,
        CameraModel,
        atomic_write_json,
        camera_info_message,
        pose_stamped_message,
        rgb_to_image,
        seconds_to_nanoseconds,
        write_tum,
    )

    dataset = read_dataset(source, tolerance, fps)
    if first_frame < 0:
        raise ValueError(f"first frame must be >= 0, got {first_frame}")
    frames = dataset.frames[first_frame: first_frame + max_frames if max_frames else None]
    if not frames:
        raise ValueError(f"{dataset.root} holds no images" + (f" from image {first_frame} on" if first_frame else ""))
    first = _load_rgb(frames[0].image_path)
    height, width = first.shape[:2]
    if isinstance(camera, str):
        spec = parse_camera(camera, width, height)
    else:
        spec = camera or dataset.camera
    if spec is None:
        raise ValueError(
            f"no calibration known for {dataset.root.name!r}: pass --camera fx,fy,cx,cy[,k1,k2,p1,p2,k3] "
            "(TUM folders named ...freiburg1/2/3... are detected automatically)"
        )
    intrinsics = Intrinsics(spec.fx, spec.fy, spec.cx, spec.cy, spec.width, spec.height)
    if (width, height) != (spec.width, spec.height):
        intrinsics = intrinsics.scaled(width, height)  # calibration given for another resolution
    if resize is not None:
        intrinsics = intrinsics.scaled(*resize)
    model = CameraModel.from_intrinsics(intrinsics, np.asarray(spec.d, np.float64), "plumb_bob")
    out = Path(out)
    _prepare_output(out, force)
    with_pose = [f for f in frames if f.pose is not None]
    with BagWriter(out / "bag", storage=storage) as bag:
        for i, frame in enumerate(frames):
            rgb = first if i == 0 else _load_rgb(frame.image_path)
            if rgb.shape[:2] != (height, width):
                raise ValueError(f"{frame.image_path} is {rgb.shape[1]}x{rgb.shape[0]}, expected {width}x{height}")
            if resize is not None:
                rgb = cv2.resize(rgb, resize, interpolation=cv2.INTER_AREA)
            ns = seconds_to_nanoseconds(frame.stamp)
            bag.write("/camera/camera_info", camera_info_message(model, ns, CAMERA_FRAME))
            bag.write("/camera/image_raw", rgb_to_image(rgb, ns, CAMERA_FRAME))
            if frame.pose is not None:
                bag.write("/ground_truth/pose", pose_stamped_message(frame.pose, ns, MAP_FRAME))
    if with_pose:
        write_tum(out / "gt.tum", np.array([f.stamp for f in with_pose]), np.stack([f.pose for f in with_pose]))
    k = intrinsics
    atomic_write_json(out / "meta.json", {
        "generator": "posegs bag-from-frames",
        "source": str(dataset.root.resolve()),
        "layout": dataset.layout,
        "frames": len(frames),
        "frames_with_pose": len(with_pose),
        "frames_without_pose": len(frames) - len(with_pose),
        "intrinsics": {"fx": k.fx, "fy": k.fy, "cx": k.cx, "cy": k.cy, "width": k.width, "height": k.height},
        "distortion": {"model": "plumb_bob", "d": list(spec.d)},
        "resize": list(resize) if resize else None,
        "storage": storage,
        "gt_tolerance_s": tolerance,
        "image_files": [str(f.image_path.relative_to(dataset.root)) for f in frames],
        **dataset.notes,
    })
    return ConversionResult(out, dataset.layout, len(frames), len(with_pose), intrinsics, tuple(spec.d))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", type=Path, metavar="DIR", help="TUM RGB-D sequence or 7-Scenes seq-NN folder")
    parser.add_argument("out", type=Path, metavar="OUT", help="output directory (bag/, gt.tum, meta.json)")
    parser.add_argument("--camera", default=None,
                        help="fx,fy,cx,cy[,k1,k2,p1,p2,k3] of the images on disk (default: TUM freiburg1/2/3 "
                             "from the folder name; 7-Scenes: camera-intrinsics.txt, else 585,585,320,240 -- the depth "
                             "camera's: its colour images fit 525,525,320,240 better)")
    parser.add_argument("--resize", type=parse_size, default=None, metavar="WxH",
                        help="resize images, intrinsics scaled to match")
    parser.add_argument("--max-frames", type=int, default=None, help="convert only N images")
    parser.add_argument("--first-frame", type=int, default=0, metavar="N",
                        help="skip the first N images (a window of a long sequence)")
    parser.add_argument("--storage", choices=("mcap", "sqlite3"), default="mcap", help="rosbag2 storage plugin")
    parser.add_argument("--gt-tolerance", type=float, default=0.02,
                        help="TUM: max. seconds between an image and its ground truth")
    parser.add_argument("--fps", type=float, default=30.0, help="7-Scenes: frame rate of the synthesized stamps")
    parser.add_argument("--force", action="store_true", help="replace outputs in a non-empty OUT")


def run(args: argparse.Namespace) -> int:
    from ..io import BagError

    try:
        result = convert(args.source, args.out, camera=args.camera, resize=args.resize, max_frames=args.max_frames,
                         first_frame=args.first_frame,
                         storage=args.storage, tolerance=args.gt_tolerance, fps=args.fps, force=args.force)
    except (ValueError, FileNotFoundError, FileExistsError, BagError) as err:
        log.error("%s", err)
        return 2
    log.info("wrote %d frames (%d with ground truth) from a %s folder to %s", result.frames,
             result.frames_with_pose, result.layout, result.out)
    return 0
