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

# the demo's own settings on top of the balanced preset (under --config / --set): 12 final steps
# per frame instead of 16, so the first run ends within two minutes on the slower 2-core
# machines too (README, `posegs demo`: 93-109 s against 136-152 s there, +4.9 dB against +5.6;
# 107 s, +5.3 dB with the exposure twists fitted to the neighbouring poses)
DEMO_OVERLAYS = {"balanced": {"mapping.final_steps_per_view": 12}}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("posegs_demo"), help="working directory (default: ./posegs_demo)")
    parser.add_argument("--frames", type=int, default=32, help="sequence length (default 32: about 1 s at 30 Hz)")
    parser.add_argument("--seed", type=int, default=0, help="scene / trajectory seed")
    parser.add_argument("--size", default="320x240", help="image size WIDTHxHEIGHT (default 320x240)")
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
        cfg = config_from_args(args, {"dynamic.enabled": True} if args.dynamic else None, DEMO_OVERLAYS)
    except ConfigError as err:
        print(f"posegs demo: {err}", file=sys.stderr)
        return 2
    try:
        width, height = (int(v) for v in args.size.lower().split("x"))
        synth = SynthConfig(seed=args.seed, frames=args.frames, width=width, height=height, dynamic=args.dynamic)
    except ValueError as err:
        print(f"posegs demo: --size WIDTHxHEIGHT and --frames: {err}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    print(f"[1/3] synthesizing {args.frames} blurred frames ({width}x{height}) ...", flush=True)
    warming = _start_warm_up(cfg)
    seq = generate(synth)
    data = write(seq, out / "data", force=True)
    print(f"      mean blur {seq.blur_px.mean():.1f} px, written to {data}", flush=True)
    for proc in warming:
        proc.join()  # type: ignore[attr-defined]
    print(f"      ({time.perf_counter() - t0:.0f} s, engine kernels compiled meanwhile)", flush=True)
    print("[2/3] reconstructing from the bag (posegs replay) ...", flush=True)
    try:
        result = replay(data / "bag", out / "replay", cfg, force=True, progress=sys.stderr.isatty())
    except (BagError, ReplayError) as err:
        print(f"posegs demo: {err}", file=sys.stderr)
        return 1
    print(f"      ({time.perf_counter() - t0:.0f} s)", flush=True)
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
        steps = f", {cfg.mapping.final_steps_per_view} final steps per frame" if cfg.preset in DEMO_OVERLAYS else ""
        print(f"(preset {cfg.preset}{steps}; for the best quality, at more time: posegs demo --preset best --force)")
    return 0


def _compile_kernels(cfg: object, group: str) -> None:
    import logging

    from ..warmup import compile_kernels

    logging.getLogger("posegs_ros").setLevel(logging.WARNING)
    compile_kernels(cfg, (group,))  # type: ignore[arg-type]


def _start_warm_up(cfg: object) -> list[object]:
    """Compile the engine's kernels into numba's disk cache in other processes (one per kernel
    group) while this one synthesizes: a fresh installation spends ~30 s compiling, and both
    cores work meanwhile. Returns the processes (join them before replaying); none where no
    process can be started (the replay then compiles on first use)."""
    import multiprocessing

    from ..warmup import KERNEL_GROUPS

    procs = []
    for group in KERNEL_GROUPS:
        try:
            proc = multiprocessing.get_context("spawn").Process(target=_compile_kernels, args=(cfg, group), daemon=True)
            proc.start()
        except OSError:
            continue
        procs.append(proc)
    return procs
