"""The ``posegs`` command: one entry point, one module per subcommand.

Each subcommand module exposes ``add_arguments(parser)`` and ``run(args) -> int`` and keeps
heavy imports (torch, numba, rosbags) inside ``run`` so that ``posegs --help`` is instant.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Sequence

# subcommand -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("posegs_ros.tools.demo", "synthesize a blurred sequence, reconstruct it, evaluate"),
    "replay": ("posegs_ros.tools.replay", "reconstruct a rosbag2 offline (trajectory, deblurred frames, map)"),
    "synth": ("posegs_ros.tools.synth", "write a synthetic motion-blurred sequence with ground truth as a rosbag2"),
    "bag-from-frames": ("posegs_ros.tools.bag_from_frames", "convert a TUM RGB-D or 7-Scenes folder into a rosbag2"),
    "eval": ("posegs_ros.tools.evaluate", "trajectory (ATE, RPE) and image (PSNR, SSIM) metrics with a report"),
    "bench": ("posegs_ros.tools.bench", "benchmarks: renderer and pipeline speed, ablation quality, dynamic scenes"),
}


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The argument parser; only the chosen subcommand's module is imported (so one broken or
    heavy subcommand never slows down or breaks the others)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    chosen = next((a for a in argv if a in SUBCOMMANDS), None)
    parser = argparse.ArgumentParser(prog="posegs", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            module = importlib.import_module(module_name)
            module.add_arguments(p)
            p.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``posegs`` console script."""
    args = build_parser(argv).parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
