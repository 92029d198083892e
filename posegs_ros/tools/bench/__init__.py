"""``posegs bench``: benchmarks that print numbers: speed (render, pipeline) and quality (quality, dynamic)."""

from __future__ import annotations

import argparse
import importlib
import sys

BENCHMARKS: dict[str, tuple[str, str]] = {
    "render": ("posegs_ros.tools.bench.render", "CPU rasterizer vs its PyTorch reference: ms and peak RSS"),
    "pipeline": ("posegs_ros.tools.bench.pipeline", "reconstruction pipeline: frames/s, per-stage time, peak RSS"),
    "dynamic": ("posegs_ros.tools.bench.dynamic", "moving objects: motion groups on vs off (ATE, PSNR in object mask, IoU)"),
    "quality": ("posegs_ros.tools.bench.quality", "ablation table: full method vs blur off vs two-step, and a sharp sequence"),
    "real": ("posegs_ros.tools.bench.real", "real camera frames (TUM / 7-Scenes folder): ATE, RPE, PSNR vs input, RSS per window"),
    "realtime": ("posegs_ros.tools.bench.realtime", "live camera: frames posed, tracking latency, online ATE and PSNR at 30 Hz"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    chosen = next((a for a in sys.argv[1:] if a in BENCHMARKS), None)
    for name, (module_name, help_text) in BENCHMARKS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if chosen is None or name == chosen:
            module = importlib.import_module(module_name)
            module.add_arguments(p)
            p.set_defaults(_bench_run=module.run)


def run(args: argparse.Namespace) -> int:
    return int(args._bench_run(args) or 0)
