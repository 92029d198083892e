"""``posegs bench pipeline``: frames/s, per-stage time and peak RSS of the engine.

Runs the engine on the default synthetic sequence (generated in memory, no bag I/O, so only
the engine is measured) and prints one table.  ``--profile`` adds the top functions by
cumulative time (cProfile) to say where the time goes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..replay import add_config_arguments

    parser.add_argument("--frames", type=int, default=60, help="sequence length (default 60)")
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--seed", type=int, default=0)
    add_config_arguments(parser)
    parser.add_argument("--profile", action="store_true", help="print the top functions by cumulative time")
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers as JSON")


def run(args: argparse.Namespace) -> int:
    import cProfile
    import io
    import pstats
    import resource
    import time

    import numpy as np
    import torch

    from ...pipeline import Frame, Reconstructor
    from ..replay import config_from_args
    from ..synth import SynthConfig, generate

    cfg = config_from_args(args)
    seq = generate(SynthConfig(seed=args.seed, frames=args.frames, width=args.width, height=args.height))
    engine = Reconstructor(cfg)
    profiler = cProfile.Profile() if args.profile else None
    stages = {"flow": [], "tracking": [], "mapping": [], "render": [], "total": []}
    keyframes = 0
    t0 = time.perf_counter()
    if profiler:
        profiler.enable()
    for f in seq.frames:
        res = engine.process(Frame(f.blurred, f.stamp, seq.intrinsics, f.index))
        for stage in stages:
            stages[stage].append(getattr(res.timings, stage))
        keyframes += int(res.is_keyframe)
    if profiler:
        profiler.disable()
    seconds = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    n = len(seq.frames)
    numbers = {
        "frames": n,
        "resolution": f"{args.width}x{args.height}",
        "threads": torch.get_num_threads(),
        "seconds": seconds,
        "frames_per_second": n / seconds,
        "keyframes": keyframes,
        "gaussians": engine.num_gaussians,
        "subframes": (cfg.blur.subframes or "auto") if cfg.blur.enabled else 1,
        "seconds_per_frame": {k: float(np.mean(v)) for k, v in stages.items()},
        "share_of_total": {k: float(np.sum(v) / max(np.sum(stages["total"]), 1e-9)) for k, v in stages.items() if k != "total"},
        "peak_rss_mb": peak_mb,
    }
    print(f"posegs bench pipeline: {n} frames {numbers['resolution']}, {numbers['threads']} threads, "
          f"S={numbers['subframes']} sub-frames")
    print(f"  frames/s          {numbers['frames_per_second']:.3f}  ({seconds:.1f} s total)")
    print(f"  keyframes         {keyframes}   Gaussians at the end {engine.num_gaussians}")
    print("  stage            s/frame   share")
    for stage in ("flow", "tracking", "mapping", "render"):
        print(f"  {stage:<15} {numbers['seconds_per_frame'][stage]:8.3f}   {100 * numbers['share_of_total'][stage]:5.1f} %")
    print(f"  {'total':<15} {numbers['seconds_per_frame']['total']:8.3f}")
    print(f"  peak RSS          {peak_mb:.0f} MB")
    if profiler:
        buf = io.StringIO()
        pstats.Stats(profiler, stream=buf).sort_stats("cumulative").print_stats(25)
        print(buf.getvalue())
    if args.json:
        args.json.write_text(json.dumps(numbers, indent=2))
    return 0
