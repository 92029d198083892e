"""``posegs replay BAG --out DIR``: reconstruct a rosbag2 offline, deterministically.

Reads the image stream (raw or compressed) with its camera_info, undistorts each frame and
feeds the engine in bag order, exactly as the ROS node does online.  Writes into ``DIR``:

- ``trajectory.tum``: the final pose estimate of every image that has one (keyframe-relative
  poses follow their keyframe's refinement); ``trajectory_online.tum``: the poses as they
  were returned frame by frame (what the node publishes as TF);
- ``deblurred/NNNN.png``: the sharp render at each frame's estimated mid-exposure pose
  (NNNN = index of the image in the bag), from the final map;
- ``map.ply``: the Gaussian map (standard 3DGS PLY);
- ``metrics.json``: configuration, per-frame timings / states / counts, summary;
- with ground truth (``/ground_truth/pose`` in the bag or ``--gt``): ``eval.json`` and a
  visual report (``report/index.html``).

The output directory is assembled under a temporary name and renamed at the end, so a
failed run never leaves a half-written ``DIR``.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

GT_POSE_TOPIC = "/ground_truth/pose"
GT_SHARP_TOPIC = "/ground_truth/image_sharp"


def add_config_arguments(parser: argparse.ArgumentParser, scope: str = "") -> None:
    """``--preset NAME``, ``--config FILE`` (YAML overlays, repeatable) and ``--set NAME=VALUE``
    (single overrides, repeatable), read back by :func:`config_from_args`."""
    from ..config import PRESETS

    parser.add_argument("--preset", choices=list(PRESETS), default=None,
                        help=f"speed / quality trade-off{scope} (default balanced); --config and --set override it")
    parser.add_argument("--config", type=Path, action="append", default=[], help="YAML config overlay (repeatable)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="NAME=VALUE",
                        help=f"override one config parameter{scope}, e.g. --set blur.subframes=3 (repeatable)")


def config_from_args(
    args: argparse.Namespace,
    extra: dict[str, Any] | None = None,
    preset_overlays: dict[str, dict[str, Any]] | None = None,
) -> Any:
    """The configuration :func:`add_config_arguments` describes: preset, then the command's own
    settings for it (``preset_overlays[preset]``, dotted names), the files, ``--set`` and
    ``extra`` (dotted names).

    Raises:
        ConfigError: an unreadable file, an unknown name or a wrongly typed value.
    """
    from ..config import load_config

    overrides = {"preset": args.preset} if args.preset else {}
    overrides.update(parse_overrides(args.overrides))
    overrides.update(extra or {})
    return load_config(*args.config, overrides=overrides, preset_overlays=preset_overlays)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bag", type=Path, help="rosbag2 directory (mcap or sqlite3)")
    parser.add_argument("--out", type=Path, required=True, help="output directory (must not exist, or use --force)")
    add_config_arguments(parser)
    parser.add_argument("--image-topic", default="/camera/image_raw", help="sensor_msgs/Image or CompressedImage topic")
    parser.add_argument("--camera-info-topic", default=None, help="default: camera_info beside the image topic")
    parser.add_argument("--max-frames", type=int, default=None, help="process at most this many images")
    parser.add_argument("--gt", type=Path, default=None, help="ground-truth TUM trajectory (else /ground_truth/pose)")
    parser.add_argument("--skip-bad-frames", action="store_true",
                        help="skip undecodable images instead of refusing the bag")
    parser.add_argument("--no-eval", action="store_true", help="do not evaluate even if ground truth exists")
    parser.add_argument("--force", action="store_true", help="replace an existing output directory")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    live = parser.add_argument_group(
        "real time", "play the bag on a wall clock into the node's worker (concurrent tracking and mapping, "
        "drop-oldest input queue) and evaluate what it publishes; no final refinement")
    live.add_argument("--realtime", action="store_true", help="feed images at their recorded times, as a camera would")
    live.add_argument("--rate", type=float, default=1.0, help="with --realtime: playback rate (default 1.0)")
    live.add_argument("--queue-size", type=int, default=2, help="with --realtime: input queue length (as ros.queue_size)")
    live.add_argument("--no-render", action="store_true", help="with --realtime: no ~/deblurred renders")


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["a.b=3", "c.d=true"]`` -> ``{"a.b": 3, "c.d": True}`` (values parsed as YAML scalars)."""
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise SystemExit(f"--set needs NAME=VALUE, got {item!r}")
        name, value = item.split("=", 1)
        out[name.strip()] = yaml.safe_load(value)
    return out


@dataclass
class FrameMetrics:
    index: int
    stamp: float
    state: str
    keyframe: bool
    gaussians: int
    inlier_ratio: float
    seconds: dict[str, float] = field(default_factory=dict)


@dataclass
class ReplayResult:
    out: Path
    frames: int
    seconds: float
    metrics: dict[str, Any]
    evaluation: Any | None = None  # posegs_ros.tools.evaluate result


def run(args: argparse.Namespace) -> int:
    from ..config import ConfigError
    from ..io import BagError

    try:
        cfg = config_from_args(args)
    except ConfigError as err:
        print(f"posegs replay: {err}", file=sys.stderr)
        return 2
    if args.gt is not None and not Path(args.gt).is_file():  # found out now, not after the whole replay
        print(f"posegs replay: --gt {args.gt}: no such file", file=sys.stderr)
        return 2
    try:
        if args.realtime:
            from .realtime import replay_realtime

            result = replay_realtime(
                args.bag, args.out, cfg, rate=args.rate, image_topic=args.image_topic,
                camera_info_topic=args.camera_info_topic, max_frames=args.max_frames, gt=args.gt,
                evaluate=not args.no_eval, force=args.force, queue_size=args.queue_size, render=not args.no_render,
            )
        else:
            result = replay(
                args.bag, args.out, cfg,
                image_topic=args.image_topic, camera_info_topic=args.camera_info_topic, max_frames=args.max_frames,
                gt=args.gt, skip_bad_frames=args.skip_bad_frames, evaluate=not args.no_eval, force=args.force,
                progress=not args.quiet,
            )
    except (BagError, ReplayError) as err:
        print(f"posegs replay: {err}", file=sys.stderr)
        return 1
    summary = result.metrics["summary"]
    print(f"processed {summary['frames_processed']} frames in {result.seconds:.1f} s "
          f"({summary['fps']:.2f} frames/s); {summary['keyframes']} keyframes, {summary['gaussians']} Gaussians")
    states = summary.get("frames_by_state", {})
    if not summary.get("initialized", True):
        print(f"the map never initialized: not enough camera translation (parallax) in these "
              f"{summary['frames_processed']} frames; no map.ply, nothing evaluated", file=sys.stderr)
    if states.get("lost") or states.get("no pose"):
        print(f"frames without a tracked pose: {states.get('lost', 0)} lost (predicted pose only), "
              f"{states.get('no pose', 0)} without any pose (see metrics.json)")
    if args.realtime:
        live = result.metrics["realtime"]
        lat = live["tracking_latency_ms"]
        print(f"real time at rate {live['rate']}: {live['frames_posed']} of {live['images']} images posed "
              f"({100 * live['posed_share']:.1f} %), {live['frames_dropped']} dropped; tracking latency median "
              f"{lat['median']:.1f} ms, p95 {lat['p95']:.1f} ms; {live['renders']} renders; "
              f"{live['mapping_rounds']} mapping rounds; {live['cpu_cores_used']:.2f} cores busy")
    if result.evaluation is not None:
        from .evaluate import summary_text

        print(summary_text(result.evaluation))
    print(f"outputs in {result.out}")
    return 0 if summary.get("initialized", True) else 1


class ReplayError(RuntimeError):
    """A bag that cannot be replayed (nothing is written)."""


def _prepare_out(out: Path, force: bool) -> Path:
    if out.exists() and any(out.iterdir()) if out.is_dir() else out.exists():
        if not force:
            raise ReplayError(f"{out} exists and is not empty: choose another --out or pass --force")
    out.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))


def _commit_out(staging: Path, out: Path) -> None:
    if out.exists():
        old = out.with_name(f".{out.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
        staging.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        staging.rename(out)


def require_gt(gt: Path | None) -> None:
    """Refuse a ground-truth file that does not exist (:class:`ReplayError`), before a replay
    rather than in its evaluation, after every frame."""
    if gt is not None and not Path(gt).is_file():
        raise ReplayError(f"ground truth {gt}: no such file")


def replay(
    bag_path: Path,
    out: Path,
    cfg: Any,
    image_topic: str = "/camera/image_raw",
    camera_info_topic: str | None = None,
    max_frames: int | None = None,
    gt: Path | None = None,
    skip_bad_frames: bool = False,
    evaluate: bool = True,
    force: bool = False,
    progress: bool = True,
) -> ReplayResult:
    """Replay ``bag_path`` through the engine and write the outputs to ``out`` (see module doc).
    A ``gt`` file that does not exist is refused before the replay (:func:`require_gt`)."""
    require_gt(gt)
    import cv2
    import numpy as np
    from tqdm import tqdm

    from ..io import BagReader, Undistorter, atomic_write_image, atomic_write_json, write_tum
    from ..io.files import json_safe
    from ..config import config_to_dict
    from ..pipeline import Frame, FrameError, Reconstructor

    with BagReader(bag_path) as bag:
        stream = bag.camera_frames(image_topic, camera_info_topic)
        problems = stream.check()
        fatal = [p for p in problems if p.kind != "no_camera_info"]
        if fatal and not skip_bad_frames:
            listing = "; ".join(str(p) for p in fatal[:5]) + (" ..." if len(fatal) > 5 else "")
            raise ReplayError(f"{len(fatal)} unusable image(s) on {stream.image_topic}: {listing} "
                              "(--skip-bad-frames skips them)")
        total = stream.expected_images
        if total == 0:
            raise ReplayError(f"{stream.image_topic} holds no images")
        if len(problems) == total:
            raise ReplayError(f"no image on {stream.image_topic} can be used: {problems[0]}")
        if len(problems):
            log.warning("%d of %d images will be skipped (first: %s)", len(problems), total, problems[0])

        staging = _prepare_out(out, force)
        try:
            engine = Reconstructor(cfg, keep_frames=True)
            undistort = Undistorter()
            frames_meta: list[FrameMetrics] = []
            skipped: list[dict[str, Any]] = []
            intrinsics_by_index: dict[int, Any] = {}
            t_start = time.perf_counter()
            limit = total if max_frames is None else min(total, max_frames)
            bar = tqdm(total=limit, unit="frame", disable=not progress, dynamic_ncols=True)
            processed = 0
            for cam_frame in stream:
                if processed >= limit:
                    break
                image, intr = undistort(cam_frame.image, cam_frame.camera)
                try:
                    res = engine.process(Frame(image, cam_frame.stamp, intr, cam_frame.index))
                except FrameError as err:
                    skipped.append({"index": cam_frame.index, "reason": str(err)})
                    log.warning("image %d skipped: %s", cam_frame.index, err)
                    continue
                processed += 1
                intrinsics_by_index[cam_frame.index] = intr
                t = res.timings
                frames_meta.append(FrameMetrics(
                    cam_frame.index, cam_frame.stamp, res.state.value, res.is_keyframe, res.num_gaussians,
                    round(res.inlier_ratio, 4),
                    {"flow": t.flow, "tracking": t.tracking, "mapping": t.mapping, "render": t.render, "total": t.total},
                ))
                bar.update(1)
                bar.set_postfix(state=res.state.value, kf=res.num_keyframes, gs=res.num_gaussians)
            bar.close()
            seconds = time.perf_counter() - t_start
            t0 = time.perf_counter()
            final = engine.finalize()
            final_seconds = time.perf_counter() - t0
            if final.iterations:
                log.info("final refinement: %d joint steps over %d frames (%d keyframes) in %.1f s; %d more frames "
                         "tracked against it", final.iterations, final.views, engine.num_keyframes, final_seconds,
                         engine.counters.final_tracked_frames)
            skipped += [{"index": p.index, "reason": p.reason} for p in stream.skips]

            traj = engine.trajectory()
            online = engine.online_trajectory()
            write_tum(staging / "trajectory.tum", np.array([p.stamp for p in traj]), np.array([p.pose for p in traj]).reshape(-1, 4, 4))
            write_tum(staging / "trajectory_online.tum", np.array([p.stamp for p in online]), np.array([p.pose for p in online]).reshape(-1, 4, 4))
            t0 = time.perf_counter()
            for point in traj:
                rgb, _ = engine.render(point.pose, intrinsics_by_index[point.index], point.group_poses, point.exposure,
                                       point.map_index)
                atomic_write_image(staging / "deblurred" / f"{point.index:04d}.png", rgb)
                if cfg.dynamic.enabled:
                    mask = point.dynamic_mask if point.dynamic_mask is not None else np.zeros(rgb.shape[:2], bool)
                    mask = mask.astype(np.uint8) * 255
                    if mask.shape != rgb.shape[:2]:  # the engine worked smaller (max_image_width)
                        mask = cv2.resize(mask, (rgb.shape[1], rgb.shape[0]), interpolation=cv2.INTER_NEAREST)
                    atomic_write_image(staging / "masks" / f"{point.index:04d}.png", mask)
            render_seconds = time.perf_counter() - t0
            if engine.initialized:
                engine.save_map(staging / "map.ply")
            else:  # too few frames or too little parallax: the outputs say so instead of a traceback
                log.warning("the map never initialized in %d frames (init.min_parallax_px %.1f px with "
                            "init.min_inliers %d matches): no map, no poses", processed,
                            cfg.init.min_parallax_px, cfg.init.min_inliers)

            metrics = {
                "bag": str(bag_path),
                "image_topic": stream.image_topic,
                "config": config_to_dict(cfg),
                "summary": {
                    "images_in_bag": total,
                    "frames_processed": processed,
                    "initialized": engine.initialized,
                    "frames_with_pose": len(traj),
                    # final state of each frame: lost = only a predicted pose (tracking failed online and
                    # again against the final map); no pose = waited too long for initialization
                    "frames_by_state": {
                        **{state: sum(p.state.value == state for p in traj) for state in ("tracking", "relocalized", "lost")},
                        "no pose": processed - len(traj),
                    },
                    "frames_skipped": len(skipped),
                    "keyframes": engine.num_keyframes,
                    "gaussians": engine.num_gaussians,
                    "seconds": seconds,
                    "fps": processed / seconds if seconds > 0 else 0.0,
                    "final_refinement_seconds": final_seconds,
                    "final_refinement_steps": final.iterations,
                    "final_refinement_views": final.views,
                    "final_refinement_preconditioned_steps": final.preconditioned_steps,
                    "final_render_seconds": render_seconds,
                    "counters": engine.stats(),
                    "calibration": engine.calibration,
                    "exposure_ratio": {"used": engine.exposure_ratio, **engine.exposure.summary()},
                    "mean_seconds": {
                        stage: float(np.mean([f.seconds[stage] for f in frames_meta])) if frames_meta else 0.0
                        for stage in ("flow", "tracking", "mapping", "render", "total")
                    },
                },
                "skipped": skipped,
                "frames": [asdict(f) for f in frames_meta],
            }
            atomic_write_json(staging / "metrics.json", json_safe(metrics))

            evaluation = None
            if evaluate and traj:
                evaluation = _evaluate(bag, staging, gt, stream.image_topic, traj)
            _commit_out(staging, out)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return ReplayResult(out, processed, seconds, metrics, evaluation)


def _evaluate(bag: Any, staging: Path, gt: Path | None, image_topic: str, traj: list) -> Any | None:
    """Ground truth from ``--gt`` or the bag's ``/ground_truth/*`` topics -> eval.json + report."""

    from ..io import atomic_write_image, image_to_rgb, read_tum, stamp_to_nanoseconds, write_tum
    from . import evaluate as ev

    gt_dir = staging / "ground_truth"
    if gt is not None:
        gt_traj = read_tum(gt)
    elif GT_POSE_TOPIC in bag.topics:
        gt_traj = bag.trajectory(GT_POSE_TOPIC)
    else:
        log.info("no ground truth (no %s in the bag, no --gt): skipping evaluation", GT_POSE_TOPIC)
        return None
    write_tum(gt_dir / "gt.tum", gt_traj.stamps, gt_traj.poses)
    # the inputs (named by the image's index in the bag): renders are compared with them, and with
    # the sharp GT frames when the bag has them (synthetic sequences)
    index_of_stamp: dict[int, int] = {}
    gt_images, input_images = None, gt_dir / "input"
    for i, item in enumerate(bag.messages([image_topic])):
        index_of_stamp[stamp_to_nanoseconds(item.msg.header.stamp)] = i
        try:
            atomic_write_image(input_images / f"{i:04d}.png", image_to_rgb(item.msg))
        except Exception as err:  # an unusable input image simply has no thumbnail
            log.debug("input image %d not written: %s", i, err)
    if GT_SHARP_TOPIC in bag.topics:
        gt_images = gt_dir / "sharp"
        for item in bag.messages([GT_SHARP_TOPIC]):
            idx = index_of_stamp.get(stamp_to_nanoseconds(item.msg.header.stamp))
            if idx is not None:
                atomic_write_image(gt_images / f"{idx:04d}.png", image_to_rgb(item.msg))
    if not input_images.is_dir():
        input_images = None
    deblurred = staging / "deblurred"
    has_renders = deblurred.is_dir() and any(deblurred.iterdir())
    result = ev.evaluate(
        gt_dir / "gt.tum", staging / "trajectory.tum",
        gt_images=gt_images, est_images=deblurred if has_renders else None, input_images=input_images,
    )
    ev.write_report(result, staging / "report")
    summary = result.to_dict()
    online = read_tum(staging / "trajectory_online.tum")
    if len(online):
        summary["trajectory_online"] = ev.evaluate_trajectory(gt_traj, online).summary()
    from ..io import atomic_write_json, json_safe

    atomic_write_json(staging / "eval.json", json_safe(summary))
    return result
