"""``posegs demo``: synthesize a blurred sequence, reconstruct it, evaluate it, print the numbers.

The whole job of the project on built-in data: ``posegs synth`` writes a motion-blurred
320x240 sequence with ground truth as a rosbag2, ``posegs replay`` reconstructs it from the
bag exactly as the ROS node would, and ``posegs eval`` compares trajectory and deblurred
frames with the ground truth.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .replay import add_config_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("posegs_demo"), help="working directory (default: ./posegs_demo)")
    parser.add_argument("--frames", type=int, default=60, help="sequence length (default 60)")
    parser.add_argument("--seed", type=int, default=0, help="scene / trajectory seed")
    parser.add_argument("--dynamic", action="store_true", help="add a moving object (and motion groups)")
    add_config_arguments(parser)
    parser.add_argument("--force", action="store_true", help="replace an existing --out directory")


def run(args: argparse.Namespace) -> int:
    import time

    from ..config import ConfigError
    from ..io import BagError
    from .replay import ReplayError, config_from_args, replay
    from .synth import SynthConfig, generate, write

    out: Path = args.out
    if out.exists() and any(out.iterdir()) and not args.force:
        print(f"posegs demo: {out} exists and is not empty (use --force or another --out)", file=sys.stderr)
        return 2
    try:
        cfg = config_from_args(args, {"dynamic.enabled": True} if args.dynamic else None)
    except ConfigError as err:
        print(f"posegs demo: {err}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    print(f"[1/3] synthesizing {args.frames} blurred frames (320x240) ...", flush=True)
    seq = generate(SynthConfig(seed=args.seed, frames=args.frames, dynamic=args.dynamic))
    data = write(seq, out / "data", force=True)
    print(f"      mean blur {seq.blur_px.mean():.1f} px, written to {data}", flush=True)
    print("[2/3] reconstructing from the bag (posegs replay) ...", flush=True)
    try:
        result = replay(data / "bag", out / "replay", cfg, force=True, progress=sys.stderr.isatty())
    except (BagError, ReplayError) as err:
        print(f"posegs demo: {err}", file=sys.stderr)
        return 1
    print("[3/3] evaluation against ground truth:", flush=True)
    ev = result.evaluation
    summary = result.metrics["summary"]
    if ev is not None:
        from .evaluate import summary_text

        print(summary_text(ev))
    print(f"speed: {summary['fps']:.2f} frames/s ({summary['frames_processed']} frames in {summary['seconds']:.0f} s), "
          f"{summary['keyframes']} keyframes, {summary['gaussians']} Gaussians")
    print(f"report: {result.out / 'report' / 'index.html'}   total {time.perf_counter() - t0:.0f} s")
    if cfg.preset != "best":
        print(f"(preset {cfg.preset}; for the best quality, at more time: posegs demo --preset best --force)")
    return 0
