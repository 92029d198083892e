"""``posegs bench quality``: the ablation table, from one command.

Synthesizes the default sequence (320x240, 60 frames, 3-8 px blur) and a sharp twin (same
scene and path, zero exposure), replays them through the engine exactly as ``posegs replay``
does, evaluates against ground truth and prints one Markdown table:

- ``full``: the method (blur model on, poses refined in mapping: UPGS's joint optimization);
- ``blur off``: one sharp render per frame (no exposure model);
- ``two-step``: poses from tracking are frozen, mapping optimizes Gaussians only;
- ``full on sharp input``: the method on the sequence without motion blur.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

VARIANTS: dict[str, tuple[dict[str, Any], bool]] = {
    # name -> (config overrides, use the sharp twin sequence)
    "full": ({}, False),
    "blur off": ({"blur.enabled": False}, False),
    "two-step": ({"mapping.optimize_poses": False}, False),
    "full on sharp input": ({}, True),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from .replay import add_config_arguments

    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated subset of: {', '.join(VARIANTS)}")
    add_config_arguments(parser, " for every variant")
    parser.add_argument("--work", type=Path, default=None, help="keep sequences and outputs here (default: temporary)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")


def run(args: argparse.Namespace) -> int:
    from ..config import load_config
    from .replay import parse_overrides, replay
    from .synth import SynthConfig, generate, write

    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variant(s): {', '.join(unknown)}; known: {', '.join(VARIANTS)}")
    common = parse_overrides(args.overrides)
    with tempfile.TemporaryDirectory(prefix="posegs-quality-") as tmp:
        work = args.work or Path(tmp)
        bags: dict[bool, Path] = {}
        for sharp in sorted({VARIANTS[n][1] for n in names}):
            cfg = SynthConfig(seed=args.seed, frames=args.frames, exposure=0.0 if sharp else SynthConfig.exposure)
            seq = generate(cfg)
            bags[sharp] = write(seq, work / ("sharp" if sharp else "blurred"), force=True) / "bag"
            print(f"sequence {'sharp' if sharp else 'blurred'}: mean blur {seq.blur_px.mean():.2f} px", flush=True)
        rows = []
        for name in names:
            overrides, sharp = VARIANTS[name]
            cfg = load_config(*args.config, overrides={**common, **overrides})
            print(f"running '{name}' ...", flush=True)
            result = replay(bags[sharp], work / name.replace(" ", "_").replace(",", ""), cfg, force=True, progress=False)
            rows.append(_row(name, result))
    print()
    print(format_table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


def _row(name: str, result: Any) -> dict[str, Any]:
    ev = result.evaluation
    summary = result.metrics["summary"]
    eval_json = json.loads((result.out / "eval.json").read_text())
    return {
        "variant": name,
        "ate_cm": 100 * ev.trajectory.ate_rmse_sim3,
        "ate_online_cm": 100 * float(eval_json["trajectory_online"]["ate_rmse_sim3"]),
        "psnr_deblurred": ev.deblurred.psnr_mean,
        "psnr_input": ev.input.psnr_mean,
        "ssim_deblurred": ev.deblurred.ssim_mean,
        "fps": summary["fps"],
        "final_refinement_s": summary["final_refinement_seconds"],
        "keyframes": summary["keyframes"],
        "gaussians": summary["gaussians"],
    }


def format_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table of ablation rows."""
    head = ("| variant | ATE final (cm) | ATE online (cm) | PSNR deblurred (dB) | PSNR input (dB) | gain (dB) "
            "| SSIM deblurred | online fps | final refinement (s) |")
    lines = [head, "|---" * (head.count("|") - 1) + "|"]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {r['ate_cm']:.2f} | {r['ate_online_cm']:.2f} | {r['psnr_deblurred']:.2f} | "
            f"{r['psnr_input']:.2f} | {r['psnr_deblurred'] - r['psnr_input']:+.2f} | {r['ssim_deblurred']:.3f} | "
            f"{r['fps']:.2f} | {r['final_refinement_s']:.0f} |"
        )
    return "\n".join(lines)
